"""The ``clip`` family: Hugging Face ``CLIPModel`` folders and hub ids (OpenAI's and LAION's CLIP checkpoints).

Preprocessing (``CLIPImageProcessor``, read from the folder): resize the shortest edge to ``size.shortest_edge``
(bicubic), centre-crop ``crop_size`` (the margin floored, as the Hugging Face processor does), OpenAI's mean/std.
Text: CLIP's BPE tokenizer, truncated to the 77-token context, padded to the batch's longest text (the text tower
pools the end-of-text token; Radford et al. 2021).
"""

from pathlib import Path

from serve_app.models.base import ModelLoadError, ModelSpec
from serve_app.models.hf_towers import image_processor_config, load_model, load_torch, tower_modules  # noqa: F401
from serve_app.models.hub import load_hint, read_json
from serve_app.preprocess import ClipGeometry

FAMILY = "clip"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's image normalisation (clip/clip.py)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def read_spec(folder: Path, model: str) -> ModelSpec:
    """The :class:`~serve_app.models.base.ModelSpec` of a ``CLIPModel`` folder, read as JSON.

    Raises:
        ModelLoadError: no ``config.json``, or an image processor that is not a shortest-edge resize followed by a
            square centre crop.
    """
    config = read_json(folder / "config.json")
    if config is None:
        raise ModelLoadError(load_hint(model, f"no readable config.json in {folder}"))
    processor = image_processor_config(folder)
    try:
        geometry = ClipGeometry.from_config(processor) if processor else ClipGeometry()
    except (ValueError, TypeError) as e:
        raise ModelLoadError(load_hint(model, e)) from e
    text = config.get("text_config") or {}
    return ModelSpec(family=FAMILY, dim=int(config.get("projection_dim") or 512), geometry=geometry,
                     mean=tuple(processor.get("image_mean") or OPENAI_MEAN),
                     std=tuple(processor.get("image_std") or OPENAI_STD),
                     rescale=float(processor.get("rescale_factor") or 1 / 255),
                     context_length=int(text.get("max_position_embeddings") or 77), padding="longest")
