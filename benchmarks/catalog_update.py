"""Catalog updates on a served index without a restart: upsert ``--upsert`` products (half new, half changed)
and delete ``--delete`` with the real commands while the real app serves it, and time until the service sees
both.

Runs on an index built by ``benchmarks/scale_ladder.py`` (ids ``sku-<i>``, 512-d): the service is started, then
``ingest --mode upsert --from-embeddings`` and ``delete --ids`` run as subprocesses on the same Ray cluster.
"Seen" means ``/healthz`` counts the new total and an upserted new product can be searched by
(``/search/similar`` on itself); for the delete, the new total and no deleted id coming back from
``/search/similar`` with its nearest remaining neighbour (where it would rank first) — polled every 0.5 s while
each command runs, timed from the command's start. Prints JSON.

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


def run_cli_until(args: list[str], seen, timeout_s: float) -> dict:
    """Run a batch command as a subprocess on this process's Ray cluster while polling ``seen()`` every 0.5 s;
    returns the command's JSON plus ``command_s`` (its wall time) and ``seen_s`` (from its start until ``seen()``
    first held, ``None`` if not within ``timeout_s``)."""
    import ray

    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "batch_jobs", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=os.environ | {"RAY_AUTH_MODE": "disabled",
                                                 "RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    seen_s = command_s = None
    while time.perf_counter() - started < timeout_s and (seen_s is None or command_s is None):
        if command_s is None and process.poll() is not None:
            command_s = time.perf_counter() - started
        if seen_s is None and seen():
            seen_s = time.perf_counter() - started
        time.sleep(0.5)
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({process.returncode}): {err[-3000:]}")
    return json.loads(out) | {"command_s": round(command_s or time.perf_counter() - started, 1),
                              "seen_s": None if seen_s is None else round(seen_s, 1)}


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
    existing = np.array([p for p in reader.product_ids() if p.startswith("sku-")], dtype=object)
    changed = list(rng.choice(existing, args.upsert // 2, replace=False))
    run = time.strftime("%H%M%S")  # ids new to the index on every run
    new = [f"new-{run}-{i}" for i in range(args.upsert - len(changed))]
    vectors = rng.standard_normal((args.upsert, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = new + changed
    pq.write_table(pa.table({"product_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.ravel()), 512), "category": ["updated"] * len(ids)}), workdir / "upsert.parquet")
    deleted = [p for p in rng.choice(existing, args.delete, replace=False) if p not in set(changed)]
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
            def products() -> int:
                return client.get("/healthz").json().get("products")

            def upsert_seen() -> bool:
                top = client.post("/search/similar", json={"positive": [new[0]], "k": 1})
                return top.status_code == 200 and products() == before + len(new)

            def deleted_returned() -> set[str]:
                returned = set()
                for pid, neighbour in neighbours.items():
                    hits = client.post("/search/similar", json={"positive": [neighbour], "k": 5}).json()["results"]
                    returned |= {h["product_id"] for h in hits} & {pid}
                return returned

            result["upsert"] = run_cli_until(
                ["ingest", "--from-embeddings", str(workdir / "upsert.parquet"), "--index", index, "--model", model,
                 "--mode", "upsert", "--report", str(workdir / "upsert_report.json")], upsert_seen, args.timeout_s)
            expected = before + len(new) - len(deleted)
            result["delete"] = run_cli_until(["delete", "--index", index, "--ids", str(workdir / "delete.txt")],
                                             lambda: products() == expected and not deleted_returned(), args.timeout_s)
            result |= {"products_expected": expected, "products_served": products(),
                       "deleted_ids_returned": sorted(deleted_returned()), "target_s": 60}
    finally:
        serve.delete("update")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
