"""Where a model's files are and which family they belong to, read as JSON (no ``transformers`` import).

A model is named by a local folder, a Hugging Face hub id (``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``,
``google/siglip2-base-patch16-224``) or an open_clip hub id (``hf-hub:Marqo/marqo-ecommerce-embeddings-B``).
:func:`model_folder` turns each into a local folder (the folder itself, or the hub cache's snapshot, downloaded
once when the hub is reachable); :func:`detect_family` reads the family from it:

- ``config.json`` with ``model_type: clip`` → ``clip`` (transformers ``CLIPModel``);
- ``config.json`` with ``model_type: siglip`` → ``siglip`` (``SiglipModel``: SigLIP and fixed-resolution SigLIP 2);
- ``open_clip_config.json`` (and no such ``config.json``), or an ``hf-hub:`` id → ``open_clip``.

``model_type: siglip2`` (the NaFlex checkpoints, ``Siglip2Model``) is refused with a message naming the
fixed-resolution alternatives.
"""

import json
import os
from pathlib import Path

from serve_app.models.base import ModelLoadError

RANDOM_WEIGHTS_MARKER = "random_weights.json"
OPEN_CLIP_PREFIX = "hf-hub:"
# What a snapshot download fetches: configs, tokenizer files and one family's safetensors weights (not the
# TF/Flax/msgpack copies, nor — for a transformers id — the open_clip copy many LAION repos also hold).
CONFIG_PATTERNS = ["*.json", "*.txt", "*.model", "*.gz", "*.tiktoken"]
ALLOW_PATTERNS = CONFIG_PATTERNS + ["model.safetensors"]
OPEN_CLIP_PATTERNS = CONFIG_PATTERNS + ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def is_local(model: str) -> bool:
    """Whether ``model`` names a local path (absolute, relative or ``~``) rather than a hub id."""
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def weights_kind(model: str) -> str:
    """``"random"`` for a folder written by ``make-random-model``/``make-random-clip``, else ``"pretrained"``."""
    return "random" if is_local(model) and (Path(model).expanduser() / RANDOM_WEIGHTS_MARKER).exists() else "pretrained"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint (``HF_ENDPOINT``) answers within ``timeout_s`` seconds."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
        return True
    except httpx.HTTPError:
        return False


def load_hint(model: str, error: Exception | str) -> str:
    """A :class:`ModelLoadError` message: what was tried, what went wrong, how to point at a local copy."""
    if is_local(model):
        tried = f"the local folder {model!r}"
        fix = ("check that it holds a CLIPModel or SiglipModel folder (config.json, model.safetensors, the processor "
               "and tokenizer files) or an open_clip folder (open_clip_config.json and the weights)")
    else:
        repo = model.removeprefix(OPEN_CLIP_PREFIX)
        tried = f"the Hugging Face hub id {model!r}"
        fix = (f"download it where the hub is reachable (huggingface-cli download {repo} --local-dir DIR) and "
               "point VS_MODEL / --model at that folder, or make a random-weight folder for tests with: "
               "python -m batch_jobs make-random-model OUT --family clip|siglip|open_clip --size base")
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return f"could not load CLIP, SigLIP or open_clip from {tried}: {reason}. To fix: {fix}"


def model_folder(model: str) -> Path:
    """The local folder holding ``model``'s files.

    A local path is returned as is; a hub id resolves to the hub cache's snapshot, downloaded first (configs,
    tokenizer, and ``model.safetensors`` — or, for an ``hf-hub:`` open_clip id, ``open_clip_model.safetensors``)
    when not cached and the hub answers.

    Raises:
        ModelLoadError: a local path that is not a folder, or a hub id with no cached copy and no reachable hub.
    """
    if is_local(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(load_hint(model, "no such folder"))
        return folder
    from huggingface_hub import snapshot_download

    repo = model.removeprefix(OPEN_CLIP_PREFIX)
    patterns = OPEN_CLIP_PATTERNS if model.startswith(OPEN_CLIP_PREFIX) else ALLOW_PATTERNS
    try:
        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=patterns))
    except Exception as e:  # huggingface_hub raises LocalEntryNotFoundError and friends
        if not hub_reachable():
            raise ModelLoadError(load_hint(model, (
                f"the hub ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) is not reachable from this "
                f"machine and there is no cached copy ({type(e).__name__})"))) from None
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:
        raise ModelLoadError(load_hint(model, e)) from e


def read_json(path: Path) -> dict | None:
    """A JSON object file, or ``None`` when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def detect_family(model: str, folder: Path | None = None) -> str:
    """The family of ``model`` (see the module docstring), read from its folder's JSON files.

    Args:
        model: the name the user gave (an ``hf-hub:`` prefix means open_clip).
        folder: its :func:`model_folder` (resolved here when ``None``).

    Raises:
        ModelLoadError: no config naming a supported family (the message lists what was found).
    """
    folder = folder or model_folder(model)
    config = read_json(folder / "config.json")
    model_type = (config or {}).get("model_type")
    if model.startswith(OPEN_CLIP_PREFIX) or (model_type is None and (folder / "open_clip_config.json").is_file()):
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(load_hint(model, f"no open_clip_config.json in {folder}"))
        return "open_clip"
    if model_type in ("clip", "siglip"):
        return model_type
    if model_type == "siglip2":
        raise ModelLoadError(load_hint(model, (
            "SigLIP 2 NaFlex checkpoints (model_type siglip2, Siglip2Model: variable resolution) are not supported; "
            "use a fixed-resolution SigLIP 2 checkpoint such as google/siglip2-base-patch16-224, which loads as "
            "SiglipModel")))
    found = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    raise ModelLoadError(load_hint(model, (
        f"config.json model_type is {model_type!r} (expected 'clip' or 'siglip'), and there is no "
        f"open_clip_config.json; the folder holds {found}")))
