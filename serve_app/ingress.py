"""HTTP ingress (FastAPI on Ray Serve): validates requests, chains the stages, shapes responses.

No model or index code here. The ingress reads an upload once, passes its bytes to the Encoder, hands the
Encoder's ``DeploymentResponse`` straight to the Retriever and awaits only the Retriever's answer (Ray Serve
"model composition" guide). Errors follow the contract envelope (:mod:`serve_app.errors`).
"""
# No `from __future__ import annotations` here: FastAPI must see real types to recognise UploadFile.

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.config import AppArgs
from serve_app.errors import ApiError, error_response, to_api_error
from serve_app.filters import FilterError, parse_filters
from serve_app.images import ImageDecodeError, open_image
from serve_app.thumbnails import DEFAULT_SIZE, ByteLRU, clamp_size, etag
from serve_app.url_fetch import fetch_image_url

MAX_K = 1000
STATIC_DIR = Path(__file__).parent / "static"
THUMBNAIL_MAX_AGE_S = 300
app = FastAPI(title="Visual Search", version="0.1.0",
              description="Search a product catalog by photo or text (CLIP embeddings, k-NN).")
# The web page's assets (the page itself is GET /); everything is served from this origin, nothing external.
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


class TextQuery(BaseModel):
    query: str = Field(..., description="free-text description of the product", max_length=2000)
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")
    filters: dict[str, Any] | None = Field(None, description='e.g. {"category": ["food"], "price": {"lte": 20}}')

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must not be empty")
        return v


@app.exception_handler(ApiError)
async def _api_error(_: Request, e: ApiError):
    return error_response(e.status, e.code, e.message)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError):
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return error_response(422, "invalid_request", "; ".join(parts))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(e.status_code, "http_error")
    return error_response(e.status_code, code, str(e.detail))


@app.exception_handler(Exception)
async def _unhandled(_: Request, e: Exception):
    err = to_api_error(e)
    return error_response(err.status, err.code, err.message)


def _check_filters(filters: dict | None) -> dict | None:
    """Validate early (422 before any model work); the Retriever parses again for its backend."""
    try:
        parse_filters(filters)
    except FilterError as e:
        raise to_api_error(e) from None
    return filters


TEXT_FIELD = Form(None, max_length=2000, description="soft filter: a description that re-ranks the visual results")
TEXT_WEIGHT_FIELD = Form(None, ge=0.0, le=1.0, description="weight w of the text in the fused score, default 0.5")
DEFAULT_TEXT_WEIGHT = 0.5


def _soft_filter_args(text: str | None, text_weight: float | None) -> tuple[str | None, float]:
    """Validate the soft text filter fields: ``text_weight`` needs a non-blank ``text``."""
    if text is not None and not text.strip():
        text = None
    if text is None and text_weight is not None:
        raise ApiError(422, "invalid_request", "text_weight: give a `text` to weigh (the soft text filter)")
    return text, DEFAULT_TEXT_WEIGHT if text_weight is None else text_weight


def _parse_filters_field(filters: str | None) -> dict | None:
    if filters is None or not filters.strip():
        return None
    try:
        parsed = json.loads(filters)
    except json.JSONDecodeError as e:
        raise ApiError(422, "invalid_filter", f"filters must be a JSON object: {e.msg} at column {e.colno}") from e
    if not isinstance(parsed, dict):
        raise ApiError(422, "invalid_filter", f"filters must be a JSON object, got {type(parsed).__name__}")
    return _check_filters(parsed)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
