"""``python -m batch_jobs <command>``: sample-catalog, make-random-clip, ingest, export-onnx, make-clip, dedup-report,
demo.

Every command takes ``--help``. Model, index and precision come from ``--model``/``--index``/``--dtype``, else
from ``VS_MODEL``/``VS_INDEX``/``VS_DTYPE``, else from the defaults (DESIGN.md).
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from batch_jobs.pipeline import MODES
from serve_app.embedding import DEFAULT_MODEL, DTYPES, RUNTIMES
from serve_app.near_duplicates import DEFAULT_MAX_DISTANCE

DEFAULT_INDEX = "./data/index"
DEFAULT_INGEST_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ingest.yaml"


def cmd_sample_catalog(args) -> int:
    from batch_jobs.sample_catalog import SampleCatalogUnavailable, write_sample_catalog

    try:
        n = write_sample_catalog(Path(args.out), Path(args.stamps_dir), args.limit)
    except SampleCatalogUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"catalog": args.out, "products": n}))
    return 0


def cmd_make_random_clip(args) -> int:
    from serve_app.random_clip import make_random_clip

    out = make_random_clip(args.out, args.size, args.seed)
    print(json.dumps({"model": str(out), "size": args.size, "weights": "random"}))
    return 0


def ingest_options(args) -> "IngestOptions":  # noqa: F821
    """IngestOptions from the YAML config, overridden by explicit flags."""
    from batch_jobs.pipeline import IngestOptions

    config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    valid = {f.name for f in dataclasses.fields(IngestOptions)}
    unknown = set(config) - valid
    if unknown:
        raise SystemExit(f"error: unknown keys {sorted(unknown)} in {args.config}; valid keys: {sorted(valid)}")
    config["model"] = args.model or os.environ.get("VS_MODEL") or config.get("model") or DEFAULT_MODEL
    config["dtype"] = args.dtype or os.environ.get("VS_DTYPE") or config.get("dtype") or "float32"
    config["runtime"] = args.runtime or os.environ.get("VS_RUNTIME") or config.get("runtime") or "torch"
    for key in ("batch_size", "embed_actors", "flag_duplicates", "mode", "keep_versions", "lease_wait_s"):
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    return IngestOptions(**config)


def cmd_ingest(args) -> int:
    from batch_jobs.pipeline import ingest
    from serve_app.catalog import ManifestError
    from serve_app.embedding import ModelLoadError
    from serve_app.index import IndexOpenError

    options = ingest_options(args)
    index = args.index or os.environ.get("VS_INDEX") or DEFAULT_INDEX
    try:
        report = ingest(args.catalog, index, options, report=args.report, embeddings=args.embeddings)
    except (ManifestError, ModelLoadError, IndexOpenError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.summary(), indent=2))
    if not report.published:
        print(f"nothing was indexed: {index} still serves its previous version", file=sys.stderr)
        return 1
    if report.skipped:
        print(f"skipped {report.skipped} bad rows; reasons in {report.report}", file=sys.stderr)
    return 0


def cmd_export_onnx(args) -> int:
    from serve_app.embedding import ModelLoadError
    from serve_app.onnx_clip import export_summary, export_towers

    model = args.model or os.environ.get("VS_MODEL") or DEFAULT_MODEL
    try:
        folder = export_towers(model, args.dtype)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"model": model, "dtype": args.dtype} | export_summary(folder), indent=2))
    return 0


def cmd_make_clip(args) -> int:
    from batch_jobs.make_clip import make_clip

    shots = make_clip(args.out, args.images, args.seconds, args.fps, args.width, args.height)
    print(json.dumps({"clip": args.out, "shots": [{"image": i, "start_s": a, "end_s": b}
                                                  for i, (a, b) in zip(args.images, shots)]}, indent=2))
    return 0


def cmd_dedup_report(args) -> int:
    from batch_jobs.dedup_report import dedup_report, write_report
    from serve_app.index import IndexOpenError

    index = args.index or os.environ.get("VS_INDEX") or DEFAULT_INDEX
    try:
        report = dedup_report(index, args.max_distance)
    except IndexOpenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(report, args.out)
    print(json.dumps({k: v for k, v in report.items() if k != "clusters"} | {"clusters": len(report["clusters"]),
                                                                          "out": args.out}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batch_jobs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-catalog", help="write a catalog manifest from the Tux Paint stamps")
    p.add_argument("--out", default="./data/catalog.jsonl", help="manifest to write (JSON Lines)")
    p.add_argument("--stamps-dir", default="/usr/share/tuxpaint/stamps")
    p.add_argument("--limit", type=int, default=None, help="at most this many products")
    p.set_defaults(func=cmd_sample_catalog)

    p = sub.add_parser("make-random-clip", help="write a random-weight CLIP folder (tests, offline runs)")
    p.add_argument("out", help="folder to create")
    p.add_argument("--size", choices=["tiny", "base"], default="tiny", help="tiny (tests) or base (ViT-B/32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_random_clip)

    p = sub.add_parser("ingest", help="embed a catalog with Ray Data and bulk-load the index")
    p.add_argument("--catalog", required=True, help="manifest: .jsonl or .csv; path, http(s):// or s3://")
    p.add_argument("--index", default=None, help=f"index URI (env VS_INDEX; default {DEFAULT_INDEX})")
    p.add_argument("--model", default=None, help=f"hub id or local folder (env VS_MODEL; default {DEFAULT_MODEL})")
    p.add_argument("--dtype", choices=DTYPES + ("int8",), default=None,
                   help="env VS_DTYPE; default float32 (bfloat16: torch only; int8: onnx only)")
    p.add_argument("--runtime", choices=RUNTIMES, default=None, help="env VS_RUNTIME; default torch (onnx: ONNX "
                                                                     "Runtime on CPU)")
    p.add_argument("--config", default=str(DEFAULT_INGEST_CONFIG), help="ingestion config YAML")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--embed-actors", type=int, default=None, help="size of the CLIP actor pool")
    p.add_argument("--flag-duplicates", type=int, default=None, metavar="BITS",
                   help="list products within BITS pHash bits of an already indexed product in the report")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="new-version (default): build a new index version, then switch the alias to it; "
                        "upsert: add/replace products in the current version (same model only)")
    p.add_argument("--keep-versions", type=int, default=None, help="index versions to keep after a switch (>= 2)")
    p.add_argument("--lease-wait-s", type=float, default=None, metavar="SECONDS",
                   help="wait this long for another ingestion into the same index to finish (default: refuse at once)")
    p.add_argument("--report", default=None, help="JSON report path (default <index>/ingest_report.json)")
    p.add_argument("--embeddings", default=None, help="Parquet folder for embeddings (default under the index)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("export-onnx", help="export the CLIP towers to ONNX (runtime: onnx) into the model's cache")
    p.add_argument("--model", default=None, help=f"hub id or local folder (env VS_MODEL; default {DEFAULT_MODEL})")
    p.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                   help="int8: also ONNX Runtime's dynamic quantisation (check recall before serving it)")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("make-clip", help="synthesise a query video, one shot per catalog image")
    p.add_argument("out", help=".mp4 file to write")
    p.add_argument("images", nargs="+", help="image paths or URIs, one shot each")
    p.add_argument("--seconds", type=float, default=2.5, help="duration of each shot")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.set_defaults(func=cmd_make_clip)

    p = sub.add_parser("dedup-report", help="cluster the catalog into near-duplicate groups by pHash")
    p.add_argument("--index", default=None, help=f"index URI (env VS_INDEX; default {DEFAULT_INDEX})")
    p.add_argument("--out", required=True, help="report file: .json or .csv (local path or s3://)")
    p.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE, help="Hamming threshold in bits (0-64)")
    p.set_defaults(func=cmd_dedup_report)

    from batch_jobs.demo import add_demo_parser

    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    return args.func(args)
