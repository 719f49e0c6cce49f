"""Image decoding shared by ingestion, serving, embedding and hashing (no Ray import).

Every image — catalog photo or shopper upload — goes through :func:`decode_image`, so a product photo and
a screenshot of it agree: EXIF orientation is applied (``PIL.ImageOps.exif_transpose``) and transparency
(common for product cut-outs) is composited onto white before anything embeds or hashes it.
"""

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Decompression-bomb guard: ~90 megapixels is larger than any product photo (Pillow's own default is
# 89,478,485 pixels; we raise rather than warn).
MAX_IMAGE_PIXELS = 90_000_000
WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated, unsupported or too large)."""


class UnsupportedImageError(ImageDecodeError):
    """The bytes are empty or not in any image format Pillow can identify."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image: EXIF orientation applied, any alpha composited onto white.

    Args:
        image: any PIL image (modes RGBA, LA, P with transparency, L, CMYK, I;16, …).

    Returns:
        A new or the same image in mode ``"RGB"``.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "I;16" or image.mode == "I":
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB") if image.mode != "RGB" else image


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Identify image bytes and check their size from the header alone; no pixel is decoded (microseconds).

    The ingress calls this on every upload before sending it to a replica, so a file that is not an image is
    refused there (415) instead of raising inside the Encoder, where Serve logs a traceback per request.

    Args:
        data: the encoded file.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
        The lazily opened PIL image (its pixels not yet loaded).

    Raises:
        UnsupportedImageError: empty, or not in a format Pillow identifies.
        ImageDecodeError: a header Pillow cannot parse, or larger than ``max_pixels``.
    """
    if not data:
        raise UnsupportedImageError("empty file: expected an image (JPEG, PNG, WebP, GIF, BMP or TIFF)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise UnsupportedImageError(
            f"not an image: cannot identify the {len(data)}-byte file as JPEG, PNG, WebP, GIF, BMP or TIFF"
        ) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"corrupt or truncated image: {e}") from e
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes (JPEG, PNG, WebP, GIF first frame, BMP, TIFF) into an RGB PIL image.

    Args:
        data: the encoded file.
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
        RGB image with EXIF orientation applied and transparency composited onto white.

    Raises:
        UnsupportedImageError: empty, or not in a format Pillow identifies.
        ImageDecodeError: truncated/corrupt, or larger than ``max_pixels``.
    """
    image = open_image(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"corrupt or truncated image: {e}") from e
    return to_rgb(image)
