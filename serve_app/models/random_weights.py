"""Random-weight folders of every family, for tests and offline runs: ``python -m batch_jobs make-random-model OUT
--family clip|siglip|open_clip --size tiny|base``.

No model hub is reachable from CI or the developers' machines and no package registry ships weights, so tests
and offline demos use folders in each family's own layout whose weights are random. Random weights prove
plumbing, shapes and speed, and that identical or near-identical images retrieve each other; they give
**meaningless** semantic rankings. Each folder holds ``random_weights.json`` (reported as ``model_weights =
"random"``). ``base`` has the real checkpoints' shapes (ViT-B/32 for clip and open_clip, ViT-B/16-224 for siglip).
"""

from pathlib import Path

SIZES = ("tiny", "base")


def make_random_model(out: str | Path, family: str = "clip", size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight folder of ``family`` that its reference library loads offline.

    Raises:
        ValueError: unknown family or size.
    """
    if family == "clip":
        from serve_app.models.random_clip import make_random_clip as make
    elif family == "siglip":
        from serve_app.models.random_siglip import make_random_siglip as make
    elif family == "open_clip":
        from serve_app.models.random_open_clip import make_random_open_clip as make
    else:
        raise ValueError(f"family must be one of ('clip', 'siglip', 'open_clip'), got {family!r}")
    return make(out, size=size, seed=seed)
