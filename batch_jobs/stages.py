"""Ingestion stages as plain Python on column batches (no Ray import; Ray Data calls them in pipeline.py).

reader (manifest rows) → :func:`load_images` (fetch, decode, pHash, CLIP preprocessing) →
:class:`EmbedImages` (CLIP forward), or the two in one actor (:class:`LoadAndEmbed`) → :func:`index_table` (the
index's Arrow schema, in the sink). A row whose image cannot be read or decoded carries its reason in ``error`` and is dropped from the index by the sink, which
reports it.
"""

import functools
import json
import os
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app import storage
from serve_app.embedding import load_embedder, model_spec
from serve_app.images import DECODE_MIN_SIDE, decode_image
from serve_app.phash import phash64
from serve_app.preprocess import ClipGeometry, clip_batch

Batch = dict[str, np.ndarray]


def _geometry(model: str) -> ClipGeometry:
    """The model's resize/crop (any family), read from its folder's JSON (:func:`serve_app.models.model_spec`, no
    ``transformers`` import: the load tasks start in well under a second)."""
    return model_spec(model).geometry


def _preprocess(model: str, image) -> np.ndarray:
    return clip_batch([image], _geometry(model))[0]


def load_images(batch: Batch, model: str, max_bytes: int = storage.DEFAULT_MAX_BYTES,
                timeout_s: float = storage.DEFAULT_TIMEOUT_S) -> Batch:
    """Fetch and decode each row's ``image``, hash it and preprocess it for the model (its family's geometry).

    Any exception while fetching, decoding, hashing or preprocessing one row makes that row bad (its reason in
    ``error``), never the batch: a NUL byte in a path, a malformed URL or a decoder crash costs one row.

    Args:
        batch: columns of :class:`serve_app.catalog.Product` rows (``image`` is a full URI); an ``error``
            column, when present, marks rows that are bad already (a manifest row that failed validation):
            they are passed on untouched, not fetched.
        model: hub id or folder whose image processor to use (the same as the embedding model's).

    Returns:
        The input columns plus ``phash`` (int64), ``pixels`` (uint8 ``(N, 3, S, S)``, ``S`` the model's input side,
        224 for ViT-B/32; zeros for failed rows) and ``error`` (``""`` or the reason the row failed).
    """
    geometry = _geometry(model)
    side, shape = max(DECODE_MIN_SIDE, geometry.size), (3, geometry.crop, geometry.crop)
    n = len(batch["product_id"])
    pixels = np.zeros((n,) + tuple(shape), np.uint8)  # [N, 3, H, W]
    phashes = np.zeros(n, np.int64)
    incoming = batch.get("error")
    errors = np.array([""] * n if incoming is None else [_str_or_none(e) or "" for e in incoming], dtype=object)
    for i, uri in enumerate(batch["image"]):
        if errors[i]:
            continue
        try:
            image = decode_image(storage.read_bytes(str(uri), max_bytes=max_bytes, timeout_s=timeout_s),
                                 min_side=side)
            phashes[i] = phash64(image)
            pixels[i] = _preprocess(model, image)
        except Exception as e:  # noqa: BLE001 - one row's failure, whatever it is, is that row's reason
            errors[i] = f"{type(e).__name__}: {str(e)[:500]}"
    return dict(batch) | {"phash": phashes, "pixels": pixels, "error": errors}


class EmbedImages:
    """Callable class for an actor pool: loads CLIP once, embeds the ``pixels`` of good rows.

    Args:
        model: hub id or local folder. dtype, runtime: see :func:`serve_app.embedding.load_embedder`.
        num_threads: torch intra-op threads for this actor (``None``: every core; the actor asks Ray for a
            fraction of a CPU but uses every core while the forward runs).
        batch_size: images per forward; a larger batch is embedded in forwards of this many (``None``: one).
    """

    def __init__(self, model: str, dtype: str = "float32", runtime: str = "torch", num_threads: int | None = None,
                 batch_size: int | None = None):
        self.embedder = load_embedder(model, dtype=dtype, runtime=runtime, num_threads=num_threads)
        self.batch_size = batch_size  # images per forward (None: the whole batch in one)

    def __call__(self, batch: Batch) -> Batch:
        good = np.flatnonzero(np.asarray(batch["error"]) == "")
        vectors = np.zeros((len(batch["error"]), self.embedder.dim), np.float32)
        step = self.batch_size or max(1, len(good))
        for start in range(0, len(good), step):
            rows = good[start:start + step]
            vectors[rows] = self.embedder.embed_pixels(batch["pixels"][rows])  # [n, D]
        out = {k: v for k, v in batch.items() if k != "pixels"}
        return out | {"vector": vectors}


