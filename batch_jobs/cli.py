"""``python -m batch_jobs <command>``: the batch side's command line.

Commands: sample-catalog, make-random-clip, make-random-model, embed, ingest, delete, export, validate,
export-onnx, make-clip, dedup-report, evaluate, make-eval-queries, demo.

Every command takes ``--help``. Model, index and precision come from ``--model``/``--index``/``--dtype``, else
from ``VS_MODEL``/``VS_INDEX``/``VS_DTYPE``, else from the defaults (DESIGN.md).
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from batch_jobs.pipeline import MODES
from serve_app import storage
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
    emit(json.dumps({"catalog": args.out, "products": n}))
    return 0


def cmd_make_random_clip(args) -> int:
    from serve_app.random_clip import make_random_clip

    out = make_random_clip(args.out, args.size, args.seed)
    emit(json.dumps({"model": str(out), "size": args.size, "weights": "random"}))
    return 0


CATALOG_HELP = ("manifest: a .jsonl/.csv/.parquet file, a folder, a glob or an s3:// prefix of such shards "
                "(path, http(s):// or s3://)")


INGEST_FLAGS = ("model", "dtype", "runtime", "batch_size", "embed_actors", "flag_duplicates", "mode", "keep_versions",
                "lease_wait_s", "lease_ttl_s", "resume", "max_bad_fraction", "write_concurrency")


def ingest_options(args) -> "IngestOptions":  # noqa: F821
    """:meth:`IngestOptions.from_config`: the YAML config, then the environment, then the explicit flags."""
    from batch_jobs.pipeline import IngestOptions

    try:
        return IngestOptions.from_config(args.config, **{k: getattr(args, k, None) for k in INGEST_FLAGS})
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def cmd_ingest(args) -> int:
    from batch_jobs.pipeline import ingest
    from serve_app.catalog import ManifestError
    from serve_app.embedding import ModelLoadError
    from serve_app.index import IndexOpenError

    options = ingest_options(args)
    index = args.index or os.environ.get("VS_INDEX") or DEFAULT_INDEX
    try:
        report = ingest(args.catalog or args.from_embeddings, index, options, report=args.report,
                        embeddings=args.embeddings, from_embeddings=args.from_embeddings is not None)
    except (ManifestError, ModelLoadError, IndexOpenError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    emit(json.dumps(report.summary(), indent=2))
    if not report.published:
        print(f"not published ({report.not_published_because}): {index} still serves its previous version",
              file=sys.stderr)
        return 1
    if report.skipped:
        print(f"skipped {report.skipped} bad rows; reasons in {report.report}", file=sys.stderr)
    return 0


def cmd_delete(args) -> int:
    from dataclasses import asdict

    from batch_jobs.catalog_updates import delete_products, read_ids
    from serve_app.catalog import ManifestError
    from serve_app.index import IndexOpenError

    index = args.index or os.environ.get("VS_INDEX") or DEFAULT_INDEX
    try:
        report = delete_products(index, read_ids(args.ids), lease_wait_s=args.lease_wait_s)
    except (ManifestError, IndexOpenError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    emit(json.dumps(asdict(report), indent=2))
    return 0


def cmd_export(args) -> int:
    from batch_jobs.catalog_updates import export_index
    from serve_app.index import IndexOpenError

    index = args.index or os.environ.get("VS_INDEX") or DEFAULT_INDEX
    try:
        summary = export_index(index, args.out)
    except (IndexOpenError, OSError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    emit(json.dumps(summary, indent=2))
    return 0


def cmd_validate(args) -> int:
    from batch_jobs.manifest import VALIDATE_ROWS_PER_BLOCK
    from batch_jobs.pipeline import MAX_LISTED_BAD_ROWS, init_ray, validated_catalog
    from serve_app.catalog import ManifestError

    started = time.perf_counter()
    try:
        init_ray()
        checked = validated_catalog(args.catalog, check_images=args.check_images, timeout_s=args.timeout_s,
                                    rows_per_block=VALIDATE_ROWS_PER_BLOCK)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {"catalog": args.catalog, "shards": checked.shards, "rows": checked.rows,
               "valid": checked.rows - checked.bad, "bad": checked.bad, "duplicates_listed": checked.duplicates,
               "images_checked": args.check_images, "seconds": round(time.perf_counter() - started, 2),
               "report": args.report}
    if args.report:
        storage.write_bytes(args.report, json.dumps(summary | {"bad_rows": checked.bad_rows,
                                                                "bad_rows_listed_max": MAX_LISTED_BAD_ROWS},
                                                               indent=2).encode())
    emit(json.dumps(summary, indent=2))
    for row in checked.bad_rows[:args.show]:
        print(f"{row['shard']}:{row['line']}: {row['reason']}", file=sys.stderr)
    return 0 if checked.bad == 0 else 1


def cmd_export_onnx(args) -> int:
    from serve_app.embedding import ModelLoadError
    from serve_app.onnx_clip import export_summary, export_towers

    model = args.model or os.environ.get("VS_MODEL") or DEFAULT_MODEL
    try:
        folder = export_towers(model, args.dtype)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    emit(json.dumps({"model": model, "dtype": args.dtype} | export_summary(folder), indent=2))
    return 0


def cmd_make_clip(args) -> int:
    from batch_jobs.make_clip import make_clip

    shots = make_clip(args.out, args.images, args.seconds, args.fps, args.width, args.height)
    emit(json.dumps({"clip": args.out, "shots": [{"image": i, "start_s": a, "end_s": b}
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
    emit(json.dumps({k: v for k, v in report.items() if k != "clusters"} | {"clusters": len(report["clusters"]),
                                                                          "out": args.out}))
    return 0


def cmd_evaluate(args) -> int:
    from batch_jobs.evaluate import (EvaluationError, HttpSearcher, LocalSearcher, QueryFileError, evaluate,
                                     format_table, misses_csv, read_queries)
    from serve_app import storage
    from serve_app.embedding import ModelLoadError
    from serve_app.index import IndexOpenError
    from serve_app.request_params import MAX_K

    if args.url and (args.index or args.model or args.runtime or args.dtype):
        print("error: --url searches through the service, which has its own model and index; drop --index, "
              "--model, --runtime and --dtype (or drop --url to search in this process)", file=sys.stderr)
        return 2
    if not 10 <= args.k <= MAX_K:
        print(f"error: --k must be between 10 (recall@10 and nDCG@10 need the top 10) and {MAX_K}, got {args.k}",
              file=sys.stderr)
        return 2
    try:
        queries = read_queries(args.queries)
        if args.url:
            searcher = HttpSearcher(args.url, args.timeout_s)
        else:
            searcher = LocalSearcher(args.index or os.environ.get("VS_INDEX") or DEFAULT_INDEX,
                                     args.model or os.environ.get("VS_MODEL"), args.runtime or
                                     os.environ.get("VS_RUNTIME"), args.dtype or os.environ.get("VS_DTYPE"))
        try:
            report = evaluate(queries, searcher, args.k)
        finally:
            searcher.close()
    except (QueryFileError, EvaluationError, ModelLoadError, IndexOpenError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_query = report.pop("per_query")
    try:
        if args.misses:
            storage.write_bytes(args.misses, misses_csv(queries, report | {"per_query": per_query}).encode())
            report["misses_csv"] = args.misses
        if args.json:
            storage.write_bytes(args.json, json.dumps(report | {"per_query": per_query}, indent=2).encode())
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    emit(json.dumps(report, indent=2))
    print(format_table(report), file=sys.stderr)
    if report["source"].get("model_weights") == "random":
        print("note: the model has random weights: these numbers say nothing about semantic quality",
              file=sys.stderr)
    return 0


def cmd_make_eval_queries(args) -> int:
    from batch_jobs.evaluate import make_query_set
    from serve_app.catalog import ManifestError, read_manifest

    try:
        products, _ = read_manifest(args.catalog)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = make_query_set([p.model_dump() for p in products], args.out, args.seed, args.limit)
    for row in result["skipped"]:
        print(f"skipped {row['product_id']}: {row['reason']}", file=sys.stderr)
    emit(json.dumps({"queries": result["queries"], "count": result["count"], "skipped": len(result["skipped"])}))
    return 0 if result["count"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batch_jobs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-catalog", help="write a catalog manifest from the Tux Paint stamps")
    p.add_argument("--out", default="./data/catalog.jsonl", help="manifest to write (JSON Lines)")
    p.add_argument("--stamps-dir", default="/usr/share/tuxpaint/stamps")
    p.add_argument("--limit", type=int, default=None, help="at most this many products")
    p.set_defaults(func=cmd_sample_catalog)

    p = sub.add_parser("make-random-clip", help="write a random-weight CLIP folder (make-random-model --family clip)")
    p.add_argument("out", help="folder to create")
    p.add_argument("--size", choices=["tiny", "base"], default="tiny", help="tiny (tests) or base (ViT-B/32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_random_clip)

    p = sub.add_parser("ingest", help="embed a catalog (or load precomputed embeddings) with Ray Data and bulk-load "
                                      "the index")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--catalog", help=CATALOG_HELP)
    source.add_argument("--from-embeddings", metavar="SRC",
                        help="load precomputed embeddings instead of embedding images: a .parquet file, folder, glob "
                             "or s3:// prefix with product_id, embedding (D floats from --model), optional phash "
                             "(16 hex digits or int64), title, image, category, price, brand and attribute columns")
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
    p.add_argument("--lease-ttl-s", type=float, default=None, metavar="SECONDS",
                   help="how long a killed run keeps the index's lease (default 120)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the newest unpublished version a killed or failed run left, skipping the "
                        "products already written there")
    p.add_argument("--max-bad-fraction", type=float, default=None, metavar="F",
                   help="do not publish when more than this share of the rows is bad (default 0.1)")
    p.add_argument("--write-concurrency", type=int, default=None, help="index writer tasks (default 2)")
    p.add_argument("--report", default=None, help="JSON report path (default <index>/ingest_report.json)")
    p.add_argument("--embeddings", default=None, help="Parquet folder for embeddings (default under the index)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("delete", help="delete products by id from the version the index serves (under its lease)")
    p.add_argument("--index", default=None, help=f"index URI (env VS_INDEX; default {DEFAULT_INDEX})")
    p.add_argument("--ids", required=True, help="text file with one product_id a line, or Parquet with product_id")
    p.add_argument("--lease-wait-s", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for an ingestion into the same index to finish (default: refuse at once)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("export", help="write a LanceDB index's products and embeddings as Parquet "
                                      "(the layout ingest --from-embeddings reads)")
    p.add_argument("--index", default=None, help=f"index URI (env VS_INDEX; default {DEFAULT_INDEX})")
    p.add_argument("--out", required=True, help="folder (local or s3://) for part-NNNNN.parquet files")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("validate", help="dry run: read and validate every catalog row on the cluster, embed nothing")
    p.add_argument("--catalog", required=True, help=CATALOG_HELP)
    p.add_argument("--check-images", action="store_true", help="also check that every row's image exists")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per image check (HTTP HEAD, S3 HEAD), seconds")
    p.add_argument("--report", default=None, help="write the bad rows (shard, line, reason) to this JSON file")
    p.add_argument("--show", type=int, default=20, help="bad rows printed to stderr")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("export-onnx", help="export the model's towers to ONNX (runtime: onnx) into the model's cache")
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

    p = sub.add_parser("evaluate", help="recall@1/5/10, nDCG@10 and MRR of labelled queries, in this process or "
                                        "through a running service",
                       description="Search every query of a JSON Lines file and score the rankings. A line is "
                                   '{"id": optional, "text": "..."} or {"image": "path relative to the file, or '
                                   'absolute"}, plus "relevant": ["product_id", ...] or {"product_id": grade, ...} '
                                   "(grade > 0 is relevant). Metrics are averaged over queries: recall@n = fraction of "
                                   "a query's relevant products in its top n (the hit rate with one relevant "
                                   "product); nDCG@10 with gain = grade and discount log2(rank + 1); MRR = mean of 1 / "
                                   "rank of the first relevant result in the top k (0 if none). Prints the metrics as "
                                   "JSON on stdout and a table on stderr. Make a known-answer set with "
                                   "make-eval-queries.")
    p.add_argument("--queries", required=True, help="query file (JSON Lines)")
    p.add_argument("--url", default=None, help="search through the service at this base URL (http://host:port) "
                                               "instead of in this process")
    p.add_argument("--index", default=None, help=f"index URI (env VS_INDEX; default {DEFAULT_INDEX}); local mode")
    p.add_argument("--model", default=None, help="hub id or local folder (env VS_MODEL; default: the model the index "
                                                 "was built with); local mode")
    p.add_argument("--runtime", choices=RUNTIMES, default=None, help="env VS_RUNTIME; default: the index's")
    p.add_argument("--dtype", choices=DTYPES + ("int8",), default=None, help="env VS_DTYPE; default: the index's")
    p.add_argument("--k", type=int, default=10, help="results fetched per query (10-1000); MRR looks this deep")
    p.add_argument("--misses", default=None, metavar="CSV", help="write the queries whose first relevant result is "
                                                                 "not at rank 1 (with its rank and the top 5)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report, with per-query results")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per HTTP request, seconds (--url)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("make-eval-queries", help="write a known-answer query set from catalog images for evaluate",
                       description="For each catalog product, write a copy of its image rotated 2-5 degrees, "
                                   "centre-cropped to 85-90 %, brightened or darkened 5-10 % and re-encoded as JPEG "
                                   "at quality 70, and DIR/queries.jsonl whose relevant product is the source "
                                   "product: python -m batch_jobs evaluate --queries DIR/queries.jsonl ...")
    p.add_argument("--catalog", required=True, help=CATALOG_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the images and queries.jsonl")
    p.add_argument("--limit", type=int, default=None, help="at most this many queries (a seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the transforms")
    p.set_defaults(func=cmd_make_eval_queries)

    from batch_jobs.demo import add_demo_parser
    from batch_jobs.model_commands import add_model_parsers

    add_model_parsers(sub)
    add_demo_parser(sub)
    return parser


def emit(text: str) -> None:
    """Write a command's result (its JSON) to the real standard output, one line or block followed by a newline."""
    print(text, file=_RESULT_OUT or sys.stdout, flush=True)


_RESULT_OUT = None  # the process's stdout while main() sends everything else to stderr


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Its result is the only thing on stdout (``… | jq`` works): anything else printed
    meanwhile — Ray's raylet warnings about worker processes, library notices — goes to stderr."""
    global _RESULT_OUT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    _RESULT_OUT = sys.stdout
    ray_before = _ray_initialized()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            try:
                return args.func(args)
            finally:
                if _ray_initialized() and not ray_before:  # the Ray this command started: stop it here, where
                    import ray  # the deduplicated log lines it flushes when it stops still go to stderr

                    ray.shutdown()
    finally:
        _RESULT_OUT = None


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized())
