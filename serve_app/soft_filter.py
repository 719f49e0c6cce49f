"""The soft text filter's candidate set and scores over an index (no Ray import).

Candidates are the visual k-NN results (an image's, or a clip's fused per-frame results) together with the
text query's own k-NN results, both under the same hard filters, :func:`pool_size` per side. Both cosines are
then exact for every candidate: the image side from the query embedding(s) and the stored product vector,
the text side from the text embedding and the stored vector (fetched for the products a side did not
retrieve). :func:`serve_app.fusion.soft_text_filter` then fuses them (min–max normalised weighted mean).
"""

from typing import Any

import numpy as np

from serve_app.fusion import soft_text_filter
from serve_app.index.base import IndexReader

MIN_POOL = 50


def pool_size(k: int) -> int:
    """Candidates fetched per side before re-ranking: ``4k``, at least 50, at most 1000 — never fewer than ``k``
    (a ``max_k`` configured above 1000 pages that deep)."""
    return max(k, min(1000, max(4 * k, MIN_POOL)))


def with_text_query(vectors: np.ndarray, text_vector: np.ndarray) -> np.ndarray:
    """The visual query rows float32 ``(Q, D)`` with the text embedding appended as row ``Q``: both sides of
    the soft filter in one multi-query k-NN round trip."""
    return np.vstack([np.asarray(vectors, np.float32), np.asarray(text_vector, np.float32).reshape(1, -1)])


def rerank_with_text(index: IndexReader, candidates: list[dict[str, Any]], query_vectors: np.ndarray,
                     text_hits: list[dict[str, Any]], text_vector: np.ndarray, text_weight: float, k: int,
                     text_only: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Fuse visual candidates with the text query's results (module docstring).

    Args:
        index: where the stored vectors of candidates a side did not retrieve are read (one lookup).
        candidates: visual results, ``score`` = image cosine (for a clip: the best frame's).
        query_vectors: float32 ``(Q, D)`` visual query embeddings (one row per kept frame for a clip).
        text_hits: the text query's own k-NN results (``score`` = text cosine).
        text_vector: float32 ``(D,)`` or ``(1, D)`` CLIP text embedding.
        text_weight: ``w`` in [0, 1]. k: results to return.
        text_only: fields added to candidates that only the text side found (e.g. ``{"frames": []}``).

    Returns:
        Up to ``k`` results, best first, with ``image_score``, ``text_score`` and the fused ``score``.
    """
    text_scores = {h["product_id"]: h["score"] for h in text_hits}
    known = {c["product_id"] for c in candidates}
    extra = [h for h in text_hits if h["product_id"] not in known]
    need = [c["product_id"] for c in candidates if c["product_id"] not in text_scores] + [h["product_id"] for h in extra]
    stored = index.vectors(need) if need else {}
    text_vector = np.asarray(text_vector, np.float32).reshape(-1)
    query_vectors = np.asarray(query_vectors, np.float32).reshape(-1, text_vector.shape[0])
    for product_id, vector in stored.items():
        text_scores.setdefault(product_id, float(vector @ text_vector))
    merged = list(candidates)
    for h in extra:
        if h["product_id"] in stored:
            image_score = float(np.max(query_vectors @ stored[h["product_id"]]))
            merged.append(h | (text_only or {}) | {"score": image_score})
    merged = [c for c in merged if c["product_id"] in text_scores]
    return soft_text_filter(merged, text_scores, text_weight, k)
