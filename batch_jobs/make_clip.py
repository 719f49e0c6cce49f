"""Synthesise a query video from catalog images: ``python -m batch_jobs make-clip``.

Each image becomes one shot: the image (transparency on white, EXIF applied) filling the centre square of
a white ``width × height`` frame, held for ``seconds`` seconds. Encoded as H.264 MP4 with the
FFmpeg binary that ships inside PyPI's ``imageio-ffmpeg``. Useful to try ``POST /search/video`` and to test
it with a clip whose shots (and their times) are known.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from serve_app import storage
from serve_app.images import decode_image


def shot_frame(image: Image.Image, width: int = 640, height: int = 360, zoom: float = 1.0) -> np.ndarray:
    """The image filling the centre square (side ``height × zoom``) of a white frame; uint8 (H, W, 3).

    "Filling" as CLIP's own preprocessing does: scaled so its shorter side covers the square, then
    centre-cropped to it — so the frame's centre crop shows what the catalog embedding saw.
    """
    side = max(1, int(round(height * zoom)))
    scale = side / min(image.size)
    resized = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))),
                           Image.BICUBIC)
    left, top = (resized.width - side) // 2, (resized.height - side) // 2
    square = resized.crop((left, top, left + side, top + side))
    frame = Image.new("RGB", (width, height), "white")
    frame.paste(square, ((width - side) // 2, (height - side) // 2))
    return np.asarray(frame)


def make_clip(out: str | Path, images: Sequence[str], seconds: Sequence[float] | float = 2.5, fps: int = 25,
              width: int = 640, height: int = 360) -> list[tuple[float, float]]:
    """Write a clip with one shot per image.

    Args:
        out: the ``.mp4`` file to write.
        images: image URIs (path, http(s)://, s3://), one per shot.
        seconds: duration of each shot (one value for all, or one per image).
        fps: frame rate of the clip.

    Returns:
        ``(start_s, end_s)`` of each shot.
    """
    import imageio_ffmpeg

    durations = [float(seconds)] * len(images) if isinstance(seconds, (int, float)) else list(seconds)
    writer = imageio_ffmpeg.write_frames(str(out), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=8, ffmpeg_log_level="error")
    writer.send(None)
    shots, frame_index = [], 0
    for uri, duration in zip(images, durations):
        frame = shot_frame(decode_image(storage.read_bytes(uri)), width, height)
        n = max(1, round(duration * fps))
        shots.append((frame_index / fps, (frame_index + n) / fps))
        for _ in range(n):
            writer.send(frame)
        frame_index += n
    writer.close()
    return shots
