"""Single-client query latency over HTTP, against the model's own speed and Ray Serve's own floor, in one run.

On one local Ray cluster this script serves the real app with ``serve run configs/serve.yaml`` (random-weight
base CLIP over a catalog of real images; model, index, runtime and dtype replaced) and, beside it, the no-op
floor graphs of ``benchmarks/serve_floor.py`` (the same kind of FastAPI
ingress with 0 and 2 chained hops: text and photo search cross 2 hops, Encoder then Retriever). One keep-alive
client sends the four request kinds interleaved (served text, floor text, served photo, floor photo), so all
see the same moments of a noisy host. It also reads the CPU seconds every Serve process spent (proxy, ingress,
each deployment) per request. After deleting the apps it measures the bare batch-1 forward in this process
with the same runtime, dtype and thread count (the photo figure includes decoding and preprocessing), and reads
the Encoder's own forward times (``Encoder.stats``) to split the served time into model and plumbing.

Prints JSON: p50/p99 per kind, ``overhead_ms`` = served p50 − bare p50, ``floor_ms`` = the 2-hop floor's p50,
and ``excess_ms`` = overhead − floor (target ≤ 5 ms: everything we add beyond what Serve itself costs).

    python benchmarks/query_latency.py --n-products 538 --requests 60 --dtype bfloat16
    python benchmarks/query_latency.py --runtime onnx --dtype float32
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, serve_config, served_catalog, start_shedding_proxy, summary_ms  # noqa: E402
from benchmarks.common import send as send_urllib  # noqa: E402
from batch_jobs.serve_process import stop_shedding_proxy  # noqa: E402
from serve_app.shedding_proxy import CONFIG_DIR_PREFIX as SHEDDING_CONFIG_PREFIX  # noqa: E402

QUERIES = ["a red apple", "a green tractor", "a cat sleeping", "a blue winter coat", "a kitchen knife",
           "a bunch of flowers", "a toy car", "a pair of running shoes", "a birthday cake", "a wooden chair"]
PORT = 8123
FRONT_PORT = 8127


def serve_processes() -> dict[str, list]:
    """psutil processes of Serve's HTTP proxy (HAProxy or Ray's), the shedding proxy, each replica, and this process
    (the client), by role (Ray's process titles; the shedding proxy's HAProxy by the folder of its config)."""
    import ray  # noqa: F401 - puts the psutil that Ray bundles on sys.path
    import psutil

    roles: dict[str, list] = {"client (this process)": [psutil.Process()]}
    for proc in psutil.process_iter(["cmdline", "name"]):
        title = " ".join(proc.info["cmdline"] or [])
        if title.startswith("ray::ServeReplica:"):
            roles.setdefault(title.split()[0].removeprefix("ray::ServeReplica:"), []).append(proc)
        elif proc.info["name"] == "haproxy" and SHEDDING_CONFIG_PREFIX in title:
            roles.setdefault("shedding proxy", []).append(proc)
        elif title.startswith("ray::ProxyActor") or proc.info["name"] == "haproxy":
            roles.setdefault("proxy", []).append(proc)
        elif title.startswith(("ray::", "/")) and "ray" in title:
            roles.setdefault("ray (controller, raylet, GCS, agents)", []).append(proc)
    return roles


def cpu_seconds(roles: dict[str, list]) -> dict[str, float]:
    out = {}
    for role, procs in roles.items():
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except Exception:  # noqa: BLE001 - a replica that went away
                pass
        out[role] = total
    return out


def bare_batch1(model: str, dtype: str, runtime: str, uploads: list[bytes], n: int, threads: int) -> dict:
    """Batch-1 text forward and photo decode + preprocess + forward in this process, with ``threads`` intra-op
    threads (the served Encoder's)."""
    from serve_app.embedding import load_embedder
    from serve_app.query_image import prepare_query_image

    embedder = load_embedder(model, dtype=dtype, runtime=runtime, num_threads=threads)
    geometry = embedder.geometry
    embedder.embed_pixels(prepare_query_image(uploads[0], geometry).pixels[None])
    embedder.embed_texts(QUERIES[:1])
    text, image, prepare = [], [], []
    for i in range(n):
        t = time.perf_counter()
        embedder.embed_texts([f"{QUERIES[i % len(QUERIES)]} {i}"])
        text.append(time.perf_counter() - t)
        t = time.perf_counter()
        pixels = prepare_query_image(uploads[i % len(uploads)], geometry).pixels
        prepare.append(time.perf_counter() - t)
        embedder.embed_pixels(pixels[None])
        image.append(time.perf_counter() - t)
    return {"text": summary_ms(text), "image": summary_ms(image), "image_decode_preprocess": summary_ms(prepare)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-products", type=int, default=538)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default="bfloat16")
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--config", default=str(ROOT / "configs" / "serve.yaml"))
    parser.add_argument("--workdir", default="./data/bench")
    parser.add_argument("--index", default=None, help="reuse an index built with the same model")
    parser.add_argument("--family", choices=["clip", "siglip", "open_clip"], default="clip",
                        help="model family of the random base folder (make-random-model)")
    parser.add_argument("--client", choices=["urllib", "httpx"], default="urllib",
                        help="urllib: a new connection per request (what a plain Python client does); httpx: one "
                             "keep-alive connection")
    parser.add_argument("--shedding", default=str(ROOT / "configs" / "shedding.yaml"),
                        help="the shedding proxy's config, in front of Serve as users reach it; 'none': Serve's port")
    args = parser.parse_args()

    import httpx
    from ray import serve

    from benchmarks.serve_floor import build_floor_app

    model, rows, index, products = served_catalog(Path(args.workdir).resolve(), args.n_products, args.index,
                                                  "float32" if args.dtype == "int8" else args.dtype, args.family)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    server = serve_config(Path(args.config), {"model": model, "index": index, "dtype": args.dtype,
                                              "runtime": args.runtime}, f"http://127.0.0.1:{PORT}")
    encoder = serve.get_deployment_handle("Encoder", server.app_name)
    threads = encoder.info.remote().result()["threads"]
    for hops in (0, 2):
        serve.run(build_floor_app(hops), name=f"floor{hops}", route_prefix=f"/floor{hops}")
    uploads = [Path(r["image"]).read_bytes() for r in rows[:50]]
    kinds = {"text": ("", "text"), "image": ("", "image")} | {
        f"floor{h}_{kind}": (f"/floor{h}", kind) for h in (0, 2) for kind in ("text", "image")}
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, dict[str, float]] = {}
    client = httpx.Client(timeout=60)  # one keep-alive connection (--client httpx)
    front = start_shedding_proxy(Path(args.shedding), FRONT_PORT, PORT) if args.shedding != "none" else None
    base = f"http://127.0.0.1:{FRONT_PORT if front else PORT}"
    roles = serve_processes()

    def send(prefix: str, kind: str, i: int) -> None:
        if args.client == "urllib":  # a new connection per request, as a plain Python client does
            status = send_urllib(base + prefix, kind, f"{QUERIES[i % len(QUERIES)]} {i}",
                                 uploads[i % len(uploads)])[0]
        elif kind == "text":
            status = client.post(base + prefix + "/search/text",
                                 json={"query": f"{QUERIES[i % len(QUERIES)]} {i}", "k": 10}).status_code
        else:
            status = client.post(base + prefix + "/search/image", data={"k": "10"},
                                 files={"file": ("q.png", uploads[i % len(uploads)])}).status_code
        if status != 200:
            raise RuntimeError(f"{prefix or 'served'} {kind}: {status}")

    for i in range(5):  # warm-up
        for prefix, kind in kinds.values():
            send(prefix, kind, i)
    for name, (prefix, kind) in kinds.items():  # CPU per request of each kind, measured alone
        before = cpu_seconds(roles)
        for i in range(20):
            send(prefix, kind, i)
        after = cpu_seconds(roles)
        cpu[name] = {role: round(1000 * (after[role] - before[role]) / 20, 2) for role in roles
                     if after[role] - before[role] > 0.0005}
    forwards: dict[str, list[float]] = {"text": [], "image": []}
    for i in range(args.requests):
        for name, (prefix, kind) in kinds.items():
            if not prefix:
                encoder.stats.remote().result()
            started = time.perf_counter()
            send(prefix, kind, i)
            samples[name].append(time.perf_counter() - started)
            if not prefix:
                forwards[kind].append(encoder.stats.remote().result()[kind]["mean_forward_ms"] / 1000)
    client.close()
    if front:
        stop_shedding_proxy(front)
    for name in ("floor0", "floor2"):
        serve.delete(name)
    server.stop()  # `serve run` shuts Serve down on Ctrl-C
    bare = bare_batch1(model, args.dtype, args.runtime, uploads, min(50, args.requests), threads)
    result = {"machine_cpus": os.cpu_count(), "model": f"random base {args.family}", "runtime": args.runtime,
              "client": args.client, "shedding_proxy": args.shedding,
              "dtype": args.dtype, "encoder_threads": threads, "config": args.config, "products": products,
              "requests": args.requests, "hops": {"text": 2, "image": 2},
              "http": {name: summary_ms(v) for name, v in samples.items()}, "bare_batch1": bare,
              "encoder_forward_in_replica": {k: summary_ms(v) for k, v in forwards.items()},
              "cpu_ms_per_request": cpu}
    for kind in ("text", "image"):
        overhead = result["http"][kind]["p50_ms"] - bare[kind]["p50_ms"]
        floor = result["http"][f"floor2_{kind}"]["p50_ms"]
        result[f"{kind}_overhead_ms"] = round(overhead, 2)
        result[f"{kind}_floor_ms"] = floor
        result[f"{kind}_excess_ms"] = round(overhead - floor, 2)
    result["target"] = "excess_ms <= 5 (served p50 - bare p50 <= 2-hop floor p50 + 5 ms)"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
