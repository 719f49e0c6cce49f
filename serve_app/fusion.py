"""Fuse per-frame k-NN results of a video into one product ranking (no Ray import).

Two methods, chosen per request with ``fusion``:

- ``max`` (default): a product's score is its best frame's cosine similarity, ``s(p) = max_f cos(q_f, p)``.
  Ties are broken by the number of distinct frames that retrieved the product, then by the mean of its
  frame scores — so a product seen in several frames ranks above one seen once at the same best score.
- ``rrf``: reciprocal-rank fusion, ``s(p) = Σ_f 1 / (k_rrf + rank_f(p))`` with 1-based ranks and
  ``k_rrf = 60`` (Cormack, Clarke & Büttcher 2009, "Reciprocal Rank Fusion outperforms Condorcet and
  individual Rank Learning Methods", SIGIR). Frames where a product is absent contribute nothing, so
  products seen in more frames rank higher by construction. It suits a clip of one product seen from many
  angles; for a haul of several products shown one after another, ``max`` keeps each product's best shot.

Each fused result keeps ``best_score`` (the best cosine) and the frames that matched it (``t``, ``score``).
"""

from collections.abc import Sequence
from typing import Any

FUSIONS = ("max", "rrf")
RRF_K = 60


def fuse(per_frame: Sequence[Sequence[dict[str, Any]]], times: Sequence[float], k: int, method: str = "max",
         rrf_k: int = RRF_K) -> list[dict[str, Any]]:
    """Fuse per-frame result lists.

    Args:
        per_frame: for each kept frame, its k-NN results (dicts with ``product_id`` and cosine ``score``),
            best first.
        times: the frame times in seconds, aligned with ``per_frame``.
        k: number of products to return.
        method: ``"max"`` or ``"rrf"``.

    Returns:
        Up to ``k`` product dicts, best first, each with ``score`` (fused), ``best_score``, ``frames``
        (``[{"t": seconds, "score": cosine}]`` in time order) and the product metadata.

    Raises:
        ValueError: unknown method, or ``per_frame`` and ``times`` of different lengths.
    """
    if method not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {method!r}")
    if len(per_frame) != len(times):
        raise ValueError(f"{len(per_frame)} result lists for {len(times)} frame times")
    products: dict[str, dict[str, Any]] = {}
    for results, t in zip(per_frame, times):
        for rank, hit in enumerate(results, start=1):
            entry = products.setdefault(hit["product_id"], {"meta": hit, "frames": [], "rrf": 0.0})
            entry["frames"].append({"t": t, "score": hit["score"]})
            entry["rrf"] += 1.0 / (rrf_k + rank)
    fused = []
    for product_id, entry in products.items():
        scores = [f["score"] for f in entry["frames"]]
        best = max(scores)
        if method == "max":
            key = (best, len(scores), sum(scores) / len(scores))
            score = best
        else:
            key = (entry["rrf"], best)
            score = entry["rrf"]
        result = dict(entry["meta"]) | {"product_id": product_id, "score": round(score, 6), "best_score": best,
                                        "frames": sorted(entry["frames"], key=lambda f: f["t"])}
        fused.append((key, result))
    fused.sort(key=lambda kr: kr[0], reverse=True)
    return [r for _, r in fused[:k]]


def min_max(scores: Sequence[float]) -> list[float]:
    """Scale to [0, 1] by the set's min and max (all 1.0 when they are equal)."""
    lo, hi = min(scores, default=0.0), max(scores, default=0.0)
    return [1.0 if hi == lo else (s - lo) / (hi - lo) for s in scores]


def soft_text_filter(candidates: Sequence[dict[str, Any]], text_scores: dict[str, float], text_weight: float,
                     k: int) -> list[dict[str, Any]]:
    """Re-rank visual results with a text query as a *soft* filter.

    ``score(p) = (1 − w) · mm(image_score)(p) + w · mm(text_score)(p)`` where ``image_score`` is the cosine of
    the query image (for a video: the best frame) and product ``p``, ``text_score`` the CLIP text-to-image
    cosine of the text and ``p``, ``w = text_weight`` and ``mm`` min–max normalisation over the candidate set.
    Normalising first matters because CLIP image–image cosines (~0.5–1) and text–image cosines (~0.2–0.35)
    live on different scales; it is OpenSearch's hybrid-search ``min_max`` normalisation with a weighted
    arithmetic mean (OpenSearch docs, *Normalization processor*). ``w = 0`` keeps the visual order, ``w = 1``
    orders the candidates by text alone.

    Args:
        candidates: result dicts with ``product_id`` and ``score`` (the image cosine), any order.
        text_scores: text cosine per candidate ``product_id`` (every candidate must have one).
        text_weight: ``w`` in [0, 1].
        k: results to return.

    Returns:
        Up to ``k`` result dicts, best first, each with ``image_score``, ``text_score`` and the fused ``score``.

    Raises:
        ValueError: ``text_weight`` outside [0, 1] or a candidate without a text score.
    """
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
    missing = [c["product_id"] for c in candidates if c["product_id"] not in text_scores]
    if missing:
        raise ValueError(f"no text score for {missing[:5]}")
    image = [float(c["score"]) for c in candidates]
    text = [float(text_scores[c["product_id"]]) for c in candidates]
    fused = []
    for c, i, t, ni, nt in zip(candidates, image, text, min_max(image), min_max(text)):
        score = (1.0 - text_weight) * ni + text_weight * nt
        fused.append(dict(c) | {"image_score": round(i, 6), "text_score": round(t, 6), "score": round(score, 6)})
    fused.sort(key=lambda r: (-r["score"], -r["image_score"], r["product_id"]))
    return fused[:k]


def fuse_shots(per_frame: Sequence[Sequence[dict[str, Any]]], times: Sequence[float], shots, k: int,
               method: str = "max") -> list[dict[str, Any]]:
    """Each shot's own ranking: :func:`fuse` over the kept frames that stand for the shot.

    Args:
        per_frame: k-NN results per kept frame (as for :func:`fuse`). times: kept frame times, seconds.
        shots: :class:`serve_app.frame_dedup.Shot` list, in time order. k: results per shot.

    Returns:
        One dict per shot: ``t_start``, ``t_end`` (seconds), ``frames`` (``[{"t": seconds}]`` of its kept
        frames) and ``results`` (its top ``k``, fused as :func:`fuse` does).
    """
    out = []
    for shot in shots:
        frames = list(shot.frames)
        out.append({"t_start": shot.t_start, "t_end": shot.t_end, "frames": [{"t": times[i]} for i in frames],
                    "results": fuse([per_frame[i] for i in frames], [times[i] for i in frames], k, method)})
    return out
