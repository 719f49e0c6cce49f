"""Shared benchmark set-up: a random-weight base CLIP folder and a catalog of ≥ N real images.

The images are the Tux Paint stamps plus deterministic variants of them (mirror, small rotation, 90 % crop),
written once to a work folder, so every measurement in one run reads the same files.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_app.serve_env import apply_serve_env  # noqa: E402

apply_serve_env()  # before any benchmark starts Ray: the settings the service is served with
# No load balancer to deregister a stopping ingress replica from: Serve stops in ~7 s instead of ~35 s (README,
# "The two commands"), which is most of the time between a benchmark's phases
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("orig", "mirror", "rot5", "crop90")


def base_model(workdir: Path, size: str = "base", family: str = "clip") -> str:
    """A random-weight folder of ``family`` (``make-random-model``) under ``workdir``, made once."""
    from serve_app.models.random_weights import make_random_model

    folder = workdir / (f"clip-random-{size}" if family == "clip" else f"{family}-random-{size}")
    if not (folder / "random_weights.json").exists():
        make_random_model(folder, family, size)
    return str(folder)


def _variant(image: Image.Image, kind: str) -> Image.Image:
    if kind == "mirror":
        return ImageOps.mirror(image)
    if kind == "rot5":
        return image.rotate(5, expand=False)
    if kind == "crop90":
        w, h = image.size
        return image.crop((w // 20, h // 20, w - w // 20, h - h // 20))
    return image


def build_catalog(workdir: Path, n: int) -> Path:
    """Write ``n`` product images and a JSON Lines manifest under ``workdir``; returns the manifest path."""
    from batch_jobs.sample_catalog import sample_products

    manifest = workdir / f"catalog-{n}.jsonl"
    if manifest.exists():
        return manifest
    stamps = sample_products()
    images_dir = workdir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in VARIANTS:
        for row in stamps:
            if len(rows) >= n:
                break
            path = images_dir / f"{row['product_id']}-{kind}.png"
            if not path.exists():
                _variant(Image.open(row["image"]), kind).save(path)
            rows.append(row | {"product_id": f"{row['product_id']}-{kind}", "image": str(path)})
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} images available, asked for {n}")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation (NumPy's default method)."""
    import numpy as np

    return float(np.percentile(values, q))


def summary_ms(samples_s: list[float]) -> dict:
    ms = [1000 * s for s in samples_s]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


def served_catalog(workdir: Path, n_products: int, index: str | None = None, dtype: str = "float32",
                   family: str = "clip"):
    """The base random model of ``family``, a catalog of ``n_products`` images and an index of it (ingested with
    Ray Data when missing or smaller). Returns ``(model, rows, index, products)``; Ray is left running."""
    from batch_jobs.pipeline import IngestOptions, ingest, init_ray
    from serve_app.index import IndexOpenError, open_index

    workdir.mkdir(parents=True, exist_ok=True)
    model = base_model(workdir, family=family)
    manifest = build_catalog(workdir, n_products)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    suffix = "" if family == "clip" else f"-{family}"
    index = index or str(workdir / f"index-query-{n_products}{suffix}")
    init_ray()
    try:
        products = open_index(index).count()
    except IndexOpenError:
        products = 0
    if products < n_products:
        products = ingest(str(manifest), index, IngestOptions(model=model, dtype=dtype)).products_in_index
    return model, rows, index, products



@dataclass
class ServeRun:
    """A ``serve run`` process serving one app on this process's Ray cluster."""

    process: subprocess.Popen
    app_name: str
    config: Path

    def stop(self) -> None:
        """Ctrl-C, as a user would: ``serve run`` shuts Serve down (every app on it) and exits."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.config.unlink(missing_ok=True)


def serve_config(config: Path, args: dict, base_url: str, timeout_s: float = 180) -> ServeRun:
    """Deploy a Serve config YAML with ``serve run`` (what users run) on the Ray cluster this process started,
    with some app args replaced; returns once ``/healthz`` answers 200 at ``base_url``.

    Serve must already be started here (``serve.start``): the config's own ``http_options`` are then ignored,
    and the app answers on this process's proxy.
    """
    import httpx
    import ray
    import yaml

    spec = yaml.safe_load(config.read_text())
    application = spec["applications"][0]
    application["args"] = application.get("args", {}) | args
    handle, path = tempfile.mkstemp(suffix=".yaml", prefix="serve-bench-")
    os.close(handle)
    Path(path).write_text(yaml.safe_dump(spec))
    serve_cli = Path(sys.executable).parent / "serve"
    process = subprocess.Popen([str(serve_cli), "run", path, "--address", ray.get_runtime_context().gcs_address],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + application.get("route_prefix", "/").rstrip("/") + "/healthz",
                         timeout=5).status_code == 200:
                return ServeRun(process, application["name"], Path(path))
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"serve run {config} exited with {process.returncode}")
        time.sleep(1)
    process.kill()
    raise TimeoutError(f"serve run {config} did not answer /healthz within {timeout_s} s")


def wait_answering(url: str, timeout_s: float = 30) -> None:
    """Poll ``url`` until it answers at all (any status); raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def multipart(upload: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``fields`` and ``upload`` as the ``file`` part; returns (body, type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + upload + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def send(base: str, kind: str, text: str, upload: bytes) -> tuple[int | str, float, float]:
    """One request; returns (status or error name, seconds, Retry-After seconds or 0)."""
    if kind == "text":
        request = urllib.request.Request(base + "/search/text", json.dumps({"query": text, "k": 10}).encode(),
                                         {"Content-Type": "application/json"})
    else:
        body, content_type = multipart(upload, {"k": "10"})
        request = urllib.request.Request(base + "/search/image", body, {"Content-Type": content_type})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status, time.perf_counter() - started, 0.0
    except urllib.error.HTTPError as e:
        e.read()
        retry_after = e.headers.get("Retry-After")
        return e.code, time.perf_counter() - started, float(retry_after) if retry_after else 0.0
    except OSError as e:
        return type(e).__name__, time.perf_counter() - started, 0.0


def start_shedding_proxy(config: Path, port: int, upstream_port: int) -> subprocess.Popen:
    """The shedding proxy (serve_app/shedding_proxy.py) with ``config``'s bounds on ``port`` in front of Serve's
    ``upstream_port``; returns once it answers. Stop it with ``batch_jobs.serve_process.stop_shedding_proxy``."""
    from batch_jobs.serve_process import start_shedding_proxy as start

    proxy = start(config, ROOT, port, f"127.0.0.1:{upstream_port}")
    wait_answering(f"http://127.0.0.1:{port}/healthz")
    return proxy