@serve.ingress(app)
class Ingress:
    """The HTTP front door; holds handles to the Encoder and Retriever deployments."""

    def __init__(self, encoder: DeploymentHandle, retriever: DeploymentHandle, decoder: DeploymentHandle,
                 deduper: DeploymentHandle, args: dict):
        self.encoder, self.retriever, self.decoder, self.deduper = encoder, retriever, decoder, deduper
        self.args = AppArgs(**args)
        self.thumbnails = ByteLRU(ttl_s=THUMBNAIL_MAX_AGE_S)  # (product_id, size) → JPEG bytes

    @staticmethod
    def _check_size(request: Request, limit: int) -> None:
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit + 64 * 1024:
            raise ApiError(413, "payload_too_large", f"request body is {declared} bytes; uploads are limited to {limit}")

    @staticmethod
    async def _read_upload(file: UploadFile, limit: int) -> bytes:
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "payload_too_large", f"uploaded file is over the {limit}-byte limit")
        return data

    def _check_image(self, data: bytes) -> None:
        """415/400 here, from the header alone, for bytes that are not an image or are too large: the replicas
        then only see identifiable images (a truncated body is still found when the Encoder decodes it)."""
        try:
            open_image(data, self.args.max_image_pixels)
        except ImageDecodeError as e:
            raise to_api_error(e) from None

    @staticmethod
    async def _answer(pending):
        """Await a deployment response (or a coroutine); a stage error becomes its :class:`ApiError`."""
        try:
            return await pending
        except Exception as e:
            raise to_api_error(e) from None

    async def _fetch(self, image_url: str) -> bytes:
        """The image at ``image_url`` under the app's SSRF, size and time limits (see url_fetch)."""
        return await self._answer(fetch_image_url(image_url, self.args.image_url_max_bytes,
                                                  self.args.image_url_timeout_s, self.args.image_url_allow_networks))

    async def _search(self, vector_response, k: int, filters: dict | None) -> list[dict]:
        return (await self._answer(self.retriever.search.remote(vector_response, k, filters)))[0]

    @app.get("/", include_in_schema=False)
    async def page(self):
        """The web page (serve_app/static/index.html): photo, text, video and duplicate search."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/facets")
    async def facets(self):
        """Filter values: ``{"products", "facets": {"category"|"brand": [{"value", "count"}]}, "ranges":
        {"price": {"min", "max", "count"}}}``, counts descending."""
        return await self._answer(self.retriever.facets.remote())

    @app.get("/thumbnails/{product_id:path}", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(self, request: Request, product_id: str,
                        size: int = Query(DEFAULT_SIZE, description="longer side in pixels, clamped to 64–512")):
        """JPEG thumbnail of a product's catalog image, resized on the Retriever and cached here (LRU in bytes)
        and by the browser (``Cache-Control``, ``ETag`` → 304). Unknown product: 404."""
        size = clamp_size(size)
        body = self.thumbnails.get((product_id, size))
        if body is None:
            body = await self._answer(self.retriever.thumbnail.remote(product_id, size))
            self.thumbnails.put((product_id, size), body)
        headers = {"ETag": etag(body), "Cache-Control": f"public, max-age={THUMBNAIL_MAX_AGE_S}"}
        if headers["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="image/jpeg", headers=headers)

    @app.get("/healthz")
    async def healthz(self):
        """200 when the model and index are loaded: product count, model id, weights kind."""
        encoder, index = await asyncio.gather(self.encoder.info.remote(), self.retriever.info.remote())
        body = {"status": "ok", "products": index["products"], "model_id": encoder["model_id"],
                "model_weights": encoder["weights"], "dtype": encoder["dtype"], "dim": encoder["dim"],
                "index": index["index"], "index_model_id": index["model_id"]}
        if encoder["dim"] != index["dim"]:
            return error_response(503, "model_index_mismatch",
                                  f"index holds {index['dim']}-d embeddings from {index['model_id']!r} but the model "
                                  f"makes {encoder['dim']}-d ones: re-ingest with this model")
        return body

    @app.post("/search/text")
    async def search_text(self, body: TextQuery):
        """Text → CLIP text embedding → k-NN over product image embeddings."""
        started = time.perf_counter()
        _check_filters(body.filters)
        vector = self.encoder.embed_text.remote(body.query)
        results = await self._search(vector, body.k, body.filters)
        return {"results": results, "k": body.k, "took_ms": round(1000 * (time.perf_counter() - started), 2)}

    @app.post("/search/image")
    async def search_image(self, request: Request, file: UploadFile | None = File(None),
                           image_url: str | None = Form(None), k: int = Form(10, ge=1, le=MAX_K),
                           filters: str | None = Form(None, description="JSON object"),
                           text: str | None = TEXT_FIELD, text_weight: float | None = TEXT_WEIGHT_FIELD):
        """Photo (multipart ``file`` or form field ``image_url``) → CLIP image embedding → k-NN; with ``text``,
        re-ranked by ``(1 − w)·minmax(image_score) + w·minmax(text_score)`` (see README, "Soft text filter")."""
        started = time.perf_counter()
        self._check_size(request, self.args.max_upload_bytes)
        parsed_filters = _parse_filters_field(filters)
        text, text_weight = _soft_filter_args(text, text_weight)
        if (file is None) == (not image_url):
            raise ApiError(422, "invalid_request", "send exactly one of a multipart `file` or an `image_url` field")
        if file is not None:
            data = await self._read_upload(file, self.args.max_upload_bytes)
        else:
            data = await self._fetch(image_url)
        self._check_image(data)
        vector = self.encoder.embed_image.remote(data)
        if text is None:
            results = await self._search(vector, k, parsed_filters)
            return {"results": results, "k": k, "took_ms": round(1000 * (time.perf_counter() - started), 2)}
        text_vector = self.encoder.embed_text.remote(text)
        results = await self._answer(self.retriever.search_soft.remote(vector, text_vector, k, parsed_filters,
                                                                       text_weight))
        return {"results": results, "k": k, "text": text, "text_weight": text_weight,
                "took_ms": round(1000 * (time.perf_counter() - started), 2)}

    async def _find_similar(self, data: bytes, top: int, max_distance: int | None, mode: str) -> dict:
        started = time.perf_counter()
        max_distance = self.args.dedup_max_distance if max_distance is None else max_distance
        self._check_image(data)
        vector = self.encoder.embed_image.remote(data) if mode == "robust" else None
        thresholds = {"clip_min_score": self.args.dedup_clip_min_score,
                      "confirm_min_score": self.args.dedup_confirm_min_score}
        body = await self._answer(self.retriever.find_similar.remote(data, top, max_distance, mode, vector,
                                                                     thresholds))
        if mode == "robust":
            body |= thresholds
        return body | {"top": top, "took_ms": round(1000 * (time.perf_counter() - started), 2)}

    @app.get("/find_similar")
    async def find_similar_url(self, image_url: str, top: int = Query(10, ge=1, le=MAX_K),
                               max_distance: int | None = Query(None, ge=0, le=64),
                               mode: str = Query("phash", pattern="^(phash|robust)$")):
        """Near-duplicate listings of the image at ``image_url`` (same SSRF and size rules as image search):
        per hit ``hamming_distance`` (0–64 bits) and ``match_percent`` = 100·(1 − d/64), closest first."""
        return await self._find_similar(await self._fetch(image_url), top, max_distance, mode)

    @app.post("/find_similar")
    async def find_similar_upload(self, request: Request, file: UploadFile = File(...),
                                  top: int = Form(10, ge=1, le=MAX_K),
                                  max_distance: int | None = Form(None, ge=0, le=64),
                                  mode: str = Form("phash", pattern="^(phash|robust)$")):
        """Near-duplicate listings of an uploaded image (``mode=robust`` adds CLIP image k-NN candidates)."""
        self._check_size(request, self.args.max_upload_bytes)
        data = await self._read_upload(file, self.args.max_upload_bytes)
        return await self._find_similar(data, top, max_distance, mode)

    @app.post("/search/video")
    async def search_video(self, request: Request, file: UploadFile = File(..., description="video clip"),
                           k: int = Form(10, ge=1, le=MAX_K), fps: float = Form(1.0, gt=0),
                           max_frames: int | None = Form(None, ge=1), fusion: str = Form("max", pattern="^(max|rrf)$"),
                           filters: str | None = Form(None, description="JSON object"),
                           frame_thumbnails: bool = Form(False, description="add kept_frames[i].thumbnail, a "
                                                         "~96 px high JPEG data URL of each kept frame"),
                           text: str | None = TEXT_FIELD, text_weight: float | None = TEXT_WEIGHT_FIELD):
        """Clip → sample at ``fps`` → pHash frame dedup → CLIP (one batch) → multi-query k-NN → fusion."""
        started = time.perf_counter()
        self._check_size(request, self.args.max_video_bytes)
        parsed_filters = _parse_filters_field(filters)
        text, text_weight = _soft_filter_args(text, text_weight)
        if fps > self.args.max_video_fps:
            raise ApiError(422, "invalid_request", f"fps: at most {self.args.max_video_fps:g} frames per second")
        if max_frames is not None and max_frames > self.args.max_video_frames:
            raise ApiError(422, "video_limit_exceeded",
                           f"max_frames: at most {self.args.max_video_frames} frames per clip")
        data = await self._read_upload(file, self.args.max_video_bytes)
        clip = self.decoder.decode.remote(data, fps, max_frames)
        clip = self.deduper.dedup.remote(clip, frame_thumbnails)
        clip = self.encoder.embed_clip.remote(clip)
        text_vector = None if text is None else self.encoder.embed_text.remote(text)
        body = await self._answer(self.retriever.search_clip.remote(clip, k, parsed_filters, fusion, text_vector,
                                                                    text_weight))
        if text is not None:
            body |= {"text": text, "text_weight": text_weight}
        body["took_ms"]["total"] = round(1000 * (time.perf_counter() - started), 2)
        return body
