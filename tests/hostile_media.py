"""A generated corpus of hostile and unusual uploads for the fault-injection tests of the HTTP API.

:func:`make_corpus` writes every file into a folder (deterministically, from Pillow, NumPy, hand-built bytes
and the ``imageio_ffmpeg`` FFmpeg binary; no network) and returns one labelled :class:`HostileFile` each.
``kind`` says which endpoints take it (``"image"``: ``/search/image`` and ``/find_similar``; ``"video"``:
``/search/video``) and ``expect`` what a correct service answers:

- ``"reject"``: a 4xx (README "HTTP API", bad-input table): not an image or video (415), corrupt or truncated
  (400), over a limit (400/422): more than 90 megapixels, an aspect ratio beyond the service's bound, a
  video over 120 s, sampling more than 64 frames at the default 1 fps, or an 8K frame;
- ``"accept"``: a 200. Valid but unusual input (CMYK, 16-bit, palette with transparency, EXIF orientations,
  animations, polyglots that are still valid images, a 4K clip).

Labels follow what Pillow, FFmpeg and decord actually do with the bytes (``tests/test_hostile_media.py``
checks each one); for the limits the service has yet to define, the constants below say where the labels put
them. Every file is under the 10 MiB upload limit, so a request reaches the decoder, not the 413.
"""

import io
import struct
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

REJECT, ACCEPT = "reject", "accept"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIF_BLACK_WHITE = b"\x00\x00\x00\xff\xff\xff"  # a 2-entry global colour table
GIF_ONE_PIXEL = b"\x02\x02\x44\x01\x00"  # LZW minimum code size 2; CLEAR, index 0, END; block terminator
CONTENT_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif", ".tif": "image/tiff",
    ".bmp": "image/bmp", ".svg": "image/svg+xml", ".eps": "application/postscript", ".pdf": "application/pdf",
    ".mp4": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska", ".avi": "video/x-msvideo",
}
# Where the labels put the bounds the service does not document yet: any aspect-ratio limit in
# (ACCEPTED_ASPECT_MAX, REJECTED_ASPECT_MIN) and any frame-size limit in [4K UHD, 8K UHD) agree with them.
ACCEPTED_ASPECT_MAX = 6.0  # the widest accepted image (a panorama) is 6:1
REJECTED_ASPECT_MIN = 5_000.0  # the least extreme image rejected for its shape is 65000x12 (5,417:1)
ACCEPTED_VIDEO_PIXELS_MAX = 3840 * 2160  # 4K UHD is accepted, 8K UHD (7680x4320) is not


@dataclass(frozen=True)
class HostileFile:
    """One generated upload.

    Attributes:
        name: file name, unique in the corpus, with a realistic extension.
        path: where :func:`make_corpus` wrote it.
        kind: ``"image"`` (for ``/search/image`` and ``/find_similar``) or ``"video"`` (for ``/search/video``).
        expect: ``"reject"`` (a correct service answers 4xx) or ``"accept"`` (it answers 200).
        why: one line on what makes the file hostile or unusual.
        content_type: the MIME type a client would send with it (sometimes a lie, as a client's can be).
    """

    name: str
    path: Path
    kind: str
    expect: str
    why: str
    content_type: str


class _Item(NamedTuple):
    """An entry before it is written: its name, labels and bytes."""

    name: str
    expect: str
    why: str
    data: bytes
    content_type: str = ""  # "" = the extension's type from CONTENT_TYPES


# --- building blocks ---------------------------------------------------------------------------------------

