"""Goodput under overload: 8, 16, 64 and 128 closed-loop clients, with and without clients that honour Retry-After.

Serves the real app (random-weight base CLIP over a catalog of real images, ``serve run configs/serve.yaml`` with
model, index, runtime and dtype replaced) and drives it the way a plain user's load would: Python threads in
this one process, ``urllib`` (a new connection per request), multipart uploads for photos, a seeded 50/50
text/photo mix, no think time. Two client behaviours:

- ``retry``: a 503 is retried at once (a naive retry loop, or a flash crowd that keeps pressing reload);
- ``honour``: a 503's ``Retry-After`` seconds are slept before the retry (what well-behaved clients do).

Per level it prints the goodput (200s per second), the shed rate (503s per second), accepted and refused
p50/p99 latencies, any other status or transport error, and the CPU seconds per second each Serve process
(HAProxy, ingress, each deployment) and this client used; then, once Serve is stopped, the model-bound limit of
the same mix in this process (bare batch-8 forwards, ``query_throughput.model_bound_limit``) for each level's
``goodput_vs_model_bound``. Goals from issue 23, measured against the 8-client
level of the same run: with 64 immediately-retrying clients, goodput ≥ 0.8 × the 8-client throughput, refused
p50 ≤ 10 ms, accepted p99 ≤ 3 × the 8-client p99. With ``hey`` installed (Debian), text-only runs at 8 and 64
connections are added as an independent load generator (hey keeps its connections alive and never honours
Retry-After).

    python benchmarks/overload.py --seconds 40 --dtype bfloat16
    python benchmarks/overload.py --clients 8,64 --modes retry --seconds 20   # a quick look
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (ROOT, send, serve_config, served_catalog, start_shedding_proxy,  # noqa: E402
                               summary_ms)
from benchmarks.query_latency import QUERIES, cpu_seconds, serve_processes  # noqa: E402
from batch_jobs.serve_process import stop_shedding_proxy  # noqa: E402

PORT = 8125
FRONT_PORT = 8126


def run_level(base: str, clients: int, seconds: float, uploads: list[bytes], honour: bool, seed: int) -> dict:
    """``clients`` threads sending back to back for ``seconds``; a 503 is retried at once or after Retry-After."""
    accepted: dict[str, list[float]] = {"text": [], "image": []}
    refused: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    missing_retry_after = 0

    def client(n: int) -> None:
        nonlocal missing_retry_after
        rng = random.Random(seed * 1000 + n)
        i = 0
        while time.perf_counter() < deadline:
            kind = "text" if rng.random() < 0.5 else "image"
            text, upload = f"{QUERIES[i % len(QUERIES)]} {n} {i}", uploads[rng.randrange(len(uploads))]
            while True:  # the same request until it is answered (or time is up)
                status, elapsed, retry_after = send(base, kind, text, upload)
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        accepted[kind].append(elapsed)
                    elif status == 503:
                        refused.append(elapsed)
                        missing_retry_after += retry_after == 0
                if status != 503 or time.perf_counter() >= deadline:
                    break
                if honour and retry_after:
                    time.sleep(min(retry_after, max(0.0, deadline - time.perf_counter())))
            i += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ok = statuses.get(200, 0)
    both = accepted["text"] + accepted["image"]
    return {"clients": clients, "retry_after": "honoured" if honour else "ignored", "seconds": round(elapsed, 1),
            "goodput_per_s": round(ok / elapsed, 2), "shed_per_s": round(statuses.get(503, 0) / elapsed, 1),
            "accepted": summary_ms(both) if both else None,
            "accepted_text": summary_ms(accepted["text"]) if accepted["text"] else None,
            "accepted_image": summary_ms(accepted["image"]) if accepted["image"] else None,
            "refused": summary_ms(refused) if refused else None, "refused_without_retry_after": missing_retry_after,
            "other": {str(k): v for k, v in statuses.items() if k not in (200, 503)}}


def chunked_upload(base: str, chunk_bytes: int, total_bytes: int = 1 << 30) -> dict:
    """A photo upload of ``total_bytes`` with no Content-Length (``Transfer-Encoding: chunked``) in chunks of
    ``chunk_bytes``: how many bytes the client had handed to its socket when the answer arrived (a writer thread
    sends, this thread waits for the answer)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /search/image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    block = os.urandom(chunk_bytes)
    answered, sent = threading.Event(), [0]

    def write() -> None:
        try:
            sock.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
            while sent[0] < total_bytes and not answered.is_set():
                sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                if not answered.is_set():
                    sent[0] += len(block)
        except OSError:
            pass

    started = time.perf_counter()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        answer = sock.recv(4096)
    except OSError as e:
        answer = type(e).__name__.encode()
    answered.set()
    seconds, mib = time.perf_counter() - started, round(sent[0] / (1 << 20), 1)
    sock.close()
    writer.join(timeout=10)
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else answer.decode() or "closed"
    return {"chunk_bytes": chunk_bytes, "status": status, "mib_sent": mib, "seconds": round(seconds, 2)}


