"""``python -m batch_jobs demo``: the main job — sample catalog → Ray Data ingestion → ``serve run``.

Model choice: ``--model``/``VS_MODEL`` when given (it must load; no fallback). Otherwise the hub default
``laion/CLIP-ViT-B-32-laion2B-s34B-b79K`` (:data:`serve_app.models.DEFAULT_MODEL`); when the hub is unreachable and there is no cached copy, this command —
and only this command — falls back to a generated random-weight ViT-B/32 folder and says so loudly; the
service then reports ``"model_weights": "random"`` on ``/healthz``.
"""

import os
import signal
import sys
from pathlib import Path

import yaml

from batch_jobs.serve_process import (start_serve, start_shedding_proxy, stop_serve, stop_shedding_proxy,
                                      wait_healthy)
from serve_app.embedding import DEFAULT_MODEL, ModelLoadError, load_model_config
from serve_app.serve_env import apply_serve_env

ROOT = Path(__file__).resolve().parent.parent
RANDOM_BASE = Path("./data/models/clip-random-base").resolve()
BANNER = "=" * 78
# With HAProxy in front (serve_app/serve_env.py), Ray 2.60 keeps each ingress replica open for
# RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (default 30 s, ray/serve/_private/constants.py) when it stops, so
# an external load balancer can deregister it first; Serve's shutdown waits that out before it stops the other
# deployments, which made Ctrl-C take ~33 s. The demo has no load balancer to wait for. Deployments elsewhere
# (k8s/, serve.prod.yaml) keep Ray's default; an explicit value in the environment wins here too.
DEMO_INGRESS_DRAIN_S = "0"
# Ctrl-C: `serve run` gets this long to shut Serve and its Ray down (~6 s measured on 2 cores), then what is left
# of its session gets SIGTERM, then SIGKILL this much later (batch_jobs/serve_process.stop_serve).
DEMO_STOP_S = 8.0
DEMO_KILL_AFTER_S = 2.0


def resolve_demo_model(explicit: str | None) -> str:
    """The model the demo uses: explicit → hub default → generated random-weight base folder (loudly)."""
    if explicit:
        load_model_config(explicit)
        return explicit
    try:
        load_model_config(DEFAULT_MODEL)
        return DEFAULT_MODEL
    except ModelLoadError as e:
        reason = str(e).split(". To fix")[0]
    if not (RANDOM_BASE / "model.safetensors").exists():
        from serve_app.random_clip import make_random_clip

        make_random_clip(RANDOM_BASE, "base")
    print(f"\n{BANNER}\nWARNING: {reason}.\nFalling back to RANDOM-WEIGHT CLIP ViT-B/32 at {RANDOM_BASE}.\n"
          "Search will run end to end, but rankings are MEANINGLESS (only near-identical images match).\n"
          f"Set VS_MODEL to a local copy of {DEFAULT_MODEL} for real results.\n{BANNER}\n", flush=True)
    return str(RANDOM_BASE)


def cmd_demo(args) -> int:
    import json

    from batch_jobs.pipeline import IngestOptions, ingest
    from batch_jobs.sample_catalog import SampleCatalogUnavailable, write_sample_catalog

    model = resolve_demo_model(args.model or os.environ.get("VS_MODEL"))
    index = os.path.abspath(args.index or os.environ.get("VS_INDEX") or "./data/index")
    catalog = os.path.abspath("./data/catalog.jsonl")
    try:
        products = write_sample_catalog(Path(catalog), Path("/usr/share/tuxpaint/stamps"), args.limit)
    except SampleCatalogUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"catalog": catalog, "products": products}))
    report = ingest(catalog, index, IngestOptions.from_config(ROOT / "configs" / "ingest.yaml", model=model,
                                                              dtype=args.dtype))
    print(json.dumps(report.summary(), indent=2))
    if not report.published:
        print(f"error: the ingestion did not publish: {report.not_published_because}", file=sys.stderr)
        return 2
    import ray

    ray.shutdown()
    if args.no_serve:
        return 0
    env = apply_serve_env(os.environ | {"VS_MODEL": model, "VS_INDEX": index, "RAY_AUTH_MODE": "disabled"})
    if args.dtype:
        env["VS_DTYPE"] = args.dtype
    env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", DEMO_INGRESS_DRAIN_S)
    serve_port = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["http_options"]["port"]
    serve = start_serve(ROOT / "configs" / "serve.yaml", env, ROOT)
    shedding = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop `serve run` (finally) on SIGTERM too
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_healthy(f"http://127.0.0.1:{serve_port}/healthz", serve)
        # Clients come in through the shedding proxy (serve_app/shedding_proxy.py) on the public port
        shedding = start_shedding_proxy(ROOT / "configs" / "shedding.yaml", ROOT, args.port)
        health = wait_healthy(base + "/healthz", shedding, timeout_s=30)
        print(f"\n{BANNER}\nVisual Search is serving {health.get('products')} products "
              f"(model {health.get('model_id')}, weights {health.get('model_weights')}).\n"
              f"  web page     : {base}/\n"
              f"  OpenAPI docs : {base}/docs\n"
              f"  text search  : curl -s {base}/search/text -H 'content-type: application/json' "
              "-d '{\"query\": \"a red apple\", \"k\": 5}'\n"
              f"  image search : curl -s {base}/search/image -F file=@/usr/share/tuxpaint/stamps/food/fruit/"
              "pineapple.png -F k=5\n"
              f"  video search : python -m batch_jobs make-clip clip.mp4 IMAGE1 IMAGE2 && "
              f"curl -s {base}/search/video -F file=@clip.mp4 -F k=5\n"
              f"  duplicates   : curl -s {base}/find_similar -F file=@/usr/share/tuxpaint/stamps/food/fruit/"
              "pineapple.png -F top=5\nPress Ctrl-C to stop.\n" + BANNER, flush=True)
        return serve.wait()
    except KeyboardInterrupt:
        print(f"\nStopping Ray Serve and its Ray (at most {DEMO_STOP_S + DEMO_KILL_AFTER_S:.0f} s; "
              "Ctrl-C again to force)...", flush=True)
        return 0
    finally:
        if shedding is not None:
            stop_shedding_proxy(shedding)
        stop_serve(serve, timeout_s=DEMO_STOP_S, kill_after_s=DEMO_KILL_AFTER_S)


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="main job: sample catalog → ingest → serve (prints where to send queries)")
    p.add_argument("--model", default=None, help="hub id or local folder (env VS_MODEL)")
    p.add_argument("--index", default=None, help="index URI (env VS_INDEX; default ./data/index)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--limit", type=int, default=None, help="ingest at most this many sample products")
    p.add_argument("--port", type=int, default=8000,
                   help="the public HTTP port: the shedding proxy's (configs/shedding.yaml), in front of Serve's")
    p.add_argument("--no-serve", action="store_true", help="stop after ingestion")
    p.set_defaults(func=cmd_demo)
