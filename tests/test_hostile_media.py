"""The hostile-upload corpus is what its labels say (no Ray, no HTTP).

Each file is measured here independently of the generator: Pillow (with its decompression-bomb check on, and
off to read header sizes), hand parsing of PNG chunks, ``ffmpeg -i`` and decord on the bytes, then compared
with a table written from the file's description. The labels are then re-derived from those measurements
and the service's documented limits, and the accepted files must go through the service's own decoders.
"""

import hashlib
import io
import math
import re
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from serve_app.images import MAX_IMAGE_PIXELS, decode_image
from serve_app.video import DEFAULT_MAX_DURATION_S, DEFAULT_MAX_FRAMES, decode_and_sample
from tests.hostile_media import (ACCEPT, ACCEPTED_ASPECT_MAX, ACCEPTED_VIDEO_PIXELS_MAX, REJECT,
                                 REJECTED_ASPECT_MIN, HostileFile, make_corpus)

MAX_UPLOAD_BYTES = 10 * 2**20  # ServeArgs.max_upload_bytes (README: 413 above 10 MiB)
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}  # the formats serve_app.images names
EXTENSION_FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF"}


class ImageFacts(NamedTuple):
    """What Pillow does with an image file.

    stage: ``"unidentified"`` (``Image.open`` cannot identify it), ``"open"`` (``Image.open`` raises),
        ``"load"`` (``load()`` raises) or ``"ok"``. size, mode: from the header, read with the bomb check off
        (``None`` where Pillow cannot read a header).
    """

    stage: str
    size: tuple[int, int] | None = None
    mode: str | None = None


class VideoFacts(NamedTuple):
    """What FFmpeg and decord report for a video file.

    size: coded width × height from ``ffmpeg -i`` (``None``: no video stream found). fps: the rate ``ffmpeg -i``
    prints (``None``: it prints none). duration_s: the container duration (``None``: ``N/A`` or unreadable).
    frames: decord's frame count from the bytes (``None``: decord cannot open them).
    """

    size: tuple[int, int] | None
    fps: float | None
    duration_s: float | None
    frames: int | None


class FfmpegReport(NamedTuple):
    """What ``ffmpeg -i`` prints: coded size, frame rate, duration, display-matrix rotation (``None``: absent)."""

    size: tuple[int, int] | None
    fps: float | None
    duration_s: float | None
    rotation_deg: float | None


