"""Ray Serve deployment of the video path's CPU stage: ``VideoDecoder`` (then Encoder, Retriever).

Decoding, pHash frame dedup and shot grouping share one resource profile (CPU on the decode nodes), so they
are one deployment and one hop. FFmpeg (through decord) decodes in an isolated worker process
(:class:`serve_app.isolated.WorkerPool`) with a time and an address-space limit, so a crafted clip costs at
most ``decode_timeout_s`` of one core and ``decode_memory_bytes`` of memory, and never the replica; pHash, dedup
and shots (:func:`serve_app.video_query.query_from_frames`) then run in a thread off the replica's event loop.
The :class:`~serve_app.video_query.VideoQuery` it returns goes from the ingress straight to the Encoder.
"""

import asyncio
from typing import Any

from ray import serve

from serve_app.frame_dedup import DEFAULT_MAX_DISTANCE
from serve_app.isolated import IsolatedCrash, IsolatedTimeout, WorkerPool
from serve_app.video import (DEFAULT_DECODE_MEMORY_BYTES, DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_DURATION_S,
                             DEFAULT_MAX_FRAMES, VideoLimitError, decode_and_sample)
from serve_app.preprocess import ClipGeometry
from serve_app.video_query import VideoQuery, frame_side, query_from_frames

GiB = 1024 ** 3


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=8, max_queued_requests=16,
                  user_config={"max_distance": DEFAULT_MAX_DISTANCE})
class VideoDecoder:
    """Decode an uploaded clip from bytes, sample frames, drop repeats, find the shots (CPU-bound; scale it with
    CPU nodes). ``user_config.max_distance``: pHash bits within which a frame repeats a kept one.

    Args:
        max_duration_s, max_frames: clip limits (see :func:`serve_app.video.decode_and_sample`).
        decode_timeout_s: seconds one clip's decode may run before its worker is killed (422).
        decode_memory_bytes: address-space limit of each decode worker; a clip needing more is a 422.
        decode_workers: decode worker processes (clips decoded at once by this replica).
    """

    def __init__(self, max_duration_s: float = DEFAULT_MAX_DURATION_S, max_frames: int = DEFAULT_MAX_FRAMES,
                 decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
                 decode_memory_bytes: int = DEFAULT_DECODE_MEMORY_BYTES, decode_workers: int = 2):
        self.max_duration_s, self.max_frames = max_duration_s, max_frames
        self.decode_timeout_s, self.decode_memory_bytes = decode_timeout_s, decode_memory_bytes
        self.max_distance = DEFAULT_MAX_DISTANCE
        self.pool = WorkerPool(decode_workers, decode_memory_bytes, preload=["numpy", "decord", "serve_app.video"])

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_distance = int(config.get("max_distance", DEFAULT_MAX_DISTANCE))

    async def check_health(self) -> None:
        """Ray Serve's health probe: the decode workers can be started (raises if they cannot)."""
        await self.pool.start()

    async def decode(self, data: bytes, fps: float, max_frames: int | None = None, thumbnails: bool = False,
                     geometry: dict | None = None) -> VideoQuery:
        """The clip's kept frames, their times and its shots (``thumbnails``: a ~96 px JPEG data URL each); with the
        served model's ``geometry`` (the fields of :class:`serve_app.preprocess.ClipGeometry`, from the Encoder's
        ``info``), frames are decoded at its input size and the kept ones prepared here as the model's ``pixels``.

        Raises:
            VideoDecodeError, VideoLimitError, NoFramesError: see :func:`serve_app.video.decode_and_sample`;
                VideoLimitError also when decoding overruns ``decode_timeout_s`` or ``decode_memory_bytes``.
        """
        limit = min(max_frames or self.max_frames, self.max_frames)
        try:
            shape = None if geometry is None else ClipGeometry(**geometry)
            sampled = await self.pool.run(decode_and_sample, (data, fps, limit, self.max_duration_s,
                                                              frame_side(shape)), self.decode_timeout_s)
        except IsolatedTimeout:
            raise VideoLimitError(f"decoding the clip took longer than {self.decode_timeout_s:g} s") from None
        except (IsolatedCrash, MemoryError):
            raise VideoLimitError(f"decoding the clip needed more than {self.decode_memory_bytes / GiB:g} GiB of "
                                  "memory or crashed the decoder") from None
        return await asyncio.to_thread(query_from_frames, sampled, self.max_distance, thumbnails, shape)

    def __del__(self):
        self.pool.close()
