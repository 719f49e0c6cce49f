"""Catalog manifest schema and reader (no Ray import).

A manifest is JSON Lines (``.jsonl``/``.ndjson``/``.json``) or CSV (``.csv``), one product per line:
``product_id``, ``title``, ``image`` (local path — relative paths resolve against the manifest's folder —,
``http(s)://`` or ``s3://``), optional ``category``, ``price``, ``brand`` and any other scalar attributes.
Rows that fail validation are returned as :class:`BadRow` with their line number and reason; they never
stop the good rows.
"""

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from serve_app import storage

CORE_FIELDS = ("product_id", "title", "image", "category", "price", "brand")


class ManifestError(ValueError):
    """The manifest as a whole cannot be read (missing, unknown format, no header)."""


class Product(BaseModel):
    """One catalog row. Extra scalar attributes are kept in ``attributes``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    product_id: str
    title: str
    image: str
    category: str | None = None
    price: float | None = None
    brand: str | None = None
    attributes: dict[str, str | int | float | bool | None] = {}

    @field_validator("product_id", "title", "image")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("must be a non-empty string")
        return v

    @field_validator("price")
    @classmethod
    def _finite_price(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ValueError(f"price must be a finite number ≥ 0, got {v}")
        return v


@dataclass
class BadRow:
    """A catalog row that was skipped, with why. ``line`` is 1-based in the manifest (0 = unknown)."""

    line: int
    product_id: str | None
    image: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "product_id": self.product_id, "image": self.image, "reason": self.reason}


def parse_lines(text: str, fmt: str) -> list[tuple[int, dict | str]]:
    """``(line_number, row dict or error message)`` for each row of a JSON Lines or CSV manifest's text (also
    each shard's, :mod:`batch_jobs.manifest`).

    Raises:
        ManifestError: a CSV without a header row.
    """
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise ManifestError("CSV manifest has no header row")
        return [(reader.line_num, {k: v for k, v in row.items() if k is not None and v not in ("", None)})
                for row in reader]
    rows: list[tuple[int, dict | str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((number, f"invalid JSON: {e.msg} at column {e.colno}"))
            continue
        rows.append((number, obj if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"))
    return rows


def manifest_format(uri: str) -> str:
    """``"jsonl"`` or ``"csv"`` from the manifest's extension.

    Raises:
        ManifestError: any other extension.
    """
    lower = uri.lower().split("?")[0]
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    raise ManifestError(f"unknown manifest format for {uri!r}: expected .jsonl, .ndjson, .json or .csv")


def to_product(raw: dict, manifest_uri: str) -> Product:
    """Validate one raw row; extra keys go into ``attributes`` and ``image`` is resolved to a full URI.

    Raises:
        ValueError: a readable reason (missing field, wrong type, non-scalar attribute).
    """
    core = {k: raw[k] for k in CORE_FIELDS if k in raw}
    extra = {k: v for k, v in raw.items() if k not in CORE_FIELDS}
    for key in ("product_id", "title"):
        if isinstance(core.get(key), (int, float)) and not isinstance(core.get(key), bool):
            core[key] = str(core[key])
    try:
        product = Product(**core, attributes=extra)
    except ValidationError as e:
        reasons = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(reasons) from None
    product.image = storage.check_uri(storage.join(manifest_uri, product.image))
    return product


def read_manifest(uri: str) -> tuple[list[Product], list[BadRow]]:
    """Read and validate a whole manifest.

    Duplicate ``product_id``\\s keep the last row (a later line updates an earlier one) and report the
    earlier one as a bad row.

    Returns:
        ``(products, bad_rows)`` in manifest order.

    Raises:
        ManifestError: the manifest cannot be read or has an unknown format.
    """
    fmt = manifest_format(uri)
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except (storage.StorageError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read catalog manifest {uri}: {e}") from e
    products: dict[str, tuple[int, Product]] = {}
    bad: list[BadRow] = []
    for number, row in parse_lines(text, fmt):
        if isinstance(row, str):
            bad.append(BadRow(number, None, None, row))
            continue
        try:
            product = to_product(row, uri)
        except ValueError as e:
            bad.append(BadRow(number, _str_or_none(row.get("product_id")), _str_or_none(row.get("image")), str(e)))
            continue
        if product.product_id in products:
            earlier, _ = products[product.product_id]
            bad.append(BadRow(earlier, product.product_id, None, f"duplicate product_id; line {number} replaces it"))
        products[product.product_id] = (number, product)
    return [p for _, p in sorted(products.values(), key=lambda x: x[0])], bad


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)
