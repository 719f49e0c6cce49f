"""The ``siglip`` family: Hugging Face ``SiglipModel`` folders and hub ids — SigLIP and the fixed-resolution SigLIP 2
checkpoints (their ``config.json`` says ``model_type: siglip``; NaFlex ``Siglip2Model`` is not supported).

Preprocessing (``SiglipImageProcessor``, read from the folder): resize the whole image to ``size.height ×
size.width`` (bicubic), **no centre crop**, mean/std 0.5. Text: the folder's SentencePiece tokenizer, padded to
``max_length`` = the text tower's 64 positions, as the model cards say ("make sure to set padding='max_length' as
that's how the model was trained"): the text tower pools the last position (Zhai et al. 2023).
"""

from pathlib import Path

from serve_app.models.base import ModelLoadError, ModelSpec
from serve_app.models.hf_towers import image_processor_config, load_model, load_torch, tower_modules  # noqa: F401
from serve_app.models.hub import load_hint, read_json
from serve_app.preprocess import ClipGeometry

FAMILY = "siglip"
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # SiglipImageProcessor's defaults (IMAGENET_STANDARD_MEAN/STD)


def read_spec(folder: Path, model: str) -> ModelSpec:
    """The :class:`~serve_app.models.base.ModelSpec` of a ``SiglipModel`` folder, read as JSON.

    Raises:
        ModelLoadError: no ``config.json``, or a non-square input size.
    """
    config = read_json(folder / "config.json")
    if config is None:
        raise ModelLoadError(load_hint(model, f"no readable config.json in {folder}"))
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    processor = image_processor_config(folder)
    size = processor.get("size") or {}
    side = vision.get("image_size") or 224
    height, width = (size, size) if isinstance(size, int) else (size.get("height", side), size.get("width", side))
    if height != width:
        raise ModelLoadError(load_hint(model, f"the image processor's size is {height}x{width}; only square inputs "
                                              "are supported"))
    geometry = ClipGeometry(size=int(height), crop=int(height), resample=int(processor.get("resample") or 3),
                            resize="squash")
    return ModelSpec(family=FAMILY, dim=int(vision.get("hidden_size") or 768), geometry=geometry,
                     mean=tuple(processor.get("image_mean") or SIGLIP_MEAN),
                     std=tuple(processor.get("image_std") or SIGLIP_STD),
                     rescale=float(processor.get("rescale_factor") or 1 / 255),
                     context_length=int(text.get("max_position_embeddings") or 64), padding="max_length")
