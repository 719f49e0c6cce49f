"""Request parameters of the HTTP API, validated before any replica sees the request (no Ray import).

FastAPI validates types and ranges of single fields; what spans fields or needs parsing lives here, each
raising :class:`~serve_app.errors.ApiError` 422 with the field named: filters given as a JSON form field, the
soft text filter's ``text`` / ``text_weight`` pair, the ``crop`` box, and paging (``offset + k`` within
``max_k``).
"""

import json
from typing import Any

from fastapi import Form
from pydantic import BaseModel, Field, field_validator, model_validator

from serve_app.errors import ApiError, to_api_error
from serve_app.filters import FilterError, parse_filters
from serve_app.query_image import CropError, parse_crop

MAX_K = 10_000  # the deepest ranking any request may ask for: the ceiling of the app arg max_k (default 1000),
# which check_page applies per deployment (OpenSearch's index.max_result_window default is 10,000 too)
DEFAULT_TEXT_WEIGHT = 0.5

TEXT_FIELD = Form(None, max_length=2000, description="soft filter: a description that re-ranks the visual results")
TEXT_WEIGHT_FIELD = Form(None, ge=0.0, le=1.0, description="weight w of the text in the fused score, default 0.5")
OFFSET_FIELD = Form(0, ge=0, le=MAX_K - 1, description="ranks to skip (page 2 of k=10 is offset=10)")
MIN_SCORE_FIELD = Form(None, ge=-1.0, le=1.0, description="drop results whose score is below this")
CROP_FIELD = Form(None, description="JSON [x0, y0, x1, y1]: the region to search by, as fractions of the width and "
                                    "height of the photo (after EXIF orientation)")


class TextQuery(BaseModel):
    query: str = Field(..., description="free-text description of the product", max_length=2000)
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")
    offset: int = Field(0, ge=0, le=MAX_K - 1, description="ranks to skip (paging)")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="drop results scoring below this")
    filters: dict[str, Any] | None = Field(None, description='e.g. {"category": ["food"], "price": {"lte": 20}}')

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be empty")
        return v


class SimilarQuery(BaseModel):
    """``POST /search/similar``: more like these products (:mod:`serve_app.recommend`)."""

    positive: list[str] = Field(..., min_length=1, max_length=100, description="product ids to look like")
    negative: list[str] = Field(default_factory=list, max_length=100, description="product ids to look unlike")
    text: str | None = Field(None, max_length=2000, description="soft filter: re-rank by this description")
    text_weight: float | None = Field(None, ge=0.0, le=1.0, description="weight of the text, default 0.5")
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")
    offset: int = Field(0, ge=0, le=MAX_K - 1, description="ranks to skip (paging)")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="drop results scoring below this")
    filters: dict[str, Any] | None = Field(None, description='e.g. {"category": ["food"]}')

    @field_validator("positive", "negative")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        if any(not p.strip() for p in v):
            raise ValueError("product ids must not be empty")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _disjoint(self) -> "SimilarQuery":
        both = sorted(set(self.positive) & set(self.negative))
        if both:
            raise ValueError(f"product ids both positive and negative: {both}")
        return self


def check_filters(filters: dict | None) -> dict | None:
    """Validate early (422 before any model work); the Retriever parses again for its backend."""
    try:
        parse_filters(filters)
    except FilterError as e:
        raise to_api_error(e) from None
    return filters


def filters_field(filters: str | None) -> dict | None:
    """The ``filters`` form field: a JSON object (or empty), validated."""
    if filters is None or not filters.strip():
        return None
    try:
        parsed = json.loads(filters)
    except json.JSONDecodeError as e:
        raise ApiError(422, "invalid_filter", f"filters must be a JSON object: {e.msg} at column {e.colno}") from e
    if not isinstance(parsed, dict):
        raise ApiError(422, "invalid_filter", f"filters must be a JSON object, got {type(parsed).__name__}")
    return check_filters(parsed)


def soft_filter_args(text: str | None, text_weight: float | None) -> tuple[str | None, float]:
    """The soft text filter fields: ``text_weight`` needs a non-blank ``text``; the default weight is 0.5."""
    if text is not None and not text.strip():
        text = None
    if text is None and text_weight is not None:
        raise ApiError(422, "invalid_request", "text_weight: give a `text` to weigh (the soft text filter)")
    return text, DEFAULT_TEXT_WEIGHT if text_weight is None else text_weight


def crop_field(crop: str | None) -> tuple[float, float, float, float] | None:
    """The ``crop`` form field: JSON ``[x0, y0, x1, y1]`` fractions (or empty for the whole photo)."""
    if crop is None or not crop.strip():
        return None
    try:
        return parse_crop(json.loads(crop))
    except json.JSONDecodeError as e:
        raise ApiError(422, "invalid_request", f"crop must be a JSON array [x0, y0, x1, y1]: {e.msg}") from e
    except CropError as e:
        raise ApiError(422, "invalid_request", f"crop: {e}") from e


def check_page(k: int, offset: int, max_k: int) -> None:
    """``offset + k`` ranks must lie within the first ``max_k`` (the deepest any search goes)."""
    if offset + k > max_k:
        raise ApiError(422, "invalid_request", f"offset + k = {offset + k}: results are ranked {max_k} deep at most")
