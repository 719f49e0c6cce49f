"""The cost curve from 10k to 1M products: load, ANN build, disk, Retriever memory, k-NN / filtered k-NN /
find_similar latency over HTTP and recall@10 — through the real commands and the real Ray Serve app.

For each size ``N`` (``--sizes``, default 10k, 100k, 1M):

1. writes ``N`` synthetic products as Parquet (``ingest --from-embeddings`` layout): 512-d unit vectors around
   1,000 cluster centres (product photos cluster by kind, as CLIP embeddings do), a ``category`` that ≈2 %
   (``rare``) and ≈20 % (``common``) of rows have, random 64-bit pHashes with ``--planted`` near-duplicates
   (a copy of another product's hash with 0–10 bits flipped);
2. loads them with ``python -m batch_jobs ingest --from-embeddings`` (a subprocess, as a user runs it): load time
   before the index build, the index build (ANN + scalar indexes) time, disk size;
3. serves the index with the real app (random base CLIP, 512-d) and times over HTTP ``POST /search/similar``
   with one positive (pure k-NN of a stored vector), the same with the 2 % and 20 % category filters, and
   ``GET /find_similar?product_id=`` for the planted products; recall@10 is against an exact NumPy search
   (the query product itself left out, as the service does), and every planted duplicate must be found;
4. reads the Retriever replica's resident memory (``/proc/<pid>/status``).

Prints one JSON object per size and a summary; draws the curves to ``--png`` (needs matplotlib:
``pip install matplotlib``).

    python benchmarks/scale_ladder.py --sizes 10000 100000 1000000 --png benchmarks/scale_ladder.png
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, base_model, summary_ms  # noqa: E402

DIM = 512
CLUSTERS = 1000
MAX_DISTANCE = 10  # find_similar's default radius, bits
ROWS_PER_FILE = 250_000
PORT = 8126


def make_catalog(folder: Path, n: int, planted: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write ``n`` products under ``folder``; returns ``(vectors (n, DIM), hashes (n,), categories (n,))``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    vectors = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, CLUSTERS, m)] + 0.9 * rng.standard_normal((m, DIM)).astype(np.float32)
        vectors[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    u = rng.random(n)
    categories = np.where(u < 0.02, "rare", np.where(u < 0.22, "common", "other"))
    hashes = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    for i in range(planted):  # product n-1-i: a near-copy of product i's pHash
        bits = rng.choice(64, int(rng.integers(0, MAX_DISTANCE + 1)), replace=False)
        mask = np.array(sum(1 << int(b) for b in bits), dtype=np.uint64).view(np.int64)
        hashes[n - 1 - i] = hashes[i] ^ mask
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, n, ROWS_PER_FILE)):
        end = min(n, start + ROWS_PER_FILE)
        ids = [f"sku-{i}" for i in range(start, end)]
        pq.write_table(pa.table({
            "product_id": ids,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors[start:end].ravel()), DIM),
            "phash": hashes[start:end], "title": ids, "category": categories[start:end],
            "price": rng.uniform(1, 500, end - start)}), folder / f"part-{part:05d}.parquet")
    return vectors, hashes, categories


def load(source: Path, index: Path, model: str) -> dict:
    """``ingest --from-embeddings`` as a subprocess on this process's Ray cluster (``RAY_ADDRESS``: one cluster
    on the machine); its JSON summary."""
    import ray

    command = [sys.executable, "-m", "batch_jobs", "ingest", "--from-embeddings", str(source), "--index", str(index),
               "--model", model]
    started = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                         env=os.environ | {"RAY_AUTH_MODE": "disabled",
                                           "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    if out.returncode != 0:
        raise RuntimeError(f"ingest failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout) | {"wall_s": round(time.perf_counter() - started, 1)}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and "embeddings" not in p.parts)


def retriever_rss_mb() -> float | None:
    """Resident memory of the Retriever replica process (its title names the deployment), MiB."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if "ServeReplica" in cmdline and "Retriever" in cmdline:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return None


def exact_top10(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None) -> list[set[int]]:
    """Exact top 10 by cosine (the query product left out), optionally among ``allowed`` rows only."""
    out = []
    for q in queries:
        scores = vectors @ vectors[q]
        scores[q] = -np.inf
        if allowed is not None:
            scores[~allowed] = -np.inf
        top = np.argpartition(-scores, 10)[:10]
        out.append(set(top.tolist()))
    return out


