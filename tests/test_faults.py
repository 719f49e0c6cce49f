"""Fault injection and load against the real Ray Serve app (the session's ``service``): hostile uploads over HTTP,
chunked and slow-drip bodies, SIGKILL of each deployment's replica under 8 clients, 64 clients on 2 cores.

Each test prints its figures (``pytest -s`` shows them). All are ``slow`` (the fast lane, ``pytest -m "not slow"``,
leaves them out); they leave the service healthy for the tests after them.
"""

import json
import os
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.hostile_media import ACCEPT, REJECT, make_corpus

pytestmark = pytest.mark.slow  # fault injection and load: the full suite's, not the fast lane's

HOSTILE_BUDGET_S = 2.0  # every hostile upload is answered within this, seconds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("hostile"))


def _post_media(client: httpx.Client, entry) -> httpx.Response:
    path = "/search/video" if entry.kind == "video" else "/search/image"
    return client.post(path, files={"file": (entry.name, entry.path.read_bytes(), entry.content_type)},
                       data={"k": "3"})


def _healthy(base: str, within_s: float = 90.0) -> float:
    """Seconds until ``/healthz`` answers 200 (fails the test after ``within_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        try:
            if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"the service was not healthy again within {within_s} s")


def test_every_hostile_upload_answers_4xx_json_within_2_s_and_the_rest_200(service, corpus):
    timings, wrong = {}, []
    with httpx.Client(base_url=service, timeout=30) as client:
        for entry in corpus:
            started = time.perf_counter()
            response = _post_media(client, entry)
            timings[entry.name] = elapsed = time.perf_counter() - started
            ok = (response.status_code == 200) if entry.expect == ACCEPT else (
                400 <= response.status_code < 500 and "code" in response.json().get("error", {}))
            if not ok or (entry.expect == REJECT and elapsed > HOSTILE_BUDGET_S):
                wrong.append((entry.name, entry.expect, response.status_code, round(elapsed, 2), response.text[:120]))
        assert client.get("/healthz").status_code == 200
    rejected = [t for e, t in zip(corpus, timings.values()) if e.expect == REJECT]
    print(json.dumps({"hostile_files": len(corpus), "rejected": len(rejected),
                      "reject_s_max": round(max(rejected), 3), "reject_s_median": round(statistics.median(rejected), 3),
                      "slowest": sorted(timings.items(), key=lambda kv: -kv[1])[:3]}))
    assert not wrong, wrong


def _raw_request(base: str, head: str, timeout_s: float = 30.0) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers.get(b"content-length", b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, json.loads(rest[:length] or b"{}")


def test_a_chunked_200_mb_upload_is_cut_off_with_413_long_before_its_end(service):
    """No Content-Length: the body is counted as it streams; the answer comes once the 1 MiB limit is passed."""
    boundary = "vsboundary"
    sock = _raw_request(service, f"POST /search/image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                 f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n")
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    block = os.urandom(1 << 20)
    sent, total, answered = 0, 200 << 20, None
    chunks = [part] + [block] * (total >> 20)
    sock.settimeout(0.001)
    started = time.monotonic()
    try:
        for chunk in chunks:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    answered = True
                    break
            except (BlockingIOError, socket.timeout, TimeoutError):
                pass
    except (BrokenPipeError, ConnectionResetError):
        answered = True  # the server closed the connection after its answer
    sock.settimeout(10)
    status, body = _read_response(sock)
    sock.close()
    print(json.dumps({"chunked_upload_bytes_sent": sent, "of": total, "status": status,
                      "seconds": round(time.monotonic() - started, 2)}))
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert answered and sent < 32 << 20, f"{sent} bytes were taken before the 413"


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body(service):
    sock = _raw_request(service, "POST /search/video HTTP/1.1\r\nHost: x\r\nContent-Length: 209715200\r\n"
                                 "Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    status, body = _read_response(sock)
    sock.close()
    assert status == 413 and "209715200" in body["error"]["message"]


def test_a_slow_drip_body_gets_408_and_the_connection_closes(service):
    """One byte every 0.5 s against a 3 s body time (the test service's ``body_timeout_s``)."""
    sock = _raw_request(service, "POST /search/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 "Content-Length: 1000\r\n\r\n")
    started, payload = time.monotonic(), b'{"query": "' + b"a" * 980
    sock.settimeout(0.5)
    status = body = None
    for byte in payload:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break
        except (socket.timeout, TimeoutError):
            pass
        if time.monotonic() - started > 30:
            break
    sock.settimeout(5)
    status, body = _read_response(sock)
    took = time.monotonic() - started
    try:
        closed = sock.recv(1) == b""
    except (socket.timeout, TimeoutError):
        closed = False
    sock.close()
    print(json.dumps({"slow_drip_status": status, "seconds": round(took, 2), "closed": closed}))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert took < 3 + 4


class Load:
    """``clients`` threads sending a 50/50 mix of text and photo searches until stopped, each waiting what a 503's
    ``Retry-After`` says before its next request; every answer's status and latency is recorded (``-1``: no HTTP
    answer)."""

    def __init__(self, base: str, clients: int, photo: bytes, timeout_s: float = 35.0):
        self.base, self.clients, self.photo, self.timeout_s = base, clients, photo, timeout_s
        self.records: list[tuple[float, str, int, float, str]] = []  # (t, kind, status, seconds, error code)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        rng = np.random.default_rng(i)
        with httpx.Client(base_url=self.base, timeout=self.timeout_s) as client:
            n = 0
            while not self._stop.is_set():
                kind = "text" if (n + i) % 2 else "image"
                n += 1
                started = time.perf_counter()
                code = ""
                try:
                    if kind == "text":
                        r = client.post("/search/text", json={"query": f"product {rng.integers(1000)}", "k": 5})
                    else:
                        r = client.post("/search/image", files={"file": ("q.png", self.photo, "image/png")},
                                        data={"k": "5"})
                    status = r.status_code
                    if status != 200:
                        code = r.json().get("error", {}).get("code", "?") if r.headers.get(
                            "content-type", "").startswith("application/json") else r.text[:40]
                        if status == 503:  # a well-behaved client waits as told
                            time.sleep(float(r.headers.get("retry-after", "1")))
                except httpx.HTTPError as e:
                    status, code = -1, type(e).__name__
                with self._lock:
                    self.records.append((time.monotonic(), kind, status, time.perf_counter() - started, code))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def summary(self) -> dict:
        statuses = Counter(r[2] for r in self.records)
        ok = sorted(r[3] for r in self.records if r[2] == 200)
        return {"clients": self.clients, "requests": len(self.records), "statuses": dict(statuses),
                "codes": dict(Counter(r[4] for r in self.records if r[2] != 200)),
                "p50_s": round(ok[len(ok) // 2], 3) if ok else None,
                "p99_s": round(ok[min(len(ok) - 1, int(0.99 * len(ok)))], 3) if ok else None,
                "max_s": round(max(r[3] for r in self.records), 3) if self.records else None}


def _replica_pid(deployment: str) -> int:
    """The process id of a live replica of ``deployment`` (asked of the actor itself: no dashboard here)."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and f"visual_search#{deployment}#" in a["name"]]
    assert names, f"no live {deployment} replica"
    actor = ray.get_actor(names[0]["name"], namespace="serve")
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


@pytest.fixture(scope="module")
def photo(sample_rows) -> bytes:
    return Path(sample_rows[3]["image"]).read_bytes()


@pytest.mark.parametrize("deployment", ["Encoder", "Retriever", "Ingress"])
def test_sigkill_of_a_replica_under_8_clients(service, photo, deployment):
    """Every failed request is a 503 JSON error and fewer than 1 % fail (Encoder, Retriever); after an Ingress
    kill at most the requests in flight (8) fail."""
    _healthy(service)
    with Load(service, 8, photo) as load:
        time.sleep(6)
        pid = _replica_pid(deployment)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        time.sleep(2)
        recovered_s = _healthy(service)
        time.sleep(8)
    summary = load.summary() | {"killed": deployment, "recovered_s": round(recovered_s + 2, 2)}
    failed = [r for r in load.records if r[2] != 200]
    summary["failed_after_kill_s"] = sorted({round(r[0] - killed_at, 1) for r in failed})[:20]
    print(json.dumps(summary))
    assert summary["requests"] > 50
    if deployment == "Ingress":
        assert len(failed) <= load.clients, summary
    else:
        assert all(r[2] == 503 for r in failed), summary
        assert len(failed) < 0.01 * len(load.records), summary


def test_64_clients_get_200_or_503_and_accepted_p99_stays_within_3x_of_8_clients(service, photo):
    _healthy(service)
    with Load(service, 8, photo) as base:
        time.sleep(15)
    with Load(service, 64, photo) as over:
        time.sleep(20)
    b, o = base.summary(), over.summary()
    shed = o["statuses"].get(503, 0) / max(1, o["requests"])
    print(json.dumps({"clients_8": b, "clients_64": o, "shed_share_64": round(shed, 3),
                      "p99_ratio": round(o["p99_s"] / b["p99_s"], 2)}))
    assert set(b["statuses"]) == {200}, b
    assert set(o["statuses"]) <= {200, 503}, o
    assert all(r[3] < 30 + 5 for r in over.records)  # within the request timeout
    assert o["p99_s"] <= 3 * b["p99_s"], (o["p99_s"], b["p99_s"])
    assert _healthy(service) < 10


@pytest.mark.parametrize("wait_s", [0.0, 300.0])
def test_two_ingestions_started_together_into_one_alias(ray_session, sample_rows, tiny_model, tmp_path, wait_s):
    """One runs; the other refuses at once naming the holder (``lease_wait_s=0``) or waits and then runs. The
    alias ends on a complete version whose count is the catalog's, and another alias's index is not touched."""
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import LeaseHeld, open_index

    catalog = tmp_path / "catalog.jsonl"  # small: the runs' fixed cost is what is measured here, not their size
    catalog.write_text("".join(json.dumps({k: r[k] for k in ("product_id", "title", "image")}) + "\n"
                               for r in sample_rows[:12]))
    other = str(tmp_path / "other-alias")
    other_report = ingest(str(catalog), other, IngestOptions(model=tiny_model, batch_size=16))
    other_before = (open_index(other).version, open_index(other).count())
    index = str(tmp_path / "index")
    options = IngestOptions(model=tiny_model, batch_size=16, lease_wait_s=wait_s)
    outcomes: dict[int, object] = {}
    finished: list[str] = []  # versions in the order their runs ended
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = ingest(str(catalog), index, options)
            finished.append(outcomes[i].version)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    refused = [o for o in outcomes.values() if isinstance(o, Exception)]
    reports = [o for o in outcomes.values() if not isinstance(o, Exception)]
    print(json.dumps({"lease_wait_s": wait_s, "ran": len(reports), "refused": [str(e)[:160] for e in refused],
                      "versions": [r.version for r in reports]}))
    if wait_s == 0:
        assert len(reports) == 1 and len(refused) == 1 and isinstance(refused[0], LeaseHeld), outcomes
        assert "ingest-" in str(refused[0])  # names the run that holds the lease
    else:
        assert len(reports) == 2 and reports[0].version != reports[1].version, outcomes
    current = open_index(index)
    assert current.version == finished[-1]
    assert current.count() == reports[0].products_in_index == other_report.products_in_index
    assert (open_index(other).version, open_index(other).count()) == other_before
