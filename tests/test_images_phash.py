"""Image decoding (EXIF, transparency) and the 64-bit pHash / Hamming distance."""

import io
import random

import imagehash
import numpy as np
import pytest
from PIL import Image

from serve_app.images import ImageDecodeError, UnsupportedImageError, decode_image, open_image
from serve_app.phash import hamming_distance, hamming_distances, match_percent, phash64, to_hex


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    image = decode_image(_encode(rgba, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (0, 0, 255)
    half = Image.new("LA", (4, 4), (0, 128))
    assert decode_image(_encode(half, "PNG")).getpixel((1, 1)) == (127, 127, 127)


def test_partial_transparency_blends_with_white_by_the_alpha_formula():
    rgba = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    out = np.asarray(decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG")), float)
    src, alpha = rgba[..., :3].astype(float), rgba[..., 3:].astype(float) / 255
    expected = src * alpha + 255 * (1 - alpha)  # "over" onto opaque white (Porter & Duff 1984)
    assert np.abs(out - expected).max() <= 1.0


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


def test_a_product_photo_and_its_transparent_cutout_agree():
    rgb = Image.new("RGB", (64, 64), "white")
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    for x in range(16, 48):
        for y in range(16, 48):
            rgb.putpixel((x, y), (200, 30, 30))
            rgba.putpixel((x, y), (200, 30, 30, 255))
    a, b = decode_image(_encode(rgb, "PNG")), decode_image(_encode(rgba, "PNG"))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert phash64(a) == phash64(b)


@pytest.mark.parametrize("data,error", [
    (b"", UnsupportedImageError), (b"plain text", UnsupportedImageError),
    (_encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "PNG")[:400],
     ImageDecodeError),
])
def test_bad_bytes_raise_specific_errors(data, error):
    with pytest.raises(error):
        decode_image(data)


def test_decompression_bomb_is_refused():
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(_encode(Image.new("L", (2000, 2000)), "PNG"), max_pixels=1_000_000)


def test_the_header_check_refuses_non_images_and_bombs_like_decoding():
    """open_image (the ingress's check) refuses non-images and bombs like decode_image; a truncated body has a
    valid header, so only decoding finds it."""
    for data in (b"", b"plain text"):
        with pytest.raises(UnsupportedImageError):
            open_image(data)
    with pytest.raises(ImageDecodeError, match="pixels"):
        open_image(_encode(Image.new("L", (2000, 2000)), "PNG"), max_pixels=1_000_000)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    truncated = _encode(noise, "PNG")[:400]
    assert open_image(truncated).size == (64, 64)
    with pytest.raises(ImageDecodeError):
        decode_image(truncated)
    whole = open_image(_encode(noise, "PNG"))
    assert np.array_equal(np.asarray(whole.convert("RGB")), np.asarray(noise))


def test_phash_matches_imagehash_bit_for_bit():
    rng = np.random.default_rng(1)
    for _ in range(5):
        image = Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
        assert to_hex(phash64(image)) == str(imagehash.phash(image))


def test_hamming_distance_against_an_independent_count():
    rnd = random.Random(0)
    hashes = [rnd.getrandbits(64) for _ in range(200)]
    signed = [h - (1 << 64) if h >= 1 << 63 else h for h in hashes]
    for _ in range(300):
        i, j = rnd.randrange(200), rnd.randrange(200)
        expected = bin(hashes[i] ^ hashes[j]).count("1")
        assert hamming_distance(signed[i], signed[j]) == expected
    many = hamming_distances(signed[0], np.array(signed, dtype=np.int64))
    assert many.tolist() == [bin(hashes[0] ^ h).count("1") for h in hashes]


def test_match_percent_formula():
    assert match_percent(0) == 100.0
    assert match_percent(64) == 0.0
    assert match_percent(16) == pytest.approx(75.0)
