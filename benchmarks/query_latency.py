"""Query latency over HTTP: text and image search against a served catalog of ≥ 1,000 products.

Starts the real Ray Serve app (base-size random CLIP) in this process on 127.0.0.1, sends sequential
requests from one keep-alive client, and prints p50/p99 per endpoint as JSON, next to the bare model
forward at batch size 1 measured in the same run (the floor the service cannot beat).
Targets (issue 2, 2 cores): text p50 ≤ 40 ms, image p50 ≤ 80 ms.

    python benchmarks/query_latency.py --n-products 1088 --requests 100 --dtype float32
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import served_catalog, summary_ms  # noqa: E402

QUERIES = ["a red apple", "a green tractor", "a cat sleeping", "a blue winter coat", "a kitchen knife",
           "a bunch of flowers", "a toy car", "a pair of running shoes", "a birthday cake", "a wooden chair"]


def bare_batch1(model: str, dtype: str, image_paths: list[str], n: int) -> dict:
    from serve_app.embedding import load_clip
    from serve_app.images import decode_image

    embedder = load_clip(model, dtype=dtype)
    images = [decode_image(Path(p).read_bytes()) for p in image_paths[:n]]
    embedder.embed_images(images[:1])
    embedder.embed_texts(QUERIES[:1])
    text, image = [], []
    for i in range(n):
        t = time.perf_counter()
        embedder.embed_texts([QUERIES[i % len(QUERIES)] + f" {i}"])
        text.append(time.perf_counter() - t)
        t = time.perf_counter()
        embedder.embed_images([images[i]])
        image.append(time.perf_counter() - t)
    return {"text": summary_ms(text), "image": summary_ms(image)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-products", type=int, default=1088)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--workdir", default="./data/bench")
    parser.add_argument("--index", default=None, help="reuse an index built with the same model")
    args = parser.parse_args()

    import httpx
    from ray import serve

    from serve_app.app import build_app

    model, rows, index, products = served_catalog(Path(args.workdir).resolve(), args.n_products, args.index,
                                                  args.dtype)

    result = {"machine_cpus": os.cpu_count(), "model": "random base (ViT-B/32)", "dtype": args.dtype,
              "products": products, "requests": args.requests}
    port = 8123
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING",
                                                                                  "enable_access_log": False})
    serve.run(build_app({"model": model, "index": index, "dtype": args.dtype}), name="bench", route_prefix="/")
    rng = random.Random(0)
    uploads = [Path(r["image"]).read_bytes() for r in rng.sample(rows, min(50, len(rows)))]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for i in range(5):  # warm-up
            client.post("/search/text", json={"query": QUERIES[i], "k": 10}).raise_for_status()
            client.post("/search/image", files={"file": ("q.png", uploads[i])}, data={"k": "10"}).raise_for_status()
        text, image = [], []
        for i in range(args.requests):
            t = time.perf_counter()
            client.post("/search/text", json={"query": f"{QUERIES[i % len(QUERIES)]} {i}", "k": 10}).raise_for_status()
            text.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.post("/search/image", files={"file": ("q.png", uploads[i % len(uploads)])},
                        data={"k": "10"}).raise_for_status()
            image.append(time.perf_counter() - t)
    result["http_text_search"] = summary_ms(text)
    result["http_image_search"] = summary_ms(image)
    serve.shutdown()
    result["bare_model_batch1"] = bare_batch1(model, args.dtype, [r["image"] for r in rows], min(50, args.requests))
    result["targets"] = {"text_p50_ms": 40, "image_p50_ms": 80}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
