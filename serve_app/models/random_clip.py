"""Write a loadable CLIP folder with random weights, for tests and offline runs.

No model hub is reachable from CI or the developers' machines and no package registry ships CLIP weights,
so tests and offline demos use a folder in the Hugging Face layout (``config.json``, ``model.safetensors``,
tokenizer and image-processor files) whose weights are random. Random weights prove plumbing, shapes and
speed, and that identical or near-identical images retrieve each other; they give **meaningless** semantic
rankings.

Sizes:

- ``tiny``: 2-layer text and vision towers, width 32, embedding dimension 64 (builds in seconds).
- ``base``: the ViT-B/32 configuration of ``openai/clip-vit-base-patch32`` (embedding dimension 512, same
  FLOPs as the real model), for speed measurements.

The tokenizer is the real CLIP byte-level BPE: 49,408 tokens rebuilt from ``bpe_simple_vocab_16e6.txt.gz``,
the MIT-licensed merges file that ships inside the PyPI wheel of ``open-clip-torch`` (install it with
``pip install --no-deps open-clip-torch``; its torchvision dependency is not needed). The vocabulary layout
(256 byte symbols, the same with ``</w>``, 48,894 merges, two special tokens) follows OpenAI's
``clip/simple_tokenizer.py``.
"""

import gzip
import importlib.util
import json
from pathlib import Path

from serve_app.models.hub import RANDOM_WEIGHTS_MARKER  # noqa: F401

SIZES = ("tiny", "base")
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2


class TokenizerVocabMissing(RuntimeError):
    """The CLIP BPE merges file could not be found."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def find_bpe_file() -> Path:
    """Return the path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip`` package.

    Raises:
        TokenizerVocabMissing: when ``open-clip-torch`` is not installed.
    """
    # find_spec, not import: importing open_clip needs torchvision, which has no CPU wheel here.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerVocabMissing(
            f"the CLIP tokenizer vocabulary ({_BPE_FILE}) ships inside PyPI's open-clip-torch, which is not "
            "installed; run: pip install --no-deps open-clip-torch")
    path = Path(list(spec.submodule_search_locations)[0]) / _BPE_FILE
    if not path.is_file():
        raise TokenizerVocabMissing(f"{_BPE_FILE} not found in the installed open_clip package at {path}")
    return path


def clip_vocab_and_merges(bpe_file: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild the 49,408-token CLIP vocabulary and its merge list from the open_clip merges file.

    Returns:
        ``(vocab, merges)``: token → id, and merges as ``(left, right)`` pairs in rank order.
    """
    bpe_file = bpe_file or find_bpe_file()
    with gzip.open(bpe_file, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _config(size: str):
    from transformers import CLIPConfig

    if size == "tiny":
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        projection_dim = 64
    elif size == "base":  # openai/clip-vit-base-patch32
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        projection_dim = 512
    else:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    text.update(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=1)
    vision.update(image_size=224, patch_size=32)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def make_random_clip(out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight CLIP folder loadable with ``CLIPModel.from_pretrained(out)``.

    Args:
        out: destination folder (created).
        size: ``"tiny"`` or ``"base"`` (ViT-B/32 shapes).
        seed: torch seed for the weights, so two folders made with the same seed are identical.

    Returns:
        The folder path. It also holds ``random_weights.json``, which the loader reports as
        ``model_weights = "random"``.

    Raises:
        ValueError: unknown size.
        TokenizerVocabMissing: open-clip-torch (which ships the BPE vocabulary) is not installed.
    """
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    config = _config(size)
    vocab, merges = clip_vocab_and_merges()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    (out / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"size": size, "seed": seed, "note": (
        "random weights: plumbing, shapes and speed only; semantic rankings are meaningless")}, indent=2))
    return out
