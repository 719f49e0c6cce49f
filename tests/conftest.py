"""Shared fixtures: a tiny random-weight CLIP, a small real catalog, one local Ray, one ingestion, one Serve app.

Everything heavy is session-scoped: Ray starts once (2 CPUs, no dashboard), the sample catalog is ingested
once by the real Ray Data pipeline, and the real Ray Serve app is started once on a free 127.0.0.1 port.
"""

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from serve_app.serve_env import apply_serve_env  # noqa: E402

apply_serve_env()  # the Ray Serve settings the service runs with, before any Ray process starts
# With HAProxy in front, Ray Serve keeps a stopping ingress replica answering for 30 s (and the controller's
# shutdown waits for it) so an external load balancer can stop sending to it; the test cluster has none, and
# those 30 s were most of the session's teardown.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
for _var in ("VS_MODEL", "VS_INDEX", "VS_DTYPE"):  # the tests pass their own model and index
    os.environ.pop(_var, None)
# moto's fake S3 credentials, set before Ray starts: credentials reach Ray workers only through the environment
# Ray starts in, never a runtime_env (batch_jobs.pipeline.WORKER_ENV).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

STAMPS = Path("/usr/share/tuxpaint/stamps")
N_SAMPLE = 60


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from serve_app.random_clip import make_random_clip

    return str(make_random_clip(tmp_path_factory.mktemp("models") / "clip-tiny", "tiny"))


@pytest.fixture(scope="session")
def served_model(tmp_path_factory) -> str:
    """Random-weight ViT-B/32: the tiny model's embeddings are too alike for a product filling a video frame
    after H.264 to find itself; the base size does (DESIGN.md: top-1 95 %, top-5 always)."""
    from serve_app.random_clip import make_random_clip

    return str(make_random_clip(tmp_path_factory.mktemp("models") / "clip-base", "base"))


@pytest.fixture(scope="session")
def embedder(served_model):
    """The model the catalog is ingested and served with, loaded in the test process."""
    from serve_app.embedding import load_clip

    return load_clip(served_model)


