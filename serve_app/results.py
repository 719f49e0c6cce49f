"""The shape of every search answer, in one place (no Ray import).

A result is the product's stored metadata (``title``, ``category``, ``brand``, ``price``, ``image_url`` and
the catalog's extra attributes) plus ``product_id`` and ``score``, best first. Deployments build result lists
with :func:`hit_results` and cut them with :func:`page`; the ingress wraps them with :func:`search_body`
(and :func:`video_body` for clips), so every endpoint answers the same fields the same way.
"""

from collections.abc import Sequence
from typing import Any

from serve_app.index.base import Hit

SCORE_DIGITS = 6


def hit_results(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """k-NN hits as result dicts: metadata, ``product_id`` and ``score`` (cosine, rounded to 6 digits)."""
    return [h.metadata | {"product_id": h.product_id, "score": round(h.score, SCORE_DIGITS)} for h in hits]


def fetch_size(k: int, offset: int = 0) -> int:
    """How many ranked candidates a page needs: ``offset + k``."""
    return offset + k


def page(results: Sequence[dict[str, Any]], k: int, offset: int = 0,
         min_score: float | None = None) -> list[dict[str, Any]]:
    """Ranks ``offset + 1 … offset + k`` of a best-first list, without those scoring below ``min_score``.

    The cut-off applies to ``score`` (the field the answer is ranked by), so a page may hold fewer than ``k``
    results; the next page then holds none.
    """
    kept = list(results[offset:offset + k])
    if min_score is not None:
        kept = [r for r in kept if r["score"] >= min_score]
    return kept


def search_body(results: list[dict[str, Any]], k: int, took_ms: float, offset: int = 0,
                min_score: float | None = None, **extra: Any) -> dict[str, Any]:
    """``{"results", "k", "offset", ["min_score"], **extra, "took_ms"}`` — the answer of every search endpoint."""
    body: dict[str, Any] = {"results": results, "k": k, "offset": offset}
    if min_score is not None:
        body["min_score"] = min_score
    return body | extra | {"took_ms": round(took_ms, 2)}


def video_body(answer, k: int, total_ms: float, offset: int = 0, min_score: float | None = None,
               **extra: Any) -> dict[str, Any]:
    """The ``/search/video`` answer from a :class:`~serve_app.video_query.VideoAnswer`: the fused results (each
    with its matched ``frames``), ``shots``, ``frames_sampled``, ``frames_kept``, ``duration_s``,
    ``kept_frames`` and ``took_ms`` per stage (``decode``, ``dedup``, ``encode``, ``retrieve``, ``total``)."""
    clip = answer.clip
    body = search_body(answer.results, k, 0.0, offset, min_score, frames_sampled=clip.frames_sampled,
                       frames_kept=clip.frames_kept, duration_s=clip.duration_s,
                       kept_frames=kept_frames(clip.times, clip.thumbnails), shots=answer.shots, **extra)
    return body | {"took_ms": clip.timings_ms | {"total": round(total_ms, 2)}}


def kept_frames(times: Sequence[float], thumbnails: Sequence[str] | None) -> list[dict[str, Any]]:
    """``[{"t": seconds}]`` per kept frame, plus ``thumbnail`` (a JPEG data URL) when the decoder made them."""
    thumbnails = thumbnails or [None] * len(times)
    return [{"t": t} | ({"thumbnail": thumb} if thumb else {}) for t, thumb in zip(times, thumbnails)]
