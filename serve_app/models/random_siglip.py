"""Write a loadable SigLIP folder (``SiglipModel`` + ``SiglipProcessor``) with random weights, offline.

Sizes: ``tiny`` (2-layer towers, width 32, D = 32; seconds) and ``base`` (``google/siglip-base-patch16-224``'s
ViT-B/16 at 224 px and its 12-layer text tower: D = 768, the same FLOPs as the real model).

No SigLIP vocabulary ships in any package this project may install, so the tokenizer is a SentencePiece unigram
model trained here, in about a second, on the Debian package ``tuxpaint-stamps-default``'s multilingual stamp
descriptions (the sample catalog's own captions), laid out as SigLIP's T5-style vocabulary (``<pad>`` 0, ``</s>`` 1,
``<unk>`` 2). Its ids mean nothing to any real checkpoint: like the weights, it is marked random.
"""

import io
import json
from pathlib import Path

from serve_app.models.hub import RANDOM_WEIGHTS_MARKER

SIZES = ("tiny", "base")
STAMPS = Path("/usr/share/tuxpaint/stamps")
VOCAB_SIZE = 4000  # pieces the SentencePiece model is asked for (fewer if the text cannot support them)
CONTEXT_LENGTH = 64  # SigLIP's text positions (the model cards pad to max_length 64)


def corpus(root: Path = STAMPS, max_lines: int = 200_000) -> list[str]:
    """Lines of text to train the tokenizer on: every stamp description under ``root`` (``lang.utf8=`` prefixes
    dropped).

    Raises:
        FileNotFoundError: ``root`` holds no ``.txt`` files (install the Debian package tuxpaint-stamps-default).
    """
    lines = []
    for path in sorted(root.rglob("*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            text = line.split("=", 1)[1] if ".utf8=" in line.split(" ", 1)[0] else line
            if text.strip():
                lines.append(text.strip())
    if not lines:
        raise FileNotFoundError(f"no stamp descriptions under {root}: install the Debian package "
                                "tuxpaint-stamps-default (the random SigLIP tokenizer is trained on them)")
    return lines[:max_lines]


def train_tokenizer(out: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train a SentencePiece unigram model on :func:`corpus` and write it to ``out / "spiece.model"``."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, character_coverage=0.9995, num_threads=2,
                                   minloglevel=2)
    path = out / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def _config(size: str):
    from transformers import SiglipConfig

    if size == "tiny":
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    elif size == "base":  # google/siglip-base-patch16-224
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    else:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    text.update(vocab_size=32000, max_position_embeddings=CONTEXT_LENGTH, pad_token_id=1, eos_token_id=1,
                bos_token_id=1)
    vision.update(image_size=224, patch_size=16)
    return SiglipConfig(text_config=text, vision_config=vision)


def make_random_siglip(out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight SigLIP folder loadable with transformers' ``AutoModel`` / ``AutoProcessor``.

    Args:
        out: destination folder (created).
        size: ``"tiny"`` or ``"base"`` (ViT-B/16-224 shapes).
        seed: torch seed for the weights.

    Returns:
        The folder (with ``random_weights.json``, reported as ``model_weights = "random"``).

    Raises:
        ValueError: unknown size.
        FileNotFoundError: no stamp descriptions to train the tokenizer on.
    """
    import torch
    from transformers import SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    config = _config(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    SiglipModel(config).eval().save_pretrained(out)
    tokenizer = SiglipTokenizer(vocab_file=str(train_tokenizer(out)), model_max_length=CONTEXT_LENGTH)
    image_processor = SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3,
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    (out / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"family": "siglip", "size": size, "seed": seed, "note": (
        "random weights and a tokenizer trained on local text: plumbing, shapes and speed only; semantic rankings "
        "are meaningless")}, indent=2))
    return out
