"""CLIP preprocessing on the crop box (serve_app/preprocess.py) against the Hugging Face image processor, on
real-sized product JPEGs; the work bounds on what one image can cost; query-photo crops."""

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from serve_app.images import DECODE_MIN_SIDE, ImageLimitError, decode_image
from serve_app.preprocess import DRAFT_MARGIN, ClipGeometry, clip_pixels, crop_box
from serve_app.query_image import CropError, parse_crop, prepare_query_image

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def product_jpegs(sample_rows) -> list[bytes]:
    """≥ 800 px product JPEGs: catalog photos enlarged to 1,000–1,600 px (Lanczos) plus opencv-doc's photos."""
    jpegs = []
    for i, row in enumerate(sample_rows[::3]):
        image = decode_image(Path(row["image"]).read_bytes())
        scale = (1000 + 30 * i) / max(image.size)
        jpegs.append(_jpeg(image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)))
    for path in sorted(OPENCV_DATA.glob("*.jpg")):
        if max(Image.open(path).size) >= 800:
            jpegs.append(path.read_bytes())
    return jpegs


def _hf_pixels(embedder, data: bytes) -> np.ndarray:
    out = embedder.processor.image_processor(images=[decode_image(data)], do_rescale=False, do_normalize=False,
                                             return_tensors="np")["pixel_values"][0]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_crop_box_is_the_hf_processor_without_its_intermediate_image(embedder):
    geometry = ClipGeometry.from_processor(embedder.processor.image_processor)
    assert geometry == ClipGeometry(224, 224, Image.BICUBIC)
    rng = np.random.default_rng(3)
    for size in [(300, 224), (224, 300), (641, 479), (1000, 999), (500, 2000)]:
        image = Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), dtype=np.uint8)).filter(
            ImageFilter.GaussianBlur(2))
        hf = _hf_pixels(embedder, _png(image)).astype(int)
        ours = clip_pixels(image, geometry).astype(int)
        assert ours.shape == (3, 224, 224) and np.abs(hf - ours).mean() < 0.5, size
    left, top, right, bottom = crop_box(448, 224, geometry)
    assert (left, top, right, bottom) == (112.0, 0.0, 336.0, 224.0)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_product_jpegs_stay_within_grey_levels_and_cosine_of_the_hf_path(embedder, product_jpegs):
    geometry = ClipGeometry.from_processor(embedder.processor.image_processor)
    hf = np.stack([_hf_pixels(embedder, d) for d in product_jpegs])
    ours = np.stack([prepare_query_image(d, geometry).pixels for d in product_jpegs])  # JPEG draft + crop box
    grey = np.abs(hf.astype(int) - ours.astype(int))
    assert len(product_jpegs) >= 20 and grey.mean() < 1.0, grey.mean()
    cosine = np.sum(embedder.embed_pixels(hf) * embedder.embed_pixels(ours), axis=1)
    assert cosine.min() >= 0.999, cosine.min()


def test_large_jpegs_are_decoded_at_the_smallest_libjpeg_scale_that_keeps_the_margin():
    # libjpeg scales by 1/2, 1/4 or 1/8; the short side must stay >= DRAFT_MARGIN x 224 = 280 px
    assert DRAFT_MARGIN * DECODE_MIN_SIDE == 280
    big = _jpeg(Image.new("RGB", (3200, 2400), (120, 30, 200)))
    assert decode_image(big, min_side=DECODE_MIN_SIDE).size == (400, 300)  # 1/8: 300 >= 280
    assert decode_image(_jpeg(Image.new("RGB", (2000, 1500))), min_side=DECODE_MIN_SIDE).size == (500, 375)  # 1/8 < 280
    assert decode_image(_jpeg(Image.new("RGB", (800, 500))), min_side=DECODE_MIN_SIDE).size == (800, 500)  # 1/2 < 280
    assert decode_image(big).size == (3200, 2400)  # no min_side: full size (thumbnails ask their own)


@pytest.mark.parametrize("size", [(16, 200_000), (200_000, 16), (1, 30_000), (30_000, 2)])
def test_extreme_aspect_ratios_are_refused_from_the_header(size):
    data = _png(Image.new("P", size))
    started = time.perf_counter()
    with pytest.raises(ImageLimitError, match="aspect ratio"):
        prepare_query_image(data, ClipGeometry())
    assert time.perf_counter() - started < 0.5


def test_work_per_image_is_bounded_by_its_decoded_pixels_not_its_shape():
    """A 20:1 banner (the most the limit allows) costs about what a square photo of the same pixels costs."""
    banner = _png(Image.new("RGB", (4000, 200), (10, 200, 10)))
    square = _png(Image.new("RGB", (894, 894), (10, 200, 10)))

    def cost(data):
        started = time.perf_counter()
        for _ in range(5):
            assert prepare_query_image(data, ClipGeometry()).pixels.shape == (3, 224, 224)
        return time.perf_counter() - started

    cost(banner)
    assert cost(banner) < 5 * cost(square) + 0.05


def test_crop_fractions_select_the_region_after_exif_orientation():
    left, right = Image.new("RGB", (200, 200), (255, 0, 0)), Image.new("RGB", (200, 200), (0, 0, 255))
    side_by_side = Image.new("RGB", (400, 200))
    side_by_side.paste(left, (0, 0))
    side_by_side.paste(right, (200, 0))
    rotated = side_by_side.rotate(90, expand=True)  # stored portrait; EXIF 6 says "turn 90° clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    rotated.save(buffer, "JPEG", exif=exif, quality=95)
    data = buffer.getvalue()
    for crop, channel in [((0, 0, 0.5, 1), 0), ((0.5, 0, 1, 1), 2)]:
        pixels = prepare_query_image(data, ClipGeometry(), crop=parse_crop(crop)).pixels
        assert pixels[channel].mean() > 200 and pixels[2 - channel].mean() < 60, crop


@pytest.mark.parametrize("crop", [[0, 0, 1], [0, 0, 0, 1], [0.5, 0, 0.4, 1], [-0.1, 0, 1, 1], [0, 0, 1, 1.5],
                                  ["a", 0, 1, 1], [0, 0, float("nan"), 1], "0,0,1,1"])
def test_bad_crop_boxes_are_refused(crop):
    with pytest.raises(CropError):
        parse_crop(crop)