def _photo(width: int, height: int) -> Image.Image:
    """A deterministic RGB test picture: red and green ramps along x and y, a 32-px blue checkerboard."""
    y, x = np.ogrid[:height, :width]
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = x * 255 // max(1, width - 1)
    pixels[..., 1] = y * 255 // max(1, height - 1)
    pixels[..., 2] = (x // 32 + y // 32) % 2 * 180 + 40
    return Image.fromarray(pixels)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _encode_animated_webp(frames: list[Image.Image]) -> bytes:
    return _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: length, type, body, CRC-32 of type + body (PNG spec, section 5.3)."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes, before_idat: bytes = b"") -> bytes:
    """A PNG from its parts: IHDR, optional chunks, one IDAT holding ``idat`` (already deflated), IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + before_idat + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _deflated_zeros(n_bytes: int) -> bytes:
    """``n_bytes`` zero bytes, zlib-compressed at level 1 (about 220:1; level 9's 1,000:1 takes twice as long)."""
    compressor, mib = zlib.compressobj(1), bytes(1 << 20)
    parts = [compressor.compress(mib) for _ in range(n_bytes >> 20)]
    return b"".join(parts) + compressor.compress(bytes(n_bytes % (1 << 20))) + compressor.flush()


def _bad_crc(png: bytes, kind: bytes) -> bytes:
    """``png`` with the CRC of its first ``kind`` chunk inverted."""
    start = png.index(kind) - 4
    (length,) = struct.unpack(">I", png[start:start + 4])
    crc_at = start + 8 + length
    return png[:crc_at] + bytes(b ^ 0xFF for b in png[crc_at:crc_at + 4]) + png[crc_at + 4:]


def _zip(name: str, data: bytes) -> bytes:
    """A ZIP archive of one file with a fixed timestamp (``writestr`` with a name stamps the current time)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation (EXIF 2.32, tag 274)
    return _encode(image, "JPEG", quality=90, exif=exif)


def _frames(n: int, size: int) -> list[Image.Image]:
    """``n`` distinct RGB frames: a square moving across a colour that changes with the frame index."""
    frames = []
    for i in range(n):
        frame = Image.new("RGB", (size, size), (i * 37 % 256, i * 91 % 256, 128))
        frame.paste((255, 255, 255), (i % (size - 8), 4, i % (size - 8) + 8, 12))
        frames.append(frame)
    return frames


# --- images ------------------------------------------------------------------------------------------------

def _extreme_aspect_ratios() -> list[_Item]:
    why = "{} passes the 90-MP limit but CLIP's shortest-side-224 resize would make it {} px"
    palette = Image.fromarray((np.arange(30_000) % 256).astype(np.uint8).reshape(30_000, 1)).convert("P")
    return [
        _Item("aspect_16x200000.png", REJECT, why.format("16x200000 RGB", "224x2.8M"),
              _encode(_photo(16, 200_000), "PNG")),
        _Item("aspect_200000x16.png", REJECT, why.format("200000x16 RGB", "2.8Mx224"),
              _encode(_photo(200_000, 16), "PNG")),
        _Item("aspect_12x65000.jpg", REJECT, why.format("12x65000 JPEG", "224x1.2M"),
              _encode(_photo(12, 65_000), "JPEG")),
        _Item("aspect_65000x12.jpg", REJECT, why.format("65000x12 JPEG", "1.2Mx224"),
              _encode(_photo(65_000, 12), "JPEG")),
        _Item("aspect_1x30000_palette.png", REJECT, why.format("1x30000 palette PNG", "224x6.7M"),
              _encode(palette, "PNG")),
        _Item("aspect_2x100000_gray.png", REJECT, why.format("2x100000 grayscale", "224x11.2M"),
              _encode(_photo(2, 100_000).convert("L"), "PNG")),
    ]


def _decompression_bombs() -> list[_Item]:
    webp = _encode_animated_webp(_frames(2, 16))
    webp = webp[:24] + (29_999).to_bytes(3, "little") * 2 + webp[30:]  # VP8X canvas width-1, height-1
    tiff_entries = [(256, 4, 100_000), (257, 4, 100_000), (258, 3, 1), (259, 3, 1), (262, 3, 1),
                    (273, 4, 8 + 2 + 8 * 12 + 4), (278, 4, 100_000), (279, 4, 16)]
    tiff = b"II*\x00" + struct.pack("<IH", 8, len(tiff_entries)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tiff_entries) + bytes(4 + 16)
    bmp = b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + struct.pack(
        "<IiiHHIIiiII", 40, 50_000, 50_000, 1, 24, 0, 0, 2835, 2835, 0, 0) + bytes(64)
    jpeg = _encode(_photo(64, 48), "JPEG")
    sof = jpeg.index(b"\xff\xc0") + 5  # SOF0: marker, length (2), precision (1), then height and width
    jpeg = jpeg[:sof] + struct.pack(">HH", 65_500, 65_500) + jpeg[sof + 4:]
    return [
        _Item("bomb_20000x20000_1bit.png", REJECT, "complete, valid 400-MP 1-bit PNG: 220 KB inflating to 50 MB",
              _png(20_000, 20_000, 1, 0, _deflated_zeros(20_000 * 2_501))),
        _Item("bomb_header_100000x100000.png", REJECT, "IHDR declares 10 gigapixels; one tiny IDAT",
              _png(100_000, 100_000, 8, 2, zlib.compress(bytes(301)))),
        _Item("bomb_header_65535x65535.gif", REJECT, "GIF screen and frame declare 65535x65535; data for 1 pixel",
              b"GIF89a" + struct.pack("<HHBBB", 65_535, 65_535, 0x80, 0, 0) + GIF_BLACK_WHITE + b","
              + struct.pack("<HHHHB", 0, 0, 65_535, 65_535, 0) + GIF_ONE_PIXEL + b";"),
        _Item("bomb_canvas_30000x30000.webp", REJECT, "animated WebP whose VP8X canvas is 30000x30000 (16-px frames)",
              webp),
        _Item("bomb_header_100000x100000.tif", REJECT, "TIFF tags declare 100000x100000 1-bit; 16 bytes of strip",
              tiff),
        _Item("bomb_header_50000x50000.bmp", REJECT, "BMP header declares 50000x50000 24-bit; 64 bytes of pixels", bmp),
        _Item("bomb_header_65500x65500.jpg", REJECT, "JPEG SOF0 patched to 65500x65500 (4.3 gigapixels)", jpeg),
        _Item("bomb_ztxt_4mib.png", REJECT, "zTXt chunk inflates to 4 MiB (Pillow refuses text over 1 MiB)",
              _png(8, 8, 8, 0, zlib.compress(bytes(8 * 9)),
                   _chunk(b"zTXt", b"Comment\x00\x00" + _deflated_zeros(4 << 20)))),
        _Item("bomb_iccp_4mib.png", REJECT, "iCCP colour profile inflates to 4 MiB (Pillow refuses over 1 MiB)",
              _png(8, 8, 8, 0, zlib.compress(bytes(8 * 9)),
                   _chunk(b"iCCP", b"bomb\x00\x00" + _deflated_zeros(4 << 20)))),
        _Item("zlib_overlong_idat_64x64.png", ACCEPT, "64x64 gray whose IDAT inflates to 8 MiB; Pillow stops "
              "after the 4 KiB it needs", _png(64, 64, 8, 0, _deflated_zeros(8 << 20))),
        _Item("zlib_near_limit_9000x9000.png", ACCEPT, "81-MP grayscale, just under the 90-MP limit: 350 KB "
              "inflating to 81 MB (243 MB as RGB)", _png(9_000, 9_000, 8, 0, _deflated_zeros(9_000 * 9_001))),
    ]


def _truncated_and_corrupt() -> list[_Item]:
    photo = _photo(256, 192)
    png, jpeg, webp = _encode(photo, "PNG"), _encode(photo, "JPEG", quality=90), _encode(photo, "WEBP")
    gif, bmp, tiff = _encode(photo, "GIF"), _encode(photo, "BMP"), _encode(photo, "TIFF")
    cuts = [
        ("png", png, "signature", 8), ("png", png, "mid_ihdr", 20), ("png", png, "no_idat", 33),
        ("png", png, "half", len(png) // 2), ("png", png, "90pct", len(png) * 9 // 10),
        ("jpg", jpeg, "soi_only", 2), ("jpg", jpeg, "mid_dqt", 40), ("jpg", jpeg, "quarter", len(jpeg) // 4),
        ("jpg", jpeg, "half", len(jpeg) // 2), ("jpg", jpeg, "90pct", len(jpeg) * 9 // 10),
        ("webp", webp, "riff_header", 12), ("webp", webp, "vp8_header", 30), ("webp", webp, "half", len(webp) // 2),
        ("gif", gif, "screen_only", 13), ("gif", gif, "half", len(gif) // 2),
        ("bmp", bmp, "half", len(bmp) // 2), ("tif", tiff, "half", len(tiff) // 2),
    ]
    items = [_Item(f"trunc_{fmt}_{label}.{fmt}", REJECT, f"{fmt.upper()} cut to {cut} of {len(data)} bytes",
                   data[:cut]) for fmt, data, label, cut in cuts]
    not_zlib = _png(256, 192, 8, 2, _random_bytes(4_000, seed=1))
    return items + [
        _Item("trunc_png_no_iend.png", ACCEPT, "PNG without its IEND chunk (all pixel data present)", png[:-12]),
        _Item("trunc_jpg_no_eoi.jpg", REJECT, "JPEG without its EOI marker: Pillow calls it truncated", jpeg[:-2]),
        _Item("trunc_gif_no_trailer.gif", ACCEPT, "GIF without its ';' trailer (all frame data present)", gif[:-1]),
        _Item("corrupt_png_ihdr_crc.png", REJECT, "IHDR chunk with a wrong CRC-32", _bad_crc(png, b"IHDR")),
        _Item("corrupt_png_idat_crc.png", ACCEPT, "IDAT with a wrong CRC-32 but intact data: Pillow does not "
              "check IDAT CRCs", _bad_crc(png, b"IDAT")),
        _Item("corrupt_png_text_crc.png", REJECT, "ancillary tEXt chunk with a wrong CRC-32",
              _bad_crc(_png(8, 8, 8, 0, zlib.compress(bytes(72)), _chunk(b"tEXt", b"Title\x00shoe")), b"tEXt")),
        _Item("corrupt_png_idat_not_zlib.png", REJECT, "IDAT (valid CRC) holds random bytes, not a zlib stream",
              not_zlib),
        _Item("corrupt_png_zero_width.png", REJECT, "IHDR declares a width of 0", _png(0, 8, 8, 0, b"")),
        _Item("corrupt_png_bit_depth_3.png", REJECT, "IHDR declares RGB at 3 bits per sample (not allowed)",
              _png(8, 8, 3, 2, zlib.compress(bytes(8 * 4)))),
        _Item("corrupt_jpg_garbage_after_soi.jpg", REJECT, "JPEG SOI marker followed by 4 KB of random bytes",
              jpeg[:2] + _random_bytes(4_096, seed=2)),
        _Item("empty.jpg", REJECT, "zero-byte file named .jpg", b""),
        _Item("empty.png", REJECT, "zero-byte file named .png", b""),
        _Item("random_bytes.jpg", REJECT, "64 KB of random bytes named .jpg", _random_bytes(65_536, seed=3)),
        _Item("random_bytes.png", REJECT, "64 KB of random bytes named .png", _random_bytes(65_536, seed=4)),
    ]


def _non_images(mp4: bytes) -> list[_Item]:
    xxe = (b'<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
           b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><text y="32">&xxe;</text></svg>\n')
    laughs = b'<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY a "lol">' + b"".join(
        b'<!ENTITY %c "&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;&%c;">' % ((ord("a") + i + 1,) + (ord("a") + i,) * 10)
        for i in range(9)) + b']>\n<svg xmlns="http://www.w3.org/2000/svg"><text>&j;</text></svg>\n'
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
           b"(/etc/passwd) (r) file pop\nshowpage\n%%EOF\n")
    return [
        _Item("nonimage_xxe.svg", REJECT, "SVG with an external entity (XXE) reading /etc/passwd", xxe),
        _Item("nonimage_billion_laughs.svg", REJECT, "SVG with nested entities expanding to 10^9 'lol's", laughs),
        _Item("nonimage_postscript.eps", REJECT, "EPS: Pillow identifies it and would run Ghostscript to load it", eps),
        _Item("nonimage_html.jpg", REJECT, "HTML page with a script, named and typed as a JPEG",
              b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>\n", "image/jpeg"),
        _Item("nonimage_header.pdf", REJECT, "a PDF file (header and an empty page)",
              b"%PDF-1.7\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
              b"trailer<</Root 1 0 R>>\n%%EOF\n"),
        _Item("nonimage_zip.png", REJECT, "a ZIP archive named and typed as a PNG",
              _zip("photo.jpg", b"not really a photo")),
        _Item("nonimage_script.jpg", REJECT, "a Python script named and typed as a JPEG",
              b"#!/usr/bin/env python3\nimport os\nos.system('id')\n"),
        _Item("nonimage_clip.mp4", REJECT, "a valid H.264 MP4 sent to an image endpoint", mp4),
    ]


def _polyglots() -> list[_Item]:
    # Bytes 6-7 (the GIF's width) are "/*": a JavaScript comment that the tail closes, so the file also runs
    # as `GIF89a=1;alert(1);`. Width "/*" = 10799 px; height 2700 keeps the aspect ratio at 4:1.
    gif_js = (b"GIF89a/*" + struct.pack("<HBBB", 2_700, 0x80, 0, 0) + GIF_BLACK_WHITE + b","
              + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + GIF_ONE_PIXEL + b";*/=1;alert(1);")
    photo = _photo(128, 96)
    png = _encode(photo, "PNG")
    after_ihdr = len(PNG_SIGNATURE) + 25
    return [
        _Item("polyglot_gif_js.gif", ACCEPT, "valid 10799x2700 GIF that is also valid JavaScript", gif_js),
        _Item("polyglot_jpg_php.jpg", ACCEPT, "valid JPEG with a PHP web shell appended after EOI",
              _encode(photo, "JPEG") + b"<?php system($_GET['c']); ?>\n"),
        _Item("polyglot_png_zip.png", ACCEPT, "valid PNG with a ZIP archive appended after IEND",
              png + _zip("payload.sh", b"#!/bin/sh\nid\n")),
        _Item("polyglot_png_script_text.png", ACCEPT, "valid PNG with a <script> tag in a tEXt chunk",
              png[:after_ihdr] + _chunk(b"tEXt", b"Comment\x00<script>alert(1)</script>") + png[after_ihdr:]),
        _Item("polyglot_jpg_html_comment.jpg", ACCEPT, "valid JPEG whose COM segment is an HTML page",
              _encode(photo, "JPEG", comment=b"<html><script>alert(1)</script></html>")),
    ]


def _valid_unusual() -> list[_Item]:
    photo = _photo(128, 96)
    cutout = photo.convert("RGBA")
    cutout.putalpha(Image.fromarray(((np.indices((96, 128)).sum(axis=0) // 16) % 2 * 255).astype(np.uint8)))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    gray16 = Image.fromarray((np.arange(96 * 128, dtype=np.uint16) * 5).reshape(96, 128))
    rgb48 = np.repeat(np.arange(96, dtype=">u2")[:, None] * 600, 128 * 3, axis=1)
    rgb48_rows = b"".join(b"\x00" + row.tobytes() for row in rgb48)
    gif_frames = [frame.convert("P", palette=Image.Palette.ADAPTIVE, colors=8) for frame in _frames(120, 48)]
    frames = _frames(12, 64)
    items = [_Item(f"valid_exif_orientation_{n}.jpg", ACCEPT, f"EXIF Orientation {n}: the decoder must "
                   "rotate/flip before embedding", _with_exif_orientation(photo, n)) for n in range(2, 9)]
    return items + [
        _Item("valid_palette_transparency.png", ACCEPT, "16-colour palette PNG with a tRNS transparent index",
              _encode(palette, "PNG", transparency=0)),
        _Item("valid_rgba_cutout.png", ACCEPT, "RGBA product cut-out, half the pixels fully transparent",
              _encode(cutout, "PNG")),
        _Item("valid_la.png", ACCEPT, "grayscale + alpha (LA) PNG", _encode(cutout.convert("LA"), "PNG")),
        _Item("valid_cmyk.jpg", ACCEPT, "CMYK JPEG (Adobe APP14), as print workflows export",
              _encode(photo.convert("CMYK"), "JPEG")),
        _Item("valid_gray16.png", ACCEPT, "16-bit grayscale PNG (Pillow mode I;16)", _encode(gray16, "PNG")),
        _Item("valid_rgb48.png", ACCEPT, "16-bit-per-channel RGB PNG", _png(128, 96, 16, 2, zlib.compress(rgb48_rows))),
        _Item("valid_bilevel.png", ACCEPT, "1-bit black-and-white PNG", _encode(photo.convert("1"), "PNG")),
        _Item("valid_float.tif", ACCEPT, "32-bit float grayscale TIFF (Pillow mode F)",
              _encode(Image.fromarray(np.asarray(photo.convert("L"), np.float32) / 255), "TIFF")),
        _Item("valid_animated_120_frames.gif", ACCEPT, "animated GIF with 120 frames (the first one is used)",
              _encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=40, loop=0)),
        _Item("valid_animated.webp", ACCEPT, "animated WebP, 12 frames", _encode_animated_webp(frames)),
        _Item("valid_animated.png", ACCEPT, "animated PNG (APNG), 12 frames",
              _encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=80, loop=0)),
        _Item("valid_progressive.jpg", ACCEPT, "progressive JPEG", _encode(photo, "JPEG", progressive=True)),
        _Item("valid_tiny_1x1.png", ACCEPT, "a single pixel", _encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")),
        _Item("valid_tiny_4x4.jpg", ACCEPT, "4x4 JPEG (smaller than one 4:2:0 MCU)", _encode(_photo(4, 4), "JPEG")),
        _Item("valid_large_4000x3000.jpg", ACCEPT, "12-MP camera-sized JPEG",
              _encode(_photo(4_000, 3_000), "JPEG", quality=80)),
        _Item("valid_panorama_6000x1000.jpg", ACCEPT, "6:1 panorama", _encode(_photo(6_000, 1_000), "JPEG")),
        _Item("valid_lzw.tif", ACCEPT, "LZW-compressed TIFF", _encode(photo, "TIFF", compression="tiff_lzw")),
        _Item("valid_photo.bmp", ACCEPT, "24-bit BMP", _encode(photo, "BMP")),
        _Item("valid_lossless.webp", ACCEPT, "lossless WebP", _encode(photo, "WEBP", lossless=True)),
    ]


# --- videos ------------------------------------------------------------------------------------------------

def _ffmpeg(out: Path, *args: str) -> bytes:
    """Run the bundled FFmpeg writing ``out`` (no metadata, bit-exact, one thread) and return its bytes."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args,
                    "-map_metadata", "-1", "-fflags", "+bitexact", "-flags", "+bitexact", "-threads", "1", str(out)],
                   check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def _h264(out: Path, source: str, *extra: str) -> bytes:
    """Encode the lavfi ``source`` (e.g. ``color=c=red:s=64x64:r=5:d=1``) as H.264 (ultrafast, yuv420p)."""
    return _ffmpeg(out, *extra, "-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "ultrafast",
                   "-pix_fmt", "yuv420p")


def _zero_frame_rate(mp4: bytes) -> bytes:
    """Zero every ``stts`` sample delta and the ``mdhd`` media duration: the stream's rate reads as 0/0."""
    data = bytearray(mp4)
    stts = data.index(b"stts") + 4  # then version/flags (4), entry count (4), (sample count, delta) pairs
    (entries,) = struct.unpack(">I", data[stts + 4:stts + 8])
    for i in range(entries):
        struct.pack_into(">I", data, stts + 12 + 8 * i, 0)
    mdhd = data.index(b"mdhd") + 4  # version 0: version/flags, creation, modification, timescale, duration
    struct.pack_into(">I", data, mdhd + 16, 0)
    return bytes(data)


def _videos(work: Path) -> Iterator[_Item]:
    baseline = _h264(work / "baseline.mp4", "testsrc=s=160x120:r=10:d=2")
    yield _Item("video_baseline_2s.mp4", ACCEPT, "control: 2 s, 160x120, 10 fps H.264", baseline)
    yield _Item("video_4k_flat_1s.mp4", ACCEPT, "3840x2160 (4K UHD), 1 s of flat colour at 2 fps",
                _h264(work / "4k.mp4", "color=c=0x3060a0:s=3840x2160:r=2:d=1"))
    yield _Item("video_8k_flat_1s.mp4", REJECT, "7680x4320 (8K): one decoded frame is 100 MB of RGB",
                _h264(work / "8k.mp4", "color=c=0xa06030:s=7680x4320:r=2:d=1"))
    mjpeg = _ffmpeg(work / "mjpeg.mp4", "-f", "lavfi", "-i", "testsrc=s=64x64:r=5:d=1", "-c:v", "mjpeg",
                    "-pix_fmt", "yuvj420p")
    yield _Item("video_zero_fps.mp4", REJECT, "5 MJPEG frames whose timing reads 0/0 fps (stts deltas and "
                "duration zeroed)", _zero_frame_rate(mjpeg))
    yield _Item("video_130s_1fps.mp4", REJECT, "130 s long (limit 120 s), 32x32 at 1 fps",
                _h264(work / "130s.mp4", "testsrc=s=32x32:r=1:d=130"))
    yield _Item("video_90s_1fps.mp4", REJECT, "90 s: at the default fps=1 that samples 90 frames (limit 64)",
                _h264(work / "90s.mp4", "testsrc=s=32x32:r=1:d=90"))
    yield _Item("video_truncated_no_moov.mp4", REJECT, "MP4 cut before its moov box (no sample tables)",
                baseline[:baseline.rindex(b"moov") - 4])  # FFmpeg writes moov last unless told +faststart
    (ftyp_size,) = struct.unpack(">I", baseline[:4])  # the first box is ftyp
    yield _Item("video_ftyp_then_random.mp4", REJECT, "an MP4 ftyp box followed by 64 KB of random bytes",
                baseline[:ftyp_size] + _random_bytes(65_536, seed=5))
    yield _Item("video_random_bytes.mp4", REJECT, "64 KB of random bytes named .mp4", _random_bytes(65_536, seed=6))
    yield _Item("video_empty.mp4", REJECT, "zero-byte file named .mp4", b"")
    gif_frames = _frames(10, 32)
    yield _Item("video_animated.gif", REJECT, "animated GIF sent as a video: decord cannot count its frames "
                "from bytes", _encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=100))
    yield _Item("video_jpeg_as_video.mp4", REJECT, "a JPEG photo named and typed as an MP4",
                _encode(_photo(64, 48), "JPEG"))
    yield _Item("video_audio_only.mp4", REJECT, "MP4 with one AAC audio track and no video stream",
                _ffmpeg(work / "audio.mp4", "-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac"))
    yield _Item("video_vp9.webm", ACCEPT, "VP9 in WebM, 2 s, 160x120",
                _ffmpeg(work / "vp9.webm", "-f", "lavfi", "-i", "testsrc=s=160x120:r=10:d=2", "-c:v", "libvpx-vp9",
                        "-deadline", "realtime", "-cpu-used", "8", "-b:v", "100k"))
    yield _Item("video_mjpeg.avi", ACCEPT, "Motion-JPEG in AVI, 2 s, 160x120",
                _ffmpeg(work / "mjpeg.avi", "-f", "lavfi", "-i", "testsrc=s=160x120:r=10:d=2", "-c:v", "mjpeg"))
    yield _Item("video_h264.mkv", ACCEPT, "H.264 in Matroska, 2 s, 160x120",
                _h264(work / "h264.mkv", "testsrc=s=160x120:r=10:d=2"))
    yield _Item("video_rotated_90.mp4", ACCEPT, "160x120 H.264 whose display matrix rotates it 90 degrees, as phones "
                "record", _h264(work / "rotated.mp4", "testsrc=s=160x120:r=10:d=2", "-noautorotate",
                                "-display_rotation", "90"))
    yield _Item("video_single_frame.mp4", ACCEPT, "one frame (0.1 s at 10 fps)",
                _h264(work / "single.mp4", "testsrc=s=160x120:r=10:d=0.1"))


# --- the corpus --------------------------------------------------------------------------------------------

def make_corpus(folder: Path) -> list[HostileFile]:
    """Write the corpus into ``folder`` (created if missing) and return its entries, images first.

    Deterministic: the same bytes on every run with the same Pillow and FFmpeg. About 90 images and 20 videos,
    about 3 MB, written in a few seconds.

    Raises:
        subprocess.CalledProcessError: FFmpeg failed to encode one of the clips.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        videos = list(_videos(Path(work)))
    baseline_mp4 = next(item.data for item in videos if item.name == "video_baseline_2s.mp4")
    images = (_extreme_aspect_ratios() + _decompression_bombs() + _truncated_and_corrupt()
              + _non_images(baseline_mp4) + _polyglots() + _valid_unusual())
    corpus = []
    for kind, items in (("image", images), ("video", videos)):
        for item in items:
            path = folder / item.name
            path.write_bytes(item.data)
            content_type = item.content_type or CONTENT_TYPES[path.suffix]
            corpus.append(HostileFile(item.name, path, kind, item.expect, item.why, content_type))
    return corpus
