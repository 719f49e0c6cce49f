"""CLIP's image and text towers on ONNX Runtime's CPU provider, exported from the same Hugging Face folder.

:func:`export_towers` traces ``get_image_features`` (``pixel_values`` float32 ``(N, 3, H, W)`` →
``image_embeds`` ``(N, D)``) and ``get_text_features`` (``input_ids``, ``attention_mask`` int64 ``(N, L)`` →
``text_embeds`` ``(N, D)``) with ``torch.onnx.export`` (the dynamo exporter, batch and sequence axes dynamic),
in float32. ``dtype="int8"`` adds ONNX Runtime's dynamic quantisation of both graphs (``quantize_dynamic``, int8
weights, activations quantised per batch at run time; onnxruntime docs, "Quantize ONNX models"). int8 changes
the embeddings: measure recall on real weights and queries (``python -m batch_jobs evaluate``) before serving it,
and ingest with the same setting.

Exports are cached next to the model, in ``<model folder>/onnx/<key>/``, or — for a hub id or a read-only folder
— under ``$VS_ONNX_CACHE`` (default ``~/.cache/visual-search/onnx``). ``key`` hashes the model's
``config.json``, the weights file's size and mtime, and the torch and exporter versions, so a changed model
exports again. ``python -m batch_jobs export-onnx --model M [--dtype int8]`` fills the cache ahead of time
(e.g. in a container build); otherwise the first load exports (seconds for the tiny test model, ~30 s for
ViT-B/32 on 2 cores).
"""

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.embedding import (ClipEmbedder, ModelLoadError, _from_pretrained, _is_local, _load_hint, load_model_config,
                                 load_processor, weights_kind)

log = logging.getLogger("visual_search.onnx")

ONNX_DTYPES = ("float32", "int8")
EXPORT_VERSION = 1  # bump when the exported graphs change
IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"


def _model_folder(model: str) -> Path:
    """The local folder holding ``model``: the folder itself, or the hub cache's snapshot of a hub id.

    Raises:
        ModelLoadError: a hub id with no cached copy.
    """
    from huggingface_hub import snapshot_download

    if _is_local(model):
        return Path(model).expanduser().resolve()
    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as e:  # huggingface_hub raises LocalEntryNotFoundError and friends
        raise ModelLoadError(_load_hint(model, e)) from e