UNIDENTIFIED = ImageFacts("unidentified")
PHOTO = (256, 192)  # the picture the truncated and corrupt files are cut from
SMALL = (128, 96)  # the picture of the polyglots and the unusual-but-valid files
IMAGE_FACTS = {
    "aspect_16x200000.png": ImageFacts("ok", (16, 200_000), "RGB"),
    "aspect_200000x16.png": ImageFacts("ok", (200_000, 16), "RGB"),
    "aspect_12x65000.jpg": ImageFacts("ok", (12, 65_000), "RGB"),
    "aspect_65000x12.jpg": ImageFacts("ok", (65_000, 12), "RGB"),
    "aspect_1x30000_palette.png": ImageFacts("ok", (1, 30_000), "P"),
    "aspect_2x100000_gray.png": ImageFacts("ok", (2, 100_000), "L"),
    "bomb_20000x20000_1bit.png": ImageFacts("open", (20_000, 20_000), "1"),
    "bomb_header_100000x100000.png": ImageFacts("open", (100_000, 100_000), "RGB"),
    "bomb_header_65535x65535.gif": ImageFacts("open", (65_535, 65_535), "P"),
    "bomb_canvas_30000x30000.webp": ImageFacts("open", (30_000, 30_000), "RGB"),
    "bomb_header_100000x100000.tif": ImageFacts("open", (100_000, 100_000), "1"),
    "bomb_header_50000x50000.bmp": ImageFacts("open", (50_000, 50_000), "RGB"),
    "bomb_header_65500x65500.jpg": ImageFacts("open", (65_500, 65_500), "RGB"),
    "bomb_ztxt_4mib.png": ImageFacts("open"),
    "bomb_iccp_4mib.png": ImageFacts("open"),
    "zlib_overlong_idat_64x64.png": ImageFacts("ok", (64, 64), "L"),
    "zlib_near_limit_9000x9000.png": ImageFacts("ok", (9_000, 9_000), "L"),
    "trunc_png_signature.png": UNIDENTIFIED,
    "trunc_png_mid_ihdr.png": ImageFacts("open"),
    "trunc_png_no_idat.png": UNIDENTIFIED,
    "trunc_png_half.png": ImageFacts("load", PHOTO, "RGB"),
    "trunc_png_90pct.png": ImageFacts("load", PHOTO, "RGB"),
    "trunc_jpg_soi_only.jpg": UNIDENTIFIED,
    "trunc_jpg_mid_dqt.jpg": ImageFacts("open"),
    "trunc_jpg_quarter.jpg": ImageFacts("load", PHOTO, "RGB"),
    "trunc_jpg_half.jpg": ImageFacts("load", PHOTO, "RGB"),
    "trunc_jpg_90pct.jpg": ImageFacts("load", PHOTO, "RGB"),
    "trunc_webp_riff_header.webp": UNIDENTIFIED,
    "trunc_webp_vp8_header.webp": ImageFacts("open"),
    "trunc_webp_half.webp": ImageFacts("open"),
    "trunc_gif_screen_only.gif": UNIDENTIFIED,
    "trunc_gif_half.gif": ImageFacts("load", PHOTO, "P"),
    "trunc_bmp_half.bmp": ImageFacts("load", PHOTO, "RGB"),
    "trunc_tif_half.tif": ImageFacts("load", PHOTO, "RGB"),
    "trunc_png_no_iend.png": ImageFacts("ok", PHOTO, "RGB"),
    "trunc_jpg_no_eoi.jpg": ImageFacts("load", PHOTO, "RGB"),
    "trunc_gif_no_trailer.gif": ImageFacts("ok", PHOTO, "P"),
    "corrupt_png_ihdr_crc.png": UNIDENTIFIED,
    "corrupt_png_idat_crc.png": ImageFacts("ok", PHOTO, "RGB"),
    "corrupt_png_text_crc.png": UNIDENTIFIED,
    "corrupt_png_idat_not_zlib.png": ImageFacts("load", PHOTO, "RGB"),
    "corrupt_png_zero_width.png": UNIDENTIFIED,
    "corrupt_png_bit_depth_3.png": UNIDENTIFIED,
    "corrupt_jpg_garbage_after_soi.jpg": UNIDENTIFIED,
    "empty.jpg": UNIDENTIFIED,
    "empty.png": UNIDENTIFIED,
    "random_bytes.jpg": UNIDENTIFIED,
    "random_bytes.png": UNIDENTIFIED,
    "nonimage_xxe.svg": UNIDENTIFIED,
    "nonimage_billion_laughs.svg": UNIDENTIFIED,
    # Pillow opens EPS and loads it through Ghostscript: "load" fails here only because gs is not installed
    "nonimage_postscript.eps": ImageFacts("ok" if shutil.which("gs") else "load", (64, 64), "RGB"),
    "nonimage_html.jpg": UNIDENTIFIED,
    "nonimage_header.pdf": UNIDENTIFIED,
    "nonimage_zip.png": UNIDENTIFIED,
    "nonimage_script.jpg": UNIDENTIFIED,
    "nonimage_clip.mp4": UNIDENTIFIED,
    "polyglot_gif_js.gif": ImageFacts("ok", (10_799, 2_700), "P"),
    "polyglot_jpg_php.jpg": ImageFacts("ok", SMALL, "RGB"),
    "polyglot_png_zip.png": ImageFacts("ok", SMALL, "RGB"),
    "polyglot_png_script_text.png": ImageFacts("ok", SMALL, "RGB"),
    "polyglot_jpg_html_comment.jpg": ImageFacts("ok", SMALL, "RGB"),
    **{f"valid_exif_orientation_{n}.jpg": ImageFacts("ok", SMALL, "RGB") for n in range(2, 9)},
    "valid_palette_transparency.png": ImageFacts("ok", SMALL, "P"),
    "valid_rgba_cutout.png": ImageFacts("ok", SMALL, "RGBA"),
    "valid_la.png": ImageFacts("ok", SMALL, "LA"),
    "valid_cmyk.jpg": ImageFacts("ok", SMALL, "CMYK"),
    "valid_gray16.png": ImageFacts("ok", SMALL, "I;16"),
    "valid_rgb48.png": ImageFacts("ok", SMALL, "RGB"),
    "valid_bilevel.png": ImageFacts("ok", SMALL, "1"),
    "valid_float.tif": ImageFacts("ok", SMALL, "F"),
    "valid_animated_120_frames.gif": ImageFacts("ok", (48, 48), "P"),
    "valid_animated.webp": ImageFacts("ok", (64, 64), "RGB"),
    "valid_animated.png": ImageFacts("ok", (64, 64), "RGB"),
    "valid_progressive.jpg": ImageFacts("ok", SMALL, "RGB"),
    "valid_tiny_1x1.png": ImageFacts("ok", (1, 1), "RGB"),
    "valid_tiny_4x4.jpg": ImageFacts("ok", (4, 4), "RGB"),
    "valid_large_4000x3000.jpg": ImageFacts("ok", (4_000, 3_000), "RGB"),
    "valid_panorama_6000x1000.jpg": ImageFacts("ok", (6_000, 1_000), "RGB"),
    "valid_lzw.tif": ImageFacts("ok", SMALL, "RGB"),
    "valid_photo.bmp": ImageFacts("ok", SMALL, "RGB"),
    "valid_lossless.webp": ImageFacts("ok", SMALL, "RGB"),
}
NO_VIDEO = VideoFacts(None, None, None, None)
CLIP = (160, 120)
VIDEO_FACTS = {
    "video_baseline_2s.mp4": VideoFacts(CLIP, 10, 2.0, 20),
    "video_4k_flat_1s.mp4": VideoFacts((3_840, 2_160), 2, 1.0, 2),
    "video_8k_flat_1s.mp4": VideoFacts((7_680, 4_320), 2, 1.0, 2),
    "video_zero_fps.mp4": VideoFacts((64, 64), None, None, 5),
    "video_130s_1fps.mp4": VideoFacts((32, 32), 1, 130.0, 130),
    "video_90s_1fps.mp4": VideoFacts((32, 32), 1, 90.0, 90),
    "video_truncated_no_moov.mp4": NO_VIDEO,
    "video_ftyp_then_random.mp4": NO_VIDEO,
    "video_random_bytes.mp4": NO_VIDEO,
    "video_empty.mp4": NO_VIDEO,
    "video_animated.gif": VideoFacts((32, 32), 10, 1.0, None),  # FFmpeg reads a GIF file; decord not from bytes
    "video_jpeg_as_video.mp4": VideoFacts((64, 48), 25, None, None),  # FFmpeg's image demuxer assumes 25 fps
    "video_audio_only.mp4": VideoFacts(None, None, 1.0, None),
    "video_vp9.webm": VideoFacts(CLIP, 10, 2.0, 20),
    "video_mjpeg.avi": VideoFacts(CLIP, 10, 2.0, 20),
    "video_h264.mkv": VideoFacts(CLIP, 10, 2.0, 20),
    "video_rotated_90.mp4": VideoFacts(CLIP, 10, 2.0, 20),
    "video_single_frame.mp4": VideoFacts(CLIP, 10, 0.1, 1),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[HostileFile]:
    return make_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def by_name(corpus) -> dict[str, HostileFile]:
    return {f.name: f for f in corpus}


def pil_facts(path: Path) -> ImageFacts:
    """Measure :class:`ImageFacts`: the stage under Pillow's default limits, the header with the bomb check off."""
    try:
        with Image.open(path) as image:
            try:
                image.load()
                stage = "ok"
            except (OSError, SyntaxError, ValueError):
                stage = "load"
    except UnidentifiedImageError:
        return UNIDENTIFIED
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        stage = "open"
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            return ImageFacts(stage, image.size, image.mode)
    except (OSError, SyntaxError, ValueError):
        return ImageFacts(stage)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def ffmpeg_report(path: Path) -> FfmpegReport:
    """Parse ``ffmpeg -i``'s report on the file (FFmpeg prints it to stderr, then fails for want of an output)."""
    import imageio_ffmpeg

    report = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                            capture_output=True, text=True, timeout=60).stderr
    stream = re.search(r"Stream #\S+: Video: (.*)", report)
    video = stream[1] if stream else ""
    size = re.search(r", (\d+)x(\d+)[ ,]", video)
    fps = re.search(r", (\d+(?:\.\d+)?) fps", video)
    duration = re.search(r"Duration: (\d+):(\d\d):(\d\d\.\d+)", report)
    rotation = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", report)
    return FfmpegReport((int(size[1]), int(size[2])) if size else None, float(fps[1]) if fps else None,
                        3600 * int(duration[1]) + 60 * int(duration[2]) + float(duration[3]) if duration else None,
                        float(rotation[1]) if rotation else None)


