"""Every model family's geometric image preprocessing, fast and with bounded work (no Ray import).

Two geometries cover the families (:class:`ClipGeometry`): CLIP's and most open_clip models' shortest-edge resize
then centre crop (described below; open_clip rounds the crop margin where Hugging Face floors it), and SigLIP's
"squash" — the whole image resized to the square input, nothing cropped — which the same crop-box code computes
with the whole image as the box.

CLIP's image processor (``CLIPImageProcessor``: resize the shortest edge to ``size`` with bicubic resampling,
then centre-crop ``crop × crop``; Radford et al. 2021, and the Hugging Face processor config of
``openai/clip-vit-base-patch32``) first builds the whole resized image, then throws most of it away. For a
1,600-px photo that is a 224×298 intermediate; for a 16×200,000 banner it is 224×2,800,000 pixels (seconds
of CPU and gigabytes of memory for one request). :func:`clip_pixels` computes the same crop directly: it
maps the centre-crop box back to source coordinates and resamples only that box
(``PIL.Image.resize(..., box=...)``), after an integer box-filter reduction for large sources
(``reducing_gap``, Pillow's "reduce before resample" optimisation). With :func:`draft` a JPEG is also decoded
at 1/2, 1/4 or 1/8 scale by libjpeg's scaled IDCT while it stays :data:`DRAFT_MARGIN` times as large as needed.

Work per image is then bounded by the decoded pixels (itself bounded by ``max_pixels`` and the aspect-ratio
limit in :mod:`serve_app.images`) and the output is always ``3 × crop × crop``. The result stays within a
few grey levels of the Hugging Face processor's (``benchmarks/preprocess_speed.py`` measures the difference
and the embedding cosine; ``tests/test_preprocess.py`` checks them; ``tests/test_model_families.py`` checks every
family's embeddings against its own reference library).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Decode JPEGs at a reduced scale only while the short side stays at least this many times the target.
# libjpeg's scaled IDCT (1/2, 1/4, 1/8) drops the DCT's high frequencies, itself a low-pass filter, and the
# final bicubic resize is antialiased at any factor (Pillow scales its support), so a small margin suffices:
# 1.25 kept embeddings within cosine 0.9999 of the Hugging Face path and was 4.8x its speed per core, against
# 3.2x with the 2.0 first chosen (benchmarks/preprocess.py, 40 JPEGs of 800-1,580 px; RESULTS.md).
DRAFT_MARGIN = 1.25
# Pillow reduces by an integer factor (box filter) until the source is at most this many times the output,
# then resamples: the usual speed/quality trade of Image.thumbnail (Pillow docs, "reducing_gap").
REDUCING_GAP = 3.0


RESIZE_MODES = ("shortest", "squash")
CROP_ROUNDINGS = ("floor", "round")


@dataclass(frozen=True)
class ClipGeometry:
    """The geometric part of an image preprocessing config (every model family's, despite the historical name).

    Attributes:
        size: ``resize="shortest"``: target length of the shortest edge after resizing, pixels (224 for
            ViT-B/32); ``"squash"``: equal to ``crop``.
        crop: side of the square model input, pixels (224).
        resample: PIL resampling filter of the resize (``Image.BICUBIC`` = 3 in CLIP's and SigLIP's configs).
        resize: ``"shortest"`` (CLIP, most open_clip models: shortest edge to ``size``, then a centred
            ``crop × crop``) or ``"squash"`` (SigLIP, open_clip's ``resize_mode: squash``: the whole image resized
            to ``crop × crop``, aspect ratio not kept, nothing cropped).
        crop_rounding: where an odd centre-crop margin goes: ``"floor"`` (Hugging Face's image processors,
            ``(resized - crop) // 2``) or ``"round"`` (torchvision's ``CenterCrop``, used by open_clip:
            ``round((resized - crop) / 2)``).
    """

    size: int = 224
    crop: int = 224
    resample: int = Image.BICUBIC
    resize: str = "shortest"
    crop_rounding: str = "floor"

    def __post_init__(self):
        if self.resize not in RESIZE_MODES or self.crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(f"resize must be one of {RESIZE_MODES} and crop_rounding one of {CROP_ROUNDINGS}, got "
                             f"{self.resize!r} and {self.crop_rounding!r}")

    def signature(self) -> str:
        """A short readable form, e.g. ``"shortest224-crop224-bicubic-floor"`` (part of the index's preprocessing
        signature)."""
        name = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}.get(self.resample,
                                                                                                    str(self.resample))
        return f"{self.resize}{self.size}-crop{self.crop}-{name}-{self.crop_rounding}"

    @classmethod
    def from_processor(cls, image_processor) -> "ClipGeometry":
        """Read ``size.shortest_edge``, ``crop_size`` and ``resample`` from a Hugging Face CLIP image processor.

        Raises:
            ValueError: the processor does not resize a shortest edge then centre-crop a square (not CLIP's
                preprocessing; this module would not reproduce it).
        """
        return cls.from_config({"size": dict(image_processor.size), "crop_size": dict(image_processor.crop_size),
                                "do_center_crop": getattr(image_processor, "do_center_crop", True),
                                "resample": image_processor.resample})

    @classmethod
    def from_config(cls, config: dict) -> "ClipGeometry":
        """Read the geometry from an image processor's saved config (``preprocessor_config.json``: ``size``
        ``{"shortest_edge": n}`` or an int, ``crop_size`` ``{"height", "width"}`` or an int, ``resample``).

        Raises:
            ValueError: not a shortest-edge resize followed by a square centre crop.
        """
        size, crop = config.get("size"), config.get("crop_size")
        size = {"shortest_edge": size} if isinstance(size, int) else dict(size or {})
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else dict(crop or {})
        if not size.get("shortest_edge") or not config.get("do_center_crop", True) or not crop.get("height") or \
                crop.get("height") != crop.get("width"):
            raise ValueError(f"expected a CLIP processor (shortest_edge resize + square centre crop), got size={size} "
                             f"crop_size={crop}")
        return cls(int(size["shortest_edge"]), int(crop["height"]), int(config.get("resample") or Image.BICUBIC))


def geometry_of_folder(folder: str) -> ClipGeometry | None:
    """The :class:`ClipGeometry` a local model folder's saved image processor config describes, read as JSON
    (no ``transformers`` import: a worker that only decodes and crops images starts in a fraction of a second).

    Looks for ``preprocessor_config.json`` (the image processor's own file) or the ``image_processor`` entry of
    ``processor_config.json`` (how ``CLIPProcessor.save_pretrained`` writes it in transformers 5).

    Returns:
        The geometry, or ``None`` when ``folder`` is not a local folder with such a file, the file cannot be
        read, or it is not CLIP's preprocessing (callers then load the processor itself).
    """
    root = Path(folder).expanduser()
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        try:
            config = json.loads((root / name).read_text())
        except (OSError, ValueError):
            continue
        config = config.get(key) if key else config
        if isinstance(config, dict):
            try:
                return ClipGeometry.from_config(config)
            except (ValueError, TypeError):
                return None
    return None


def crop_box(width: int, height: int, geometry: ClipGeometry) -> tuple[float, float, float, float]:
    """The source-pixel box that the resize-then-centre-crop keeps, as floats ``(left, top, right, bottom)``.

    ``resize="shortest"`` mirrors the Hugging Face processor and torchvision's ``Resize(int)``: the shortest edge
    becomes ``size`` and the other ``int(size · long / short)`` pixels, then the crop starts at
    ``(resized − crop) // 2`` (``crop_rounding="floor"``) or ``round((resized − crop) / 2)`` (``"round"``,
    torchvision's ``CenterCrop``) on each axis. ``resize="squash"`` keeps the whole image.
    """
    if geometry.resize == "squash":
        return 0.0, 0.0, float(width), float(height)
    short = min(width, height)
    resized_w = geometry.size if width == short else int(geometry.size * width / short)
    resized_h = geometry.size if height == short else int(geometry.size * height / short)
    sx, sy = width / resized_w, height / resized_h  # source pixels per resized pixel
    if geometry.crop_rounding == "round":
        left, top = int(round((resized_w - geometry.crop) / 2.0)), int(round((resized_h - geometry.crop) / 2.0))
    else:
        left, top = (resized_w - geometry.crop) // 2, (resized_h - geometry.crop) // 2
    return left * sx, top * sy, (left + geometry.crop) * sx, (top + geometry.crop) * sy


def draft(image: Image.Image, min_side: int) -> Image.Image:
    """Ask a not-yet-loaded JPEG to decode at 1/2, 1/4 or 1/8 scale, keeping its short side ≥ ``min_side`` ·
    :data:`DRAFT_MARGIN` pixels (``Image.draft``; a no-op for other formats and loaded images). Returns
    ``image`` (configured in place)."""
    if image.format == "JPEG":  # JpegImageFile.draft does nothing once the pixels are loaded
        width, height = image.size
        scale = max(1.0, min(width, height) / (min_side * DRAFT_MARGIN))
        image.draft(image.mode if image.mode in ("RGB", "L") else None,
                    (max(1, int(width / scale)), max(1, int(height / scale))))
    return image


def clip_pixels(image: Image.Image, geometry: ClipGeometry = ClipGeometry()) -> np.ndarray:
    """The model's resize (+ centre crop) of one RGB image, computed on the crop box only.

    Args:
        image: an RGB PIL image (see :func:`serve_app.images.decode_image`), any size ≥ 1×1.
        geometry: the model's resize/crop settings (:meth:`ClipGeometry.from_processor`).

    Returns:
        uint8 array of shape ``(3, crop, crop)``.
    """
    box = crop_box(image.width, image.height, geometry)
    out = image.resize((geometry.crop, geometry.crop), geometry.resample, box=box, reducing_gap=REDUCING_GAP)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)  # [3, H, W]


def clip_batch(images, geometry: ClipGeometry = ClipGeometry()) -> np.ndarray:
    """:func:`clip_pixels` of each image stacked: uint8 ``(N, 3, crop, crop)`` (``N`` may be 0)."""
    if not len(images):
        return np.zeros((0, 3, geometry.crop, geometry.crop), np.uint8)
    return np.stack([clip_pixels(im, geometry) for im in images])
