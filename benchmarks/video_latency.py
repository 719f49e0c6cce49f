"""Video search latency over HTTP: a 10 s 640×360 clip at 1 fps against ≥ 1,000 products (base random CLIP).

Runs the real graph with `serve run configs/serve.yaml` (so the configured autoscaling applies), sends
sequential requests for p50/p99 end-to-end and the per-stage split (medians of the ``took_ms`` the service
reports), then 4 concurrent clients for throughput, and reads the Encoder's replica count from
`serve status`. Prints one JSON object. Target (issue 3, 2 cores): p50 ≤ 700 ms.

    python benchmarks/video_latency.py --index data/bench/index-bench --requests 30
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batch_jobs.serve_process import start_serve, stop_serve, wait_healthy  # noqa: E402
from benchmarks.common import served_catalog, summary_ms  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def encoder_replicas() -> int:
    out = subprocess.run([sys.executable, "-m", "ray.serve.scripts", "status"], capture_output=True, text=True,
                         timeout=60).stdout
    import yaml

    status = yaml.safe_load(out) or {}
    for app in (status.get("applications") or {}).values():
        encoder = (app.get("deployments") or {}).get("Encoder", {})
        return int((encoder.get("replica_states") or {}).get("RUNNING", 0))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-products", type=int, default=1088)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--concurrent-requests", type=int, default=40)
    parser.add_argument("--workdir", default="./data/bench")
    parser.add_argument("--index", default=None, help="an index built with the base random model")
    args = parser.parse_args()

    import httpx

    import ray

    from batch_jobs.make_clip import make_clip

    workdir = Path(args.workdir).resolve()
    model, rows, index, _ = served_catalog(workdir, args.n_products, args.index)
    ray.shutdown()  # `serve run` starts its own Ray
    clip = workdir / "clip-10s.mp4"
    make_clip(clip, [r["image"] for r in rows[10:14]], 2.5)  # 4 shots × 2.5 s = 10 s at 640×360
    data = clip.read_bytes()

    env = os.environ | {"VS_MODEL": model, "VS_INDEX": str(Path(index).resolve()), "RAY_AUTH_MODE": "disabled"}
    server = start_serve(ROOT / "configs" / "serve.yaml", env, ROOT, quiet=True)
    base = "http://127.0.0.1:8000"
    result = {"machine_cpus": os.cpu_count(), "model": "random base (ViT-B/32)", "clip": "10 s 640x360, 4 shots",
              "fps": 1.0}
    try:
        wait_healthy(base + "/healthz", server)
        with httpx.Client(base_url=base, timeout=120) as client:
            def one() -> dict:
                response = client.post("/search/video", files={"file": ("clip.mp4", data, "video/mp4")},
                                       data={"k": "10", "fps": "1.0"})
                response.raise_for_status()
                return response.json()

            for _ in range(3):
                one()
            latencies, stages = [], []
            for _ in range(args.requests):
                t = time.perf_counter()
                body = one()
                latencies.append(time.perf_counter() - t)
                stages.append(body["took_ms"])
            result["products"] = client.get("/healthz").json()["products"]
            result["frames_sampled"], result["frames_kept"] = body["frames_sampled"], body["frames_kept"]
            result["sequential"] = summary_ms(latencies)
            result["stage_p50_ms"] = {k: round(statistics.median(s[k] for s in stages), 2)
                                      for k in ("decode", "dedup", "encode", "retrieve", "total")}

            done, lock, peak = [], threading.Lock(), {"replicas": encoder_replicas()}

            def worker(n: int) -> None:
                for _ in range(n):
                    t = time.perf_counter()
                    one()
                    with lock:
                        done.append(time.perf_counter() - t)

            started = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(args.concurrent_requests // 4,)) for _ in range(4)]
            for th in threads:
                th.start()
            while any(th.is_alive() for th in threads):
                time.sleep(5)
                peak["replicas"] = max(peak["replicas"], encoder_replicas())
            wall = time.perf_counter() - started
            result["concurrent_4_clients"] = summary_ms(done) | {"clips_per_s": round(len(done) / wall, 3)}
            result["encoder_replicas_peak"] = peak["replicas"]
            result["encoder_scaled_out"] = peak["replicas"] > 1
        result["target_p50_ms"] = 700
        print(json.dumps(result, indent=2), flush=True)
    finally:
        stop_serve(server)


if __name__ == "__main__":
    main()
