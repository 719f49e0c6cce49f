"""Ray Serve deployments: thin wrappers around the stage functions (model and index code lives elsewhere).

- :class:`Encoder` — CLIP, batched with ``@serve.batch``; batch size and wait are ``user_config`` so they can
  be tuned at run time (``reconfigure``), following Ray's batching guide.
- :class:`Retriever` — the k-NN index; I/O-bound, many concurrent requests per replica.

Blocking work (image decoding, the torch forward, LanceDB queries) runs in a worker thread so the replica's
event loop keeps accepting requests and can fill the next batch.
"""

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from serve_app.embedding import load_clip
from serve_app.filters import parse_filters
from serve_app.fusion import fuse, soft_text_filter
from serve_app.near_duplicates import find_similar
from serve_app.phash import phash64, to_hex
from serve_app.images import ImageDecodeError, decode_image
from serve_app.index import open_index
from serve_app.storage import ObjectNotFound, StorageError, read_bytes
from serve_app.thumbnails import ProductNotFound, ThumbnailUnavailable, render_thumbnail

log = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.0


# Code defaults ask for small CPU fractions so the whole graph (and a Ray Data job beside it) schedules on a
# 2-core machine; configs/serve.yaml and the Kubernetes manifests set the real values per environment.
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                  user_config={"max_batch_size": DEFAULT_MAX_BATCH_SIZE,
                               "batch_wait_timeout_s": DEFAULT_BATCH_WAIT_S})
