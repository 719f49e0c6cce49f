"""Dual-encoder models of three families behind one interface (no Ray import).

- :mod:`~serve_app.models.base`: :class:`Embedder` (the shared interface), :class:`ModelSpec` (pixels and text);
- :mod:`~serve_app.models.hub`: folders, hub ids and family detection;
- one module per family — :mod:`~serve_app.models.clip`, :mod:`~serve_app.models.siglip`,
  :mod:`~serve_app.models.openclip` — saying how to read its spec and load its towers;
- :mod:`~serve_app.models.onnx_runtime`: every family's towers on ONNX Runtime;
- :mod:`~serve_app.models.random_weights`: random-weight folders of every family (tests, offline runs).

``load_embedder(model, dtype, runtime)`` is what ingestion, serving, ``evaluate`` and ``embed`` call;
``model_spec(model)`` reads the family, dimension and preprocessing from JSON alone (no weights, no
``transformers`` import), for the places that only prepare pixels or record what an index was built with.
"""

import functools
from types import ModuleType

from serve_app.models.base import (DEFAULT_MODEL, DTYPES, FAMILIES, RUNTIMES, Embedder, ModelLoadError, ModelSpec,
                                   resolve_device)
from serve_app.models.hub import detect_family, hub_reachable, is_local, model_folder, weights_kind

__all__ = ["DEFAULT_MODEL", "DTYPES", "FAMILIES", "RUNTIMES", "Embedder", "ModelLoadError", "ModelSpec",
           "detect_family", "family_module", "hub_reachable", "is_local", "load_embedder", "load_tokenizer",
           "model_folder", "model_spec", "resolve_device", "weights_kind"]


def family_module(family: str) -> ModuleType:
    """The module of a family: ``read_spec(folder, model)``, ``load_torch(...)``, ``load_model(folder, model)`` and
    ``tower_modules(net)``.

    Raises:
        ValueError: not one of :data:`FAMILIES`.
    """
    if family == "clip":
        from serve_app.models import clip as module
    elif family == "siglip":
        from serve_app.models import siglip as module
    elif family == "open_clip":
        from serve_app.models import openclip as module
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return module


@functools.lru_cache(maxsize=16)
def model_spec(model: str) -> ModelSpec:
    """The :class:`ModelSpec` of a hub id or folder — family, dimension, preprocessing — from its JSON files alone.

    Cached per process (a model folder does not change under a running service).

    Raises:
        ModelLoadError: the folder cannot be found or its configs name no supported family.
    """
    folder = model_folder(model)
    return family_module(detect_family(model, folder)).read_spec(folder, model)


def load_tokenizer(model: str):
    """``(tokenize, processor)``: the family's :data:`~serve_app.models.base.Tokenize` and, for the transformers
    families, the loaded ``AutoProcessor`` (``None`` for open_clip).

    Raises:
        ModelLoadError: the tokenizer files cannot be loaded.
    """
    spec, folder = model_spec(model), model_folder(model)
    if spec.family == "open_clip":
        from serve_app.models.openclip import load_tokenizer as open_clip_tokenizer

        return open_clip_tokenizer(folder, model), None
    from serve_app.models.hf_towers import hf_tokenize, load_processor

    processor = load_processor(folder, model)
    return hf_tokenize(processor.tokenizer, spec), processor


def load_embedder(model: str = DEFAULT_MODEL, dtype: str = "float32", runtime: str = "torch",
                  num_threads: int | None = None, device: str | None = None) -> Embedder:
    """Load the model of any family for a runtime: ``"torch"`` (dtype ``float32`` or ``bfloat16``, CPU or GPU) or
    ``"onnx"`` (ONNX Runtime on CPU; dtype ``float32`` or ``int8``). Never falls back to another model.

    Args:
        model: hub id (default :data:`DEFAULT_MODEL`), ``hf-hub:`` open_clip id, or a local folder.
        dtype: see above.
        runtime: ``"torch"`` or ``"onnx"``.
        num_threads: intra-op threads; ``None`` means every core this process may run on.
        device: torch only; see :func:`resolve_device` (the default runs on the GPU when one is visible).

    Raises:
        ValueError: unknown runtime, dtype or device, or CUDA asked for without a GPU.
        ModelLoadError: the model cannot be loaded; the message says what was tried and how to point at a
            local copy.
    """
    if runtime == "onnx":
        from serve_app.models.onnx_runtime import load_onnx

        return load_onnx(model, dtype=dtype, num_threads=num_threads)
    if runtime != "torch":
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    spec = model_spec(model)
    return family_module(spec.family).load_torch(model_folder(model), model, spec, dtype=dtype,
                                                 num_threads=num_threads, device=device)
