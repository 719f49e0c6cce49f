"""Soak: a mixed load for ``--minutes`` (default 10) against ``serve run configs/serve.yaml``, with each replica's
memory before, during and after.

Serves the real app (random-weight base CLIP, like ``query_latency.py``). ``--clients`` threads send, back to
back, a seeded mix: 40 % text search, 40 % photo search, 10 % near-duplicate lookups, 5 % video clips and 5 %
hostile uploads (from the test suite's corpus: truncated, bomb, polyglot, 8K video...). Every minute it samples
each process's resident memory (RSS, MiB) by role (proxy, each deployment's replicas, the decode workers); at the
end it prints JSON: requests and statuses per kind, p50/p99 per kind, RSS per role at start (after a warm-up
minute), the peak and the end, the growth from start to end and the replica count at both ends, and every process
(pid, replica or decode worker, RSS) at start and at end, so growth is told apart from a replica the autoscaler
added. A 503 waits what ``Retry-After`` says.

    python benchmarks/soak.py --minutes 10 --clients 8
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, percentile, serve_config, served_catalog  # noqa: E402
from benchmarks.query_latency import QUERIES, serve_processes  # noqa: E402
from serve_app.serve_env import apply_serve_env  # noqa: E402

PORT = 8125
MIX = (("text", 0.40), ("image", 0.40), ("find_similar", 0.10), ("video", 0.05), ("hostile", 0.05))


def rss_mib(roles: dict[str, list]) -> dict[str, float]:
    """Resident memory per role, MiB (summed over the role's processes and their child processes: the
    VideoDecoder's decode workers)."""
    return {role: round(sum(r for _, _, r in procs) / 2**20, 1) for role, procs in rss_by_process(roles).items()}


def rss_by_process(roles: dict[str, list]) -> dict[str, list[tuple[int, str, int]]]:
    """``role -> [(pid, "replica" | "child", resident bytes)]`` for every process of each role now, children
    (decode workers) included as they are at this moment (a retired decode worker's replacement is a new pid)."""
    out: dict[str, list] = {}
    for role, procs in roles.items():
        rows = out.setdefault(role, [])
        for proc in procs:
            try:
                rows.append((proc.pid, "replica", proc.memory_info().rss))
                for child in proc.children(recursive=True):
                    rows.append((child.pid, "child", child.memory_info().rss))
            except Exception:  # noqa: BLE001 - a process that went away
                pass
    return out


def process_table(roles: dict[str, list]) -> dict[str, list[dict]]:
    """:func:`rss_by_process` as JSON: ``role -> [{"pid", "kind", "rss_mib"}]``."""
    return {role: [{"pid": pid, "kind": kind, "rss_mib": round(rss / 2**20, 1)} for pid, kind, rss in rows]
            for role, rows in rss_by_process(roles).items() if not role.startswith(("client", "ray ("))}


def client(base: str, seed: int, stop: threading.Event, uploads: list[bytes], clips: list[bytes], hostile: list,
           records: list, lock: threading.Lock) -> None:
    rng = np.random.default_rng(seed)
    kinds, weights = zip(*MIX)
    with httpx.Client(base_url=base, timeout=60) as http:
        while not stop.is_set():
            kind = str(rng.choice(kinds, p=weights))
            started = time.perf_counter()
            try:
                if kind == "text":
                    r = http.post("/search/text", json={"query": QUERIES[rng.integers(len(QUERIES))], "k": 10})
                elif kind == "image":
                    r = http.post("/search/image", files={"file": ("q.jpg", uploads[rng.integers(len(uploads))])})
                elif kind == "find_similar":
                    r = http.post("/find_similar", files={"file": ("q.jpg", uploads[rng.integers(len(uploads))])})
                elif kind == "video":
                    r = http.post("/search/video", files={"file": ("c.mp4", clips[rng.integers(len(clips))])})
                else:
                    entry = hostile[rng.integers(len(hostile))]
                    path = "/search/video" if entry.kind == "video" else "/search/image"
                    r = http.post(path, files={"file": (entry.name, entry.path.read_bytes(), entry.content_type)})
                status = r.status_code
                if status == 503:
                    time.sleep(float(r.headers.get("retry-after", "1")))
            except httpx.HTTPError:
                status = -1
            with lock:
                records.append((kind, status, time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--n-products", type=int, default=538)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--workdir", default="./data/bench")
    args = parser.parse_args()
    apply_serve_env()

    from ray import serve

    from tests.hostile_media import REJECT, make_corpus

    model, rows, index, products = served_catalog(Path(args.workdir).resolve(), args.n_products, None, args.dtype)
    uploads = [Path(r["image"]).read_bytes() for r in rows[:50]]
    clips = [p.read_bytes() for p in sorted(Path("/usr/share/doc/opencv-doc/examples/data").glob("*.avi"))
             if p.stat().st_size < 3 << 20][:3]
    hostile = [e for e in make_corpus(Path(tempfile.mkdtemp(prefix="soak-hostile-"))) if e.expect == REJECT]
    serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    server = serve_config(ROOT / "configs" / "serve.yaml", {"model": model, "index": index, "dtype": args.dtype},
                          f"http://127.0.0.1:{PORT}")
    records: list = []
    lock, stop = threading.Lock(), threading.Event()
    threads = [threading.Thread(target=client, args=(f"http://127.0.0.1:{PORT}", i, stop, uploads, clips, hostile,
                                                     records, lock), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(60)  # warm-up: model graphs, caches and pools reach their working size
    roles = serve_processes()
    samples = [(0.0, rss_mib(roles))]
    processes_at_start = process_table(roles)
    started, warm_records = time.monotonic(), len(records)
    while time.monotonic() - started < args.minutes * 60:
        time.sleep(min(60.0, args.minutes * 60 - (time.monotonic() - started)))
        roles = serve_processes()  # replicas the autoscaler started meanwhile count from here on
        samples.append((round(time.monotonic() - started, 1), rss_mib(roles)))
    processes_at_end = process_table(roles)
    stop.set()
    for t in threads:
        t.join(70)
    server.stop()
    measured = records[warm_records:]
    by_kind = defaultdict(list)
    for kind, status, seconds in measured:
        by_kind[kind].append((status, seconds))
    kinds = {kind: {"requests": len(v), "statuses": dict(Counter(s for s, _ in v)),
                    "p50_ms": round(1000 * percentile([t for _, t in v], 50), 1),
                    "p99_ms": round(1000 * percentile([t for _, t in v], 99), 1)} for kind, v in by_kind.items()}
    first, last = samples[0][1], samples[-1][1]
    memory = {role: {"start_mib": first.get(role, 0.0), "peak_mib": max(s[1].get(role, 0.0) for s in samples),
                     "end_mib": last.get(role, 0.0), "growth_mib": round(last.get(role, 0.0) - first.get(role, 0.0), 1),
                     "replicas_start": sum(p["kind"] == "replica" for p in processes_at_start.get(role, [])),
                     "replicas_end": sum(p["kind"] == "replica" for p in processes_at_end.get(role, []))}
              for role in {**first, **last} if not role.startswith(("client", "ray ("))}
    print(json.dumps({"machine_cpus": os.cpu_count(), "minutes": args.minutes, "clients": args.clients,
                      "products": products, "dtype": args.dtype, "requests": len(measured),
                      "requests_per_s": round(len(measured) / (args.minutes * 60), 2), "kinds": kinds,
                      "rss_by_role": memory, "processes_start": processes_at_start, "processes_end": processes_at_end,
                      "rss_samples": samples}, indent=2))


if __name__ == "__main__":
    main()
