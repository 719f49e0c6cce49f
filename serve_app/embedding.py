"""CLIP model loading and the one embedding function shared by ingestion and serving (no Ray import).

Both sides call :meth:`ClipEmbedder.preprocess` then :meth:`ClipEmbedder.embed_pixels` (or
:meth:`ClipEmbedder.embed_images`, which is the two in a row), so catalog vectors and query vectors go
through the same preprocessing, precision and normalisation. Embeddings are float32 of shape
``(batch, D)`` and L2-normalised, so the dot product of two embeddings is their cosine similarity
(Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision").
"""

import contextlib
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from serve_app.preprocess import ClipGeometry, clip_batch
from serve_app.random_clip import RANDOM_WEIGHTS_MARKER

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DTYPES = ("float32", "bfloat16")
RUNTIMES = ("torch", "onnx")


class ModelLoadError(RuntimeError):
    """The CLIP weights or processor could not be loaded from the given hub id or folder."""


def _is_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def weights_kind(model: str) -> str:
    """``"random"`` for a folder written by ``make-random-clip``, else ``"pretrained"``."""
    return "random" if _is_local(model) and (Path(model).expanduser() / RANDOM_WEIGHTS_MARKER).exists() else "pretrained"


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


def _from_pretrained(cls, model: str, **kwargs):
    """``cls.from_pretrained`` from a folder, the local hub cache, or the hub — failing fast when offline.

    transformers retries an unreachable hub for minutes; we try the cache first and probe the hub once.
    """
    if _is_local(model):
        return cls.from_pretrained(str(Path(model).expanduser()), **kwargs)
    try:
        return cls.from_pretrained(model, local_files_only=True, **kwargs)
    except Exception:
        if not hub_reachable():
            raise OSError(f"the hub ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}) is not "
                          "reachable from this machine and there is no cached copy") from None
    return cls.from_pretrained(model, **kwargs)


def load_processor(model: str):
    """Load only the ``CLIPProcessor`` (image processor + tokenizer) of a hub id or local folder.

    Raises:
        ModelLoadError: nothing loadable at ``model``.
    """
    from transformers import CLIPProcessor

    try:
        return _from_pretrained(CLIPProcessor, model)
    except Exception as e:  # transformers raises OSError/ValueError/HF hub errors
        raise ModelLoadError(_load_hint(model, e)) from e


def _load_hint(model: str, error: Exception) -> str:
    if _is_local(model):
        tried = f"the local folder {model!r}"
        fix = "check that it holds config.json, model.safetensors and the processor files of a CLIPModel"
    else:
        tried = f"the Hugging Face hub id {model!r}"
        fix = ("download it where the hub is reachable (huggingface-cli download " + model +
               ") and point VS_MODEL / --model at that local folder, or make a random-weight folder for "
               "tests with: python -m batch_jobs make-random-clip OUT --size base")
    return f"could not load CLIP from {tried}: {type(error).__name__}: {error}. To fix: {fix}"


