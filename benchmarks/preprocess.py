"""Preprocessing per core: the old path (full decode + Hugging Face CLIPImageProcessor) vs ours (JPEG draft decode
at a reduced scale, then CLIP's resize and crop on the crop box only: serve_app/preprocess.py), on ≥ 800 px JPEGs.

One thread, one process, both paths interleaved per round (a noisy shared host): per-core images/s of each, the
speed-up, and parity on the same images — mean absolute difference of the uint8 CLIP inputs (grey levels) and
the cosine between the embeddings of the two inputs with the random base model (random weights prove shapes and
pixels, not semantics). Prints JSON.

    python benchmarks/preprocess.py --images 60 --rounds 5
"""

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import base_model  # noqa: E402

TUXPAINT = Path("/usr/share/tuxpaint/stamps")
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


def product_jpegs(n: int) -> list[bytes]:
    """``n`` JPEGs of 1,000-1,600 px: Debian's stamp photos enlarged (Lanczos) on white, plus opencv-doc's."""
    from serve_app.images import decode_image

    out = []
    for path in sorted(OPENCV_DATA.glob("*.jpg")):
        if max(Image.open(path).size) >= 800:
            out.append(path.read_bytes())
    for i, path in enumerate(sorted(TUXPAINT.rglob("*.png"))[: max(0, n - len(out))]):
        image = decode_image(path.read_bytes())
        scale = (1000 + 20 * (i % 30)) / max(image.size)
        buffer = io.BytesIO()
        image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS).save(
            buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default="./data/bench")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from serve_app.embedding import load_embedder
    from serve_app.images import DECODE_MIN_SIDE, decode_image
    from serve_app.preprocess import ClipGeometry

    embedder = load_embedder(base_model(Path(args.workdir).resolve()), num_threads=1)
    processor = embedder.processor.image_processor
    geometry = ClipGeometry.from_processor(processor)
    side = max(DECODE_MIN_SIDE, embedder.input_side)
    jpegs = product_jpegs(args.images)
    sizes = [Image.open(io.BytesIO(j)).size for j in jpegs]

    def old(data: bytes) -> np.ndarray:  # what landed before: full decode, the HF processor (float, rescaled later)
        out = processor(images=[decode_image(data)], do_rescale=False, do_normalize=False,
                        return_tensors="np")["pixel_values"][0]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def new(data: bytes) -> np.ndarray:
        return embedder.preprocess([decode_image(data, min_side=side)])[0]

    rates = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name, fn in (("old", old), ("new", new)):
            started = time.perf_counter()
            for data in jpegs:
                fn(data)
            rates[name].append(len(jpegs) / (time.perf_counter() - started))
    a = np.stack([old(j) for j in jpegs])
    b = np.stack([new(j) for j in jpegs])
    cosine = np.sum(embedder.embed_pixels(a) * embedder.embed_pixels(b), axis=1)
    speedups = [n / o for n, o in zip(rates["new"], rates["old"])]
    print(json.dumps({
        "images": len(jpegs), "long_side_px": {"min": min(max(s) for s in sizes), "max": max(max(s) for s in sizes)},
        "rounds": args.rounds, "threads": 1, "geometry": str(geometry),
        "old_images_per_s_per_core": {"median": round(statistics.median(rates["old"]), 1),
                                      "min": round(min(rates["old"]), 1), "max": round(max(rates["old"]), 1)},
        "new_images_per_s_per_core": {"median": round(statistics.median(rates["new"]), 1),
                                      "min": round(min(rates["new"]), 1), "max": round(max(rates["new"]), 1)},
        "speedup": {"median": round(statistics.median(speedups), 2), "min": round(min(speedups), 2),
                    "max": round(max(speedups), 2)},
        "parity": {"mean_abs_grey_levels": round(float(np.abs(a.astype(int) - b.astype(int)).mean()), 3),
                   "embedding_cosine_min": round(float(cosine.min()), 6),
                   "embedding_cosine_median": round(float(np.median(cosine)), 6)},
        "target": "new >= 3 x old per core; cosine >= 0.999",
    }, indent=2))


if __name__ == "__main__":
    main()
