"""Image decoding shared by ingestion, serving, embedding and hashing (no Ray import).

Every image — catalog photo or shopper upload — goes through :func:`decode_image`, so a product photo and
a screenshot of it agree: EXIF orientation is applied (``PIL.ImageOps.exif_transpose``) and transparency
(common for product cut-outs) is composited onto white before anything embeds or hashes it.

The work one image can cost is bounded from its header, before any pixel is decoded: at most
``max_pixels`` pixels (decompression bombs) and an aspect ratio of at most ``max_aspect_ratio`` (CLIP keeps
only the central square, so a 16×200,000 banner is 99.99 % discarded pixels that would still be resized);
JPEGs are decoded at a reduced scale when much larger than the model needs (``min_side``).
"""

import io
import warnings

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from serve_app.preprocess import draft

# Decompression-bomb guard: ~90 megapixels is larger than any product photo (Pillow's own default is
# 89,478,485 pixels; we raise rather than warn).
MAX_IMAGE_PIXELS = 90_000_000
# Longer side / shorter side. A 20:1 image already shows CLIP only 5 % of itself; beyond that it is a banner or
# a crafted input (a 1×30,000 palette PNG cost the Encoder a minute before this limit).
MAX_ASPECT_RATIO = 20.0
# Images that are embedded or hashed are decoded with their short side at least preprocess.DRAFT_MARGIN times this
# (JPEG draft): CLIP ViT-B/32's input side. Ingestion and serving use the same value, so their pHashes agree.
DECODE_MIN_SIDE = 224
# The formats Pillow may even try: photo formats only ("JPEG" also opens the multi-picture MPO files many phones
# write). Others it knows stay out — EPS, for one, runs Ghostscript on the upload when Ghostscript is installed.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated, unsupported or too large)."""


class UnsupportedImageError(ImageDecodeError):
    """The bytes are empty or not in any image format Pillow can identify."""


class ImageLimitError(ImageDecodeError):
    """A well-formed image beyond a work limit: more than ``max_pixels`` pixels or too extreme an aspect ratio."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image: EXIF orientation applied, any alpha composited onto white.

    Args:
        image: any PIL image (modes RGBA, LA, P with transparency, L, CMYK, I;16, …).

    Returns:
        A new or the same image in mode ``"RGB"``.
    """
    if image.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1):  # exif_transpose copies even when upright
        image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA") if image.mode != "RGBA" else image
        background = Image.new("RGB", rgba.size, WHITE)  # pasting through alpha onto opaque white: the same
        background.paste(rgba, mask=rgba.getchannel("A"))  # pixels as alpha_composite + convert, in one pass
        return background
    if image.mode == "I;16" or image.mode == "I":
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB") if image.mode != "RGB" else image


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS,
               max_aspect_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Identify image bytes and check their size from the header alone; no pixel is decoded (microseconds).

    The ingress calls this on every upload before sending it to a replica, so a file that is not an image is
    refused there (415) instead of raising inside the Encoder, where Serve logs a traceback per request.

    Args:
        data: the encoded file.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        max_aspect_ratio: refuse images whose longer side exceeds this many times the shorter one.

    Returns:
        The lazily opened PIL image (its pixels not yet loaded).

    Raises:
        UnsupportedImageError: empty, or not in a format Pillow identifies.
        ImageLimitError: larger than ``max_pixels``, or beyond ``max_aspect_ratio``.
        ImageDecodeError: a header Pillow cannot parse.
    """
    if not data:
        raise UnsupportedImageError("empty file: expected an image (JPEG, PNG, WebP, GIF, BMP or TIFF)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as e:
        raise UnsupportedImageError(
            f"not an image: cannot identify the {len(data)}-byte file as JPEG, PNG, WebP, GIF, BMP or TIFF"
        ) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLimitError(f"image is too large to decode: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"corrupt or truncated image: {e}") from e
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageLimitError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageLimitError(f"image is {width}x{height}, an aspect ratio of {max(width, height) / min(width, height):.0f}:1; "
                              f"the limit is {max_aspect_ratio:g}:1 (CLIP sees only the central square)")
    return image


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO,
                 min_side: int | None = None) -> Image.Image:
    """Decode image bytes (JPEG, PNG, WebP, GIF first frame, BMP, TIFF) into an RGB PIL image.

    Args:
        data: the encoded file.
        max_pixels, max_aspect_ratio: see :func:`open_image`.
        min_side: decode a large JPEG at 1/2, 1/4 or 1/8 scale while its short side stays ≥
            :data:`serve_app.preprocess.DRAFT_MARGIN` × ``min_side`` pixels (:func:`serve_app.preprocess.draft`);
            ``None`` decodes at full size.

    Returns:
        RGB image with EXIF orientation applied and transparency composited onto white.

    Raises:
        UnsupportedImageError: empty, or not in a format Pillow identifies.
        ImageLimitError: larger than ``max_pixels`` or beyond ``max_aspect_ratio``.
        ImageDecodeError: truncated or corrupt.
    """
    image = open_image(data, max_pixels, max_aspect_ratio)
    try:
        if min_side:
            draft(image, min_side)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"corrupt or truncated image: {e}") from e