def decord_facts(path: Path) -> tuple[int, float] | None:
    """decord's frame count and average fps from the file's bytes (as the service opens them), or ``None``."""
    from decord import VideoReader

    try:
        reader = VideoReader(io.BytesIO(path.read_bytes()))
    except Exception:  # decord raises DECORDError/RuntimeError with FFmpeg's message
        return None
    return len(reader), reader.get_avg_fps()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes, bool]]:
    """``(type, body, crc_ok)`` for each chunk of a PNG file (PNG spec, section 5.3)."""
    chunks, at = [], 8
    while at + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        chunks.append((kind, body, crc == zlib.crc32(kind + body)))
        at += 12 + length
    return chunks


def inflated_size(data: bytes) -> int:
    """Bytes a zlib stream inflates to, counted 1 MiB at a time."""
    inflater, total = zlib.decompressobj(), 0
    while data:
        total += len(inflater.decompress(data, 1 << 20))
        data = inflater.unconsumed_tail
    return total


def test_corpus_is_large_labelled_and_within_upload_limits(corpus):
    names = [f.name for f in corpus]
    assert len(corpus) >= 50 and len(set(names)) == len(names)
    assert {(f.kind, f.expect) for f in corpus} == {(k, e) for k in ("image", "video") for e in (ACCEPT, REJECT)}
    for f in corpus:
        assert f.path.is_file() and f.path.name == f.name and f.path.parent == corpus[0].path.parent
        assert f.why and "\n" not in f.why and re.fullmatch(r"[a-z]+/[a-z0-9.+-]+", f.content_type), f
        assert f.path.stat().st_size <= MAX_UPLOAD_BYTES, f.name
    assert sum(f.path.stat().st_size for f in corpus) < 30 * 10**6
    assert sorted(p.name for p in corpus[0].path.parent.iterdir()) == sorted(names)  # no leftovers


