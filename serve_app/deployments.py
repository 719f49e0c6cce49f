"""Ray Serve deployments of the model and the index: thin wrappers around the stage functions.

- :class:`Encoder` — CLIP with opportunistic batching (:class:`serve_app.batching.ModelBatcher`: what queued
  during a forward is the next batch); batch size and wait are ``user_config`` so they can be tuned at run
  time (``reconfigure``), following Ray's batching guide. Every forward runs on one dedicated thread, so the
  replica has exactly one intra-op thread pool, sized to its CPU share.
- :class:`Retriever` — the k-NN index; I/O-bound, many concurrent requests per replica. Its methods call
  :mod:`serve_app.results`, :mod:`serve_app.soft_filter`, :mod:`serve_app.fusion`,
  :mod:`serve_app.near_duplicates` and :mod:`serve_app.thumbnails`; blocking index reads run in a worker
  thread so the event loop keeps accepting requests.
"""

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image
from ray import serve

from serve_app.batching import ModelBatcher
from serve_app.cpu_priority import renice_threads
from serve_app.embedding import load_embedder
from serve_app.filters import parse_filters
from serve_app.fusion import fuse, fuse_shots
from serve_app.index import open_index
from serve_app.near_duplicates import find_similar, find_similar_to_product
from serve_app.phash import to_hex
from serve_app.results import fetch_size, hit_results, page
from serve_app.soft_filter import pool_size, rerank_with_text, with_text_query
from serve_app.thumbnails import product_thumbnail
from serve_app.recommend import recommend_vector, without_products
from serve_app.video_query import VideoAnswer, VideoQuery

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.0
VIDEO_FRAME_POOL = 20  # per-frame k-NN results fetched before fusing a clip (at least k)
HEALTH_TIMEOUT_S = 20.0  # under Ray Serve's default health_check_timeout_s of 30 s


def cpu_share_threads() -> int:
    """Intra-op threads for this replica: its Ray CPU share rounded up (at least 1), so replicas packed onto a
    node by their ``num_cpus`` never run more threads than the node has cores."""
    import ray

    share = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, math.ceil(share - 1e-9))


# Code defaults ask for small CPU fractions so the whole graph (and a Ray Data job beside it) schedules on a
# 2-core machine; configs/serve.yaml and the Kubernetes manifests set the real values per environment.
@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32, max_queued_requests=64,
                  user_config={"max_batch_size": DEFAULT_MAX_BATCH_SIZE,
                               "batch_wait_timeout_s": DEFAULT_BATCH_WAIT_S})