class LoadAndEmbed:
    """Callable class for an actor pool: :func:`load_images` and :class:`EmbedImages` in one actor, for CPU nodes.

    Each batch is first fetched, decoded, hashed and preprocessed by ``load_threads`` threads (Pillow, the
    storage reads and NumPy release the GIL for most of that work), then embedded by torch's threads: the two
    phases take turns on the same cores instead of competing for them, and the pixels (150 KB an image) never
    pass through the object store. On a GPU node the separate load tasks (:func:`load_images` in a task pool)
    are better: they spread over CPU-only nodes and overlap the accelerator's forward.

    Args:
        model, dtype, runtime, num_threads, batch_size: see :class:`EmbedImages` (a call may bring a whole block
            of rows: it is loaded at once and embedded in forwards of ``batch_size``).
        load_threads: threads that load a batch (``None``: ``num_threads``, else every core).
        max_bytes, timeout_s: see :func:`load_images`.
    """

    LOAD_CHUNK = 8  # rows per thread-pool item: more items than threads even out large and small images

    def __init__(self, model: str, dtype: str = "float32", runtime: str = "torch", num_threads: int | None = None,
                 batch_size: int | None = None, load_threads: int | None = None,
                 max_bytes: int = storage.DEFAULT_MAX_BYTES, timeout_s: float = storage.DEFAULT_TIMEOUT_S):
        from concurrent.futures import ThreadPoolExecutor

        self.embed = EmbedImages(model, dtype=dtype, runtime=runtime, num_threads=num_threads, batch_size=batch_size)
        self.threads = max(1, load_threads or num_threads or os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="load")
        self.load = functools.partial(load_images, model=model, max_bytes=max_bytes, timeout_s=timeout_s)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["product_id"])
        starts = range(0, max(n, 1), self.LOAD_CHUNK)
        parts = list(self.pool.map(lambda a: self.load({k: v[a:a + self.LOAD_CHUNK] for k, v in batch.items()}),
                                   starts))
        loaded = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self.embed(loaded)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and np.isnan(v))


def _str_or_none(v: Any) -> str | None:
    """Ray Data turns all-null string columns into float NaN; map those back to None."""
    return None if _missing(v) else str(v)


def _attributes_json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps({} if _missing(value) else value, sort_keys=True, default=str)


def to_index_rows(batch: dict[str, list], dim: int) -> pa.Table:
    """Good rows (empty ``error``) of an embedded batch as an Arrow table in
    :func:`serve_app.index.base.row_schema` (:func:`index_table` on the batch's columns).

    Args:
        batch: columns from :class:`EmbedImages` as lists or arrays (``vector`` as lists/arrays of floats).
        dim: embedding dimension.
    """
    good = [i for i, e in enumerate(batch["error"]) if not e]
    columns = {}
    for name in ("product_id", "title", "category", "brand", "image"):
        if name in batch:
            columns[name] = pa.array([_str_or_none(batch[name][i]) for i in good], pa.string())
    if "attributes" in batch:
        columns["attributes"] = pa.array([_attributes_json(batch["attributes"][i]) for i in good], pa.string())
    if "price" in batch:
        columns["price"] = pa.array([None if _missing(batch["price"][i]) else float(batch["price"][i]) for i in good],
                                    pa.float64())
    columns["phash"] = pa.array(np.asarray([batch["phash"][i] for i in good], np.int64))
    vectors = np.asarray([batch["vector"][i] for i in good], np.float32).reshape(-1, dim)
    return index_table(pa.table(columns), vectors, dim)


def _string_column(table: pa.Table, name: str) -> pa.Array:
    """Column ``name`` as Arrow strings (all null when absent, or when Ray Data typed an all-null column as
    null or float)."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    column = table.column(name).combine_chunks()
    if pa.types.is_null(column.type) or pa.types.is_floating(column.type):
        return pa.nulls(table.num_rows, pa.string())
    return column.cast(pa.string())


def index_table(good: pa.Table, vectors: np.ndarray, dim: int) -> pa.Table:
    """Embedded rows (all good: no ``error``) as an Arrow table in :func:`serve_app.index.base.row_schema`
    (:func:`~serve_app.index.base.product_table`), column by column (no per-row Python: the sink's cost per block
    stays a few Arrow casts).

    Args:
        good: the sink's block rows (columns of :class:`EmbedImages` output; ``image`` becomes ``image_url``).
        vectors: float32 ``(N, D)``, row ``i`` the embedding of ``good``'s row ``i``.
        dim: embedding dimension ``D``.
    """
    import pyarrow.compute as pc

    from serve_app.index.base import product_table

    n = good.num_rows
    price = good.column("price").combine_chunks().cast(pa.float64()) if "price" in good.column_names \
        else pa.nulls(n, pa.float64())
    if n:
        price = pc.if_else(pc.is_nan(price), pa.scalar(None, pa.float64()), price)  # Ray Data's NaN for a null
    attributes = pc.fill_null(_string_column(good, "attributes"), "{}")
    if vectors.dtype == object:  # a list column: one array per row
        vectors = np.stack(vectors) if n else np.zeros((0, dim), np.float32)
    return product_table(_string_column(good, "product_id"), np.asarray(vectors, np.float32).reshape(n, dim),
                         good.column("phash").combine_chunks().cast(pa.int64()), title=_string_column(good, "title"),
                         category=_string_column(good, "category"), brand=_string_column(good, "brand"), price=price,
                         image_url=_string_column(good, "image"), attributes=attributes)