def test_every_file_has_an_independent_description(corpus):
    assert {f.name for f in corpus if f.kind == "image"} == set(IMAGE_FACTS)
    assert {f.name for f in corpus if f.kind == "video"} == set(VIDEO_FACTS)


def test_generation_is_deterministic(corpus, tmp_path):
    def digests(files):
        return {f.name: hashlib.sha256(f.path.read_bytes()).hexdigest() for f in files}

    assert digests(make_corpus(tmp_path)) == digests(corpus)


@pytest.mark.parametrize("name", sorted(IMAGE_FACTS))
def test_image_is_what_pillow_says(by_name, name):
    assert pil_facts(by_name[name].path) == IMAGE_FACTS[name]


@pytest.mark.parametrize("name", sorted(IMAGE_FACTS))
def test_image_label_follows_from_pillow_and_the_limits(by_name, name):
    """Reject: Pillow fails, a format the service does not take, over 90 MP or a shape ≥ 5,000:1; else accept."""
    entry, facts = by_name[name], IMAGE_FACTS[name]
    if facts.stage != "ok":
        assert entry.expect == REJECT
        return
    with Image.open(entry.path) as image:
        image_format = image.format
    width, height = facts.size
    aspect = max(width, height) / min(width, height)
    assert aspect <= ACCEPTED_ASPECT_MAX or aspect >= REJECTED_ASPECT_MIN, "between the two aspect bounds"
    allowed = image_format in ALLOWED_FORMATS and width * height <= MAX_IMAGE_PIXELS and aspect <= ACCEPTED_ASPECT_MAX
    assert entry.expect == (ACCEPT if allowed else REJECT)
    if entry.expect == ACCEPT:
        assert EXTENSION_FORMATS[entry.path.suffix] == image_format
        assert decode_image(entry.path.read_bytes()).mode == "RGB"  # the service's own decoder takes it


