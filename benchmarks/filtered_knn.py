"""Filtered k-NN on the embedded backend (LanceDB) at catalog scale: build time, latency, recall@10.

Synthetic but clustered data (product photos cluster by kind): ``--n`` unit vectors of dimension ``--dim``
around ``--clusters`` centres; a ``category`` that ~4 % of rows have (``--selectivity``). Queries are perturbed
catalog vectors. Recall@10 is against an exact NumPy search over the same rows (filtered: over the matching
rows only). Prints one JSON object on stdout.

    python benchmarks/filtered_knn.py --n 100000 --dim 512
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve_app.filters import parse_filters  # noqa: E402
from serve_app.index import IndexInfo, open_index, product_table  # noqa: E402


def make_data(n: int, dim: int, clusters: int, selectivity: float, queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rare = rng.random(n) < selectivity
    picks = rng.choice(n, queries, replace=False)
    q = vectors[picks] + 0.3 * rng.normal(size=(queries, dim)).astype(np.float32) / np.sqrt(dim) * 4
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return vectors, rare, q.astype(np.float32)


def table(vectors: np.ndarray, rare: np.ndarray, start: int) -> pa.Table:
    n = len(vectors)
    ids = [f"p{start + i}" for i in range(n)]
    return product_table(ids, vectors, np.arange(start, start + n), title=ids, image_url=[""] * n,
                         category=np.where(rare, "rare", "common").tolist(), attributes=["{}"] * n,
                         price=np.arange(start, start + n, dtype=np.float64))


def measure(index, queries, exact_top, k, filters):
    latencies, recalls, counts = [], [], []
    index.search(queries[:1], k, filters)  # warm-up
    for q, truth in zip(queries, exact_top):
        started = time.perf_counter()
        hits = index.search(q[None, :], k, filters)[0]
        latencies.append(1000 * (time.perf_counter() - started))
        recalls.append(len({int(h.product_id[1:]) for h in hits} & set(truth.tolist())) / k)
        counts.append(len(hits))
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            f"recall@{k}": round(float(np.mean(recalls)), 4), "returned_k_always": bool(min(counts) == k)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=200)
    p.add_argument("--selectivity", type=float, default=0.04)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()

    vectors, rare, queries = make_data(args.n, args.dim, args.clusters, args.selectivity, args.queries)
    scores = queries @ vectors.T  # [Q, N]
    exact = np.argsort(-scores, axis=1)[:, :args.k]
    exact_rare = np.argsort(-np.where(rare[None, :], scores, -np.inf), axis=1)[:, :args.k]

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        index = open_index(folder, IndexInfo("synthetic", args.dim))
        for start in range(0, args.n, 20_000):
            index.upsert(table(vectors[start:start + 20_000], rare[start:start + 20_000], start))
        loaded = time.perf_counter()
        index.finish_bulk_load()
        built = time.perf_counter()
        result = {
            "backend": "lancedb", "n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
            "filter_selectivity": round(float(rare.mean()), 4), "ann_index": index.has_ann_index(),
            "load_s": round(loaded - started, 2), "index_build_s": round(built - loaded, 2),
            "unfiltered": measure(index, queries, exact, args.k, None),
            "filtered": measure(index, queries, exact_rare, args.k, parse_filters({"category": "rare"})),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
