"""The model commands of the CLI: ``make-random-model`` (a random-weight folder of any family) and ``embed`` (a
model's embeddings of images and texts, one JSON object per input on stdout).

``embed`` goes through exactly the functions serving uses — :func:`serve_app.query_image.prepare_query_image`
(decode with EXIF and transparency handling, the family's resize/crop) and
:meth:`~serve_app.models.base.Embedder.embed_pixels` / :meth:`~serve_app.models.base.Embedder.embed_texts` — which are
the ones ingestion uses too (:func:`batch_jobs.stages.load_images` decodes and crops with the same two functions). So
what it prints is what the index stores and what a query is searched with: compare a model against its reference
library with it, or debug why a query misses.
"""

import json
import os
import sys

from serve_app.models import DEFAULT_MODEL, DTYPES, FAMILIES, RUNTIMES


def cmd_make_random_model(args) -> int:
    from batch_jobs.cli import emit
    from serve_app.models.random_weights import make_random_model

    out = make_random_model(args.out, args.family, args.size, args.seed)
    emit(json.dumps({"model": str(out), "family": args.family, "size": args.size, "weights": "random"}))
    return 0


def embed_inputs(embedder, images: list[str], texts: list[str]) -> list[dict]:
    """One record per input, images first: ``{"input", "kind": "image"|"text", "embedding": [D floats], "model",
    "family"}``, or ``"error"`` instead of ``"embedding"`` for an image that cannot be read or decoded.

    Images are fetched with :func:`serve_app.storage.read_bytes` (path, ``http(s)://``, ``s3://``) and prepared with
    :func:`serve_app.query_image.prepare_query_image`; all texts are embedded in one :meth:`embed_texts` call.

    Raises:
        ValueError: a blank text.
    """
    import numpy as np

    from serve_app import storage
    from serve_app.query_image import prepare_query_image

    base = {"model": embedder.model_id, "family": embedder.family}
    records = []
    for uri in images:
        try:
            pixels = prepare_query_image(storage.read_bytes(uri), embedder.geometry).pixels  # [3, H, W]
            vector = embedder.embed_pixels(pixels[np.newaxis])[0]  # [D]
            records.append({"input": uri, "kind": "image", "embedding": vector.tolist()} | base)
        except Exception as e:  # noqa: BLE001 - reported per input, like ingestion's bad rows
            records.append({"input": uri, "kind": "image", "error": f"{type(e).__name__}: {e}"} | base)
    if texts:
        for text, vector in zip(texts, embedder.embed_texts(texts)):  # [N, D]
            records.append({"input": text, "kind": "text", "embedding": vector.tolist()} | base)
    return records


def cmd_embed(args) -> int:
    from batch_jobs.cli import emit
    from serve_app.models import ModelLoadError, load_embedder

    if not args.image and not args.text:
        print("error: give at least one --image PATH_OR_URL or --text TEXT", file=sys.stderr)
        return 2
    model = args.model or os.environ.get("VS_MODEL") or DEFAULT_MODEL
    runtime = args.runtime or os.environ.get("VS_RUNTIME") or "torch"
    dtype = args.dtype or os.environ.get("VS_DTYPE") or "float32"
    try:
        embedder = load_embedder(model, dtype=dtype, runtime=runtime)
        records = embed_inputs(embedder, args.image or [], args.text or [])
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for record in records:
        emit(json.dumps(record))
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"{record['input']}: {record['error']}", file=sys.stderr)
    return 1 if failed else 0


def add_model_parsers(sub) -> None:
    """Add ``make-random-model`` and ``embed`` to the CLI's subparsers."""
    p = sub.add_parser("make-random-model", help="write a random-weight model folder of any family (tests, offline "
                                                 "runs)")
    p.add_argument("out", help="folder to create")
    p.add_argument("--family", choices=FAMILIES, default="clip",
                   help="clip (CLIPModel), siglip (SiglipModel) or open_clip (open_clip_config.json + weights)")
    p.add_argument("--size", choices=["tiny", "base"], default="tiny",
                   help="tiny (tests) or base (ViT-B/32 for clip and open_clip, ViT-B/16-224 for siglip)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_random_model)

    p = sub.add_parser("embed", help="print a model's embeddings of images and texts, one JSON object per input",
                       description="Embed images and texts through the functions ingestion and serving use and print "
                                   'one JSON object per input on stdout: {"input", "kind": "image"|"text", '
                                   '"embedding": [floats, L2-normalised], "model", "family"}.')
    p.add_argument("--model", default=None, help=f"hub id or local folder (env VS_MODEL; default {DEFAULT_MODEL})")
    p.add_argument("--runtime", choices=RUNTIMES, default=None, help="env VS_RUNTIME; default torch")
    p.add_argument("--dtype", choices=DTYPES + ("int8",), default=None,
                   help="env VS_DTYPE; default float32 (bfloat16: torch only; int8: onnx only)")
    p.add_argument("--image", action="append", metavar="PATH_OR_URL", help="an image (path, http(s)://, s3://); "
                                                                            "repeat for more")
    p.add_argument("--text", action="append", metavar="TEXT", help="a text; repeat for more")
    p.set_defaults(func=cmd_embed)
