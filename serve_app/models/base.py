"""The one embedding interface every model family and runtime sits behind (no Ray import).

Ingestion and serving both call :meth:`Embedder.preprocess` then :meth:`Embedder.embed_pixels` (or
:meth:`Embedder.embed_images`, the two in a row) and :meth:`Embedder.embed_texts`, so catalog vectors and query
vectors go through the same preprocessing, precision and normalisation. A family (``clip``, ``siglip``,
``open_clip``) contributes a :class:`ModelSpec` read from its folder's config (what the pixels and the text must
look like) and its towers; a runtime (``torch``, ``onnx``) runs the towers. Embeddings are float32 of shape
``(batch, D)``, L2-normalised, so the dot product of two is their cosine similarity (Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision"; Zhai et al. 2023, "Sigmoid Loss for
Language Image Pre-Training", for SigLIP).
"""

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from serve_app.preprocess import ClipGeometry, clip_batch

# The default model: LAION-2B CLIP ViT-B/32, the same CLIPModel layout and cost as OpenAI's B/32 and better
# retrieval (ImageNet zero-shot 66.6 vs 63.3; open_clip's results tables).
DEFAULT_MODEL = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
FAMILIES = ("clip", "siglip", "open_clip")
DTYPES = ("float32", "bfloat16")
RUNTIMES = ("torch", "onnx")

# Tokens: int64 ids and attention mask, both (N, L).
Tokenize = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


class ModelLoadError(RuntimeError):
    """The weights, config or tokenizer of a model could not be loaded from the given hub id or folder."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects of its inputs and what it returns, read from its folder's config.

    Attributes:
        family: ``"clip"``, ``"siglip"`` or ``"open_clip"``.
        dim: embedding dimension ``D`` (512 for ViT-B/32, 768 for SigLIP B/16).
        geometry: resize / crop of the pixels (:class:`serve_app.preprocess.ClipGeometry`).
        mean, std: per-channel normalisation of pixels rescaled to [0, 1] (CLIP: OpenAI's; SigLIP: 0.5).
        rescale: factor from uint8 to [0, 1] (1/255).
        context_length: text tokens the text tower takes at most (CLIP 77, SigLIP 64).
        padding: ``"longest"`` (pad a batch to its longest text; CLIP pools the end-of-text token) or
            ``"max_length"`` (always ``context_length``; SigLIP pools the last position, open_clip's tokenizers
            always pad).
    """

    family: str
    dim: int
    geometry: ClipGeometry
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale: float = 1 / 255
    context_length: int = 77
    padding: str = "longest"

    @property
    def projection_dim(self) -> int:
        """:attr:`dim` under the name transformers' ``CLIPConfig`` gives it."""
        return self.dim

    def preprocessing(self) -> str:
        """The preprocessing signature stored with an index, e.g. ``"shortest224-crop224-bicubic-floor
        mean=0.4815,0.4578,0.4082 std=0.2686,0.2613,0.2758 text=77/longest"``: equal strings mean query and catalog
        are prepared the same way."""
        mean, std = (",".join(f"{v:.4f}" for v in values) for values in (self.mean, self.std))
        return (f"{self.geometry.signature()} mean={mean} std={std} "
                f"text={self.context_length}/{self.padding}")


