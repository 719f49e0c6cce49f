"""The ``open_clip`` family: open_clip checkpoints as a folder holding ``open_clip_config.json`` and the weights (the
layout of open_clip repos on the Hugging Face hub, loaded with open_clip ≥ 3.0's ``local-dir:``), and ``hf-hub:``
ids where the hub is reachable (LAION, DataComp, MetaCLIP, Marqo's e-commerce models).

Preprocessing follows the config's ``preprocess_cfg`` (open_clip's ``PreprocessCfg``: ``size``, ``mean``, ``std``,
``interpolation`` bicubic or bilinear, ``resize_mode`` ``shortest`` — resize then torchvision's ``CenterCrop``, whose
margin is rounded — or ``squash``; ``longest``, which pads, is refused). Text: ``open_clip.get_tokenizer`` of the
folder, which always pads to its ``context_length``. The towers are ``encode_image`` / ``encode_text``; open_clip
imports torchvision, so this family needs a torchvision that matches torch (README, "Choosing a model").
"""

from pathlib import Path

import numpy as np

from serve_app.models.base import Embedder, ModelLoadError, ModelSpec, resolve_device, set_threads
from serve_app.models.hub import load_hint, read_json, weights_kind
from serve_app.preprocess import ClipGeometry

FAMILY = "open_clip"
CONFIG_FILE = "open_clip_config.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip.constants.OPENAI_DATASET_MEAN/STD, its defaults
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = {"bicubic": 3, "bilinear": 2}  # PIL filters of open_clip's interpolation names


def read_spec(folder: Path, model: str) -> ModelSpec:
    """The :class:`~serve_app.models.base.ModelSpec` of an open_clip folder, read from ``open_clip_config.json``.

    Raises:
        ModelLoadError: no config with ``model_cfg``, a non-square size, or a resize mode or interpolation this
            service does not reproduce.
    """
    config = read_json(folder / CONFIG_FILE)
    if config is None or not isinstance(config.get("model_cfg"), dict):
        raise ModelLoadError(load_hint(model, f"no readable {CONFIG_FILE} with a model_cfg in {folder}"))
    model_cfg, pre = config["model_cfg"], config.get("preprocess_cfg") or {}
    size = pre.get("size") or (model_cfg.get("vision_cfg") or {}).get("image_size") or 224
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ModelLoadError(load_hint(model, f"preprocess size {size} is not square; only square inputs are "
                                                  "supported"))
        size = size[0]
    mode, interpolation = pre.get("resize_mode") or "shortest", pre.get("interpolation") or "bicubic"
    if mode not in ("shortest", "squash") or interpolation not in INTERPOLATIONS:
        raise ModelLoadError(load_hint(model, (
            f"preprocess_cfg resize_mode {mode!r} / interpolation {interpolation!r}: supported are resize_mode "
            f"'shortest' or 'squash' and interpolation {sorted(INTERPOLATIONS)}")))
    mean, std = pre.get("mean") or OPENAI_MEAN, pre.get("std") or OPENAI_STD
    mean, std = (tuple(v) if isinstance(v, (list, tuple)) else (float(v),) * 3 for v in (mean, std))
    geometry = ClipGeometry(size=int(size), crop=int(size), resample=INTERPOLATIONS[interpolation], resize=mode,
                            crop_rounding="round")
    text = model_cfg.get("text_cfg") or {}
    return ModelSpec(family=FAMILY, dim=int(model_cfg["embed_dim"]), geometry=geometry, mean=mean, std=std,
                     context_length=int(text.get("context_length") or 77), padding="max_length")


def load_tokenizer(folder: Path, model: str):
    """``open_clip.get_tokenizer("local-dir:FOLDER")`` as a :data:`~serve_app.models.base.Tokenize` (ids padded with
    zeros to the context length; the mask marks non-zero ids).

    Raises:
        ModelLoadError: open_clip is missing or cannot read the folder's tokenizer.
    """
    try:
        import open_clip

        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    except Exception as e:  # ImportError (torchvision), FileNotFoundError, ValueError
        raise ModelLoadError(load_hint(model, e)) from e

    def tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = tokenizer(texts).numpy().astype(np.int64)  # [N, context_length]
        return ids, (ids != 0).astype(np.int64)

    return tokenize


def load_model(folder: Path, model: str):
    """``open_clip.create_model("local-dir:FOLDER")`` in float32, eval mode, on the CPU.

    Raises:
        ModelLoadError: open_clip (or torchvision) is missing, or the config or weights cannot be loaded.
    """
    try:
        import open_clip

        return open_clip.create_model(f"local-dir:{folder}", precision="fp32", device="cpu").eval()
    except Exception as e:
        raise ModelLoadError(load_hint(model, e)) from e


def load_torch(folder: Path, model: str, spec: ModelSpec, dtype: str = "float32", num_threads: int | None = None,
               device: str | None = None) -> Embedder:
    """A torch :class:`~serve_app.models.base.Embedder` of an open_clip folder.

    Raises:
        ValueError: unknown device, or CUDA asked for without a GPU.
        ModelLoadError: open_clip cannot load the folder.
    """
    device = resolve_device(device)
    set_threads(num_threads)
    net = load_model(folder, model).to(device)
    embedder = Embedder(model=net, spec=spec, tokenize=load_tokenizer(folder, model), model_id=model, dtype=dtype,
                        weights=weights_kind(model), device=device, runtime="torch")
    embedder.image_forward = lambda pixels: _forward(embedder, net.encode_image, pixels)
    embedder.text_forward = lambda ids, mask: _forward(embedder, net.encode_text, ids)
    return embedder


def _forward(embedder: Embedder, encode, array: np.ndarray) -> np.ndarray:
    """``encode(tensor)`` → float32 ``(N, D)`` NumPy (``encode_image`` on ``(N, 3, H, W)`` pixels or ``encode_text``
    on ``(N, L)`` ids; not normalised)."""
    import torch

    with torch.inference_mode(), embedder.autocast():
        features = encode(torch.from_numpy(array).to(embedder.device))  # [N, D]
    return features.float().cpu().numpy()


def tower_modules(net):
    """``(image, text)`` ``torch.nn.Module``s for ONNX export: ``pixel_values`` ``(N, 3, H, W)`` → ``(N, D)`` and
    ``input_ids`` ``(N, context_length)`` → ``(N, D)`` (open_clip's text tower takes no mask)."""
    import torch

    class ImageTower(torch.nn.Module):
        def forward(self, pixel_values):  # [N, 3, H, W] -> [N, D]
            return net.encode_image(pixel_values)

    class TextTower(torch.nn.Module):
        def forward(self, input_ids):  # [N, L] -> [N, D]
            return net.encode_text(input_ids)

    return ImageTower(), TextTower()