@pytest.mark.parametrize("n", range(2, 9))
def test_exif_orientation_tags(by_name, n):
    with Image.open(by_name[f"valid_exif_orientation_{n}.jpg"].path) as image:
        assert image.getexif()[0x0112] == n
        assert ImageOps.exif_transpose(image).size == (SMALL[::-1] if n >= 5 else SMALL)  # 5-8 swap the axes


def test_animations_transparency_and_progressive(by_name):
    for name, frames in (("valid_animated_120_frames.gif", 120), ("valid_animated.webp", 12),
                         ("valid_animated.png", 12)):
        with Image.open(by_name[name].path) as image:
            assert image.is_animated and image.n_frames == frames, name
    with Image.open(by_name["valid_palette_transparency.png"].path) as image:
        assert image.info["transparency"] == 0
    with Image.open(by_name["valid_rgba_cutout.png"].path) as image:
        assert image.getchannel("A").getextrema() == (0, 255)
    with Image.open(by_name["valid_progressive.jpg"].path) as image:
        assert image.info["progressive"]
    with Image.open(by_name["valid_gray16.png"].path) as image:
        assert image.getextrema()[1] > 255  # really 16 bits


def test_zlib_payloads_inflate_to_what_they_claim(by_name):
    def chunks(name):
        return {kind: body for kind, body, _ in png_chunks(by_name[name].path.read_bytes())}

    bomb = chunks("bomb_20000x20000_1bit.png")
    assert inflated_size(bomb[b"IDAT"]) == 20_000 * (1 + 20_000 // 8)  # complete: a filter byte + 2,500 per row
    assert by_name["bomb_20000x20000_1bit.png"].path.stat().st_size < 300_000
    near = chunks("zlib_near_limit_9000x9000.png")
    assert inflated_size(near[b"IDAT"]) == 9_000 * 9_001 and 9_000 * 9_000 < MAX_IMAGE_PIXELS
    assert inflated_size(chunks("zlib_overlong_idat_64x64.png")[b"IDAT"]) == 8 << 20  # 64 x 65 bytes needed
    assert inflated_size(chunks("bomb_ztxt_4mib.png")[b"zTXt"].split(b"\x00", 1)[1][1:]) == 4 << 20
    assert inflated_size(chunks("bomb_iccp_4mib.png")[b"iCCP"].split(b"\x00", 1)[1][1:]) == 4 << 20


def test_bad_crcs_are_where_the_names_say(by_name):
    for name, kind in (("corrupt_png_ihdr_crc.png", b"IHDR"), ("corrupt_png_idat_crc.png", b"IDAT"),
                       ("corrupt_png_text_crc.png", b"tEXt")):
        bad = [chunk for chunk, _, crc_ok in png_chunks(by_name[name].path.read_bytes()) if not crc_ok]
        assert bad == [kind], name
    assert all(crc_ok for *_, crc_ok in png_chunks(by_name["corrupt_png_idat_not_zlib.png"].path.read_bytes()))


def test_polyglots_are_both_things(by_name):
    gif_js = by_name["polyglot_gif_js.gif"].path.read_bytes()
    assert gif_js.startswith(b"GIF89a/*") and gif_js.index(b"*/") == len(gif_js) - len(b"*/=1;alert(1);")
    node = shutil.which("node")
    if node:
        script = ("const out = []; require('vm').runInNewContext(require('fs').readFileSync(process.argv[1], "
                  "'latin1'), {alert: x => out.push(x)}); console.log(JSON.stringify(out))")
        run = subprocess.run([node, "-e", script, str(by_name["polyglot_gif_js.gif"].path)], capture_output=True,
                             text=True, timeout=30)
        assert run.stdout.strip() == "[1]", run.stderr
    with zipfile.ZipFile(by_name["polyglot_png_zip.png"].path) as archive:
        assert archive.namelist() == ["payload.sh"]
    assert by_name["polyglot_jpg_php.jpg"].path.read_bytes().endswith(b"<?php system($_GET['c']); ?>\n")
    with Image.open(by_name["polyglot_jpg_html_comment.jpg"].path) as image:
        assert b"<script>" in image.info["comment"]
    with Image.open(by_name["polyglot_png_script_text.png"].path) as image:
        assert "<script>" in image.info["Comment"]


def test_non_images_are_what_they_say(by_name):
    with Image.open(by_name["nonimage_postscript.eps"].path) as image:
        assert image.format == "EPS"  # identified: only the format allow-list keeps Ghostscript away
    assert b'<!ENTITY xxe SYSTEM "file:///etc/passwd">' in by_name["nonimage_xxe.svg"].path.read_bytes()
    assert by_name["nonimage_billion_laughs.svg"].path.read_bytes().count(b"<!ENTITY") == 10  # 10^9 "lol"s
    assert zipfile.is_zipfile(by_name["nonimage_zip.png"].path)
    assert by_name["nonimage_header.pdf"].path.read_bytes().startswith(b"%PDF-")
    assert by_name["nonimage_clip.mp4"].path.read_bytes()[4:8] == b"ftyp"


@pytest.mark.parametrize("name", sorted(VIDEO_FACTS))
def test_video_is_what_ffmpeg_and_decord_say(by_name, name):
    path, expected = by_name[name].path, VIDEO_FACTS[name]
    report, decoded = ffmpeg_report(path), decord_facts(path)
    assert (report.size, report.fps, decoded[0] if decoded else None) == (expected.size, expected.fps, expected.frames)
    if expected.duration_s is None:
        assert report.duration_s is None
    else:
        assert report.duration_s == pytest.approx(expected.duration_s, abs=0.05)


@pytest.mark.parametrize("name", sorted(VIDEO_FACTS))
def test_video_label_follows_from_decord_and_the_limits(by_name, name):
    """Accept: decord reads frames at a real rate, ≤ 120 s, ≤ 64 samples at 1 fps, at most 4K; else reject."""
    entry, expected = by_name[name], VIDEO_FACTS[name]
    decoded = decord_facts(entry.path)
    readable = decoded is not None and decoded[0] > 0 and math.isfinite(decoded[1]) and decoded[1] > 0
    duration_s = decoded[0] / decoded[1] if readable else math.inf
    width, height = expected.size or (0, 0)
    allowed = (readable and duration_s <= DEFAULT_MAX_DURATION_S and math.ceil(duration_s - 1e-9) <= DEFAULT_MAX_FRAMES
               and width * height <= ACCEPTED_VIDEO_PIXELS_MAX)
    assert entry.expect == (ACCEPT if allowed else REJECT)
    if entry.expect == ACCEPT:
        assert decode_and_sample(entry.path.read_bytes()).frames  # the service's own decoder takes it


def test_zero_fps_and_rotation_headers(by_name):
    assert math.isnan(decord_facts(by_name["video_zero_fps.mp4"].path)[1])  # avg_frame_rate 0/0
    assert ffmpeg_report(by_name["video_rotated_90.mp4"].path).rotation_deg == 90.0