@pytest.fixture(scope="session")
def sample_rows() -> list[dict]:
    if not STAMPS.is_dir():
        pytest.skip("tuxpaint-stamps-default is not installed (apt-get install tuxpaint-stamps-default)")
    from batch_jobs.sample_catalog import sample_products

    rows = sample_products()
    step = max(1, len(rows) // N_SAMPLE)
    return rows[::step][:N_SAMPLE]


BAD_ROWS = [
    {"product_id": "bad-missing-file", "title": "missing", "image": "/nonexistent/nothing.png"},
    {"product_id": "bad-corrupt", "title": "corrupt", "image": "corrupt.png"},
    {"product_id": "bad-truncated", "title": "truncated", "image": "truncated.png"},
    {"product_id": "bad-unreachable-url", "title": "unreachable", "image": "http://127.0.0.1:9/nothing.png"},
]


@pytest.fixture(scope="session")
def catalog(tmp_path_factory, sample_rows) -> Path:
    """A JSON Lines manifest: ~60 real Tux Paint products, 4 rows with bad images, 2 malformed lines."""
    folder = tmp_path_factory.mktemp("catalog")
    (folder / "corrupt.png").write_bytes(b"this is not a png")
    (folder / "truncated.png").write_bytes(Path(sample_rows[0]["image"]).read_bytes()[:300])
    lines = [json.dumps(r) for r in sample_rows] + [json.dumps(r) for r in BAD_ROWS]
    lines += ["{not json", json.dumps({"title": "no id", "image": "x.png"})]
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Logical resources, not hardware: 4 CPU tokens so the `service` app, the full graph of
    # configs/serve.yaml (test_deploy_runtime.py's `serve run` check) and the autoscaling check's second
    # Encoder fit at once (each replica asks a fraction; they share the 2 real cores), and 1 GPU token so an
    # ingestion asking num_gpus for its CLIP actors is scheduled (torch still finds no CUDA and runs on CPU).
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def ingested(ray_session, catalog, served_model, tmp_path_factory):
    """Runs the real Ray Data ingestion once; returns ``(index_uri, report)``."""
    from batch_jobs.pipeline import IngestOptions, ingest

    index = str(tmp_path_factory.mktemp("index") / "lancedb")
    report = ingest(str(catalog), index, IngestOptions(model=served_model, batch_size=8, fetch_timeout_s=2.0))
    return index, report


@pytest.fixture(scope="session")
def catalog_vectors(ingested) -> dict[str, np.ndarray]:
    """Every ingested product's stored embedding, float32 ``(D,)`` by ``product_id``."""
    from serve_app.index import open_index

    ids, vectors = open_index(ingested[0]).all_vectors()
    return dict(zip(ids, vectors))


def clip_frame_vectors(embedder, path: Path, fps: float = 1.0) -> tuple[list[float], np.ndarray]:
    """The kept frames of a clip as the service computes them (same decoder, pHash dedup and model):
    ``(times in seconds, float32 (K, D) embeddings)`` — the independent answer video tests compare with."""
    from PIL import Image

    from serve_app.frame_dedup import dedup_frames, frame_hashes
    from serve_app.video import decode_and_sample

    sampled = decode_and_sample(path.read_bytes(), fps=fps)
    keep = dedup_frames(frame_hashes(sampled.frames))
    vectors = embedder.embed_images([Image.fromarray(sampled.frames[i]) for i in keep])
    return [sampled.times[i] for i in keep], vectors


@pytest.fixture(scope="session")
def clip_vectors(embedder):
    """:func:`clip_frame_vectors` with the served model: ``clip_vectors(path, fps=1.0)``."""
    return lambda path, fps=1.0: clip_frame_vectors(embedder, Path(path), fps)


# Random weights put every pair of catalog images near cosine 0.99, and a product's own H.264 frame beats the
# next product by 0.0002–0.06 (median ~0.005, measured on the 60 sample rows). A video test whose answer rests
# on that ranking uses a row whose own margin, measured here on this CPU, is at least this: 100× any
# floating-point difference between two processes, so the service must agree.
CLEAR_MARGIN = 0.002


@pytest.fixture(scope="session")
def clear_video_rows(tmp_path_factory, embedder, catalog_vectors, sample_rows):
    """``pick(n, exclude=())`` → ``n`` sample rows whose single-product clip (``make_clip``, 2 s) finds the
    row's own product first in every kept frame, ahead of every other product by ≥ :data:`CLEAR_MARGIN`.

    Rows are tried in a fixed shuffled order and each is measured once per session."""
    import random

    from batch_jobs.make_clip import make_clip

    folder = tmp_path_factory.mktemp("clear-clips")
    ids = list(catalog_vectors)
    matrix = np.stack([catalog_vectors[i] for i in ids])  # [N, D]
    order = random.Random(11).sample(sample_rows, len(sample_rows))
    margins: dict[str, float] = {}

    def margin(row: dict) -> float:
        if row["product_id"] not in margins:
            path = folder / f"{len(margins)}.mp4"
            make_clip(path, [row["image"]], 2.0)
            scores = clip_frame_vectors(embedder, path)[1] @ matrix.T  # [K, N]
            own = scores[:, ids.index(row["product_id"])].copy()
            scores[:, ids.index(row["product_id"])] = -np.inf
            margins[row["product_id"]] = float(np.min(own - scores.max(axis=1)))
        return margins[row["product_id"]]

    def pick(n: int, exclude=()) -> list[dict]:
        rows = [r for r in order if r["product_id"] not in set(exclude) and r["product_id"] in catalog_vectors]
        chosen: list[dict] = []
        for row in rows:
            if len(chosen) == n:
                break
            if margin(row) >= CLEAR_MARGIN:
                chosen.append(row)
        assert len(chosen) == n, f"only {len(chosen)} sample rows have a clear video margin: {margins}"
        return chosen

    pick.margin = CLEAR_MARGIN
    return pick


class _ImageHost(BaseHTTPRequestHandler):
    """Serves files for image_url tests: /img/<path>, /slow (never answers in time), /big (too large)."""

    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802
        if self.path == "/slow":
            threading.Event().wait(5)
            return
        if self.path == "/redirect-private":
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.1/x.png")
            self.end_headers()
            return
        body = b"\0" * (2 * 1024 * 1024) if self.path == "/big" else self.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def image_host(sample_rows):
    """An HTTP server on 127.0.0.2 (allowed via image_url_allow_networks); 127.0.0.1 stays forbidden."""
    for row in sample_rows[:3]:
        _ImageHost.files["/img/" + Path(row["image"]).name] = Path(row["image"]).read_bytes()
    port = free_port("127.0.0.2")
    server = ThreadingHTTPServer(("127.0.0.2", port), _ImageHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{port}"
    server.shutdown()


@pytest.fixture(scope="session")
def service(ingested, served_model, image_host) -> str:
    """The real Ray Serve app over HTTP on a free port; returns its base URL."""
    from ray import serve

    from serve_app.app import build_app

    index, _ = ingested
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app({"model": served_model, "index": index, "encoder_threads": 2, "max_upload_bytes": 1024 * 1024,
                     "image_url_timeout_s": 1.0, "image_url_max_bytes": 1024 * 1024,
                     "image_url_allow_networks": ["127.0.0.2/32"], "max_video_bytes": 9 * 1024 * 1024,
                     "body_timeout_s": 3.0})
    serve.run(app, name="visual_search", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/healthz", timeout=30).status_code == 200
    return base


@pytest.fixture(scope="session")
def http(service):
    with httpx.Client(base_url=service, timeout=30) as client:
        yield client
