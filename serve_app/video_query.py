"""A query clip on its way through the graph: one typed payload from decoder to retriever (no Ray import).

:func:`sample_video` is the decoder stage: decode and sample at ``fps`` (:mod:`serve_app.video`), pHash every
sampled frame, drop near-repeats and group the rest into shots (:mod:`serve_app.frame_dedup`), optionally
render the kept frames as small thumbnails, and — given the served model's geometry — prepare the kept frames'
model input here, in the decoding stage, as the ingress prepares photos. The :class:`VideoQuery` it returns
crosses every hop: the Encoder replaces ``pixels`` (or ``frames``) by ``vectors`` (:meth:`VideoQuery.embedded`),
the Retriever reads ``vectors``, ``times`` and ``shots``. Nothing gains keys on the way.
"""

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from serve_app.frame_dedup import DEFAULT_MAX_DISTANCE, Shot, dedup_with_representatives, frame_hashes, group_shots
from serve_app.preprocess import ClipGeometry, clip_batch
from serve_app.thumbnails import frame_data_url
from serve_app.video import (DEFAULT_MAX_DURATION_S, DEFAULT_MAX_FRAMES, DEFAULT_SHORT_SIDE, SampledFrames,
                             decode_and_sample)


@dataclass(frozen=True)
class VideoQuery:
    """Attributes:
        times: seconds of each kept frame, ascending.
        frames: uint8 ``(K, H, W, 3)`` kept RGB frames (shorter side the model's input side, at least 224 px),
            ``None`` once prepared as ``pixels`` or embedded.
        vectors: float32 ``(K, D)`` L2-normalised frame embeddings, ``None`` until embedded.
        shots: the clip's shots, each naming the kept frames that stand for it.
        frames_sampled: frames sampled at the requested fps. duration_s: clip duration, seconds.
        thumbnails: one ~96 px high JPEG data URL per kept frame, when asked for.
        timings_ms: milliseconds per stage (``decode``, ``dedup``, then ``encode``).
    """

    times: list[float]
    frames: np.ndarray | None
    shots: list[Shot]
    frames_sampled: int
    duration_s: float
    vectors: np.ndarray | None = None
    thumbnails: list[str] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    pixels: np.ndarray | None = None  # uint8 (K, 3, S, S) model input of the kept frames, when prepared

    @property
    def frames_kept(self) -> int:
        return len(self.times)

    def embedded(self, vectors: np.ndarray, encode_ms: float) -> "VideoQuery":
        """This query with ``vectors`` (float32 ``(K, D)``) instead of frames, and the encode time added."""
        return dataclasses.replace(self, frames=None, pixels=None, vectors=vectors,
                                   timings_ms=self.timings_ms | {"encode": round(encode_ms, 2)})

    def answered(self, results: list[dict], shots: list[dict], retrieve_ms: float) -> "VideoAnswer":
        """The Retriever's answer for this query (its vectors dropped: the ingress needs only times and counts)."""
        clip = dataclasses.replace(self, vectors=None, timings_ms=self.timings_ms | {"retrieve": round(retrieve_ms, 2)})
        return VideoAnswer(results=results, shots=shots, clip=clip)


@dataclass(frozen=True)
class VideoAnswer:
    """What the Retriever returns for a clip: the fused ``results``, per-shot rankings (``shots``: dicts with
    ``t_start``, ``t_end``, ``frames``, ``results``) and the query it answered (times, counts, timings)."""

    results: list[dict]
    shots: list[dict]
    clip: VideoQuery


def sample_video(data: bytes, fps: float, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_duration_s: float = DEFAULT_MAX_DURATION_S, max_distance: int = DEFAULT_MAX_DISTANCE,
                 thumbnails: bool = False, geometry: ClipGeometry | None = None) -> VideoQuery:
    """Decode, sample, dedup and group one clip in this process (the VideoDecoder runs the decode step in an
    isolated worker instead, then :func:`query_from_frames`).

    Args:
        data: the uploaded clip. fps: frames sampled per second of video.
        max_frames, max_duration_s: limits (see :func:`serve_app.video.decode_and_sample`).
        max_distance: pHash bits within which a frame repeats a kept one, and beyond which neighbours are a cut.
        thumbnails: also render a small JPEG data URL per kept frame.
        geometry: the served model's resize/crop: frames are decoded with their short side at least its size and
            the kept ones prepared as ``pixels`` (``None``: 224 px frames, prepared by the Encoder).

    Raises:
        VideoDecodeError, VideoLimitError, NoFramesError: see :func:`serve_app.video.decode_and_sample`.
    """
    sampled = decode_and_sample(data, fps, max_frames, max_duration_s, short_side=frame_side(geometry))
    return query_from_frames(sampled, max_distance, thumbnails, geometry)


def frame_side(geometry: ClipGeometry | None) -> int:
    """The short side, pixels, to decode frames at for a model: its resize size, at least
    :data:`serve_app.video.DEFAULT_SHORT_SIDE` (224; what frame dedup and thumbnails were tuned on)."""
    return max(DEFAULT_SHORT_SIDE, geometry.size if geometry else 0)


def query_from_frames(sampled: SampledFrames, max_distance: int = DEFAULT_MAX_DISTANCE,
                      thumbnails: bool = False, geometry: ClipGeometry | None = None) -> VideoQuery:
    """pHash the sampled frames, drop near-repeats and group the rest into shots (see :func:`sample_video`); with
    ``geometry``, also prepare the kept frames' model input (:func:`serve_app.preprocess.clip_batch`, the function
    that prepares catalog photos) and drop the raw frames."""
    started = time.perf_counter()
    hashes = frame_hashes(sampled.frames)
    kept, representative = dedup_with_representatives(hashes, max_distance)
    shots = group_shots(hashes, sampled.times, representative, sampled.duration_s, max_distance)
    frames = np.stack([sampled.frames[i] for i in kept])  # [K, H, W, 3]
    timings = dict(sampled.timings_ms) | {"dedup": round(1000 * (time.perf_counter() - started), 2)}
    pixels = None
    if geometry is not None:
        prepared = time.perf_counter()
        pixels = clip_batch([Image.fromarray(f) for f in frames], geometry)  # [K, 3, S, S]
        timings["prepare"] = round(1000 * (time.perf_counter() - prepared), 2)
    return VideoQuery(times=[sampled.times[i] for i in kept], frames=None if pixels is not None else frames,
                      shots=shots, frames_sampled=len(sampled.frames), duration_s=sampled.duration_s,
                      thumbnails=[frame_data_url(f) for f in frames] if thumbnails else None, timings_ms=timings,
                      pixels=pixels)