class Encoder:
    """CLIP encoder replica.

    Args:
        model: hub id or local folder. dtype: ``"float32"`` or ``"bfloat16"``.
        num_threads: torch intra-op threads (``None``: torch's default, all cores).
        max_image_pixels: decompression-bomb limit for uploads.
    """

    def __init__(self, model: str, dtype: str = "float32", num_threads: int | None = None,
                 max_image_pixels: int = 90_000_000):
        self.embedder = load_clip(model, dtype=dtype, num_threads=num_threads)
        self.max_image_pixels = max_image_pixels
        self.embedder.embed_texts(["warm-up"])  # first forward allocates; keep it off the first request

    def reconfigure(self, config: dict[str, Any]) -> None:
        size = int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        wait = float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S))
        for method in (self._embed_pixels_batch, self._embed_texts_batch):
            method.set_max_batch_size(size)
            method.set_batch_wait_timeout_s(wait)

    def info(self) -> dict[str, Any]:
        return {"model_id": self.embedder.model_id, "dim": self.embedder.dim, "weights": self.embedder.weights,
                "dtype": self.embedder.dtype}

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _embed_pixels_batch(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        vectors = await asyncio.to_thread(self.embedder.embed_pixels, np.stack(pixels))  # [B, D]
        return list(vectors)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _embed_texts_batch(self, texts: list[str]) -> list[np.ndarray]:
        vectors = await asyncio.to_thread(self.embedder.embed_texts, texts)  # [B, D]
        return list(vectors)

    def _decode_and_preprocess(self, data: bytes) -> np.ndarray:
        image = decode_image(data, max_pixels=self.max_image_pixels)
        return self.embedder.preprocess([image])[0]  # [3, H, W]

    async def embed_image(self, data: bytes) -> np.ndarray:
        """Encoded image bytes → float32 ``(1, D)`` L2-normalised embedding.

        Raises:
            ImageDecodeError: not a decodable image (this request only; the batch is unaffected).
        """
        pixels = await asyncio.to_thread(self._decode_and_preprocess, data)
        return (await self._embed_pixels_batch(pixels))[None, :]

    def _embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        from PIL import Image

        return self.embedder.embed_pixels(self.embedder.preprocess([Image.fromarray(f) for f in frames]))

    async def embed_clip(self, clip: dict[str, Any]) -> dict[str, Any]:
        """Embed all kept frames of a clip in one forward; replaces ``frames`` by ``vectors`` (K, D)."""
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self._embed_frames, clip["frames"])  # [K, D]
        out = {k: v for k, v in clip.items() if k != "frames"} | {"vectors": vectors}
        out["took_ms"] = dict(clip["took_ms"]) | {"encode": round(1000 * (time.perf_counter() - started), 2)}
        return out

    async def embed_text(self, text: str) -> np.ndarray:
        """Query text → float32 ``(1, D)`` L2-normalised embedding.

        Raises:
            ValueError: empty text.
        """
        if not text.strip():
            raise ValueError("query text is empty")
        return (await self._embed_texts_batch(text))[None, :]


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class Retriever:
    """k-NN retrieval replica over the index at ``index`` (see :func:`serve_app.index.open_index`)."""

    def __init__(self, index: str, index_options: dict[str, Any] | None = None):
        self.index = open_index(index, **(index_options or {}))

    def info(self) -> dict[str, Any]:
        return {"index": self.index.uri, "products": self.index.count(), "model_id": self.index.info.model_id,
                "dim": self.index.info.dim}

    async def facets(self) -> dict[str, Any]:
        """Category/brand value counts and price range of the catalog (see :meth:`VectorIndex.facets`)."""
        return await asyncio.to_thread(self.index.facets)

    def _thumbnail(self, product_id: str, size: int) -> bytes:
        rows = self.index.get([product_id])
        if not rows or not rows[0].get("image_url"):
            raise ProductNotFound(f"no product with id {product_id!r}")
        uri = rows[0]["image_url"]
        try:
            return render_thumbnail(read_bytes(uri), size)
        except ObjectNotFound as e:
            raise ProductNotFound(f"the image of product {product_id!r} is gone: {e}") from None
        except (StorageError, ImageDecodeError) as e:
            raise ThumbnailUnavailable(f"the image of product {product_id!r} cannot be read: {e}") from None

    async def thumbnail(self, product_id: str, size: int) -> bytes:
        """JPEG thumbnail of a product's stored catalog image (longer side ``size`` px, clamped 64–512).

        Only the ``image_url`` stored for ``product_id`` is read, so a request cannot name another path.

        Raises:
            ProductNotFound: unknown product id, or its image is gone.
            ThumbnailUnavailable: the stored image cannot be read or no longer decodes.
        """
        return await asyncio.to_thread(self._thumbnail, product_id, size)

    async def search(self, vectors: np.ndarray, k: int, filters: dict | None = None) -> list[list[dict[str, Any]]]:
        """k-NN for each query row.

        Args:
            vectors: float32 ``(Q, D)``. k: results per query. filters: contract filter object.

        Returns:
            ``Q`` lists of result dicts (``product_id``, ``score``, metadata), best first.

        Raises:
            FilterError: unknown field or wrong value type in ``filters``.
        """
        clauses = parse_filters(filters)
        hits = await self.index.asearch(vectors, k, clauses)
        return [[h.metadata | {"product_id": h.product_id, "score": round(h.score, 6)} for h in row] for row in hits]

    async def _soft_filter(self, candidates: list[dict[str, Any]], query_vectors: np.ndarray, text_hits: list[dict],
                           text_vector: np.ndarray, text_weight: float, k: int,
                           text_only: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Candidates = visual results ∪ the text query's own k-NN results (same hard filters); both cosines
        computed exactly for each (stored vectors fetched for the ones a side did not retrieve), then
        :func:`serve_app.fusion.soft_text_filter`. ``text_only``: fields added to candidates only the text found."""
        text_scores = {h["product_id"]: h["score"] for h in text_hits}
        known = {c["product_id"] for c in candidates}
        extra = [h for h in text_hits if h["product_id"] not in known]
        need = [c["product_id"] for c in candidates if c["product_id"] not in text_scores]
        need += [h["product_id"] for h in extra]
        stored = await asyncio.to_thread(self.index.vectors, need) if need else {}
        text_vector = np.asarray(text_vector, np.float32).reshape(-1)
        for product_id, vector in stored.items():
            text_scores.setdefault(product_id, float(vector @ text_vector))
        for h in extra:
            if h["product_id"] in stored:
                image = float(np.max(np.asarray(query_vectors, np.float32) @ stored[h["product_id"]]))
                candidates.append(h | (text_only or {}) | {"score": image})
        candidates = [c for c in candidates if c["product_id"] in text_scores]
        return soft_text_filter(candidates, text_scores, text_weight, k)

    async def search_soft(self, vectors: np.ndarray, text_vector: np.ndarray, k: int, filters: dict | None,
                          text_weight: float) -> list[dict[str, Any]]:
        """Image k-NN re-ranked by a text query as a soft filter (score breakdown per result).

        Args:
            vectors: float32 ``(1, D)`` image query. text_vector: float32 ``(1, D)`` CLIP text embedding.
            k: results. filters: hard filters (applied to both searches). text_weight: ``w`` in [0, 1].

        Returns:
            Up to ``k`` results with ``image_score``, ``text_score`` and the fused ``score``, best first.
        """
        image_hits, text_hits = await self.search(*_with_text_query(vectors, text_vector, k), filters)
        return await self._soft_filter(image_hits, vectors, text_hits, text_vector, text_weight, k)

    def _find_similar(self, data: bytes, top: int, max_distance: int, mode: str, vector: np.ndarray | None,
                      thresholds: dict[str, float]) -> dict[str, Any]:
        image = decode_image(data)
        query_hash = phash64(image)
        results = find_similar(self.index, query_hash, top, max_distance, mode,
                               None if vector is None else np.asarray(vector).reshape(-1), **thresholds)
        return {"results": results, "query_phash": to_hex(query_hash), "mode": mode, "max_distance": max_distance}

    async def find_similar(self, data: bytes, top: int, max_distance: int, mode: str = "phash",
                           vector: np.ndarray | None = None, thresholds: dict[str, float] | None = None
                           ) -> dict[str, Any]:
        """Near-duplicates of an uploaded image (decode and pHash here: a few ms, saves a hop).

        ``thresholds``: ``clip_min_score`` and ``confirm_min_score`` for robust mode.

        Raises:
            ImageDecodeError: not a decodable image.
        """
        return await asyncio.to_thread(self._find_similar, data, top, max_distance, mode, vector, thresholds or {})

    async def search_clip(self, clip: dict[str, Any], k: int, filters: dict | None = None,
                          fusion: str = "max", text_vector: np.ndarray | None = None,
                          text_weight: float = 0.5) -> dict[str, Any]:
        """One multi-query k-NN round trip for all kept frames of a clip, then fusion into one ranking.

        Returns:
            The video search response body: ``results`` (each with the frames that matched it),
            ``frames_sampled``, ``frames_kept``, ``duration_s``, ``kept_frames`` (times, and ``thumbnail``
            data URLs when the clip carries ``thumbnails``) and ``took_ms`` per stage.
        """
        started = time.perf_counter()
        if text_vector is None:
            per_frame = await self.search(clip["vectors"], min(1000, max(k, 20)), filters)
            results = fuse(per_frame, clip["times"], k, fusion)
        else:  # soft text filter: fuse a larger pool by frames, then re-rank with the text (max-frame cosine)
            queries, pool = _with_text_query(clip["vectors"], text_vector, k)
            *per_frame, text_hits = await self.search(queries, pool, filters)
            fused = [r | {"score": r["best_score"]} for r in fuse(per_frame, clip["times"], pool, fusion)]
            results = await self._soft_filter(fused, clip["vectors"], text_hits, text_vector, text_weight, k,
                                              text_only={"frames": []})
        took = dict(clip["took_ms"]) | {"retrieve": round(1000 * (time.perf_counter() - started), 2)}
        return {"results": results, "k": k, "fusion": fusion, "frames_sampled": clip["frames_sampled"],
                "frames_kept": clip["frames_kept"], "duration_s": clip["duration_s"],
                "kept_frames": _kept_frames(clip), "took_ms": took}


def _with_text_query(vectors: np.ndarray, text_vector: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """The soft text filter's one k-NN round trip: the visual query rows ``(Q, D)`` with the text embedding as
    row ``Q``, and the candidates to fetch per row (``4k``, at least 50, at most 1000) before re-ranking."""
    queries = np.vstack([np.asarray(vectors, np.float32), np.asarray(text_vector, np.float32).reshape(1, -1)])
    return queries, min(1000, max(4 * k, 50))


def _kept_frames(clip: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"t": seconds}]`` per kept frame, plus ``thumbnail`` (a JPEG data URL) when the deduper made them."""
    thumbnails = clip.get("thumbnails") or [None] * len(clip["times"])
    return [{"t": t} | ({"thumbnail": thumb} if thumb else {}) for t, thumb in zip(clip["times"], thumbnails)]