def hey(url: str, clients: int, seconds: int) -> dict | None:
    """``hey -c N -z Ts`` on text search: statuses and latencies per status (None when hey is not installed)."""
    if not shutil.which("hey"):
        return None
    out = subprocess.run(["hey", "-c", str(clients), "-z", f"{seconds}s", "-o", "csv", "-m", "POST",
                          "-T", "application/json", "-d", json.dumps({"query": "a red apple", "k": 10}), url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    by_status: dict[str, list[float]] = {}
    for line in out.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) >= 7:
            by_status.setdefault(fields[6], []).append(float(fields[0]))
    return {"clients": clients, "seconds": seconds,
            "per_status": {status: {"per_s": round(len(v) / seconds, 1)} | summary_ms(v)
                           for status, v in sorted(by_status.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-products", type=int, default=538)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--clients", default="8,16,64,128")
    parser.add_argument("--modes", default="retry,honour", help="retry (503 retried at once), honour (Retry-After)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default="bfloat16")
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--config", default=str(ROOT / "configs" / "serve.yaml"),
                        help="Serve config deployed with `serve run` (its app args model/index/dtype/runtime replaced)")
    parser.add_argument("--workdir", default="./data/bench")
    parser.add_argument("--hey-seconds", type=int, default=20, help="0: no hey runs")
    parser.add_argument("--shedding", default=str(ROOT / "configs" / "shedding.yaml"),
                        help="the shedding proxy's config (serve_app/shedding_proxy.py) in front of Serve; 'none': "
                             "clients talk to Serve's own port (the ingress's admission is then the only bound)")
    args = parser.parse_args()

    from ray import serve

    model, rows, index, products = served_catalog(Path(args.workdir).resolve(), args.n_products, None,
                                                  "float32" if args.dtype == "int8" else args.dtype)
    uploads = [Path(r["image"]).read_bytes() for r in rows[:50]]
    serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    server = serve_config(Path(args.config), {"model": model, "index": index, "dtype": args.dtype,
                                              "runtime": args.runtime}, f"http://127.0.0.1:{PORT}")
    base, front = f"http://127.0.0.1:{PORT}", None
    if args.shedding != "none":
        front = start_shedding_proxy(Path(args.shedding), FRONT_PORT, PORT)
        base = f"http://127.0.0.1:{FRONT_PORT}"
    run_level(base, 2, 5, uploads, False, 0)  # warm-up
    roles = serve_processes()
    levels = []
    for mode in args.modes.split(","):
        for clients in [int(c) for c in args.clients.split(",")]:
            if mode == "honour" and clients <= 8:
                continue  # nothing is refused at 8 clients: the same run as "retry"
            before, wall = cpu_seconds(roles), time.perf_counter()
            level = run_level(base, clients, args.seconds, uploads, mode == "honour", clients)
            after, wall = cpu_seconds(roles), time.perf_counter() - wall
            level["cpu_cores_used"] = {role: round((after[role] - before[role]) / wall, 2) for role in roles
                                       if after[role] - before[role] > 0.01 * wall}
            levels.append(level)
            print(json.dumps(level), file=sys.stderr)
            time.sleep(2)  # let queues drain between levels
    hey_text = {c: hey(base + "/search/text", c, args.hey_seconds) for c in (8, 64)} if args.hey_seconds else {}
    # 1 GiB chunked uploads against the 10 MiB limit, through the public port and straight to Serve's
    uploads_cut = {name: [chunked_upload(url, size) for size in (4 << 10, 64 << 10, 1 << 20, 8 << 20)]
                   for name, url in {"public": base, "serve": f"http://127.0.0.1:{PORT}"}.items()}
    print(json.dumps(uploads_cut), file=sys.stderr)
    if front:
        stop_shedding_proxy(front)
    server.stop()
    from benchmarks.query_throughput import model_bound_limit

    bound = model_bound_limit(model, args.dtype, args.runtime, uploads)  # bare batch 8 in this process, same run
    reference = next((lv for lv in levels if lv["clients"] == 8 and lv["retry_after"] == "ignored"), None)
    if reference:
        for level in levels:
            level["goodput_vs_8_clients"] = round(level["goodput_per_s"] / reference["goodput_per_s"], 2)
            level["goodput_vs_model_bound"] = round(level["goodput_per_s"] / bound["mix_requests_per_s"], 2)
            if level["accepted"] and reference["accepted"]:
                level["accepted_p99_vs_8_clients"] = round(level["accepted"]["p99_ms"] /
                                                           reference["accepted"]["p99_ms"], 2)
    result = {"machine_cpus": os.cpu_count(), "model": "random base (ViT-B/32)", "runtime": args.runtime,
              "dtype": args.dtype, "products": products, "config": args.config, "client": "threads + urllib",
              "shedding_proxy": args.shedding,
              "model_bound_limit": bound, "levels": levels, "hey_text": hey_text, "chunked_1_gib_upload": uploads_cut,
              "goals": "64 clients, Retry-After ignored: goodput_vs_8_clients >= 0.8, refused p50 <= 10 ms, "
                       "accepted_p99_vs_8_clients <= 3"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
