"""Ingestion stages as plain Python on column batches (no Ray import; Ray Data calls them in pipeline.py).

reader (manifest rows) → :func:`load_images` (fetch, decode, pHash, CLIP preprocessing) →
:class:`EmbedImages` (CLIP forward) → :func:`to_index_rows` (the index's Arrow schema). A row whose image
cannot be read or decoded carries its reason in ``error`` and is dropped from the index by the sink, which
reports it.
"""

import functools
import json
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app import storage
from serve_app.embedding import ClipEmbedder, load_embedder, load_processor
from serve_app.images import DECODE_MIN_SIDE, decode_image
from serve_app.index.base import product_table
from serve_app.phash import phash64

Batch = dict[str, np.ndarray]


@functools.lru_cache(maxsize=2)
def _processor_embedder(model: str) -> ClipEmbedder:
    """A model-less embedder whose ``preprocess`` uses the model folder's image processor (cached)."""
    return ClipEmbedder(model=None, processor=load_processor(model), model_id=model)


def load_images(batch: Batch, model: str, max_bytes: int = storage.DEFAULT_MAX_BYTES,
                timeout_s: float = storage.DEFAULT_TIMEOUT_S) -> Batch:
    """Fetch and decode each row's ``image``, hash it and preprocess it for CLIP.

    Any exception while fetching, decoding, hashing or preprocessing one row makes that row bad (its reason in
    ``error``), never the batch: a NUL byte in a path, a malformed URL or a decoder crash costs one row.

    Args:
        batch: columns of :class:`serve_app.catalog.Product` rows (``image`` is a full URI).
        model: hub id or folder whose image processor to use (the same as the embedding model's).

    Returns:
        The input columns plus ``phash`` (int64), ``pixels`` (uint8 ``(N, 3, 224, 224)``, zeros for
        failed rows) and ``error`` (``""`` or the reason the row failed).
    """
    embedder = _processor_embedder(model)
    side = max(DECODE_MIN_SIDE, embedder.input_side)
    n = len(batch["product_id"])
    pixels = np.zeros((n,) + embedder.preprocess([]).shape[1:], np.uint8)  # [N, 3, H, W]
    phashes = np.zeros(n, np.int64)
    errors = np.array([""] * n, dtype=object)
    for i, uri in enumerate(batch["image"]):
        try:
            image = decode_image(storage.read_bytes(str(uri), max_bytes=max_bytes, timeout_s=timeout_s),
                                 min_side=side)
            phashes[i] = phash64(image)
            pixels[i] = embedder.preprocess([image])[0]
        except Exception as e:  # noqa: BLE001 - one row's failure, whatever it is, is that row's reason
            errors[i] = f"{type(e).__name__}: {str(e)[:500]}"
    return dict(batch) | {"phash": phashes, "pixels": pixels, "error": errors}


class EmbedImages:
    """Callable class for an actor pool: loads CLIP once, embeds the ``pixels`` of good rows.

    Args:
        model: hub id or local folder. dtype, runtime: see :func:`serve_app.embedding.load_embedder`.
        num_threads: torch intra-op threads for this actor (``None``: every core; the actor asks Ray for a
            fraction of a CPU but uses every core while the forward runs).
    """

    def __init__(self, model: str, dtype: str = "float32", runtime: str = "torch", num_threads: int | None = None):
        self.embedder = load_embedder(model, dtype=dtype, runtime=runtime, num_threads=num_threads)

    def __call__(self, batch: Batch) -> Batch:
        good = np.flatnonzero(np.asarray(batch["error"]) == "")
        vectors = np.zeros((len(batch["error"]), self.embedder.dim), np.float32)
        vectors[good] = self.embedder.embed_pixels(batch["pixels"][good])  # [n_good, D]
        out = {k: v for k, v in batch.items() if k != "pixels"}
        return out | {"vector": vectors}


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
    """Good rows of an embedded batch as an Arrow table in :func:`serve_app.index.base.row_schema`.

    Args:
        batch: columns from :class:`EmbedImages` as Python lists (``vector`` as lists/arrays of floats).
        dim: embedding dimension.
    """
    good = [i for i, e in enumerate(batch["error"]) if not e]
    pick = lambda col: [batch[col][i] if col in batch else None for i in good]  # noqa: E731
    vectors = np.asarray([batch["vector"][i] for i in good], np.float32).reshape(-1, dim)
    strings = lambda col: [_str_or_none(v) for v in pick(col)]  # noqa: E731
    return product_table(strings("product_id"), vectors, np.asarray(pick("phash"), np.int64),
                         title=strings("title"), category=strings("category"), brand=strings("brand"),
                         price=[None if _missing(p) else float(p) for p in pick("price")],
                         image_url=strings("image"), attributes=[_attributes_json(a) for a in pick("attributes")])