@dataclass
class Embedder:
    """A loaded model of any family on any runtime, with its preprocessing and tokenizer.

    Attributes:
        model: the runtime's model (a transformers ``CLIPModel``/``SiglipModel``, an open_clip ``CLIP``, or
            :class:`serve_app.models.onnx_runtime.OnnxTowers`).
        spec: the family's :class:`ModelSpec`.
        tokenize: texts → int64 ``(ids, mask)`` of shape ``(N, L)``, the family's tokenizer with its padding.
        model_id: the hub id or folder it was loaded from.
        dtype: ``"float32"``, ``"bfloat16"`` (torch autocast; outputs stay float32) or ``"int8"`` (onnx).
        weights: ``"random"`` for a folder written by ``make-random-model``, else ``"pretrained"``.
        device: torch device (``"cpu"`` or ``"cuda"``); outputs come back to host memory as NumPy.
        runtime: ``"torch"`` or ``"onnx"``.
        processor: the Hugging Face processor of ``clip``/``siglip`` folders (``None`` for open_clip).
        image_forward, text_forward: the runtime's towers: float32 normalised pixels ``(N, 3, H, W)`` →
            float32 ``(N, D)``, and int64 ``(ids, mask)`` ``(N, L)`` → float32 ``(N, D)`` (not normalised).
    """

    model: object
    spec: ModelSpec
    tokenize: Tokenize
    model_id: str
    image_forward: Callable[[np.ndarray], np.ndarray] = field(repr=False, default=None)
    text_forward: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(repr=False, default=None)
    dtype: str = "float32"
    weights: str = "pretrained"
    device: str = "cpu"
    runtime: str = "torch"
    processor: object = None

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def dim(self) -> int:
        """Embedding dimension ``D``."""
        return self.spec.dim

    @property
    def geometry(self) -> ClipGeometry:
        """The resize/crop the pixels get (the ingress and the video decoder prepare frames with it)."""
        return self.spec.geometry

    @property
    def input_side(self) -> int:
        """Shortest-edge size the images are resized to, pixels (224 for ViT-B/32); JPEGs are decoded with
        their short side at least this (times :data:`serve_app.preprocess.DRAFT_MARGIN`)."""
        return self.spec.geometry.size

    def info(self) -> dict:
        """Family, model id, dimension, runtime, dtype and preprocessing signature (``/healthz``, the index)."""
        return {"family": self.family, "model_id": self.model_id, "dim": self.dim, "runtime": self.runtime,
                "dtype": self.dtype, "weights": self.weights, "preprocessing": self.spec.preprocessing()}

    def autocast(self):
        """bfloat16 autocast around a torch forward when ``dtype == "bfloat16"``, else a no-op."""
        if self.dtype != "bfloat16":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The geometric preprocessing of :attr:`geometry` (resize, centre crop or squash), computed on the crop box
        only (:func:`serve_app.preprocess.clip_batch`, within a few grey levels of the family's own processor).
        Rescaling and normalisation happen in :meth:`embed_pixels`, so what travels between stages is 4× smaller
        than float32.

        Args:
            images: RGB PIL images (see :func:`serve_app.images.decode_image`).

        Returns:
            uint8 array of shape ``(N, 3, H, W)`` (224×224 for ViT-B/32 and SigLIP B/16-224).
        """
        return clip_batch(list(images), self.spec.geometry)

    def normalise_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(N, 3, H, W)`` → float32, rescaled by :attr:`ModelSpec.rescale` and normalised with the spec's
        mean/std."""
        mean = np.asarray(self.spec.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.spec.std, np.float32).reshape(1, 3, 1, 1)
        return (pixels.astype(np.float32) * np.float32(self.spec.rescale) - mean) / std

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed preprocessed images.

        Args:
            pixels: uint8 ``(N, 3, H, W)`` from :meth:`preprocess`.

        Returns:
            float32 ``(N, D)``, L2-normalised.

        Raises:
            ValueError: the pixels are not ``(N, 3, crop, crop)`` for this model.
        """
        pixels = np.asarray(pixels)
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        side = self.spec.geometry.crop
        if pixels.ndim != 4 or pixels.shape[1:] != (3, side, side):
            raise ValueError(f"pixels must have shape (N, 3, {side}, {side}) for {self.model_id!r}, got {pixels.shape}")
        return l2_normalise(self.image_forward(self.normalise_pixels(pixels)))  # [N, D]

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB PIL images: ``embed_pixels(preprocess(images))``; float32 ``(N, D)``, L2-normalised."""
        return self.embed_pixels(self.preprocess(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (truncated to the model's context length, padded as its family pads).

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
        ids, mask = self.tokenize(list(texts))
        return l2_normalise(self.text_forward(ids, mask))  # [N, D]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm; float32 of the same shape (all-zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def resolve_device(device: str | None = None) -> str:
    """The torch device to run on: ``None``/``"auto"`` picks ``"cuda"`` when a GPU is visible to this process
    (Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs an actor asked for with ``num_gpus``, and hides them from
    actors that asked for none), else ``"cpu"``.

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


def set_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: every core this process may run on) and return the number.

    Set explicitly because Ray starts workers with ``OMP_NUM_THREADS=1`` for fractional-CPU actors, which would
    run the forward pass on one core.
    """
    import torch

    threads = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads
