"""find_similar latency over HTTP with 100,000 stored hashes, and pHash throughput at ingestion.

Builds a LanceDB index of ``--n`` synthetic products (random 64-bit pHashes, random unit vectors of the
base model's dimension), serves it with the real Ray Serve app, and times ``POST /find_similar``
(``mode=phash``) with real image uploads. Also times decode + pHash of the Tux Paint images in one process
(the ingestion's hashing work). Prints JSON. Target (issue 4): p50 ≤ 20 ms.

    python benchmarks/dedup_latency.py --n 100000 --requests 200
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


def build_index(path: Path, n: int, dim: int, model: str) -> None:
    from serve_app.index import IndexInfo, open_index, product_table

    if (path / "visual_search.json").exists() and open_index(str(path)).count() >= n:
        return
    index = open_index(str(path), IndexInfo(model, dim))
    rng = np.random.default_rng(0)
    for start in range(0, n, 20_000):
        m = min(20_000, n - start)
        vectors = rng.normal(size=(m, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        hashes = rng.integers(-(2**63), 2**63 - 1, m, dtype=np.int64)
        ids = [f"syn-{start + i}" for i in range(m)]
        index.upsert(product_table(ids, vectors, hashes, title=ids, category=["synthetic"] * m, price=np.ones(m),
                                   image_url=[""] * m, attributes=["{}"] * m))


def hashing_throughput(limit: int = 300) -> dict:
    from batch_jobs.sample_catalog import sample_products
    from serve_app.images import decode_image
    from serve_app.phash import phash64

    paths = [r["image"] for r in sample_products()[:limit]]
    data = [Path(p).read_bytes() for p in paths]
    started = time.perf_counter()
    for blob in data:
        phash64(decode_image(blob))
    seconds = time.perf_counter() - started
    return {"images": len(data), "images_per_s": round(len(data) / seconds, 1), "note": "decode + pHash, 1 process"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workdir", default="./data/bench")
    args = parser.parse_args()

    import httpx
    from ray import serve

    from batch_jobs.pipeline import init_ray
    from batch_jobs.sample_catalog import sample_products
    from serve_app.app import build_app

    workdir = Path(args.workdir).resolve()
    model = base_model(workdir)
    index = workdir / f"index-hashes-{args.n}"
    started = time.perf_counter()
    build_index(index, args.n, 512, model)
    result = {"machine_cpus": os.cpu_count(), "stored_hashes": args.n,
              "index_build_s": round(time.perf_counter() - started, 1)}
    init_ray()
    port = 8125
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(build_app({"model": model, "index": str(index)}), name="dedup", route_prefix="/")
    uploads = [Path(r["image"]).read_bytes() for r in sample_products()[:50]]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for i in range(5):
            client.post("/find_similar", files={"file": ("q.png", uploads[i])}).raise_for_status()
        samples, service_ms = [], []
        for i in range(args.requests):
            t = time.perf_counter()
            response = client.post("/find_similar", files={"file": ("q.png", uploads[i % len(uploads)])},
                                   data={"top": "10"})
            response.raise_for_status()
            samples.append(time.perf_counter() - t)
            service_ms.append(response.json()["took_ms"])
    serve.shutdown()
    result["http_find_similar_phash"] = summary_ms(samples)
    result["ingress_took_ms_p50"] = round(float(np.median(service_ms)), 2)
    result["hashing_throughput"] = hashing_throughput()
    result["target_p50_ms"] = 20
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
