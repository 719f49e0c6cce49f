"""The k-NN index interface every backend implements (no Ray import).

A backend stores one row per product: the L2-normalised CLIP embedding, the 64-bit pHash and the product
metadata, upserted by ``product_id``. ``score`` in every hit is the cosine similarity of the query and the
product embedding, identical across backends for the same data.
"""

import abc
import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app.filters import KEYWORD_FIELDS, NUMERIC_FIELDS, Clause

METADATA_FIELDS = ("product_id", "title", "category", "brand", "price", "image_url", "attributes")
FACET_FIELDS = tuple(f for f in KEYWORD_FIELDS if f != "product_id")  # value counts in VectorIndex.facets
RANGE_FIELDS = NUMERIC_FIELDS  # min/max in VectorIndex.facets


def product_metadata(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row's :data:`METADATA_FIELDS` (``attributes`` JSON expanded into keys; the named fields win)."""
    meta = {k: row.get(k) for k in METADATA_FIELDS if k != "attributes"}
    attributes = json.loads(row["attributes"]) if row.get("attributes") else {}
    return attributes | meta


class IndexOpenError(RuntimeError):
    """The index cannot be opened or used (missing, wrong dimension, wrong model, refused credentials)."""


class QueryDimensionError(ValueError):
    """Query embeddings of another dimension than the index's: the served model is not the one the index was
    built with (e.g. the alias moved to a re-embedded version before the Encoder was redeployed)."""


def check_query_vectors(vectors: np.ndarray, info: "IndexInfo") -> np.ndarray:
    """``vectors`` as float32 ``(Q, D)`` with ``D`` the index's dimension.

    Raises:
        ValueError: not a 2-d array.
        QueryDimensionError: ``D`` differs from ``info.dim``.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"query vectors must have shape (Q, {info.dim}), got {vectors.shape}")
    if vectors.shape[1] != info.dim:
        raise QueryDimensionError(
            f"query embeddings are {vectors.shape[1]}-d but the index holds {info.dim}-d embeddings from "
            f"{info.model_id!r}: serve the model the index was built with, or re-ingest with this one")
    return vectors


def check_same_dimension(uri: str, stored: "IndexInfo", info: "IndexInfo | None") -> None:
    """Opening an index for ``info``'s model: the stored version must hold embeddings of the same dimension.

    Raises:
        IndexOpenError: the dimensions differ (the message names both models).
    """
    if info is not None and info.dim != stored.dim:
        raise IndexOpenError(
            f"index {uri} holds {stored.dim}-dimensional embeddings from {stored.model_id!r}, but the "
            f"model {info.model_id!r} makes {info.dim}-dimensional ones; ingest a new version with this model")


def model_slug(model_id: str) -> str:
    """The model part of a :func:`version_name`: the last path segment of ``model_id``, lower case, runs of other
    characters than ``[a-z0-9]`` as one ``-``, at most 40 characters (``"model"`` when nothing is left).

    >>> model_slug("openai/clip-vit-base-patch32")
    'clip-vit-base-patch32'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", PurePosixPath(model_id.rstrip("/")).name.lower()).strip("-")[:40]
    return slug or "model"


def version_name(alias: str, model_id: str, number: int) -> str:
    """Physical index name of one ingestion: ``<alias>-<model slug>-v<number>``, lower case (OpenSearch rule).

    >>> version_name("products", "openai/clip-vit-base-patch32", 3)
    'products-clip-vit-base-patch32-v3'
    """
    return f"{alias}-{model_slug(model_id)}-v{number}"


def version_of(alias: str, name: str, model_id: str) -> int | None:
    """``N`` when ``name`` is exactly ``version_name(alias, model_id, N)``, else ``None``.

    A name alone cannot say which alias it belongs to (``products-eu-clip-v1`` is alias ``products-eu`` with
    model ``clip`` or alias ``products`` with model ``eu-clip``), so the backends call this with the model id
    recorded for the version (LanceDB alias file, OpenSearch mapping ``_meta``) and never match by prefix.

    >>> version_of("products", "products-clip-v2", "openai/clip"), version_of("products", "products-eu-clip-v1", "clip")
    (2, None)
    """
    match = re.fullmatch(re.escape(f"{alias}-{model_slug(model_id)}-v") + r"(\d+)", name)
    return int(match.group(1)) if match else None


def version_number(name: str) -> int:
    """The ``N`` of a :func:`version_name` (0 for a name without one)."""
    match = re.search(r"-v(\d+)$", name)
    return int(match.group(1)) if match else 0


def next_version_name(alias: str, model_id: str, existing: list[str]) -> str:
    """:func:`version_name` numbered one past the highest of the ``existing`` versions (1 for the first)."""
    return version_name(alias, model_id, max((version_number(v) for v in existing), default=0) + 1)


def versions_to_drop(versions: list[str], published: str, previous: str | None, keep: int) -> list[str]:
    """After ``published`` replaced ``previous`` under the alias: the oldest versions beyond the newest ``keep``
    (at least 2), never ``published`` or ``previous`` (kept for a roll-back)."""
    stale = sorted((v for v in versions if v not in (published, previous)), key=version_number)
    return stale[:max(0, len(versions) - max(keep, 2))]


def stored_schema(dim: int) -> pa.Schema:
    """What a backend stores: :func:`row_schema` plus ``phash_bits``, the pHash as 8 packed bytes
    (``fixed_size_list<uint8>[8]``) for binary Hamming k-NN, derived from ``phash`` on upsert."""
    return row_schema(dim).append(pa.field("phash_bits", pa.list_(pa.uint8(), 8)))


def row_schema(dim: int) -> pa.Schema:
    """Arrow schema of the rows a backend accepts in :meth:`VectorIndex.upsert`.

    ``vector`` is ``fixed_size_list<float32>[dim]``, ``phash`` an int64 (see :mod:`serve_app.phash`),
    ``attributes`` a JSON object as a string.
    """
    return pa.schema([
        ("product_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("price", pa.float64()),
        ("image_url", pa.string()),
        ("attributes", pa.string()),
        ("phash", pa.int64()),
        ("vector", pa.list_(pa.float32(), dim)),
    ])


def product_table(product_ids: list[str], vectors: np.ndarray, phash, **metadata) -> pa.Table:
    """Rows in :func:`row_schema` for ``N`` products, ready for :meth:`VectorIndex.upsert`.

    Args:
        product_ids: ``N`` ids (a list or an Arrow string array). vectors: float32 ``(N, D)`` L2-normalised
            embeddings. phash: int64 ``(N,)``.
        metadata: columns by name (``title``, ``category``, ``brand``, ``price``, ``image_url``,
            ``attributes`` as JSON text), ``N`` values each (lists or Arrow arrays); a column not given is null.

    Raises:
        ValueError: a metadata name that is not a column of :func:`row_schema`.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    names = [f for f in row_schema(dim).names if f not in ("product_id", "phash", "vector")]
    unknown = sorted(set(metadata) - set(names))
    if unknown:
        raise ValueError(f"unknown product columns {unknown}; the columns are {names}")
    ids = product_ids if isinstance(product_ids, (pa.Array, pa.ChunkedArray)) else list(product_ids)
    columns = {"product_id": ids} | {f: metadata.get(f, [None] * n) for f in names}
    return pa.table(columns | {"phash": np.asarray(phash, dtype=np.int64),
                               "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)},
                    schema=row_schema(dim))


@dataclass
class Hit:
    """One k-NN result: ``score`` is cosine similarity in [−1, 1]; ``metadata`` the stored fields."""

    product_id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class HashHit:
    """One Hamming k-NN result: ``distance`` in bits (0–64)."""

    product_id: str
    distance: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class IndexInfo:
    """What an index was built with, checked by serving against the loaded model: the model id, the embedding
    dimension, the weights kind, the encoder ``runtime`` (``torch``/``onnx``) and ``dtype``
    (``float32``/``bfloat16``/``int8``) that embedded the catalog, the model ``family`` (``clip``/``siglip``/
    ``open_clip``) and its ``preprocessing`` signature (:meth:`serve_app.models.base.ModelSpec.preprocessing`).
    Indexes written before these were recorded read as torch float32 ``clip`` (the only family then) with an unknown
    (empty) preprocessing signature."""

    model_id: str
    dim: int
    weights: str = "pretrained"
    runtime: str = "torch"
    dtype: str = "float32"
    family: str = "clip"
    preprocessing: str = ""

    def record(self) -> dict:
        """The fields as stored with a version (LanceDB alias file, OpenSearch ``_meta``); ``family`` and
        ``preprocessing`` only when known, so records of the fields before them stay as they were."""
        record = {"model_id": self.model_id, "dim": self.dim, "weights": self.weights, "runtime": self.runtime,
                  "dtype": self.dtype}
        return record | ({"family": self.family, "preprocessing": self.preprocessing} if self.preprocessing else {})

    @classmethod
    def from_record(cls, record: dict) -> "IndexInfo":
        """Read a stored record; fields it lacks keep their defaults, unknown ones are ignored."""
        return cls(model_id=record["model_id"], dim=int(record["dim"]),
                   **{k: record[k] for k in ("weights", "runtime", "dtype", "family", "preprocessing")
                      if record.get(k)})


class IndexReader(abc.ABC):
    """The query side of a k-NN index of catalog products (what serving uses): k-NN and Hamming search,
    stored vectors, metadata and facets of the version an alias points at."""

    uri: str
    info: IndexInfo
    version: str

    @abc.abstractmethod
    def count(self) -> int:
        """Number of products stored."""

    @abc.abstractmethod
    def search(self, vectors: np.ndarray, k: int, filters: list[Clause] | None = None) -> list[list[Hit]]:
        """k-NN by cosine similarity, with the filter applied inside the search.

        Args:
            vectors: float32 ``(Q, D)`` L2-normalised query embeddings.
            k: results per query (1–1000).
            filters: parsed clauses from :func:`serve_app.filters.parse_filters`.

        Returns:
            ``Q`` lists of at most ``k`` hits, best first; exactly ``k`` when ≥ ``k`` products match.
        """

    async def asearch(self, vectors: np.ndarray, k: int, filters: list[Clause] | None = None) -> list[list[Hit]]:
        """:meth:`search` for an event loop; backends with an async client override it (default: a thread)."""
        return await asyncio.to_thread(self.search, vectors, k, filters)

    @abc.abstractmethod
    def hamming_search(self, hashes: list[int], k: int, max_distance: int = 64,
                       filters: list[Clause] | None = None) -> list[list[HashHit]]:
        """Exact k-NN by Hamming distance over the stored 64-bit pHashes.

        Args:
            hashes: query pHashes (signed int64 values, :mod:`serve_app.phash`).
            k: results per query. max_distance: drop hits farther than this many bits.

        Returns:
            One list per query of at most ``k`` hits with ``distance ≤ max_distance``, closest first.
        """

    @abc.abstractmethod
    def vectors(self, product_ids: list[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of the given products (float32 ``(D,)`` each); missing ids are left out."""

    @abc.abstractmethod
    def hashes(self) -> tuple[list[str], np.ndarray]:
        """Every stored ``(product_id, phash)``: ids and an int64 ``(N,)`` array (for batch dedup reports)."""

    @abc.abstractmethod
    def get(self, product_ids: list[str]) -> list[dict[str, Any]]:
        """Stored metadata (and ``phash``) of the given products, in the order found."""

    @abc.abstractmethod
    def facets(self) -> dict[str, Any]:
        """Values and ranges of the filterable fields, for building filter controls.

        Returns:
            ``{"products": N, "facets": {field: [{"value": str, "count": int}, ...]}, "ranges": {field:
            {"min": float, "max": float, "count": int}}}`` where ``facets`` has one list (possibly empty) per
            field of :data:`FACET_FIELDS` (``category``, ``brand``), sorted by count descending then value,
            and ``ranges`` one entry per field of :data:`RANGE_FIELDS` (``price``) that has any value, with
            ``count`` = products that have a value.
            Null and empty-string values are left out; a numeric field with no value at all is left out of
            ``ranges``. (OpenSearch: a ``terms`` aggregation per keyword field and a ``stats`` aggregation
            per numeric field, ``size: 0``.)
        """


class IndexWriter(abc.ABC):
    """The write side of a k-NN index (what ingestion uses): bulk appends and upserts into one physical
    version, deletes, the ingestion lease, and publishing or dropping the version."""

    uri: str
    info: IndexInfo
    version: str

    @classmethod
    @abc.abstractmethod
    def lease_store(cls, uri: str) -> "LeaseStore":  # noqa: F821 - serve_app.index.lease imports this module
        """Where the alias ``uri`` keeps its ingestion lease (:mod:`serve_app.index.lease`); nothing is written
        until the lease is taken."""

    @abc.abstractmethod
    def upsert(self, rows: pa.Table) -> int:
        """Insert or replace rows by ``product_id``; ``rows`` follows :func:`row_schema`. Returns rows written."""

    def append(self, rows: pa.Table) -> int:
        r"""Add rows whose ``product_id``\s are not stored yet (bulk loading a new version); safe to call from
        several writer tasks at once. Default: :meth:`upsert` (OpenSearch's bulk index by id already is)."""
        return self.upsert(rows)

    def product_ids(self) -> list[str]:
        """Every stored ``product_id`` (what a resumed ingestion skips)."""
        return self.all_vectors()[0]

    @abc.abstractmethod
    def delete(self, product_ids: list[str]) -> int:
        """Delete products by id; returns how many were deleted."""

    def finish_bulk_load(self, unpublished: bool = False) -> None:  # noqa: B027 - optional hook
        """Called once after a bulk load: build ANN structures, compact, refresh. ``unpublished``: no reader
        uses this version yet (a new version's bulk load), so superseded files may be removed at once."""

    def drain_failures(self) -> list[dict[str, Any]]:
        """Rows the backend rejected since the last call (``product_id``, ``reason``); bulk loaders that report
        per-item errors override this. Default: none (the write either succeeded or raised)."""
        return []

    @abc.abstractmethod
    def publish(self, keep: int = 2) -> list[str]:
        """Point the alias at this handle's ``version`` in one atomic step; then drop versions beyond the
        newest ``keep`` (never the new one or the one it replaced). Returns the dropped versions."""

    @abc.abstractmethod
    def drop(self) -> None:
        """Delete this handle's physical version (an unpublished one after a failed ingestion).

        Raises:
            IndexOpenError: it is the version the alias points at.
        """


class VectorIndex(IndexReader, IndexWriter):
    """A k-NN index of catalog products: both sides of one backend (LanceDB, OpenSearch, in-memory).

    ``uri`` names an **alias**; each ingestion writes a new physical index (``version``, see
    :func:`version_name`) and :meth:`publish` switches the alias to it atomically, so search never sees a
    half-built index or a mix of two models' embeddings.
    """