@dataclass
class ClipEmbedder:
    """A loaded CLIP model with its processor.

    Attributes:
        model_id: the hub id or folder it was loaded from.
        dim: embedding dimension ``D`` (512 for ViT-B/32).
        dtype: ``"float32"`` or ``"bfloat16"`` (bf16 autocast around the forward; outputs stay float32).
        weights: ``"random"`` for a folder made by ``make-random-clip``, else ``"pretrained"``.
        device: torch device the model runs on (``"cpu"`` or ``"cuda"``); inputs are moved there and
            outputs come back to host memory as NumPy.
    """

    model: object
    processor: object
    model_id: str
    dtype: str = "float32"
    weights: str = "pretrained"
    device: str = "cpu"
    runtime: str = "torch"

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def _autocast(self):
        import torch

        if self.dtype == "bfloat16":
            return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @functools.cached_property
    def geometry(self) -> ClipGeometry | None:
        """The processor's resize/crop settings, or ``None`` when it is not CLIP's (then the processor runs)."""
        try:
            return ClipGeometry.from_processor(self.processor.image_processor)
        except ValueError:
            return None

    @property
    def input_side(self) -> int:
        """Shortest-edge size the images are resized to, pixels (224 for ViT-B/32)."""
        return self.geometry.size if self.geometry else int(self.processor.image_processor.crop_size["height"])

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Geometric CLIP preprocessing: resize the shortest edge (bicubic) and centre-crop, computed on the crop
        box only (:func:`serve_app.preprocess.clip_batch`, within a few grey levels of the model folder's
        image processor). Rescaling and normalisation happen in :meth:`embed_pixels`, so what travels between
        stages is 4× smaller than float32.

        Args:
            images: RGB PIL images (see :func:`serve_app.images.decode_image`).

        Returns:
            uint8 array of shape ``(N, 3, H, W)`` (224×224 for ViT-B/32).
        """
        if self.geometry is not None:
            return clip_batch(list(images), self.geometry)
        if not images:
            size = self.processor.image_processor.crop_size
            return np.zeros((0, 3, size["height"], size["width"]), np.uint8)
        out = self.processor.image_processor(images=list(images), do_rescale=False, do_normalize=False,
                                             return_tensors="np")
        return np.clip(np.rint(out["pixel_values"]), 0, 255).astype(np.uint8)

    def normalise_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(N, 3, H, W)`` → float32, rescaled by 1/255 and normalised with the processor's
        ``image_mean``/``image_std`` (the rest of ``CLIPImageProcessor``)."""
        processor = self.processor.image_processor
        mean = np.asarray(processor.image_mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(processor.image_std, np.float32).reshape(1, 3, 1, 1)
        return (pixels.astype(np.float32) * np.float32(processor.rescale_factor) - mean) / std

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed preprocessed images.

        Args:
            pixels: uint8 ``(N, 3, H, W)`` from :meth:`preprocess`.

        Returns:
            float32 ``(N, D)``, L2-normalised.
        """
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return _l2_normalise(self._image_features(self.normalise_pixels(np.asarray(pixels))))  # [N, D]

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images: ``embed_pixels(preprocess(images))``; float32 ``(N, D)``, L2-normalised."""
        return self.embed_pixels(self.preprocess(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (truncated to CLIP's 77-token context).

        Returns:
            float32 ``(N, D)``, L2-normalised.

        Raises:
            ValueError: an empty or blank text.
        """
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text to embed must be a non-empty string, got {t!r}")
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=77,
                                          return_tensors="np")
        return _l2_normalise(self._text_features(tokens["input_ids"], tokens["attention_mask"]))  # [N, D]

    def _image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        """float32 normalised pixels ``(N, 3, H, W)`` → float32 ``(N, D)`` projections (the runtime's forward)."""
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.model.get_image_features(
                pixel_values=torch.from_numpy(pixel_values).to(self.device)).pooler_output  # [N, D]
        return features.float().cpu().numpy()

    def _text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int64 token ids and mask ``(N, L)`` → float32 ``(N, D)`` projections (the runtime's forward)."""
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.model.get_text_features(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device)).pooler_output  # [N, D]
        return features.float().cpu().numpy()


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def resolve_device(device: str | None = None) -> str:
    """The torch device to run CLIP on: ``None``/``"auto"`` picks ``"cuda"`` when a GPU is visible to this
    process (Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs an actor asked for with ``num_gpus``, and hides
    them from actors that asked for none), else ``"cpu"``.

    Raises:
        ValueError: ``device`` is neither auto, ``"cpu"`` nor a CUDA device, or CUDA was asked for and
            no GPU is visible.
    """
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA GPU in this process "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    return device


def load_clip(model: str = DEFAULT_MODEL, dtype: str = "float32", num_threads: int | None = None,
              device: str | None = None) -> ClipEmbedder:
    """Load ``CLIPModel`` + ``CLIPProcessor`` from a hub id or a local folder; never falls back.

    Args:
        model: hub id (default ``openai/clip-vit-base-patch32``) or a folder in the same layout.
        dtype: ``"float32"`` or ``"bfloat16"`` (bf16 autocast around the forward pass, on CPU or GPU).
        num_threads: torch intra-op threads; ``None`` means every core this process may run on. Set
            explicitly because Ray starts workers with ``OMP_NUM_THREADS=1`` for fractional-CPU actors,
            which would run the forward pass on one core.
        device: see :func:`resolve_device`; the default runs on the GPU when one is visible.

    Raises:
        ValueError: unknown dtype or device, or CUDA asked for without a GPU.
        ModelLoadError: the weights or processor could not be loaded; the message says what was tried
            and how to point at a local copy.
    """
    import torch
    from transformers import CLIPModel

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    device = resolve_device(device)
    torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
    processor = load_processor(model)
    try:
        clip = _from_pretrained(CLIPModel, model, dtype=torch.float32).eval()
    except Exception as e:
        raise ModelLoadError(_load_hint(model, e)) from e
    weights = weights_kind(model)
    return ClipEmbedder(model=clip.to(device), processor=processor, model_id=model, dtype=dtype, weights=weights,
                        device=device)


def load_model_config(model: str, check_processor: bool = True):
    """The ``CLIPConfig`` of a hub id or folder, without the weights (and, by default, checks that the
    processor loads too).

    Raises:
        ModelLoadError: config or processor cannot be loaded.
    """
    from transformers import CLIPConfig

    if check_processor:
        load_processor(model)
    try:
        return _from_pretrained(CLIPConfig, model)
    except Exception as e:
        raise ModelLoadError(_load_hint(model, e)) from e


def projection_dim(model: str) -> int:
    """The embedding dimension ``D`` of a CLIP hub id or folder (``projection_dim``, 512 for ViT-B/32).

    A local folder's ``config.json`` is read as JSON (no ``transformers`` import, which costs seconds of start-up
    where only this number is needed); anything else goes through :func:`load_model_config`.

    Raises:
        ModelLoadError: the config cannot be loaded.
    """
    if _is_local(model):
        try:
            config = json.loads((Path(model).expanduser() / "config.json").read_text())
            if config.get("model_type") == "clip" and isinstance(config.get("projection_dim"), int):
                return config["projection_dim"]
        except (OSError, ValueError, AttributeError):
            pass  # load_model_config below says what is wrong
    return int(load_model_config(model, check_processor=False).projection_dim)


def load_embedder(model: str = DEFAULT_MODEL, dtype: str = "float32", runtime: str = "torch",
                  num_threads: int | None = None, device: str | None = None) -> ClipEmbedder:
    """The CLIP embedder for a runtime: ``"torch"`` (:func:`load_clip`; dtype ``float32`` or ``bfloat16``) or
    ``"onnx"`` (:func:`serve_app.onnx_clip.load_onnx_clip`, ONNX Runtime on CPU; dtype ``float32`` or ``int8``).

    Raises:
        ValueError: unknown runtime, or a dtype the runtime does not offer.
        ModelLoadError: the model cannot be loaded.
    """
    if runtime == "torch":
        return load_clip(model, dtype=dtype, num_threads=num_threads, device=device)
    if runtime == "onnx":
        from serve_app.onnx_clip import load_onnx_clip

        return load_onnx_clip(model, dtype=dtype, num_threads=num_threads)
    raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
