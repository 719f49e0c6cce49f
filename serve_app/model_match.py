"""Whether the served model can search an index: same dimension, same family, same preprocessing (no Ray import).

Vectors of two models are not comparable even when their dimensions agree (a 512-d open_clip model and a 512-d
CLIP model score each other's embeddings at random), and the same weights behind another preprocessing (a centre
crop where the catalog was squashed, another mean/std) lose recall silently. The ingress answers 503
``model_index_mismatch`` naming both sides when :func:`mismatch` finds a difference.
"""


def mismatch(encoder: dict, index: dict) -> str | None:
    """The reason the model described by ``encoder`` cannot search ``index``, or ``None`` when it can.

    Args:
        encoder: the Encoder's ``info()`` (``model_id``, ``dim``, ``family``, ``preprocessing``).
        index: the Retriever's ``info()`` (the same fields as recorded with the index version). An index written
            before the family and preprocessing were recorded reads as ``clip`` with an empty (unknown)
            preprocessing signature, which is not compared.

    Returns:
        A message naming the model and the index's model, and what differs.
    """
    model, built = encoder.get("model_id"), index.get("model_id")
    if encoder["dim"] != index["dim"]:
        return (f"index holds {index['dim']}-d embeddings from {built!r} but the model makes {encoder['dim']}-d ones: "
                "re-ingest with this model")
    family, index_family = encoder.get("family", "clip"), index.get("family") or "clip"
    if family != index_family:
        return (f"index holds {index_family} embeddings from {built!r} but the model {model!r} is a {family} model "
                f"(both {encoder['dim']}-d, not comparable): serve {built!r} or re-ingest with this model")
    ours, theirs = encoder.get("preprocessing") or "", index.get("preprocessing") or ""
    if ours and theirs and ours != theirs:
        return (f"index was embedded from {built!r} with preprocessing '{theirs}' but the model {model!r} prepares "
                f"inputs as '{ours}': serve the same preprocessing or re-ingest with this model")
    return None
