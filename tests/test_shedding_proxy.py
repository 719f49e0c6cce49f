"""The shedding proxy (serve_app/shedding_proxy.py): a real HAProxy in front of a real, deliberately slow HTTP
server that counts the requests it holds at once; the bounds are checked against that count, not against the
proxy's own report."""

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from batch_jobs.serve_process import start_shedding_proxy, stop_shedding_proxy
from serve_app.shedding_proxy import SheddingArgs, render_config
from tests.conftest import free_port

HOLD_S = 1.5  # how long the upstream holds each search request


@contextlib.contextmanager
def _running_proxy(config: Path | None, upstream: str):
    """The shedding proxy (``config``'s settings, ``None``: its defaults) on a free port in front of ``upstream``;
    yields its base URL once it answers."""
    port = free_port()
    proxy = start_shedding_proxy(config, Path.cwd(), port, upstream)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/healthz", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail("the shedding proxy did not start")
                time.sleep(0.1)
        yield base
    finally:
        stop_shedding_proxy(proxy)


class SlowUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.lock, self.holding, self.most_held, self.served = threading.Lock(), 0, 0, 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def _answer(handler):
                length = int(handler.headers.get("Content-Length") or 0)
                handler.rfile.read(length)
                with self.lock:
                    self.holding += 1
                    self.most_held = max(self.most_held, self.holding)
                try:
                    if handler.path.startswith("/search"):
                        time.sleep(HOLD_S)
                    body = json.dumps({"path": handler.path}).encode()
                    handler.send_response(200)
                    handler.send_header("Content-Type", "application/json")
                    handler.send_header("Content-Length", str(len(body)))
                    handler.end_headers()
                    handler.wfile.write(body)
                finally:
                    with self.lock:
                        self.holding -= 1
                        self.served += handler.path.startswith("/search")

            do_GET = do_POST = _answer

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture()
def proxied(tmp_path):
    upstream = SlowUpstream()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    config = tmp_path / "shedding.yaml"
    config.write_text("max_in_flight: 2\nmax_queued: 3\nqueue_timeout_s: 2.5\nretry_after_s: 2\n")
    with _running_proxy(config, f"127.0.0.1:{upstream.server_address[1]}") as base:
        yield base, upstream
    upstream.shutdown()


def _post(base: str, i: int):
    started = time.perf_counter()
    r = httpx.post(base + "/search/text", json={"query": f"q{i}"}, timeout=30)
    return r, time.perf_counter() - started


def test_concurrency_is_bounded_and_the_excess_is_refused_at_once_with_retry_after(proxied):
    base, upstream = proxied
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: _post(base, i), range(12)))
    ok = [(r, t) for r, t in answers if r.status_code == 200]
    refused = [(r, t) for r, t in answers if r.status_code == 503]
    assert len(ok) + len(refused) == 12
    assert upstream.most_held == 2  # max_in_flight, and it was reached
    # 2 in flight + 3 queued are served (the queue drains within the 2.5 s queue timeout: 2 rounds of 1.5 s
    # would not, so only those that waited at most one round are), the rest refused at once
    assert 2 <= len(ok) <= 5 and len(refused) >= 7
    fast = [t for _, t in refused if t < 0.5]
    assert len(fast) >= 7  # refused in HAProxy without waiting for the upstream
    for r, _ in refused:
        assert r.headers["retry-after"] == "2"
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == "overloaded"
    assert upstream.served == len(ok)  # searches answered; a refused request never reached the upstream


def test_a_request_that_waits_past_the_queue_timeout_gets_the_json_503(proxied):
    base, upstream = proxied
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: _post(base, i), range(5)))
    late = [(r, t) for r, t in answers if r.status_code == 503]
    assert len(late) >= 1  # 2 served in the first round, 2 in the second (3.0 s > 2.5 s): some time out
    for r, t in late:
        assert t >= 2.0
        assert r.json()["error"]["code"] == "overloaded" and r.headers["retry-after"] == "2"


def test_cheap_reads_are_never_shed(proxied):
    base, upstream = proxied
    with ThreadPoolExecutor(8) as pool:
        searches = [pool.submit(_post, base, i) for i in range(6)]
        time.sleep(0.3)  # the search slots and the queue are full now
        health = httpx.get(base + "/healthz", timeout=5)
        page = httpx.get(base + "/", timeout=5)
        post_health = httpx.post(base + "/healthz", timeout=5)  # a POST to an exempt path is bounded
        [f.result() for f in searches]
    assert health.status_code == 200 and health.json() == {"path": "/healthz"}
    assert page.status_code == 200
    assert post_health.status_code == 503


def test_settings_are_validated_and_rendered(tmp_path):
    with pytest.raises(ValueError, match="max_queued"):
        SheddingArgs(max_queued=0)
    with pytest.raises(ValueError, match="(?i)extra"):
        SheddingArgs.from_yaml(None, bogus=1)
    config = render_config(SheddingArgs(max_in_flight=7, max_queued=9, queue_timeout_s=0.25), tmp_path)
    assert "maxconn 7" in config and "queue(search) ge 9" in config and "timeout queue 250ms" in config
    page = (tmp_path / "503.http").read_bytes().decode()
    head, body = page.split("\r\n\r\n")
    assert "Retry-After: 1" in head and f"Content-Length: {len(body)}" in head
    assert json.loads(body)["error"]["code"] == "overloaded"


def _chunked_upload(base: str, chunk_bytes: int, total_bytes: int = 1 << 30) -> tuple[int, bytes]:
    """A photo upload with no Content-Length, sent until an answer arrives: (bytes handed to the socket by then,
    the answer's status)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    sock.sendall(b"POST /search/image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                 + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    block = f"{chunk_bytes:x}\r\n".encode() + b"\0" * chunk_bytes + b"\r\n"
    answered, sent = threading.Event(), [0]

    def write() -> None:
        try:
            while sent[0] < total_bytes and not answered.is_set():
                sock.sendall(block)
                sent[0] += chunk_bytes
        except OSError:
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    answer = sock.recv(4096)
    answered.set()
    taken = sent[0]
    sock.close()
    writer.join(timeout=10)
    return taken, answer.split(b" ")[1] if answer.startswith(b"HTTP/") else answer


def test_the_real_app_answers_the_same_through_the_proxy(service, tmp_path):
    """In front of the real Serve app: answers, errors and the page pass through unchanged; a chunked upload
    is cut within a few MiB of the limit (the proxy asks Serve to hand the body over as the ingress reads it)."""
    with _running_proxy(None, service.removeprefix("http://")) as base:
        health = httpx.get(base + "/healthz", timeout=30)
        products = httpx.get(service + "/healthz").json()["products"]
        assert health.status_code == 200 and health.json()["products"] == products
        query = {"query": "a red apple", "k": 5}
        through = httpx.post(base + "/search/text", json=query, timeout=30)
        direct = httpx.post(service + "/search/text", json=query, timeout=30)
        assert through.status_code == direct.status_code == 200
        ids = [[r["product_id"] for r in answer.json()["results"]] for answer in (through, direct)]
        assert ids[0] == ids[1] and len(ids[0]) == 5
        bad = httpx.post(base + "/search/text", json={"query": "", "k": 5}, timeout=30)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        assert httpx.get(base + "/", timeout=30).status_code == 200
        sent, status = _chunked_upload(base, 1 << 20)
        assert status == b"413" and sent < 32 << 20, (sent, status)  # the service's upload limit is 1 MiB
