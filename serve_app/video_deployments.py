"""Ray Serve deployment of the video path's CPU stage: ``VideoDecoder`` (then Encoder, Retriever).

Decoding, pHash frame dedup and shot grouping share one resource profile (CPU on the decode nodes), so they
are one deployment and one hop: :func:`serve_app.video_query.sample_video` does the work, in a worker thread
off the replica's event loop, and returns the :class:`~serve_app.video_query.VideoQuery` that the ingress
hands straight to the Encoder.
"""

import asyncio
from typing import Any

from ray import serve

from serve_app.frame_dedup import DEFAULT_MAX_DISTANCE
from serve_app.video import DEFAULT_MAX_DURATION_S, DEFAULT_MAX_FRAMES
from serve_app.video_query import VideoQuery, sample_video


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=8,
                  user_config={"max_distance": DEFAULT_MAX_DISTANCE})
class VideoDecoder:
    """Decode an uploaded clip from bytes, sample frames, drop repeats, find the shots (CPU-bound; scale it with
    CPU nodes). ``user_config.max_distance``: pHash bits within which a frame repeats a kept one."""

    def __init__(self, max_duration_s: float = DEFAULT_MAX_DURATION_S, max_frames: int = DEFAULT_MAX_FRAMES):
        self.max_duration_s, self.max_frames = max_duration_s, max_frames
        self.max_distance = DEFAULT_MAX_DISTANCE

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_distance = int(config.get("max_distance", DEFAULT_MAX_DISTANCE))

    async def decode(self, data: bytes, fps: float, max_frames: int | None = None,
                     thumbnails: bool = False) -> VideoQuery:
        """The clip's kept frames, their times and its shots (``thumbnails``: a ~96 px JPEG data URL each).

        Raises:
            VideoDecodeError, VideoLimitError, NoFramesError: see :func:`serve_app.video.decode_and_sample`.
        """
        limit = min(max_frames or self.max_frames, self.max_frames)
        return await asyncio.to_thread(sample_video, data, fps, limit, self.max_duration_s, self.max_distance,
                                       thumbnails)
