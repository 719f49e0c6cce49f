"""Ingestion throughput: bare model forward vs the Ray Data pipeline vs a naive one-at-a-time loop.

All three run in one process, one after another, on the same ≥ 2,000 images with the same model and
precision, and print one JSON object (images per second and the ratios). Targets (issue 2): pipeline
≥ 0.85 × bare forward and ≥ 3 × the naive loop with the base-size (ViT-B/32) random model on 2 cores.

    python benchmarks/ingest_throughput.py --n 2000 --dtype float32
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import base_model, build_catalog  # noqa: E402


def bare_forward(model: str, dtype: str, image_paths: list[str], batch_size: int) -> dict:
    """Images/s of ``embed_pixels`` alone on pre-decoded, pre-processed pixels (decode not timed)."""
    from serve_app.embedding import load_clip
    from serve_app.images import decode_image

    embedder = load_clip(model, dtype=dtype)
    pixels = embedder.preprocess([decode_image(Path(p).read_bytes()) for p in image_paths])
    embedder.embed_pixels(pixels[:batch_size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        embedder.embed_pixels(pixels[i:i + batch_size])
    seconds = time.perf_counter() - started
    return {"images": len(pixels), "seconds": round(seconds, 2), "images_per_s": round(len(pixels) / seconds, 2)}


def pipeline(manifest: Path, model: str, dtype: str, batch_size: int, index: Path) -> dict:
    from batch_jobs.pipeline import IngestOptions, ingest, init_ray

    init_ray()  # Ray start-up is not part of the measurement; the pipeline's own fixed cost is
    shutil.rmtree(index, ignore_errors=True)
    report = ingest(str(manifest), str(index), IngestOptions(model=model, dtype=dtype, batch_size=batch_size))
    return {"images": report.indexed, "skipped": report.skipped, "seconds": report.seconds,
            "images_per_s": report.images_per_s}


def naive_loop(rows: list[dict], model: str, dtype: str, index: Path) -> dict:
    """One process, one product at a time: read, decode, hash, embed (batch of 1), write one row."""
    from batch_jobs.stages import to_index_rows
    from serve_app.embedding import load_clip
    from serve_app.images import decode_image
    from serve_app.index import IndexInfo, open_index
    from serve_app.phash import phash64

    embedder = load_clip(model, dtype=dtype)
    shutil.rmtree(index, ignore_errors=True)
    store = open_index(str(index), IndexInfo(model, embedder.dim))
    started = time.perf_counter()
    for row in rows:
        image = decode_image(Path(row["image"]).read_bytes())
        vector = embedder.embed_images([image])[0]
        batch = {k: [v] for k, v in row.items()} | {"phash": [phash64(image)], "vector": [vector], "error": [""],
                                                  "attributes": ["{}"]}
        store.upsert(to_index_rows(batch, embedder.dim))
    seconds = time.perf_counter() - started
    return {"images": len(rows), "seconds": round(seconds, 2), "images_per_s": round(len(rows) / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images (≥ 2,000 for the issue's figure)")
    parser.add_argument("--naive-n", type=int, default=None, help="images for the naive loop (default: all)")
    parser.add_argument("--size", choices=["tiny", "base"], default="base")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", default="./data/bench")
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = base_model(workdir, args.size)
    manifest = build_catalog(workdir, args.n)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    result = {"machine_cpus": __import__("os").cpu_count(), "model": f"random {args.size}", "dtype": args.dtype,
              "batch_size": args.batch_size, "images": len(rows)}
    result["bare_forward"] = bare_forward(model, args.dtype, [r["image"] for r in rows], args.batch_size)
    result["ray_data_ingestion"] = pipeline(manifest, model, args.dtype, args.batch_size, workdir / "index-bench")
    result["naive_loop"] = naive_loop(rows[:args.naive_n] if args.naive_n else rows, model, args.dtype,
                                      workdir / "index-naive")
    ingest_rate = result["ray_data_ingestion"]["images_per_s"]
    result["ingestion_vs_bare_forward"] = round(ingest_rate / result["bare_forward"]["images_per_s"], 3)
    result["ingestion_vs_naive_loop"] = round(ingest_rate / result["naive_loop"]["images_per_s"], 3)
    result["targets"] = {"ingestion_vs_bare_forward": 0.85, "ingestion_vs_naive_loop": 3.0}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
