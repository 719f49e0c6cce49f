"""The ONNX Runtime encoder (serve_app/onnx_clip.py) against torch float32 on the tiny random-weight model:
same preprocessing and tokenizer, towers exported once and cached next to the model."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_app.embedding import load_clip, load_embedder

pytest.importorskip("onnxruntime", reason="pip install onnxruntime (a dependency of the package)")

TEXTS = ["a red apple", "a green tractor on a field", "running shoes", "a wooden chair", "a teapot",
         "a cartoon lion with a mane", "stainless steel kettle with a black handle", "x"]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from serve_app.random_clip import make_random_clip

    return str(make_random_clip(tmp_path_factory.mktemp("onnx-models") / "clip-tiny", "tiny", seed=3))


def _images(sample_rows, n=64):
    rng = np.random.default_rng(1)
    from serve_app.images import decode_image

    photos = [decode_image(Path(r["image"]).read_bytes()) for r in sample_rows[:n // 2]]
    noise = [Image.fromarray(rng.integers(0, 255, (100 + 3 * i, 140, 3), dtype=np.uint8)) for i in range(n - len(photos))]
    return photos + noise


@pytest.mark.slow
def test_onnx_float32_matches_torch_float32_on_64_images_and_64_texts(onnx_model, sample_rows):
    torch_embedder, onnx_embedder = load_clip(onnx_model), load_embedder(onnx_model, runtime="onnx")
    assert onnx_embedder.runtime == "onnx" and onnx_embedder.dim == torch_embedder.dim
    pixels = torch_embedder.preprocess(_images(sample_rows))  # the same uint8 input for both runtimes
    assert len(pixels) == 64
    image_cosine = np.sum(torch_embedder.embed_pixels(pixels) * onnx_embedder.embed_pixels(pixels), axis=1)
    texts = [f"{t} {i}" for i in range(8) for t in TEXTS]  # 64 texts of different lengths (padding, truncation)
    text_cosine = np.sum(torch_embedder.embed_texts(texts) * onnx_embedder.embed_texts(texts), axis=1)
    assert image_cosine.min() >= 0.9999 and text_cosine.min() >= 0.9999, (image_cosine.min(), text_cosine.min())
    long_text = "a very long description " * 40  # past CLIP's 77 tokens: truncated the same way
    assert float(torch_embedder.embed_texts([long_text])[0] @ onnx_embedder.embed_texts([long_text])[0]) >= 0.9999
    assert onnx_embedder.embed_pixels(pixels[:0]).shape == (0, onnx_embedder.dim)


def test_exports_are_cached_next_to_the_model_and_reused(onnx_model):
    from serve_app.onnx_clip import cache_dir, export_towers

    folder = export_towers(onnx_model)
    assert folder == cache_dir(onnx_model) and folder.parent == Path(onnx_model) / "onnx"
    image = folder / "image.onnx"
    stamp = image.stat().st_mtime_ns
    assert export_towers(onnx_model) == folder and image.stat().st_mtime_ns == stamp  # not exported again
    config = Path(onnx_model) / "config.json"
    original = config.read_text()
    config.write_text(original.replace("}", ', "note": "changed"}', 1))
    try:
        assert cache_dir(onnx_model) != folder  # another model: another export
    finally:
        config.write_text(original)


def test_int8_quantisation_runs_and_stays_close_on_the_tiny_model(onnx_model, sample_rows):
    fp32, int8 = load_embedder(onnx_model, runtime="onnx"), load_embedder(onnx_model, runtime="onnx", dtype="int8")
    assert int8.dtype == "int8" and (Path(onnx_model) / "onnx").glob("*/image-int8.onnx")
    pixels = fp32.preprocess(_images(sample_rows, 16))
    cosine = np.sum(fp32.embed_pixels(pixels) * int8.embed_pixels(pixels), axis=1)
    assert cosine.min() > 0.95  # quantisation moves embeddings: recall must be measured with real weights


def test_runtime_and_dtype_are_checked(onnx_model):
    with pytest.raises(ValueError, match="bfloat16"):
        load_embedder(onnx_model, runtime="onnx", dtype="bfloat16")
    with pytest.raises(ValueError, match="runtime"):
        load_embedder(onnx_model, runtime="tensorrt")
    with pytest.raises(ValueError, match="dtype"):
        load_clip(onnx_model, dtype="int8")
