"""Ray Serve deployments of the video path: ``VideoDecoder`` → ``FrameDeduper`` (then Encoder, Retriever).

Each stage takes the clip dict produced by the one before and adds to it, so the ingress only chains
``DeploymentResponse``\\s and awaits the last. Stage logic lives in :mod:`serve_app.video` and
:mod:`serve_app.frame_dedup`; decoding and hashing run in a worker thread, off the replica's event loop.
"""

import asyncio
import time
from typing import Any

from ray import serve

from serve_app.frame_dedup import DEFAULT_MAX_DISTANCE, dedup_frames, frame_hashes
from serve_app.thumbnails import frame_data_url
from serve_app.video import DEFAULT_MAX_DURATION_S, DEFAULT_MAX_FRAMES, decode_and_sample


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=8)
class VideoDecoder:
    """Decode an uploaded clip from bytes and sample frames (CPU-bound; scale it with CPU nodes)."""

    def __init__(self, max_duration_s: float = DEFAULT_MAX_DURATION_S, max_frames: int = DEFAULT_MAX_FRAMES):
        self.max_duration_s, self.max_frames = max_duration_s, max_frames

    async def decode(self, data: bytes, fps: float, max_frames: int | None = None) -> dict[str, Any]:
        """Returns ``{"frames", "times", "frames_sampled", "duration_s", "took_ms": {"decode": ms}}``.

        Raises:
            VideoDecodeError, VideoLimitError, NoFramesError: see :func:`serve_app.video.decode_and_sample`.
        """
        limit = min(max_frames or self.max_frames, self.max_frames)
        sampled = await asyncio.to_thread(decode_and_sample, data, fps, limit, self.max_duration_s)
        return {"frames": sampled.frames, "times": sampled.times, "frames_sampled": len(sampled.frames),
                "duration_s": sampled.duration_s, "took_ms": dict(sampled.timings_ms)}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=16,
                  user_config={"max_distance": DEFAULT_MAX_DISTANCE})
class FrameDeduper:
    """Drop sampled frames whose pHash is within ``max_distance`` bits of an already kept frame."""

    def __init__(self):
        self.max_distance = DEFAULT_MAX_DISTANCE

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_distance = int(config.get("max_distance", DEFAULT_MAX_DISTANCE))

    def _dedup(self, clip: dict[str, Any], thumbnails: bool) -> dict[str, Any]:
        started = time.perf_counter()
        hashes = frame_hashes(clip["frames"])
        keep = dedup_frames(hashes, self.max_distance)
        out = dict(clip) | {"frames": [clip["frames"][i] for i in keep], "times": [clip["times"][i] for i in keep],
                            "frames_kept": len(keep)}
        if thumbnails:
            out["thumbnails"] = [frame_data_url(frame) for frame in out["frames"]]
        out["took_ms"] = dict(clip["took_ms"]) | {"dedup": round(1000 * (time.perf_counter() - started), 2)}
        return out

    async def dedup(self, clip: dict[str, Any], thumbnails: bool = False) -> dict[str, Any]:
        """Adds ``frames_kept`` and keeps only the distinct frames (and their times); with ``thumbnails``,
        also ``thumbnails``: one ~96 px high JPEG data URL per kept frame, for the page's frame strip."""
        return await asyncio.to_thread(self._dedup, clip, thumbnails)
