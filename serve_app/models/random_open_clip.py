"""Write a loadable open_clip folder with random weights, offline: ``open_clip_config.json`` (``model_cfg`` +
``preprocess_cfg``, the layout of open_clip repos on the Hugging Face hub) and ``open_clip_model.safetensors``.

Sizes: ``tiny`` (2-layer towers, width 64, D = 64; seconds) and ``base`` (open_clip's built-in ``ViT-B-32``
config: D = 512, the FLOPs of LAION's ViT-B/32). The tokenizer is open_clip's own ``SimpleTokenizer`` (no
``hf_tokenizer_name``), whose CLIP BPE vocabulary ships in the wheel. ``open_clip.create_model_and_transforms(
"local-dir:OUT")`` and ``open_clip.get_tokenizer("local-dir:OUT")`` load it.
"""

import json
from pathlib import Path

from serve_app.models.hub import RANDOM_WEIGHTS_MARKER

SIZES = ("tiny", "base")
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def model_cfg(size: str) -> dict:
    """open_clip's ``model_cfg`` for a size.

    Raises:
        ValueError: unknown size.
    """
    if size == "tiny":
        return {"embed_dim": 64,
                "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    if size == "base":
        import open_clip

        return open_clip.get_model_config("ViT-B-32")
    raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")


def make_random_open_clip(out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight open_clip folder.

    Args:
        out: destination folder (created).
        size: ``"tiny"`` or ``"base"`` (ViT-B/32 shapes).
        seed: torch seed for the weights.

    Returns:
        The folder (with ``random_weights.json``, reported as ``model_weights = "random"``).

    Raises:
        ValueError: unknown size.
        ImportError: open_clip or torchvision is not installed.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg(size),
              "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                                 "resize_mode": "shortest", "size": 224}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out}", precision="fp32", device="cpu")  # no weights yet: random
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    (out / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"family": "open_clip", "size": size, "seed": seed, "note": (
        "random weights: plumbing, shapes and speed only; semantic rankings are meaningless")}, indent=2))
    return out
