"""The towers of the transformers families (``clip``: ``CLIPModel``, ``siglip``: ``SiglipModel``) on torch, and the
JSON of their image processors (no Ray import).

Both families expose ``get_image_features(pixel_values)`` and ``get_text_features(input_ids, attention_mask)``;
in transformers 5 these return an output object whose ``.pooler_output`` is the projected embedding (not
normalised). The tokenizer is the folder's own (``AutoTokenizer``), called with the family's padding and
context length from its :class:`~serve_app.models.base.ModelSpec`.
"""

from pathlib import Path

import numpy as np

from serve_app.models.base import Embedder, ModelLoadError, ModelSpec, resolve_device, set_threads
from serve_app.models.hub import load_hint, read_json, weights_kind


def image_processor_config(folder: Path) -> dict:
    """The saved image processor config of a transformers folder: ``preprocessor_config.json`` (the hub's layout)
    or the ``image_processor`` entry of ``processor_config.json`` (how transformers 5 saves a processor); ``{}``
    when neither is there."""
    config = read_json(folder / "preprocessor_config.json")
    if config is None:
        config = (read_json(folder / "processor_config.json") or {}).get("image_processor")
    return config if isinstance(config, dict) else {}


def hf_tokenize(tokenizer, spec: ModelSpec):
    """The family's tokenisation as a :data:`~serve_app.models.base.Tokenize`: truncate to
    ``spec.context_length`` and pad to the batch's longest text or to ``context_length`` (``spec.padding``)."""
    padding = True if spec.padding == "longest" else "max_length"

    def tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        tokens = tokenizer(texts, padding=padding, truncation=True, max_length=spec.context_length,
                           return_tensors="np")
        ids = tokens["input_ids"].astype(np.int64)  # [N, L]
        mask = tokens.get("attention_mask")
        return ids, (np.ones_like(ids) if mask is None else mask.astype(np.int64))

    return tokenize


def load_processor(folder: Path, model: str):
    """``AutoProcessor`` of a transformers folder (image processor + tokenizer).

    Raises:
        ModelLoadError: the processor files are missing or unreadable.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(folder))
    except Exception as e:  # transformers raises OSError/ValueError/HF hub errors
        raise ModelLoadError(load_hint(model, e)) from e


def load_model(folder: Path, model: str):
    """``AutoModel`` in float32, in eval mode.

    Raises:
        ModelLoadError: the weights or config cannot be loaded.
    """
    import torch
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    except Exception as e:
        raise ModelLoadError(load_hint(model, e)) from e


def load_torch(folder: Path, model: str, spec: ModelSpec, dtype: str = "float32", num_threads: int | None = None,
               device: str | None = None) -> Embedder:
    """A torch :class:`~serve_app.models.base.Embedder` of a ``clip`` or ``siglip`` folder.

    Raises:
        ValueError: unknown device, or CUDA asked for without a GPU.
        ModelLoadError: the weights, config or processor cannot be loaded.
    """
    device = resolve_device(device)
    set_threads(num_threads)
    processor = load_processor(folder, model)
    net = load_model(folder, model).to(device)
    embedder = Embedder(model=net, spec=spec, tokenize=hf_tokenize(processor.tokenizer, spec), model_id=model,
                        dtype=dtype, weights=weights_kind(model), device=device, runtime="torch", processor=processor)
    embedder.image_forward = lambda pixels: _image_features(embedder, pixels)
    embedder.text_forward = lambda ids, mask: _text_features(embedder, ids, mask)
    return embedder


def _image_features(embedder: Embedder, pixel_values: np.ndarray) -> np.ndarray:
    """float32 normalised pixels ``(N, 3, H, W)`` → float32 ``(N, D)`` projections."""
    import torch

    with torch.inference_mode(), embedder.autocast():
        features = embedder.model.get_image_features(
            pixel_values=torch.from_numpy(pixel_values).to(embedder.device)).pooler_output  # [N, D]
    return features.float().cpu().numpy()


def _text_features(embedder: Embedder, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """int64 token ids and mask ``(N, L)`` → float32 ``(N, D)`` projections."""
    import torch

    with torch.inference_mode(), embedder.autocast():
        features = embedder.model.get_text_features(
            input_ids=torch.from_numpy(input_ids).to(embedder.device),
            attention_mask=torch.from_numpy(attention_mask).to(embedder.device)).pooler_output  # [N, D]
    return features.float().cpu().numpy()


def tower_modules(net):
    """``(image, text)`` ``torch.nn.Module``s around a transformers model's two projections, for ONNX export:
    ``pixel_values`` ``(N, 3, H, W)`` → ``(N, D)`` and ``(input_ids, attention_mask)`` ``(N, L)`` → ``(N, D)``."""
    import torch

    class ImageTower(torch.nn.Module):
        def forward(self, pixel_values):  # [N, 3, H, W] -> [N, D]
            return net.get_image_features(pixel_values=pixel_values).pooler_output

    class TextTower(torch.nn.Module):
        def forward(self, input_ids, attention_mask):  # [N, L] -> [N, D]
            return net.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    return ImageTower(), TextTower()
