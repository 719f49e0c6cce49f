"""Near-duplicate detection: pHash on the binary Hamming index, optionally confirmed by CLIP (no Ray import).

Two modes:

- ``phash``: exact Hamming k-NN over the stored 64-bit pHashes; a hit is a near-duplicate when its distance
  is ≤ ``max_distance`` bits. ``match_percent = 100 · (1 − d / 64)``, the share of equal bits.
- ``robust``: pHash then CLIP to confirm. pHash misses crops and flips (a 20 % crop moves most bits) and,
  at a loose threshold, also matches distinct products, so candidates from the pHash index (within
  ``max_distance``) **and** from CLIP image k-NN are merged, and every candidate gets both distances —
  Hamming from its stored pHash, cosine from its stored embedding. A candidate is kept when pHash finds it
  and CLIP confirms it (``d ≤ max_distance`` and ``cos ≥ confirm_min_score``: tiers ``phash`` + ``clip``),
  or when CLIP alone is sure (``cos ≥ clip_min_score``: tier ``clip``). Hits are ordered closest first: by
  Hamming distance, then by cosine similarity. The CLIP thresholds depend on the model's weights and are
  configuration (``benchmarks/dedup_eval.py`` measures them).
"""

from typing import Any

import numpy as np

from serve_app.index.base import IndexReader
from serve_app.phash import hamming_distance, match_percent, to_hex
from serve_app.recommend import UnknownProducts

MODES = ("phash", "robust")
DEFAULT_MAX_DISTANCE = 10
DEFAULT_CONFIRM_MIN_SCORE = 0.9
DEFAULT_CLIP_MIN_SCORE = 0.97


def _result(meta: dict[str, Any], distance: int) -> dict[str, Any]:
    out = {k: v for k, v in meta.items() if k != "phash"}
    return out | {"hamming_distance": distance, "match_percent": round(match_percent(distance), 2),
                  "phash": to_hex(meta["phash"])}


def find_similar(index: IndexReader, query_hash: int, top: int, max_distance: int = DEFAULT_MAX_DISTANCE,
                 mode: str = "phash", query_vector: np.ndarray | None = None,
                 clip_min_score: float = DEFAULT_CLIP_MIN_SCORE, confirm_min_score: float = DEFAULT_CONFIRM_MIN_SCORE,
                 exclude: str | None = None) -> list[dict[str, Any]]:
    """Near-duplicates of one image in the catalog.

    Args:
        index: the catalog index.
        query_hash: the query image's pHash (signed int64, :func:`serve_app.phash.phash64`).
        top: at most this many hits.
        max_distance: pHash tier threshold in bits (0–64).
        mode: ``"phash"`` or ``"robust"`` (needs ``query_vector``).
        query_vector: float32 ``(D,)`` L2-normalised CLIP embedding of the query (robust mode).
        clip_min_score: cosine at which CLIP alone marks a near-duplicate (robust mode).
        confirm_min_score: cosine with which CLIP confirms a pHash candidate (robust mode).
        exclude: a product id to leave out (the query product itself, in batch reports).

    Returns:
        Hits, closest first: product metadata plus ``hamming_distance`` (0–64), ``match_percent``,
        ``phash`` (hex) and, in robust mode, ``cosine_similarity`` and ``tiers`` (which tiers matched).

    Raises:
        ValueError: unknown mode, ``max_distance`` outside 0–64, or robust mode without a query vector.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be in 0..64 bits, got {max_distance}")
    extra = 1 if exclude else 0
    hash_hits = index.hamming_search([query_hash], top + extra, max_distance)[0]
    hits = {h.product_id: _result(h.metadata, h.distance) for h in hash_hits if h.product_id != exclude}
    if mode == "phash":
        return sorted(hits.values(), key=lambda r: (r["hamming_distance"], r["product_id"]))[:top]
    if query_vector is None:
        raise ValueError("robust mode needs the query's CLIP embedding")
    clip_hits = index.search(np.asarray(query_vector, np.float32)[None, :], top + extra)[0]
    new_ids = [h.product_id for h in clip_hits if h.product_id != exclude and h.product_id not in hits]
    for stored in index.get(new_ids):
        hits[stored["product_id"]] = _result(stored, hamming_distance(query_hash, stored["phash"]))
    vectors = index.vectors(list(hits))
    kept = []
    for product_id, result in hits.items():
        cosine = float(np.dot(vectors[product_id], query_vector)) if product_id in vectors else -1.0
        phash_ok = result["hamming_distance"] <= max_distance
        if phash_ok and cosine >= confirm_min_score:
            tiers = ["phash", "clip"]
        elif cosine >= clip_min_score:
            tiers = ["clip"]
        else:
            tiers = []
        if tiers:
            kept.append(result | {"cosine_similarity": round(cosine, 6), "tiers": tiers})
    kept.sort(key=lambda r: (r["hamming_distance"], -r["cosine_similarity"], r["product_id"]))
    return kept[:top]


class NoStoredHash(ValueError):
    """The product has no stored pHash (loaded from embeddings without one): nothing to compare (HTTP 422)."""


def find_similar_to_product(index: IndexReader, product_id: str, top: int, max_distance: int = DEFAULT_MAX_DISTANCE,
                            mode: str = "phash", clip_min_score: float = DEFAULT_CLIP_MIN_SCORE,
                            confirm_min_score: float = DEFAULT_CONFIRM_MIN_SCORE) -> tuple[int, list[dict[str, Any]]]:
    """Near-duplicates of a catalog product ("show me the duplicates of this listing"): :func:`find_similar`
    with the product's stored pHash (and, in robust mode, its stored embedding), the product itself left out.

    Returns:
        ``(stored pHash as signed int64, hits)``.

    Raises:
        UnknownProducts: ``product_id`` is not in the index. NoStoredHash: it has no stored pHash.
        ValueError: see :func:`find_similar`.
    """
    stored = index.get([product_id])
    if not stored:
        raise UnknownProducts([product_id])
    query_hash = stored[0].get("phash")
    if query_hash is None:
        raise NoStoredHash(f"product {product_id!r} has no stored pHash (it was loaded from embeddings without "
                           "one): find its duplicates by photo instead")
    vector = index.vectors([product_id]).get(product_id) if mode == "robust" else None
    return query_hash, find_similar(index, query_hash, top, max_distance, mode, vector, clip_min_score,
                                    confirm_min_score, exclude=product_id)
