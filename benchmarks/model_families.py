"""Bare encoder speed of each model family at base size: torch bfloat16 and ONNX Runtime float32.

One process, all cores as intra-op threads, random-weight base folders made by ``make-random-model`` (the real
checkpoints' shapes and FLOPs: ViT-B/32 for clip and open_clip, ViT-B/16-224 for siglip). For each family, images
(uint8 model input, so no decoding) and texts at batch 16; each repetition runs both runtimes once (round-robin,
so a noisy host affects them alike); medians with the min–max spread of the repetitions. One family is loaded at a
time (a base SigLIP on two runtimes holds ~2 GB). Also the cosine of the ONNX embeddings to torch float32's.

    python benchmarks/model_families.py --repeats 5
"""

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FAMILIES = ("clip", "siglip", "open_clip")
RUNTIMES = (("torch", "bfloat16"), ("onnx", "float32"))
BATCH = 16


def family_model(workdir: Path, family: str) -> str:
    """The base random-weight folder of ``family`` under ``workdir`` (made once)."""
    from serve_app.models.random_weights import make_random_model

    folder = workdir / f"{family}-random-base"
    if not (folder / "random_weights.json").exists():
        make_random_model(folder, family, "base")
    return str(folder)


def rate(samples_s: list[float], items: int) -> dict:
    """Items per second: median and the slowest/fastest repetition."""
    rates = [items / s for s in samples_s]
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1), "max": round(max(rates), 1)}


def measure(family: str, model: str, repeats: int, threads: int) -> dict:
    from serve_app.models import load_embedder

    embedders = {f"{r}-{d}": load_embedder(model, dtype=d, runtime=r, num_threads=threads) for r, d in RUNTIMES}
    side = embedders["torch-bfloat16"].geometry.crop
    pixels = np.random.default_rng(0).integers(0, 255, (BATCH, 3, side, side), dtype=np.uint8)
    texts = [f"a photo of product number {i}, red and shiny" for i in range(BATCH)]
    samples = {name: {"image": [], "text": []} for name in embedders}
    for e in embedders.values():  # warm-up
        e.embed_pixels(pixels[:2])
        e.embed_texts(texts[:2])
    for _ in range(repeats):
        for name, e in embedders.items():
            for kind in ("image", "text"):
                started = time.perf_counter()
                e.embed_pixels(pixels) if kind == "image" else e.embed_texts(texts)
                samples[name][kind].append(time.perf_counter() - started)
    fp32 = load_embedder(model, dtype="float32", runtime="torch", num_threads=threads)
    onnx = embedders["onnx-float32"]
    result = {"dim": fp32.dim, "input": f"{side}x{side}", "preprocessing": fp32.spec.preprocessing(),
              "min_cosine_onnx_to_torch_float32": {
                  "image": round(float(np.min(np.sum(fp32.embed_pixels(pixels) * onnx.embed_pixels(pixels), 1))), 5),
                  "text": round(float(np.min(np.sum(fp32.embed_texts(texts) * onnx.embed_texts(texts), 1))), 5)}}
    for name in embedders:
        result[name] = {"images_per_s": rate(samples[name]["image"], BATCH),
                        "texts_per_s": rate(samples[name]["text"], BATCH)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default="./data/bench")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    threads = len(os.sched_getaffinity(0))
    result = {"machine_cpus": os.cpu_count(), "threads": threads, "batch": BATCH, "repeats": args.repeats,
              "families": {}}
    for family in args.families:
        result["families"][family] = measure(family, family_model(workdir, family), args.repeats, threads)
        gc.collect()
        print(json.dumps({family: result["families"][family]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