def measure(client, vectors, hashes, categories, queries: np.ndarray, planted: int) -> dict:
    n = len(vectors)
    result = {}
    for name, category in (("knn", None), ("filtered_2pct", "rare"), ("filtered_20pct", "common")):
        allowed = None if category is None else categories == category
        picks = queries if allowed is None else np.flatnonzero(allowed)[:len(queries)]
        truth = exact_top10(vectors, picks, allowed)
        samples, recalls, outside = [], [], 0
        for q, expected in zip(picks, truth):
            body = {"positive": [f"sku-{q}"], "k": 10} | ({"filters": {"category": category}} if category else {})
            started = time.perf_counter()
            response = client.post("/search/similar", json=body)
            samples.append(time.perf_counter() - started)
            response.raise_for_status()
            results = response.json()["results"]
            outside += sum(r["category"] != category for r in results) if category else 0
            got = {int(r["product_id"].split("-")[1]) for r in results}
            recalls.append(len(got & expected) / 10)
            if len(results) < 10:
                outside += 10 - len(results)  # fewer than k although >= k rows match
        result[name] = summary_ms(samples) | {"recall_at_10": round(float(np.mean(recalls)), 4),
                                              "results_outside_filter_or_missing": outside}
    samples, missed = [], 0
    for i in range(planted):
        started = time.perf_counter()
        response = client.get("/find_similar", params={"product_id": f"sku-{i}", "max_distance": MAX_DISTANCE,
                                                       "top": 50})
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
        found = {r["product_id"] for r in response.json()["results"]}
        distances = np.bitwise_count((hashes ^ hashes[i]).view(np.uint64))
        expected = {f"sku-{j}" for j in np.flatnonzero(distances <= MAX_DISTANCE) if j != i}
        missed += len(expected - found) + len(found - expected)
        assert f"sku-{n - 1 - i}" in expected
    result["find_similar_by_product"] = summary_ms(samples) | {"planted": planted, "wrong_or_missed": missed}
    return result


def run_size(n: int, args, model: str, workdir: Path) -> dict:
    import httpx
    from ray import serve

    from serve_app.app import build_app

    started = time.perf_counter()
    vectors, hashes, categories = make_catalog(workdir / f"src-{n}", n, args.planted, args.seed)
    generated_s = time.perf_counter() - started
    index = workdir / f"index-{n}"
    if index.exists():
        import shutil

        shutil.rmtree(index)
    report = load(workdir / f"src-{n}", index, model)
    phases = report["phases"]
    out = {"products": n, "generate_s": round(generated_s, 1), "ingest_wall_s": report["wall_s"],
           "load_s": round(phases["pipeline_done_s"] - phases["index_build_s"], 1),
           "index_build_s": phases["index_build_s"], "indexed": report["indexed"], "skipped": report["skipped"],
           "disk_mb": round(disk_bytes(index) / 2**20, 1)}
    port = PORT
    serve.run(build_app({"model": model, "index": str(index)}), name="ladder", route_prefix="/")
    queries = np.random.default_rng(args.seed + 1).choice(n, args.queries, replace=False)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for q in queries[:5]:  # warm-up: the Retriever's first queries open files and build the pHash index
                client.post("/search/similar", json={"positive": [f"sku-{q}"], "k": 10}).raise_for_status()
                client.get("/find_similar", params={"product_id": f"sku-{q}"}).raise_for_status()
            out |= measure(client, vectors, hashes, categories, queries, args.planted)
        out["retriever_rss_mb"] = retriever_rss_mb()
    finally:
        serve.delete("ladder")
    print(json.dumps(out), flush=True)
    return out


def draw(results: list[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["products"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for key, label in (("knn", "k-NN (/search/similar)"), ("filtered_2pct", "filtered 2 %"),
                       ("filtered_20pct", "filtered 20 %"), ("find_similar_by_product", "find_similar by product")):
        axes[0].plot(sizes, [r[key]["p50_ms"] for r in results], marker="o", label=f"{label} p50")
        axes[0].plot(sizes, [r[key]["p99_ms"] for r in results], marker="x", linestyle=":", label=f"{label} p99")
    axes[0].set(xscale="log", yscale="log", xlabel="products", ylabel="ms over HTTP", title="query latency")
    axes[0].legend(fontsize=7)
    axes[1].plot(sizes, [r["load_s"] for r in results], marker="o", label="load (before index build)")
    axes[1].plot(sizes, [r["index_build_s"] for r in results], marker="o", label="ANN + scalar index build")
    axes[1].set(xscale="log", yscale="log", xlabel="products", ylabel="seconds", title="ingestion")
    axes[1].legend(fontsize=8)
    axes[2].plot(sizes, [r["disk_mb"] for r in results], marker="o", label="index on disk")
    axes[2].plot(sizes, [r["retriever_rss_mb"] or 0 for r in results], marker="o", label="Retriever RSS")
    axes[2].set(xscale="log", yscale="log", xlabel="products", ylabel="MiB", title="memory and disk")
    axes[2].legend(fontsize=8)
    fig.suptitle("Visual Search scale ladder: 512-d, LanceDB IVF_HNSW_SQ, 2-core VM")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="held-out query products per measurement")
    parser.add_argument("--planted", type=int, default=200, help="planted near-duplicate pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="./data/bench/ladder")
    parser.add_argument("--png", default=None, help="draw the curves here")
    parser.add_argument("--json", default=None, help="also write every size's result here")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = base_model(workdir.parent)
    from ray import serve

    from batch_jobs.pipeline import init_ray

    init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    results = [run_size(n, args, model, workdir) for n in args.sizes]
    summary = {"machine_cpus": os.cpu_count(), "dim": DIM, "sizes": results}
    if len(results) >= 2:
        first, last = results[-2], results[-1]
        summary["largest_over_previous_p50"] = {k: round(last[k]["p50_ms"] / first[k]["p50_ms"], 2)
                                                for k in ("knn", "filtered_2pct", "find_similar_by_product")}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.png:
        draw(results, args.png)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
