"""A shopper's query photo, made ready for the Encoder and the pHash index (no Ray import).

The ingress calls :func:`prepare_query_image` once per uploaded (or fetched) photo: decode (bounded: see
:mod:`serve_app.images`), crop to the region the shopper drew, then CLIP's resize and centre crop
(:mod:`serve_app.preprocess`) and, for near-duplicate search, the 64-bit pHash. What travels to the Encoder
is the ``3 × 224 × 224`` uint8 CLIP input (150 KB), never the upload itself (up to 10 MiB), and every replica
downstream sees only decodable, bounded inputs. Ingestion uses the same decode and preprocessing functions.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve_app.images import DECODE_MIN_SIDE, MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, ImageLimitError, decode_image
from serve_app.phash import phash64
from serve_app.preprocess import ClipGeometry, clip_pixels


class CropError(ValueError):
    """A ``crop`` box that is not four fractions ``0 ≤ x0 < x1 ≤ 1``, ``0 ≤ y0 < y1 ≤ 1``."""


@dataclass(frozen=True)
class QueryImage:
    """What the graph needs of one query photo.

    Attributes:
        pixels: uint8 ``(3, H, W)`` CLIP input (``None`` when not asked for).
        phash: the 64-bit pHash as a signed int64 value (``None`` when not asked for).
        width, height: size of the region used (after EXIF orientation, JPEG draft scaling and the crop), px.
    """

    pixels: np.ndarray | None
    phash: int | None
    width: int
    height: int


def parse_crop(value: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """Validate a region ``[x0, y0, x1, y1]`` given as fractions of the width and height (after EXIF
    orientation; ``[0, 0, 1, 1]`` is the whole photo).

    Raises:
        CropError: not four finite numbers, outside [0, 1], or an empty box (``x0 ≥ x1`` or ``y0 ≥ y1``).
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or len(value) != 4:
        raise CropError(f"crop must be [x0, y0, x1, y1] (4 fractions of the width and height), got {value!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise CropError(f"crop must hold 4 numbers, got {list(value)!r}") from None
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise CropError(f"crop fractions must lie in [0, 1], got {[x0, y0, x1, y1]}")
    if x0 >= x1 or y0 >= y1:
        raise CropError(f"crop box is empty: need x0 < x1 and y0 < y1, got {[x0, y0, x1, y1]}")
    return x0, y0, x1, y1


def crop_region(image: Image.Image, crop: tuple[float, float, float, float] | None) -> Image.Image:
    """The part of ``image`` inside a :func:`parse_crop` box, at least 1×1 pixel (pixel edges rounded)."""
    if crop is None:
        return image
    x0, y0, x1, y1 = crop
    left, top = min(image.width - 1, int(x0 * image.width)), min(image.height - 1, int(y0 * image.height))
    right = max(left + 1, round(x1 * image.width))
    bottom = max(top + 1, round(y1 * image.height))
    return image.crop((left, top, right, bottom))


def prepare_query_image(data: bytes, geometry: ClipGeometry, *, pixels: bool = True, phash: bool = False,
                        crop: tuple[float, float, float, float] | None = None,
                        max_pixels: int = MAX_IMAGE_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO
                        ) -> QueryImage:
    """Decode one query photo and compute its CLIP input and/or pHash.

    Args:
        data: the encoded image.
        geometry: the served model's resize/crop settings.
        pixels, phash: which outputs to compute.
        crop: a validated region (:func:`parse_crop`); the aspect-ratio limit applies to the region too.
        max_pixels, max_aspect_ratio: the decode limits (:func:`serve_app.images.open_image`).

    Raises:
        UnsupportedImageError, ImageDecodeError, ImageLimitError: see :func:`serve_app.images.decode_image`.
    """
    image = decode_image(data, max_pixels, max_aspect_ratio, min_side=max(DECODE_MIN_SIDE, geometry.size))
    region = crop_region(image, crop)
    if crop is not None and max(region.size) > max_aspect_ratio * min(region.size):
        raise ImageLimitError(f"the crop is {region.width}x{region.height} px, an aspect ratio beyond the "
                              f"{max_aspect_ratio:g}:1 limit")
    return QueryImage(pixels=clip_pixels(region, geometry) if pixels else None,
                      phash=phash64(region) if phash else None, width=region.width, height=region.height)