def cache_key(folder: Path) -> str:
    """16 hex digits identifying the model files and the exporter (see module docstring)."""
    import torch

    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            stat = (folder / name).stat()
            digest.update(f"{name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    digest.update(f"torch={torch.__version__};export={EXPORT_VERSION}".encode())
    return digest.hexdigest()[:16]


def cache_dir(model: str) -> Path:
    """Where the exports of ``model`` live: ``<folder>/onnx/<key>`` when that folder is writable, else
    ``$VS_ONNX_CACHE/<folder name>-<key>``."""
    folder = _model_folder(model)
    key = cache_key(folder)
    if os.access(folder, os.W_OK):
        return folder / "onnx" / key
    root = Path(os.environ.get("VS_ONNX_CACHE") or Path.home() / ".cache" / "visual-search" / "onnx")
    return root / f"{folder.name}-{key}"


def _atomic_export(target: Path, write) -> None:
    """Run ``write(tmp_path)`` and rename the result to ``target``: a reader never sees half an export, and two
    processes exporting at once both end with a complete file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(handle)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_towers(model: str, dtype: str = "float32") -> Path:
    """Export (or find cached) ONNX graphs of both towers; returns the folder holding ``image.onnx`` and
    ``text.onnx`` (``image-int8.onnx``/``text-int8.onnx`` too for ``dtype="int8"``).

    Raises:
        ValueError: ``dtype`` not in :data:`ONNX_DTYPES`.
        ModelLoadError: the model cannot be loaded.
    """
    if dtype not in ONNX_DTYPES:
        raise ValueError(f"onnx dtype must be one of {ONNX_DTYPES}, got {dtype!r}")
    out = cache_dir(model)
    image, text = out / IMAGE_FILE, out / TEXT_FILE
    if not (image.exists() and text.exists()):
        log.warning("exporting CLIP towers of %s to ONNX in %s (once; cached)", model, out)
        _export_float32(model, image, text)
    if dtype == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for source in (image, text):
            quantized = source.with_name(source.stem + "-int8.onnx")
            if not quantized.exists():
                _atomic_export(quantized, lambda tmp, s=source: quantize_dynamic(s, tmp, weight_type=QuantType.QInt8))
    return out


def _export_float32(model: str, image: Path, text: Path) -> None:
    import torch
    from transformers import CLIPModel

    try:
        clip = _from_pretrained(CLIPModel, model, dtype=torch.float32).eval()
    except Exception as e:
        raise ModelLoadError(_load_hint(model, e)) from e
    side = int(clip.config.vision_config.image_size)

    class ImageTower(torch.nn.Module):
        def forward(self, pixel_values):  # [N, 3, H, W] -> [N, D]
            return clip.get_image_features(pixel_values=pixel_values).pooler_output

    class TextTower(torch.nn.Module):
        def forward(self, input_ids, attention_mask):  # [N, L] -> [N, D]
            return clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    batch, seq = torch.export.Dim("batch", max=4096), torch.export.Dim("seq", max=77)
    with torch.inference_mode(False), torch.no_grad():
        _atomic_export(image, lambda tmp: torch.onnx.export(
            ImageTower(), (torch.zeros(2, 3, side, side),), str(tmp), dynamo=True, external_data=False,
            input_names=["pixel_values"], output_names=["image_embeds"],
            dynamic_shapes={"pixel_values": {0: batch}}, verbose=False))
        ids = torch.full((2, 8), int(clip.config.text_config.eos_token_id or 2), dtype=torch.int64)
        _atomic_export(text, lambda tmp: torch.onnx.export(
            TextTower(), (ids, torch.ones_like(ids)), str(tmp), dynamo=True, external_data=False,
            input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}, verbose=False))


class OnnxTowers:
    """ONNX Runtime sessions of both towers (CPU provider).

    Args:
        folder: from :func:`export_towers`. dtype: ``"float32"`` or ``"int8"``.
        num_threads: intra-op threads per session (both run on the Encoder's one forward thread, never at once).
    """

    def __init__(self, folder: Path, dtype: str, num_threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        suffix = "-int8" if dtype == "int8" else ""
        self.image = ort.InferenceSession(str(folder / f"image{suffix}.onnx"), options, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(folder / f"text{suffix}.onnx"), options, providers=["CPUExecutionProvider"])

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 ``(N, 3, H, W)`` normalised pixels → float32 ``(N, D)`` projections (not normalised)."""
        return self.image.run(None, {"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})[0]

    def text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 ``(N, L)`` token ids and mask → float32 ``(N, D)`` projections (not normalised)."""
        return self.text.run(None, {"input_ids": input_ids.astype(np.int64),
                                    "attention_mask": attention_mask.astype(np.int64)})[0]


def export_summary(folder: Path) -> dict:
    """Files and sizes of an export folder (for the CLI)."""
    return {"folder": str(folder), "files": {p.name: p.stat().st_size for p in sorted(folder.glob("*.onnx"))}}


def load_onnx_clip(model: str, dtype: str = "float32", num_threads: int | None = None):
    """A :class:`~serve_app.embedding.ClipEmbedder` whose forwards run on ONNX Runtime (CPU), exporting the towers
    first if they are not cached.

    Raises:
        ValueError: ``dtype`` not ``"float32"``/``"int8"``.
        ModelLoadError: the model cannot be loaded.
    """
    if dtype not in ONNX_DTYPES:
        raise ValueError(f"the onnx runtime runs dtype {ONNX_DTYPES}, got {dtype!r} (bfloat16 is torch's)")
    folder = export_towers(model, dtype)
    towers = OnnxTowers(folder, dtype, num_threads or len(os.sched_getaffinity(0)))
    config = load_model_config(model, check_processor=False)
    return OnnxClipEmbedder(model=towers, processor=load_processor(model), model_id=model, dtype=dtype,
                            weights=weights_kind(model), device="cpu", runtime="onnx",
                            projection_dim=int(config.projection_dim))


@dataclass
class OnnxClipEmbedder(ClipEmbedder):
    """:class:`~serve_app.embedding.ClipEmbedder` with ``model`` an :class:`OnnxTowers`: the same preprocessing,
    tokenizer and L2 normalisation, the towers' forwards on ONNX Runtime."""

    projection_dim: int = 0

    @property
    def dim(self) -> int:
        return self.projection_dim

    def _image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.model.image_features(pixel_values)

    def _text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.model.text_features(input_ids, attention_mask)