class Encoder:
    """CLIP encoder replica.

    Args:
        model: hub id or local folder. dtype: ``"float32"``, ``"bfloat16"`` (torch) or ``"int8"`` (onnx).
        runtime: ``"torch"`` or ``"onnx"`` (see :func:`serve_app.embedding.load_embedder`).
        num_threads: intra-op threads (``None``: :func:`cpu_share_threads`).
        niceness: nice value of the replica's threads (``None``: Ray's; :mod:`serve_app.cpu_priority`).
    """

    def __init__(self, model: str, dtype: str = "float32", runtime: str = "torch", num_threads: int | None = None,
                 niceness: int | None = None):
        renice_threads(niceness)  # before the model's threads exist: they inherit it
        self.threads = num_threads or cpu_share_threads()
        self.embedder = load_embedder(model, dtype=dtype, runtime=runtime, num_threads=self.threads)
        # One thread runs every forward: one intra-op pool, and the pool's threads stay warm between batches.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-forward")
        side = self.embedder.geometry.crop
        self._model_thread.submit(self.embedder.embed_texts, ["warm-up"]).result()
        self._model_thread.submit(self.embedder.embed_pixels, np.zeros((1, 3, side, side), np.uint8)).result()
        self.batcher = ModelBatcher(self._model_thread, DEFAULT_BATCH_WAIT_S)
        self.batcher.add_kind("image", lambda pixels: self.embedder.embed_pixels(np.stack(pixels)),
                              DEFAULT_MAX_BATCH_SIZE)  # [B, 3, H, W] -> [B, D]
        self.batcher.add_kind("text", self.embedder.embed_texts, DEFAULT_MAX_BATCH_SIZE)  # B texts -> [B, D]
        self.batcher.add_kind("clip", lambda clips: [self._embed_frames(c) for c in clips], 1)  # one clip a forward

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config``: ``max_batch_size`` (photos and texts per forward) and ``batch_wait_timeout_s``."""
        size = int(config.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        for kind in ("image", "text"):
            self.batcher.set_max_batch_size(kind, size)
        self.batcher.batch_wait_timeout_s = float(config.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S))

    def info(self) -> dict[str, Any]:
        """What the ingress and ``/healthz`` need: family, model id, dimension, weights kind, runtime, precision,
        threads, the preprocessing signature, and the geometry (``size``, ``crop``, ``resample``, ``resize``,
        ``crop_rounding``) the ingress and the video decoder prepare pixels with."""
        e = self.embedder
        return e.info() | {"device": e.device, "threads": self.threads, "geometry": dataclasses.asdict(e.geometry)}

    def stats(self) -> dict[str, Any]:
        """Forwards per kind (``image``/``text``/``clip``) since the last call: count, mean batch size, mean and
        total forward time on the forward thread (benchmarks read it); resets them."""
        return self.batcher.stats()

    async def check_health(self) -> None:
        """Ray Serve's periodic health check: the forward thread must take a no-op within
        :data:`HEALTH_TIMEOUT_S` (a stuck forward makes the replica unhealthy, and Serve replaces it)."""
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._model_thread, lambda: None),
                               HEALTH_TIMEOUT_S)

    async def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """A prepared photo (uint8 ``(3, H, W)``, :func:`serve_app.query_image.prepare_query_image`) → float32
        ``(1, D)`` L2-normalised embedding (batched with the photos queued meanwhile)."""
        return (await self.batcher.submit("image", pixels))[None, :]

    async def embed_text(self, text: str) -> np.ndarray:
        """Query text → float32 ``(1, D)`` L2-normalised embedding (batched with the texts queued meanwhile).

        Raises:
            ValueError: empty text.
        """
        if not text.strip():
            raise ValueError("query text is empty")
        return (await self.batcher.submit("text", text))[None, :]

    async def embed_clip(self, clip: VideoQuery) -> VideoQuery:
        """All kept frames of a clip in one forward: the same query with ``vectors`` (K, D) instead of its
        ``pixels`` (prepared by the VideoDecoder) or, for a query decoded without the model's geometry, ``frames``."""
        started = time.perf_counter()
        vectors = await self.batcher.submit("clip", clip.pixels if clip.pixels is not None else clip.frames)  # [K, D]
        return clip.embedded(vectors, 1000 * (time.perf_counter() - started))

    def _embed_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``(K, 3, S, S)`` prepared pixels, or ``(K, H, W, 3)`` raw frames (prepared here) → ``(K, D)``."""
        if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[2:] == (self.embedder.geometry.crop,) * 2:
            return self.embedder.embed_pixels(frames)
        return self.embedder.embed_pixels(self.embedder.preprocess([Image.fromarray(f) for f in frames]))


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64, max_queued_requests=128)
class Retriever:
    """k-NN retrieval replica over the index at ``index`` (see :func:`serve_app.index.open_index`)."""

    def __init__(self, index: str, index_options: dict[str, Any] | None = None, niceness: int | None = None):
        renice_threads(niceness)
        self.index = open_index(index, **(index_options or {}))

    def info(self) -> dict[str, Any]:
        info = self.index.info
        return {"index": self.index.uri, "products": self.index.count(), "model_id": info.model_id, "dim": info.dim,
                "runtime": info.runtime, "dtype": info.dtype, "family": info.family,
                "preprocessing": info.preprocessing}

    def check_health(self) -> None:
        """Ray Serve's periodic health check: the index must still answer a count."""
        self.index.count()

    async def facets(self) -> dict[str, Any]:
        """Category/brand value counts and price range of the catalog (see :meth:`VectorIndex.facets`)."""
        return await asyncio.to_thread(self.index.facets)

    async def thumbnail(self, product_id: str, size: int) -> bytes:
        """JPEG thumbnail of a product's stored catalog image (:func:`serve_app.thumbnails.product_thumbnail`)."""
        return await asyncio.to_thread(product_thumbnail, self.index, product_id, size)

    async def _knn(self, vectors: np.ndarray, k: int, filters: dict | None) -> list[list[dict[str, Any]]]:
        hits = await self.index.asearch(vectors, k, parse_filters(filters))
        return [hit_results(row) for row in hits]

    async def search(self, vectors: np.ndarray, k: int, filters: dict | None = None, offset: int = 0,
                     min_score: float | None = None) -> list[dict[str, Any]]:
        """One query's page of k-NN results.

        Args:
            vectors: float32 ``(1, D)``. k: results. filters: contract filter object. offset: ranks skipped.
            min_score: drop results whose cosine is below this.

        Returns:
            Result dicts (``product_id``, ``score``, metadata), best first.

        Raises:
            FilterError: unknown field or wrong value type in ``filters``.
        """
        return page((await self._knn(vectors, fetch_size(k, offset), filters))[0], k, offset, min_score)

    async def search_soft(self, vectors: np.ndarray, text_vector: np.ndarray, k: int, filters: dict | None,
                          text_weight: float, offset: int = 0, min_score: float | None = None) -> list[dict[str, Any]]:
        """Image k-NN re-ranked by a text query as a soft filter (:mod:`serve_app.soft_filter`)."""
        n = fetch_size(k, offset)
        _, ranked = await self._soft_ranked(vectors, text_vector, n, filters, text_weight)
        return page(ranked, k, offset, min_score)

    async def _soft_ranked(self, vectors: np.ndarray, text_vector: np.ndarray, n: int, filters: dict | None,
                           text_weight: float, combine: Callable[[list[list[dict]]], list[dict]] = lambda hits: hits[0],
                           text_only: dict[str, Any] | None = None) -> tuple[list[list[dict]], list[dict]]:
        """The soft text filter, for every query kind: one multi-query k-NN round trip for the visual rows
        (float32 ``(Q, D)``) and the text vector (float32 ``(1, D)``), ``pool_size(n)`` deep; ``combine`` makes the
        visual candidates of the ``Q`` result lists (the single list for a photo; the fused frames for a clip);
        then :func:`~serve_app.soft_filter.rerank_with_text` keeps the best ``n``. Returns (the ``Q`` visual
        result lists, the re-ranked results)."""
        *image_hits, text_hits = await self._knn(with_text_query(vectors, text_vector), pool_size(n), filters)
        ranked = await asyncio.to_thread(rerank_with_text, self.index, combine(image_hits), vectors, text_hits,
                                         text_vector, text_weight, n, text_only)
        return image_hits, ranked

    async def search_similar(self, positive: list[str], negative: list[str], k: int, filters: dict | None = None,
                             offset: int = 0, min_score: float | None = None, text_vector: np.ndarray | None = None,
                             text_weight: float = 0.5) -> list[dict[str, Any]]:
        """More like ``positive`` (and unlike ``negative``): k-NN by their stored embeddings combined by
        :func:`serve_app.recommend.recommend_vector`, the input products left out; with ``text_vector``
        (float32 ``(1, D)``) re-ranked by it as a soft filter.

        Raises:
            UnknownProducts: ids not in the index (all named). RecommendError: the examples cancel out.
            FilterError: see :meth:`search`.
        """
        stored = await asyncio.to_thread(self.index.vectors, [*positive, *negative])
        vector = recommend_vector(stored, positive, negative)
        inputs = {*positive, *negative}
        n = fetch_size(k, offset) + len(inputs)  # the inputs may rank anywhere among the first n
        if text_vector is None:
            ranked = (await self._knn(vector, n, filters))[0]
        else:
            _, ranked = await self._soft_ranked(vector, text_vector, n, filters, text_weight)
        return page(without_products(ranked, inputs), k, offset, min_score)

    async def find_similar(self, query_hash: int, top: int, max_distance: int, mode: str = "phash",
                           vector: np.ndarray | None = None, thresholds: dict[str, float] | None = None
                           ) -> dict[str, Any]:
        """Near-duplicates of a query pHash (:func:`serve_app.near_duplicates.find_similar`)."""
        results = await asyncio.to_thread(find_similar, self.index, query_hash, top, max_distance, mode,
                                          None if vector is None else np.asarray(vector).reshape(-1),
                                          **(thresholds or {}))
        return {"results": results, "query_phash": to_hex(query_hash), "mode": mode, "max_distance": max_distance}

    async def find_similar_product(self, product_id: str, top: int, max_distance: int, mode: str = "phash",
                                   thresholds: dict[str, float] | None = None) -> dict[str, Any]:
        """Near-duplicates of a catalog product by its stored pHash, itself left out
        (:func:`serve_app.near_duplicates.find_similar_to_product`).

        Raises:
            UnknownProducts: not in the index. NoStoredHash: it has no stored pHash.
        """
        query_hash, results = await asyncio.to_thread(find_similar_to_product, self.index, product_id, top,
                                                      max_distance, mode, **(thresholds or {}))
        return {"results": results, "query_phash": to_hex(query_hash), "mode": mode, "max_distance": max_distance,
                "product_id": product_id}

    async def search_clip(self, clip: VideoQuery, k: int, filters: dict | None = None, fusion: str = "max",
                          text_vector: np.ndarray | None = None, text_weight: float = 0.5, offset: int = 0,
                          min_score: float | None = None) -> VideoAnswer:
        """One multi-query k-NN round trip for all kept frames of a clip, then fusion: the fused ranking (each
        result with the frames that matched it) and each shot's own top ``k``.

        Returns:
            A :class:`~serve_app.video_query.VideoAnswer` (``retrieve`` added to the clip's stage timings).
        """
        started = time.perf_counter()
        n = fetch_size(k, offset)
        if text_vector is None:
            per_frame = await self._knn(clip.vectors, max(n, VIDEO_FRAME_POOL), filters)
            results = fuse(per_frame, clip.times, n, fusion)
        else:  # soft text filter: fuse a larger pool by frames, then re-rank with the text (max-frame cosine)
            def by_frames(hits: list[list[dict]]) -> list[dict]:
                return [r | {"score": r["best_score"]} for r in fuse(hits, clip.times, pool_size(n), fusion)]

            per_frame, results = await self._soft_ranked(clip.vectors, text_vector, n, filters, text_weight,
                                                         by_frames, {"frames": []})
        shots = fuse_shots(per_frame, clip.times, clip.shots, k, fusion)
        return clip.answered(page(results, k, offset, min_score), shots, 1000 * (time.perf_counter() - started))
