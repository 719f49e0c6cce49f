"""Video decoding and frame sampling with decord, straight from the uploaded bytes (no temp file, no Ray).

Frames are sampled at ``fps`` frames per second of video time (frame index ``round(t · native_fps)`` for
``t = 0, 1/fps, 2/fps, …``) and resized inside the decoder so the shorter side is ``short_side`` pixels
(CLIP's input is 224×224 after a centre crop, so nothing larger is needed).
"""

import io
import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_SHORT_SIDE = 224
DEFAULT_MAX_FRAMES = 64  # sampled frames per clip (one Encoder batch)
DEFAULT_MAX_DURATION_S = 120.0  # seconds of video per clip
# Largest decoded frame: DCI 4K (4096x2160, so UHD 3840x2160 passes); an 8K frame costs ~1 s to decode here.
DEFAULT_MAX_FRAME_PIXELS = 4096 * 2160
# Bounds on one clip's decode in its isolated worker (serve_app.isolated). Measured here: the test clips decode in
# 0.01-0.6 s; a worker needs 0.8-1.5 GiB of address space (mostly FFmpeg's thread stacks and mappings, not data):
# 768 MiB fails on an 800x450 AVI, 1.5 GiB passes every clip of the hostile corpus (4K included). 3 GiB leaves room.
DEFAULT_DECODE_TIMEOUT_S = 20.0
DEFAULT_DECODE_MEMORY_BYTES = 3 * 1024 ** 3


class VideoDecodeError(ValueError):
    """The bytes are not a video decord/FFmpeg can open."""


class VideoLimitError(ValueError):
    """The video is longer, or would yield more frames, than the configured limit (the message says which)."""


class NoFramesError(ValueError):
    """The container opened but no frame could be decoded."""


@dataclass
class SampledFrames:
    """Frames sampled from one clip.

    Attributes:
        frames: uint8 arrays of shape ``(H, W, 3)`` (RGB).
        times: seconds from the start of the clip, one per frame.
        duration_s: clip duration in seconds. native_fps: the container's average frame rate.
        width, height: decoded frame size in pixels.
    """

    frames: list[np.ndarray]
    times: list[float]
    duration_s: float
    native_fps: float
    width: int = 0
    height: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    if min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    # decord wants even sizes for some codecs' scalers
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def sample_times(duration_s: float, fps: float) -> list[float]:
    """``[0, 1/fps, 2/fps, …]`` strictly before ``duration_s`` (at least ``[0.0]``)."""
    n = max(1, math.ceil(duration_s * fps - 1e-9))
    return [i / fps for i in range(n)]


def decode_and_sample(data: bytes, fps: float = 1.0, max_frames: int = DEFAULT_MAX_FRAMES,
                      max_duration_s: float = DEFAULT_MAX_DURATION_S, short_side: int = DEFAULT_SHORT_SIDE,
                      max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS) -> SampledFrames:
    """Open a video from bytes, check the limits, and decode the sampled frames in one batch.

    Args:
        data: the uploaded file (MP4, AVI, MOV, WebM, … whatever the bundled FFmpeg reads).
        fps: frames to sample per second of video (> 0).
        max_frames: refuse clips that would yield more sampled frames than this.
        max_duration_s: refuse clips longer than this, in seconds.
        short_side: resize in the decoder so the shorter side is at most this many pixels.
        max_frame_pixels: refuse frames larger than this (width × height of the first decoded frame).

    Raises:
        ValueError: ``fps`` not positive.
        VideoDecodeError: not a decodable video.
        VideoLimitError: longer than ``max_duration_s``, more than ``max_frames`` samples, or frames larger
            than ``max_frame_pixels``.
        NoFramesError: no frame could be decoded, or the container reports no usable frame rate (0/0, NaN).
    """
    import time

    from decord import VideoReader, cpu

    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    started = time.perf_counter()
    if not data:
        raise VideoDecodeError("empty file: expected a video (MP4, AVI, MOV, WebM, …)")
    try:
        probe = VideoReader(io.BytesIO(data), ctx=cpu(0))
        n_frames, native_fps = len(probe), float(probe.get_avg_fps() or 0.0)
        height, width = probe[0].shape[:2] if n_frames else (0, 0)
    except Exception as e:  # decord raises RuntimeError/DECORDError with FFmpeg's message
        raise VideoDecodeError(f"not a decodable video: {str(e).splitlines()[0][-200:]}") from e
    if n_frames == 0:
        raise NoFramesError("the video has no decodable frames")
    if not math.isfinite(native_fps) or native_fps <= 0:
        raise NoFramesError(f"the video reports no usable frame rate ({native_fps}), so its frames have no times")
    if width * height > max_frame_pixels:
        raise VideoLimitError(f"video frames are {width}x{height} = {width * height} pixels; the limit is "
                              f"{max_frame_pixels} (4K)")
    duration_s = n_frames / native_fps
    if duration_s > max_duration_s:
        raise VideoLimitError(f"video is {duration_s:.1f} s long; the limit is {max_duration_s:g} s")
    times = sample_times(duration_s, fps)
    if len(times) > max_frames:
        raise VideoLimitError(f"{len(times)} frames at fps={fps:g} over {duration_s:.1f} s; the limit is "
                              f"{max_frames} frames (lower fps or send a shorter clip)")
    indices = sorted({min(n_frames - 1, int(round(t * native_fps))) for t in times})
    out_w, out_h = _target_size(width, height, short_side)
    try:
        reader = VideoReader(io.BytesIO(data), ctx=cpu(0), width=out_w, height=out_h) if (out_w, out_h) != (
            width, height) else probe
        batch = reader.get_batch(indices).asnumpy()  # [T, H, W, 3] uint8
    except Exception as e:
        raise NoFramesError(f"frames could not be decoded: {str(e).splitlines()[0][-200:]}") from e
    if len(batch) == 0:
        raise NoFramesError("the video has no decodable frames")
    frames = [np.ascontiguousarray(f) for f in batch]
    return SampledFrames(frames=frames, times=[round(i / native_fps, 3) for i in indices], duration_s=round(
        duration_s, 3), native_fps=round(native_fps, 3), width=out_w, height=out_h,
        timings_ms={"decode": round(1000 * (time.perf_counter() - started), 2)})
