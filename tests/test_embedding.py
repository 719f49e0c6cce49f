"""CLIP loading and the shared embedding function, on generated random-weight folders."""

import time

import numpy as np
import pytest
from PIL import Image

from serve_app.embedding import ModelLoadError, load_clip


def _images(n: int):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (90 + 7 * i, 120, 3), dtype=np.uint8)) for i in range(n)]


def test_shapes_dtype_and_l2_norm(embedder):
    images = embedder.embed_images(_images(3))
    texts = embedder.embed_texts(["a red apple", "a blue car on the road"])
    assert images.shape == (3, embedder.dim) and texts.shape == (2, embedder.dim)
    assert images.dtype == np.float32 and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_images([]).shape == (0, embedder.dim)


def test_batched_equals_one_at_a_time(embedder):
    images = _images(4)
    batched = embedder.embed_images(images)
    single = np.concatenate([embedder.embed_images([im]) for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    texts = ["short", "a somewhat longer description of a product"]
    np.testing.assert_allclose(embedder.embed_texts(texts),
                               np.concatenate([embedder.embed_texts([t]) for t in texts]), atol=1e-5)


def test_embedding_equals_hf_vision_tower_and_projection_on_our_pixels(embedder):
    """Independent answer for the forward: transformers' own vision tower and projection, normalised here; and
    our crop-box preprocessing within a few grey levels of the HF image processor (tests/test_preprocess.py
    checks that on real photos)."""
    import torch

    images = _images(2)
    pixels = embedder.preprocess(images)  # [2, 3, 224, 224] uint8
    reference = embedder.processor.image_processor(images=images, return_tensors="np")["pixel_values"]
    std = np.asarray(embedder.processor.image_processor.image_std).reshape(1, 3, 1, 1)
    grey_levels = np.abs(embedder.normalise_pixels(pixels) - reference) * std * 255
    assert grey_levels.mean() < 1.0 and np.percentile(grey_levels, 99) <= 8
    with torch.no_grad():
        vision = embedder.model.vision_model(pixel_values=torch.from_numpy(embedder.normalise_pixels(pixels)))
        expected = embedder.model.visual_projection(vision.pooler_output).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed_pixels(pixels), expected, atol=1e-5)


def test_bfloat16_autocast_stays_close_to_float32(tiny_model):
    fp32, bf16 = load_clip(tiny_model), load_clip(tiny_model, dtype="bfloat16")
    images = _images(3)
    cosine = np.sum(fp32.embed_images(images) * bf16.embed_images(images), axis=1)
    assert bf16.embed_images(images).dtype == np.float32
    assert np.all(cosine > 0.98)


def test_empty_text_is_rejected(embedder):
    with pytest.raises(ValueError, match="non-empty"):
        embedder.embed_texts(["  "])


def test_missing_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="local folder") as info:
        load_clip(str(tmp_path / "nothing-here"))
    assert "make-random-clip" in str(info.value) or "config.json" in str(info.value)


def test_unreachable_hub_fails_fast_with_instructions(monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:  # a closed port: the "hub" refuses connections at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_clip("openai/clip-vit-base-patch32")
    message = str(info.value)
    assert "openai/clip-vit-base-patch32" in message and "VS_MODEL" in message
    assert "not reachable" in message
    assert time.monotonic() - started < 30


def test_unknown_dtype(tiny_model):
    with pytest.raises(ValueError, match="dtype"):
        load_clip(tiny_model, dtype="float16")


def test_random_folder_tokenizer_is_the_real_clip_bpe(embedder):
    ids = embedder.processor.tokenizer("a red apple")["input_ids"]
    assert ids == [49406, 320, 736, 3055, 49407]  # ids of OpenAI's CLIP vocabulary
    assert embedder.weights == "random"


def test_device_auto_is_cpu_without_a_gpu_and_cuda_without_one_is_a_clear_error(tiny_model):
    import torch

    from serve_app.embedding import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU behaviour cannot be checked here")
    assert resolve_device(None) == resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_clip(tiny_model, device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    auto, cpu = load_clip(tiny_model), load_clip(tiny_model, device="cpu")
    assert auto.device == "cpu" and next(auto.model.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(auto.embed_images(_images(2)), cpu.embed_images(_images(2)))
    np.testing.assert_array_equal(auto.embed_texts(["a kettle"]), cpu.embed_texts(["a kettle"]))
