"""Ingestion at growing catalog sizes: fixed cost, marginal images/s, driver peak RSS, against the bare forward and
the preprocessing cost measured in the same run; and ``validate`` on a 1,000,000-row manifest in 10 shards.

Each ingestion runs as its own ``python -m batch_jobs ingest`` process (its own local Ray, as a user runs it),
timed from the command's start to its exit; the driver's peak RSS is its ``ru_maxrss``. For each model the times
at the sizes N give, by least squares ``t = fixed + N / marginal``: the fixed cost (Ray start, actors, model
load, first block) and the marginal images/s, which is compared with the CPU limit on these cores,
``1 / (1/bare + preprocess_s/cores)`` (bare: the batch-16 forward on pre-processed pixels in this process;
preprocess_s: decode + CLIP preprocessing of one image on one core; ``..._with_load`` counts the whole load
stage instead: read, decode, pHash and preprocessing, work the job must do per image besides the forward). Rows
cycle over the benchmark's few thousand real images with distinct product ids. ``ray_floor_s`` is what Ray
alone costs in the same run: start a local Ray, run a task stage and a one-actor pool over 1,000 trivial rows,
shut down (the fixed cost can not be lower than that). Each run's ``phases`` come from its report. Prints JSON.

    python benchmarks/ingest_scale.py                      # tiny 1k/4k/16k, base bfloat16 1k/3k, validate 1M
    python benchmarks/ingest_scale.py --tiny 1000 --base "" --validate-rows 0
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import base_model, build_catalog  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def manifest_of(workdir: Path, n: int, shards: int = 1) -> Path:
    """``n`` rows (``shards`` JSONL files in a folder when > 1) cycling over the benchmark images."""
    images = [json.loads(line) for line in build_catalog(workdir, 2000).read_text().splitlines()]
    out = workdir / (f"scale-{n}.jsonl" if shards == 1 else f"scale-{n}-shards")
    if out.exists():
        return out
    rows = (images[i % len(images)] | {"product_id": f"p{i:07d}"} for i in range(n))
    if shards == 1:
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out
    out.mkdir()
    per = -(-n // shards)
    files = [open(out / f"part-{s:02d}.jsonl", "w") for s in range(shards)]
    for i, row in enumerate(rows):
        files[i // per].write(json.dumps(row) + "\n")
    for f in files:
        f.close()
    return out


def timed(command: list[str]) -> dict:
    """Wall seconds and the child's peak RSS (MiB) of one command; its stdout parsed as JSON when it is."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                         env=os.environ | {"RAY_AUTH_MODE": "disabled"})
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if out.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({out.returncode}): {out.stderr[-2000:]}")
    try:  # the command's JSON starts at its first line that opens an object (the raylet may warn on stdout first)
        lines = out.stdout.splitlines()
        body = json.loads("\n".join(lines[next(i for i, x in enumerate(lines) if x.startswith("{")):]))
    except (StopIteration, json.JSONDecodeError):
        body = {}
    # ru_maxrss of the children is the largest one so far: measure the smallest catalog first.
    return {"seconds": round(seconds, 2), "driver_peak_rss_mib": round(max(peak, before) / 1024, 1),
            "report": body}


RAY_FLOOR = """
import os, time
os.environ["RAY_AUTH_MODE"] = "disabled"
import numpy as np, ray

class Same:
    def __call__(self, batch):
        return batch

ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
ray.data.range(1000, override_num_blocks=8).map_batches(lambda b: b, num_cpus=0.25).map_batches(
    Same, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5).materialize()
ray.shutdown()
"""


def ray_floor() -> float:
    """Seconds for a local Ray to start, run a two-stage Ray Data pipeline (a task stage and a one-actor pool,
    the shape of the ingestion) on 1,000 trivial rows, and shut down, as one process: what any ingestion costs
    here before it loads a model or an image."""
    return timed([sys.executable, "-c", RAY_FLOOR])["seconds"]


def fit(points: list[tuple[int, float]]) -> dict:
    n, t = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    slope, intercept = np.polyfit(n, t, 1) if len(points) > 1 else (t[0] / n[0], 0.0)
    return {"fixed_cost_s": round(float(intercept), 2), "marginal_images_per_s": round(float(1 / slope), 1)}


