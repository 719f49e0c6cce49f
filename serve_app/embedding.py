"""The embedding entry points used across the service, kept under their historical names (no Ray import).

The model code lives in :mod:`serve_app.models` (the shared interface, one module per family, the ONNX runtime,
the random-weight makers); this module re-exports it and keeps the CLIP-era helpers working on every family:
``load_clip`` is ``load_embedder`` on torch, ``projection_dim`` is the model's embedding dimension, ``ClipEmbedder``
is :class:`serve_app.models.base.Embedder`.
"""

from serve_app.models import (DEFAULT_MODEL, DTYPES, FAMILIES, RUNTIMES, Embedder, ModelLoadError, ModelSpec,  # noqa: F401
                              hub_reachable, load_embedder, model_folder, model_spec, resolve_device, weights_kind)
from serve_app.models.hub import is_local as _is_local  # noqa: F401
from serve_app.models.hub import load_hint as _load_hint  # noqa: F401

ClipEmbedder = Embedder


def load_clip(model: str = DEFAULT_MODEL, dtype: str = "float32", num_threads: int | None = None,
              device: str | None = None) -> Embedder:
    """:func:`serve_app.models.load_embedder` on the torch runtime (any family, despite the name).

    Raises:
        ValueError: unknown dtype or device, or CUDA asked for without a GPU.
        ModelLoadError: the model cannot be loaded; the message says what was tried and how to point at a
            local copy.
    """
    return load_embedder(model, dtype=dtype, runtime="torch", num_threads=num_threads, device=device)


def load_processor(model: str):
    """The Hugging Face ``AutoProcessor`` (image processor + tokenizer) of a ``clip`` or ``siglip`` model.

    Raises:
        ModelLoadError: nothing loadable at ``model``, or an open_clip model (which has no such processor).
    """
    from serve_app.models.hf_towers import load_processor as hf_processor

    spec = model_spec(model)
    if spec.family == "open_clip":
        raise ModelLoadError(f"{model!r} is an open_clip model: it has no Hugging Face processor")
    return hf_processor(model_folder(model), model)


def load_model_config(model: str, check_processor: bool = True) -> ModelSpec:
    """Check that ``model`` can be found and read without loading its weights: its :class:`ModelSpec` (and, by
    default, that the tokenizer loads too).

    Raises:
        ModelLoadError: config or tokenizer cannot be loaded.
    """
    spec = model_spec(model)
    if check_processor:
        from serve_app.models import load_tokenizer

        load_tokenizer(model)
    return spec


def projection_dim(model: str) -> int:
    """The embedding dimension ``D`` of a hub id or folder (512 for ViT-B/32, 768 for SigLIP B/16), read from
    its JSON files (no ``transformers`` import).

    Raises:
        ModelLoadError: the config cannot be read.
    """
    return model_spec(model).dim
