"""Throughput under concurrency: 1, 4, 8 and 16 clients, a 50/50 text/photo mix, against the model-bound limit.

Serves the real app (random-weight base CLIP, like ``query_latency.py``) and the 2-hop no-op floor graph on one
local Ray. For each concurrency level, N asyncio clients (keep-alive, one connection each) send requests
back to back for ``--seconds``, each request text or photo by a seeded coin flip, first against the app, then
against the floor. Per level it prints requests/s, p50/p99 per kind, non-200 answers by status, and the
Encoder's mean batch sizes; once per run the **model-bound limit** for the same mix, measured here: the bare
forward at batch 8 (photo: including decode and preprocessing on one core) gives images/s ``I`` and texts/s
``T``, so the mix cannot exceed ``1 / (0.5/I + 0.5/T)`` requests/s on this machine. Target at 8 clients:
≥ 0.5 × that limit with zero errors. With ``hey`` installed (Debian's HTTP load generator), text-only runs at
1 and 8 clients are added as an independent measurement.

    python benchmarks/query_throughput.py --seconds 60 --dtype bfloat16
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, serve_config, served_catalog, summary_ms  # noqa: E402
from benchmarks.query_latency import QUERIES, cpu_seconds, serve_processes  # noqa: E402

PORT = 8124


async def run_level(base: str, clients: int, seconds: float, uploads: list[bytes], seed: int) -> dict:
    """``clients`` concurrent loops for ``seconds``: requests/s, p50/p99 per kind and non-200s by status."""
    import httpx

    latencies: dict[str, list[float]] = {"text": [], "image": []}
    statuses: Counter = Counter()
    deadline = time.perf_counter() + seconds

    async def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=1)) as http:
            i = 0
            while time.perf_counter() < deadline:
                kind = "text" if rng.random() < 0.5 else "image"
                started = time.perf_counter()
                try:
                    if kind == "text":
                        r = await http.post("/search/text", json={"query": f"{QUERIES[i % 10]} {n} {i}", "k": 10})
                    else:
                        r = await http.post("/search/image", data={"k": "10"},
                                            files={"file": ("q.png", uploads[rng.randrange(len(uploads))])})
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                statuses[status] += 1
                if status == 200:
                    latencies[kind].append(time.perf_counter() - started)
                i += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": sum(statuses.values()),
            "requests_per_s": round(ok / elapsed, 2), "errors": {str(k): v for k, v in statuses.items() if k != 200},
            "text": summary_ms(latencies["text"]) if latencies["text"] else None,
            "image": summary_ms(latencies["image"]) if latencies["image"] else None}


def model_bound_limit(model: str, dtype: str, runtime: str, uploads: list[bytes], batch: int = 8) -> dict:
    """Bare batch-``batch`` images/s (decode + preprocess + forward) and texts/s in this process, and the 50/50
    mix's requests/s those allow."""
    from serve_app.embedding import load_embedder
    from serve_app.query_image import prepare_query_image

    embedder = load_embedder(model, dtype=dtype, runtime=runtime, num_threads=len(os.sched_getaffinity(0)))
    texts = [f"{q} {i}" for i, q in enumerate(QUERIES)][:batch]

    def images_once():
        pixels = [prepare_query_image(uploads[i % len(uploads)], embedder.geometry).pixels for i in range(batch)]
        embedder.embed_pixels(np.stack(pixels))

    def rate(fn, n=6):
        fn()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return batch / sorted(times)[len(times) // 2]

    images_per_s, texts_per_s = rate(images_once), rate(lambda: embedder.embed_texts(texts))
    return {"batch": batch, "images_per_s": round(images_per_s, 1), "texts_per_s": round(texts_per_s, 1),
            "mix_requests_per_s": round(1 / (0.5 / images_per_s + 0.5 / texts_per_s), 1)}


def hey(url: str, clients: int, seconds: int) -> dict | None:
    """``hey -c N -z Ts`` on text search (None when hey is not installed)."""
    if not shutil.which("hey"):
        return None
    out = subprocess.run(["hey", "-c", str(clients), "-z", f"{seconds}s", "-m", "POST", "-T", "application/json",
                          "-d", json.dumps({"query": "a red apple", "k": 10}), url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    fields = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            fields["requests_per_s"] = float(line.split()[1])
        elif line.startswith("50%% in") or line.startswith("50% in"):
            fields["p50_ms"] = round(1000 * float(line.split()[2]), 1)
        elif line.startswith("99% in"):
            fields["p99_ms"] = round(1000 * float(line.split()[2]), 1)
        elif line.startswith("[") and "responses" in line:
            fields.setdefault("statuses", []).append(line)
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-products", type=int, default=538)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default="bfloat16")
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--config", default=str(ROOT / "configs" / "serve.yaml"),
                        help="Serve config deployed with `serve run` (its app args model/index/dtype/runtime replaced)")
    parser.add_argument("--workdir", default="./data/bench")
    parser.add_argument("--skip-floor", action="store_true")
    args = parser.parse_args()

    from ray import serve

    from benchmarks.serve_floor import build_floor_app

    model, rows, index, products = served_catalog(Path(args.workdir).resolve(), args.n_products, None,
                                                  "float32" if args.dtype == "int8" else args.dtype)
    uploads = [Path(r["image"]).read_bytes() for r in rows[:50]]
    limits = [model_bound_limit(model, args.dtype, args.runtime, uploads)]  # again after the levels: a noisy host
    serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    server = serve_config(Path(args.config), {"model": model, "index": index, "dtype": args.dtype,
                                              "runtime": args.runtime}, f"http://127.0.0.1:{PORT}")
    if not args.skip_floor:
        serve.run(build_floor_app(2), name="floor", route_prefix="/floor")
    encoder = serve.get_deployment_handle("Encoder", server.app_name)
    levels = []
    base = f"http://127.0.0.1:{PORT}"
    asyncio.run(run_level(base, 2, 5, uploads, 0))  # warm-up
    roles = serve_processes()
    for clients in [int(c) for c in args.clients.split(",")]:
        encoder.stats.remote().result()
        before = cpu_seconds(roles)
        served = asyncio.run(run_level(base, clients, args.seconds, uploads, clients))
        after = cpu_seconds(roles)
        served["encoder_batches"] = encoder.stats.remote().result()
        served["cpu_cores_used"] = {role: round((after[role] - before[role]) / served["seconds"], 2) for role in roles
                                    if after[role] - before[role] > 0.01 * served["seconds"]}
        served["fraction_of_model_bound_before"] = round(served["requests_per_s"] / limits[0]["mix_requests_per_s"], 3)
        if not args.skip_floor:
            floor = asyncio.run(run_level(base + "/floor", clients, min(args.seconds, 20), uploads, clients))
            served["floor_requests_per_s"] = floor["requests_per_s"]
        levels.append(served)
        print(json.dumps(served), file=sys.stderr)
    hey_text = {c: hey(base + "/search/text", c, 20) for c in (1, 8)}
    if not args.skip_floor:
        serve.delete("floor")
    server.stop()  # `serve run` shuts Serve down
    limits.append(model_bound_limit(model, args.dtype, args.runtime, uploads))
    mean_limit = sum(limit["mix_requests_per_s"] for limit in limits) / len(limits)
    for level in levels:
        level["fraction_of_model_bound"] = round(level["requests_per_s"] / mean_limit, 3)
    result = {"machine_cpus": os.cpu_count(), "model": "random base (ViT-B/32)", "runtime": args.runtime,
              "dtype": args.dtype, "products": products, "config": args.config,
              "model_bound_limit": {"before": limits[0], "after": limits[1], "mix_requests_per_s": round(mean_limit, 1)},
              "levels": levels, "hey_text": hey_text,
              "target": "8 clients: requests_per_s >= 0.5 x model_bound_limit.mix_requests_per_s, no errors"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
