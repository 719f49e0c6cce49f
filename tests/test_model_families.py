"""Every model family against its own reference library, on random-weight folders made by make-random-model:
transformers' AutoModel/AutoProcessor for clip and siglip, open_clip's create_model_and_transforms("local-dir:…") and
get_tokenizer for open_clip. Real photos (Tux Paint stamps with transparency, OpenCV's JPEGs of many aspect ratios)
go through the service's own paths (the ingress's prepare_query_image, ingestion's load_images) and must agree with
the reference at cosine ≥ 0.999; texts at ≥ 0.9999. Each check is also shown able to fail: the wrong resize mode
or the wrong padding falls below its threshold."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from serve_app.images import decode_image
from serve_app.models import ModelLoadError, load_embedder, model_spec
from serve_app.models.random_weights import make_random_model
from serve_app.query_image import prepare_query_image

FAMILIES = ("clip", "siglip", "open_clip")
STAMPS = Path("/usr/share/tuxpaint/stamps")
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
JPEGS = ["aloeL.jpg", "building.jpg", "ellipses.jpg", "messi5.jpg", "butterfly.jpg", "HappyFish.jpg",
         "pca_test1.jpg", "fruits.jpg"]  # 259–1282 px, aspect ratios 0.75–1.6
TEXTS = ["a red apple", "a green tractor on a field", "running shoes", "stainless steel kettle with a black handle",
         "x", "Un dólar americano", "a very long description " * 30]


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    if not STAMPS.is_dir() or not OPENCV_DATA.is_dir():
        pytest.skip("needs the Debian packages tuxpaint-stamps-default and opencv-doc")
    stamps = sorted(STAMPS.rglob("*.png"))[::40][:16]
    return [p.read_bytes() for p in stamps] + [(OPENCV_DATA / name).read_bytes() for name in JPEGS]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory) -> tuple[str, str]:
    folder = make_random_model(tmp_path_factory.mktemp("families") / f"{request.param}-tiny", request.param, "tiny")
    return request.param, str(folder)


def _normalised(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_embeddings(family: str, folder: str, images, texts, padding: str | None = None):
    """Image and text embeddings computed by the family's own library alone, as its model card shows."""
    import torch

    with torch.no_grad():
        if family == "open_clip":
            import open_clip

            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
            model.eval()
            image = model.encode_image(torch.stack([preprocess(im) for im in images]))
            text = model.encode_text(tokenizer(texts))
        else:
            from transformers import AutoModel, AutoProcessor

            model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
            image = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
            # CLIP: pad to the longest text; SigLIP: "make sure to set padding='max_length' as that's how the model
            # was trained" (its model card), max_length 64.
            padding = padding or ("max_length" if family == "siglip" else "longest")
            tokens = processor(text=texts, padding=padding, truncation=True,
                               max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
            text = model.get_text_features(**tokens).pooler_output
    return _normalised(image.numpy()), _normalised(text.numpy())


def test_each_family_loads_offline_with_its_reference_library_and_is_marked_random(family_model):
    family, folder = family_model
    spec = model_spec(folder)
    embedder = load_embedder(folder)
    assert spec.family == embedder.family == family and embedder.weights == "random"
    assert embedder.embed_texts(["a kettle"]).shape == (1, spec.dim)
    assert json.loads((Path(folder) / "random_weights.json").read_text())["size"] == "tiny"


def test_images_and_texts_agree_with_the_reference_library(family_model, photos, sample_rows):
    from batch_jobs.stages import load_images

    family, folder = family_model
    embedder = load_embedder(folder)
    images = [decode_image(d) for d in photos]
    ref_images, ref_texts = reference_embeddings(family, folder, images, TEXTS)
    served = embedder.embed_pixels(np.stack([prepare_query_image(d, embedder.geometry).pixels for d in photos]))
    cosine = np.sum(served * ref_images, axis=1)
    assert cosine.min() >= 0.999, (family, cosine.min())
    texts = np.sum(embedder.embed_texts(TEXTS) * ref_texts, axis=1)
    assert texts.min() >= 0.9999, (family, texts.min())
    # Ingestion's load stage prepares the catalog's pixels the same way.
    rows = sample_rows[:8]
    batch = load_images({"product_id": np.array([r["product_id"] for r in rows]),
                         "image": np.array([r["image"] for r in rows])}, model=folder)
    assert (batch["error"] == "").all()
    ref_rows, _ = reference_embeddings(family, folder, [decode_image(Path(r["image"]).read_bytes()) for r in rows],
                                       ["x"])
    assert np.sum(embedder.embed_pixels(batch["pixels"]) * ref_rows, axis=1).min() >= 0.999


def test_the_wrong_resize_mode_would_fail_the_image_check(family_model, photos):
    """The 0.999 bar is not loose: squashing where the family crops (or cropping where it squashes) misses it."""
    family, folder = family_model
    embedder = load_embedder(folder)
    ref_images, _ = reference_embeddings(family, folder, [decode_image(d) for d in photos], ["x"])
    geometry = embedder.geometry
    wrong = dataclasses.replace(geometry, resize="squash" if geometry.resize == "shortest" else "shortest")
    pixels = np.stack([prepare_query_image(d, wrong).pixels for d in photos])
    assert np.sum(embedder.embed_pixels(pixels) * ref_images, axis=1).min() < 0.999


def test_siglip_pads_texts_to_max_length_and_longest_padding_would_fail_the_text_check(tmp_path_factory):
    folder = str(make_random_model(tmp_path_factory.mktemp("siglip-pad") / "siglip", "siglip", "tiny", seed=5))
    embedder = load_embedder(folder)
    ids, mask = embedder.tokenize(["a red apple", "x"])
    assert ids.shape == (2, 64)  # SigLIP's 64 positions, whatever the texts' lengths
    _, longest = reference_embeddings("siglip", folder, [decode_image(_png())], TEXTS[:4], padding="longest")
    ours = embedder.embed_texts(TEXTS[:4])
    assert np.sum(ours * longest, axis=1).min() < 0.9999


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_specs_follow_each_family_config(family_model):
    family, folder = family_model
    spec = model_spec(folder)
    expected = {"clip": ("shortest", "floor", 77, "longest"), "siglip": ("squash", "floor", 64, "max_length"),
                "open_clip": ("shortest", "round", 77, "max_length")}[family]
    assert (spec.geometry.resize, spec.geometry.crop_rounding, spec.context_length, spec.padding) == expected
    assert spec.mean == ((0.5,) * 3 if family == "siglip" else pytest.approx((0.48145466, 0.4578275, 0.40821073)))


def test_open_clip_preprocess_cfg_is_read_and_unsupported_modes_are_refused(tmp_path):
    config = {"model_cfg": {"embed_dim": 768, "vision_cfg": {"image_size": 256}, "text_cfg": {"context_length": 64}},
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                                 "resize_mode": "squash"}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    spec = model_spec(str(tmp_path))
    assert (spec.family, spec.dim, spec.geometry.crop, spec.geometry.resize, spec.geometry.resample) == \
        ("open_clip", 768, 256, "squash", 2)
    assert (spec.context_length, spec.mean) == (64, (0.5, 0.5, 0.5))
    longest = tmp_path / "longest"
    longest.mkdir()
    config["preprocess_cfg"]["resize_mode"] = "longest"
    (longest / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="resize_mode 'longest'"):
        model_spec(str(longest))


def test_naflex_siglip2_is_refused_with_the_fixed_resolution_alternative(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    with pytest.raises(ModelLoadError, match="siglip2-base-patch16-224"):
        model_spec(str(tmp_path))


def test_onnx_agrees_with_torch_for_every_family(family_model, photos):
    family, folder = family_model
    torch_embedder, onnx_embedder = load_embedder(folder), load_embedder(folder, runtime="onnx")
    pixels = np.stack([prepare_query_image(d, torch_embedder.geometry).pixels for d in photos])
    images = np.sum(torch_embedder.embed_pixels(pixels) * onnx_embedder.embed_pixels(pixels), axis=1)
    texts = np.sum(torch_embedder.embed_texts(TEXTS) * onnx_embedder.embed_texts(TEXTS), axis=1)
    assert images.min() >= 0.9999 and texts.min() >= 0.9999, (family, images.min(), texts.min())
    assert onnx_embedder.family == family and onnx_embedder.spec == torch_embedder.spec


def _embed_cli(capsys, *argv) -> list[dict]:
    from batch_jobs.cli import main

    capsys.readouterr()
    rc = main(["embed", *argv])
    out = capsys.readouterr().out
    assert rc == 0, out
    return [json.loads(line) for line in out.splitlines()]


def test_embed_command_prints_what_the_reference_library_computes_on_both_runtimes(family_model, photos, tmp_path,
                                                                                    capsys):
    family, folder = family_model
    paths = []
    for i, data in enumerate(photos[::3]):
        paths.append(tmp_path / f"photo{i}.img")
        paths[-1].write_bytes(data)
    argv = ["--model", folder, *[a for p in paths for a in ("--image", str(p))], *[a for t in TEXTS[:4]
                                                                                  for a in ("--text", t)]]
    torch_records = _embed_cli(capsys, *argv)
    onnx_records = _embed_cli(capsys, *argv, "--runtime", "onnx")
    assert [r["kind"] for r in torch_records] == ["image"] * len(paths) + ["text"] * 4
    assert {r["family"] for r in torch_records} == {family} and torch_records[0]["model"] == folder
    ref_images, ref_texts = reference_embeddings(family, folder, [decode_image(p.read_bytes()) for p in paths],
                                                 TEXTS[:4])
    ours = np.array([r["embedding"] for r in torch_records], np.float32)
    onnx = np.array([r["embedding"] for r in onnx_records], np.float32)
    assert np.sum(ours[:len(paths)] * ref_images, axis=1).min() >= 0.999
    assert np.sum(ours[len(paths):] * ref_texts, axis=1).min() >= 0.9999
    assert np.sum(ours * onnx, axis=1).min() >= 0.9999


def test_embed_command_reports_an_unreadable_image_and_needs_an_input(family_model, tmp_path, capsys):
    from batch_jobs.cli import main

    _, folder = family_model
    assert main(["embed", "--model", folder]) == 2
    capsys.readouterr()
    assert main(["embed", "--model", folder, "--image", str(tmp_path / "missing.jpg"), "--text", "a cup"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "error" in records[0] and "embedding" not in records[0] and len(records[1]["embedding"]) > 0
