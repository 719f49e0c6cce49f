"""Bare encoder speed per runtime and precision: torch float32 / bfloat16 and ONNX Runtime float32 / int8.

One process, the base-size random-weight CLIP (ViT-B/32 FLOPs), all cores as intra-op threads. For each
runtime, images (uint8 CLIP input, so no decoding) and texts at batch 1 and 16, medians of repeated forwards,
measured round-robin (each repetition runs every runtime once) so a noisy host affects them alike. Also the
cosine of each runtime's embeddings to torch float32's on the same inputs (random weights: this shows numeric
closeness, not retrieval quality; int8 needs a recall check with real weights).

    python benchmarks/encoder_runtimes.py --repeats 7
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import base_model, summary_ms  # noqa: E402

RUNTIMES = (("torch", "float32"), ("torch", "bfloat16"), ("onnx", "float32"), ("onnx", "int8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", default="./data/bench")
    args = parser.parse_args()

    from serve_app.embedding import load_embedder

    model = base_model(Path(args.workdir).resolve())
    threads = len(os.sched_getaffinity(0))
    embedders = {f"{r}-{d}": load_embedder(model, dtype=d, runtime=r, num_threads=threads) for r, d in RUNTIMES}
    rng = np.random.default_rng(0)
    pixels = {b: rng.integers(0, 255, (b, 3, 224, 224), dtype=np.uint8) for b in (1, 16)}
    texts = {b: [f"a photo of product number {i}, red and shiny" for i in range(b)] for b in (1, 16)}
    cases = [(kind, b) for kind in ("image", "text") for b in (1, 16)]
    samples = {name: {f"{k}{b}": [] for k, b in cases} for name in embedders}
    for e in embedders.values():  # warm-up
        e.embed_pixels(pixels[1])
        e.embed_texts(texts[1])
    for _ in range(args.repeats):
        for name, e in embedders.items():
            for kind, b in cases:
                started = time.perf_counter()
                e.embed_pixels(pixels[b]) if kind == "image" else e.embed_texts(texts[b])
                samples[name][f"{kind}{b}"].append(time.perf_counter() - started)
    reference = embedders["torch-float32"]
    ref_images, ref_texts = reference.embed_pixels(pixels[16]), reference.embed_texts(texts[16])
    result = {"machine_cpus": os.cpu_count(), "threads": threads, "model": "random base (ViT-B/32)",
              "repeats": args.repeats, "runtimes": {}}
    for name, e in embedders.items():
        per = {case: summary_ms(v) for case, v in samples[name].items()}
        result["runtimes"][name] = {
            "ms": {case: s["p50_ms"] for case, s in per.items()},
            "images_per_s_batch16": round(16000 / per["image16"]["p50_ms"], 1),
            "texts_per_s_batch16": round(16000 / per["text16"]["p50_ms"], 1),
            "min_cosine_to_torch_float32": {
                "image": round(float(np.min(np.sum(e.embed_pixels(pixels[16]) * ref_images, axis=1))), 5),
                "text": round(float(np.min(np.sum(e.embed_texts(texts[16]) * ref_texts, axis=1))), 5)}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