def bare_and_preprocess(model: str, dtype: str, manifest: Path, n: int = 96) -> dict:
    from batch_jobs.stages import load_images
    from serve_app.embedding import load_embedder
    from serve_app.images import DECODE_MIN_SIDE, decode_image

    rows = [json.loads(line) for line in manifest.read_text().splitlines()[:n]]
    embedder = load_embedder(model, dtype=dtype)
    side = max(DECODE_MIN_SIDE, embedder.input_side)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    pixels = np.stack([embedder.preprocess([decode_image(Path(r["image"]).read_bytes(), min_side=side)])[0]
                       for r in rows])
    preprocess_s = (time.perf_counter() - started) / len(rows)
    started = time.perf_counter()  # the whole load stage per row: read, decode, pHash, CLIP preprocessing
    load_images({"product_id": np.array([r["product_id"] for r in rows], object),
                 "image": np.array([r["image"] for r in rows], object)}, model=model)
    load_s = (time.perf_counter() - started) / len(rows)
    torch.set_num_threads(threads)
    embedder.embed_pixels(pixels[:16])
    started = time.perf_counter()
    for i in range(0, len(pixels), 16):
        embedder.embed_pixels(pixels[i:i + 16])
    bare = len(pixels) / (time.perf_counter() - started)
    cores = os.cpu_count() or 1
    return {"bare_images_per_s": round(bare, 1), "preprocess_ms_per_image_per_core": round(1000 * preprocess_s, 2),
            "cpu_limit_images_per_s": round(1 / (1 / bare + preprocess_s / cores), 1),
            "load_ms_per_image_per_core": round(1000 * load_s, 2),
            "cpu_limit_with_load_images_per_s": round(1 / (1 / bare + load_s / cores), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", default="1000,4000,16000")
    parser.add_argument("--base", default="1000,3000", help="sizes for the base model in bfloat16 ('' skips)")
    parser.add_argument("--validate-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="./data/bench")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    result = {"machine_cpus": os.cpu_count(), "ray_floor_s": ray_floor()}
    print(json.dumps({"ray_floor_s": result["ray_floor_s"]}), file=sys.stderr)
    if args.validate_rows:
        folder = manifest_of(workdir, args.validate_rows, shards=10)
        run = timed([sys.executable, "-m", "batch_jobs", "validate", "--catalog", str(folder)])
        result["validate"] = {"rows": args.validate_rows, "shards": 10, "seconds": run["seconds"],
                              "driver_peak_rss_mib": run["driver_peak_rss_mib"],
                              "bad": run["report"].get("bad"), "target": "<= 120 s, RSS <= 1024 MiB"}
        print(json.dumps(result["validate"]), file=sys.stderr)
    for label, model, dtype, sizes in (("tiny", base_model(workdir, "tiny"), "float32", args.tiny),
                                       ("base_bfloat16", base_model(workdir), "bfloat16", args.base)):
        sizes = [int(s) for s in sizes.split(",") if s]
        if not sizes:
            continue
        runs = []
        for n in sorted(sizes):
            manifest = manifest_of(workdir, n)
            index = workdir / f"scale-index-{label}-{n}"
            run = timed([sys.executable, "-m", "batch_jobs", "ingest", "--catalog", str(manifest), "--index",
                         str(index), "--model", model, "--dtype", dtype])
            runs.append({"n": n, "seconds": run["seconds"], "driver_peak_rss_mib": run["driver_peak_rss_mib"],
                         "indexed": run["report"].get("indexed"), "phases": run["report"].get("phases"),
                         "end_to_end_images_per_s": round(n / run["seconds"], 1)})
            print(json.dumps({label: runs[-1]}), file=sys.stderr)
        measured = bare_and_preprocess(model, dtype, manifest_of(workdir, min(sizes)))
        line = fit([(r["n"], r["seconds"]) for r in runs])
        result[label] = {"runs": runs, **line, **measured,
                         "marginal_vs_cpu_limit": round(line["marginal_images_per_s"] /
                                                        measured["cpu_limit_images_per_s"], 3),
                         "marginal_vs_cpu_limit_with_load": round(line["marginal_images_per_s"] /
                                                                  measured["cpu_limit_with_load_images_per_s"], 3),
                         "largest_end_to_end_vs_bare": round(runs[-1]["end_to_end_images_per_s"] /
                                                             measured["bare_images_per_s"], 3),
                         "rss_growth_mib": round(runs[-1]["driver_peak_rss_mib"] - runs[0]["driver_peak_rss_mib"], 1)}
    result["targets"] = ("base bfloat16 at 3k end to end >= 0.75 x bare; marginal >= 0.9 x cpu limit; fixed cost "
                         "<= 10 s; driver RSS at 16k <= RSS at 1k + 50 MB")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
