"""Every family's image and text towers on ONNX Runtime's CPU provider, exported from the same model folder.

:func:`export_towers` traces the family's towers (:func:`serve_app.models.hf_towers.tower_modules` for ``clip``
and ``siglip``, :func:`serve_app.models.openclip.tower_modules` for ``open_clip``): ``pixel_values`` float32
``(N, 3, H, W)`` → ``image_embeds`` ``(N, D)``, and ``input_ids`` (+ ``attention_mask`` for the transformers
families) int64 ``(N, L)`` → ``text_embeds`` ``(N, D)``, with ``torch.onnx.export`` (the dynamo exporter; batch axis
dynamic, the sequence axis too for ``clip``, whose texts are padded to the batch's longest; SigLIP and open_clip
always pad to their context length), in float32. ``dtype="int8"`` adds ONNX Runtime's dynamic quantisation of both
graphs (``quantize_dynamic``, int8 weights, activations quantised per batch at run time; onnxruntime docs,
"Quantize ONNX models"). int8 changes the embeddings: measure recall on real weights and queries (``python -m
batch_jobs evaluate``) before serving it, and ingest with the same setting.

Exports are cached next to the model, in ``<model folder>/onnx/<key>/``, or — for a hub id or a read-only folder
— under ``$VS_ONNX_CACHE`` (default ``~/.cache/visual-search/onnx``). ``key`` hashes the model's config files,
the weights files' sizes and mtimes, and the torch and exporter versions, so a changed model exports again.
``python -m batch_jobs export-onnx --model M [--dtype int8]`` fills the cache ahead of time (e.g. in a container
build); otherwise the first load exports (seconds for the tiny test models, ~30 s for ViT-B/32 on 2 cores).
"""

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from serve_app.models.base import Embedder, ModelLoadError  # noqa: F401 (ModelLoadError: documented raise)
from serve_app.models.hub import model_folder, weights_kind

log = logging.getLogger("visual_search.onnx")

ONNX_DTYPES = ("float32", "int8")
EXPORT_VERSION = 2  # bump when the exported graphs change (2: every family; open_clip/SigLIP text at fixed length)
IMAGE_FILE, TEXT_FILE = "image.onnx", "text.onnx"
CONFIG_FILES = ("config.json", "open_clip_config.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")


def cache_key(folder: Path) -> str:
    """16 hex digits identifying the model files and the exporter (see module docstring)."""
    import torch

    digest = hashlib.sha256()
    for name in CONFIG_FILES:
        if (folder / name).exists():
            digest.update((folder / name).read_bytes())
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            stat = (folder / name).stat()
            digest.update(f"{name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    digest.update(f"torch={torch.__version__};export={EXPORT_VERSION}".encode())
    return digest.hexdigest()[:16]


def cache_dir(model: str) -> Path:
    """Where the exports of ``model`` live: ``<folder>/onnx/<key>`` when that folder is writable, else
    ``$VS_ONNX_CACHE/<folder name>-<key>``.

    Raises:
        ModelLoadError: a hub id with no cached copy and no reachable hub.
    """
    folder = model_folder(model).resolve()
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
        log.warning("exporting the towers of %s to ONNX in %s (once; cached)", model, out)
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

    from serve_app.models import family_module, model_spec

    spec = model_spec(model)
    module = family_module(spec.family)
    folder = model_folder(model)
    net = module.load_model(folder, model)
    image_tower, text_tower = module.tower_modules(net)
    side = spec.geometry.crop
    batch = torch.export.Dim("batch", max=4096)
    length = spec.context_length if spec.padding == "max_length" else 8
    ids = torch.ones((2, length), dtype=torch.int64)
    if spec.family == "open_clip":  # encode_text(input_ids): no mask, fixed context length
        text_args, names, shapes = (ids,), ["input_ids"], {"input_ids": {0: batch}}
    else:
        seq = {1: torch.export.Dim("seq", max=spec.context_length)} if spec.padding == "longest" else {}
        text_args, names = (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"]
        shapes = {"input_ids": {0: batch, **seq}, "attention_mask": {0: batch, **seq}}
    with torch.inference_mode(False), torch.no_grad():
        _atomic_export(image, lambda tmp: torch.onnx.export(
            image_tower, (torch.zeros(2, 3, side, side),), str(tmp), dynamo=True, external_data=False,
            input_names=["pixel_values"], output_names=["image_embeds"],
            dynamic_shapes={"pixel_values": {0: batch}}, verbose=False))
        _atomic_export(text, lambda tmp: torch.onnx.export(
            text_tower, text_args, str(tmp), dynamo=True, external_data=False, input_names=names,
            output_names=["text_embeds"], dynamic_shapes=shapes, verbose=False))


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
        self._text_inputs = {i.name for i in self.text.get_inputs()}

    def image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 ``(N, 3, H, W)`` normalised pixels → float32 ``(N, D)`` projections (not normalised)."""
        return self.image.run(None, {"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})[0]

    def text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 ``(N, L)`` token ids and mask → float32 ``(N, D)`` projections (not normalised); the mask is fed
        only to graphs that take one (open_clip's do not)."""
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return self.text.run(None, {k: v for k, v in feeds.items() if k in self._text_inputs})[0]


def export_summary(folder: Path) -> dict:
    """Files and sizes of an export folder (for the CLI)."""
    return {"folder": str(folder), "files": {p.name: p.stat().st_size for p in sorted(folder.glob("*.onnx"))}}


def load_onnx(model: str, dtype: str = "float32", num_threads: int | None = None) -> Embedder:
    """An :class:`~serve_app.models.base.Embedder` whose towers run on ONNX Runtime (CPU), exporting them first if
    they are not cached; preprocessing and tokenizer are the family's, as on torch.

    Raises:
        ValueError: ``dtype`` not ``"float32"``/``"int8"``.
        ModelLoadError: the model cannot be loaded.
    """
    from serve_app.models import load_tokenizer, model_spec

    if dtype not in ONNX_DTYPES:
        raise ValueError(f"the onnx runtime runs dtype {ONNX_DTYPES}, got {dtype!r} (bfloat16 is torch's)")
    spec = model_spec(model)
    folder = export_towers(model, dtype)
    towers = OnnxTowers(folder, dtype, num_threads or len(os.sched_getaffinity(0)))
    tokenize, processor = load_tokenizer(model)
    return Embedder(model=towers, spec=spec, tokenize=tokenize, model_id=model, image_forward=towers.image_features,
                    text_forward=towers.text_features, dtype=dtype, weights=weights_kind(model), device="cpu",
                    runtime="onnx", processor=processor)
