"""Catalog updates on a served index without a restart: upsert ``--upsert`` products (half new, half changed)
and delete ``--delete`` with the real commands while the real app serves it, and time until the service sees
both.

Runs on an index built by ``benchmarks/scale_ladder.py`` (ids ``sku-<i>``, 512-d): the service is started, then
``ingest --mode upsert --from-embeddings`` and ``delete --ids`` run as subprocesses on the same Ray cluster.
"Seen" means ``/healthz`` counts the new total, an upserted new product is found first by ``/search/similar``
on itself, and no deleted id comes back from ``/search/similar`` with its nearest remaining neighbour (where it
would rank first) — checked every 0.5 s. Prints JSON.

    python benchmarks/catalog_update.py --index data/bench/ladder/index-1000000
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

from benchmarks.common import ROOT, base_model  # noqa: E402

PORT = 8127


def run_cli(args: list[str]) -> dict:
    import ray

    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "batch_jobs", *args], cwd=ROOT, capture_output=True, text=True,
                         env=os.environ | {"RAY_AUTH_MODE": "disabled",
                                           "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout) | {"wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--upsert", type=int, default=10_000)
    parser.add_argument("--delete", type=int, default=1_000)
    parser.add_argument("--timeout-s", type=float, default=300)
    args = parser.parse_args()

    import httpx
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray import serve

    from batch_jobs.pipeline import init_ray
    from serve_app.app import build_app
    from serve_app.index import open_index

    index = str(Path(args.index).resolve())
    workdir = Path(index).parent
    model = base_model(workdir.parent)
    reader = open_index(index)
    before = reader.count()
    rng = np.random.default_rng(7)
    changed = [f"sku-{i}" for i in rng.choice(before, args.upsert // 2, replace=False)]
    new = [f"new-{i}" for i in range(args.upsert - len(changed))]
    vectors = rng.standard_normal((args.upsert, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = new + changed
    pq.write_table(pa.table({"product_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel()), 512), "category": ["updated"] * len(ids)}), workdir / "upsert.parquet")
    deleted = [f"sku-{i}" for i in rng.choice(before, args.delete, replace=False) if f"sku-{i}" not in set(changed)]
    (workdir / "delete.txt").write_text("\n".join(deleted) + "\n")
    # the nearest remaining neighbour of each checked deleted product: searching by it would rank the deleted one
    checked = deleted[:20]
    stored = reader.vectors(checked)
    neighbours = {pid: next(h.product_id for h in reader.search(stored[pid][None, :], 3)[0]
                            if h.product_id != pid and h.product_id not in deleted) for pid in checked}

    init_ray()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    serve.run(build_app({"model": model, "index": index}), name="update", route_prefix="/")
    result: dict = {"products_before": before}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=60) as client:
            started = time.perf_counter()
            result["upsert"] = run_cli(["ingest", "--from-embeddings", str(workdir / "upsert.parquet"), "--index",
                                        index, "--model", model, "--mode", "upsert",
                                        "--report", str(workdir / "upsert_report.json")])
            result["delete"] = run_cli(["delete", "--index", index, "--ids", str(workdir / "delete.txt")])
            done_s = time.perf_counter() - started
            expected = before + len(new) - len(deleted)
            seen = None
            while time.perf_counter() - started < done_s + args.timeout_s:
                count = client.get("/healthz").json().get("products")
                top = client.post("/search/similar", json={"positive": [new[0]], "k": 1})
                returned = set()
                for pid, neighbour in neighbours.items():
                    hits = client.post("/search/similar", json={"positive": [neighbour], "k": 5}).json()["results"]
                    returned |= {h["product_id"] for h in hits} & {pid}
                if count == expected and top.status_code == 200 and not returned:
                    seen = time.perf_counter() - started
                    break
                time.sleep(0.5)
            result |= {"products_expected": expected, "products_served": count,
                       "commands_s": round(done_s, 1),
                       "seen_after_commands_s": None if seen is None else round(seen - done_s, 1),
                       "seen_after_start_s": None if seen is None else round(seen, 1),
                       "deleted_ids_returned": sorted(returned), "target_s": 60}
    finally:
        serve.delete("update")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
