"""Client-side behaviour of the OpenSearch backend against PyPI's ``osmem-server`` on 127.0.0.1: index
creation and ``_meta``, alias switching, bulk loading with per-item failures reported, 429 retried, refused
credentials turned into a clear message.

osmem-server stores documents and mappings and answers the OpenSearch REST API, but does **not** do k-NN, so
nothing here searches by vector (that is the conformance suite's job on a real cluster). Two failure modes
osmem cannot produce — HTTP 429 and 401 — come from a small pass-through proxy in front of it that answers
those statuses for chosen requests and forwards everything else unchanged.
"""

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from serve_app.index import IndexInfo, IndexOpenError, create_version, open_index
from tests.test_index_conformance import make_rows

DIM = 8


@pytest.fixture(scope="module")
def osmem():
    try:
        from osmem_server import OsmemServer
    except ImportError:
        pytest.skip("osmem-server is not installed (pip install -e .[test])")
    with OsmemServer.start(japanese=False) as server:
        yield server


@pytest.fixture()
def osmem_url(osmem):
    with osmem.clone() as clone:
        yield clone.url


class _Proxy(BaseHTTPRequestHandler):
    """Forwards to ``upstream``; answers 429 to the first ``reject_bulk`` ``_bulk`` requests and 401 to
    everything when ``require_auth`` is set and the request has no matching Authorization header."""

    upstream = ""
    reject_bulk = 0
    require_auth: str | None = None
    bulk_requests = 0

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = type(self)
        if cls.require_auth is not None and self.headers.get("Authorization") != cls.require_auth:
            return self._reply(401, {"error": {"type": "security_exception", "reason": "missing authentication "
                                               "credentials for REST request"}, "status": 401})
        if "_bulk" in self.path:
            cls.bulk_requests += 1
            if cls.reject_bulk > 0:
                cls.reject_bulk -= 1
                return self._reply(429, {"error": {"type": "es_rejected_execution_exception",
                                                   "reason": "rejected execution (queue capacity 200)"}, "status": 429})
        request = urllib.request.Request(cls.upstream + self.path, data=body or None, method=self.command,
                                         headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                self._reply(answer.status, answer.read(), raw=True)
        except urllib.error.HTTPError as e:
            self._reply(e.code, e.read(), raw=True)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    def _reply(self, status, payload, raw=False):
        data = payload if raw else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def proxy(osmem_url):
    _Proxy.upstream, _Proxy.reject_bulk, _Proxy.require_auth, _Proxy.bulk_requests = osmem_url, 0, None, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _data(n=30):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), rng.integers(-(2**62), 2**62, n)


def test_create_bulk_load_meta_alias_and_reads(osmem_url):
    uri = osmem_url.replace("http://", "opensearch+http://") + "/products"
    vectors, hashes = _data()
    index = open_index(uri, IndexInfo("model-a", DIM), ef=64)
    assert index.version == "products-model-a-v1"
    assert index.upsert(make_rows(vectors, hashes)) == 30
    index.finish_bulk_load()
    reopened = open_index(uri)
    assert reopened.info == IndexInfo("model-a", DIM) and reopened.count() == 30
    assert reopened.get(["p3"])[0]["phash"] == int(hashes[3]) and reopened.get(["p3"])[0]["color"] == "red"
    np.testing.assert_allclose(reopened.vectors(["p4"])["p4"], vectors[4], atol=1e-6)
    ids, stored = reopened.hashes()
    assert dict(zip(ids, stored.tolist())) == {f"p{i}": int(h) for i, h in enumerate(hashes)}
    mapping = reopened.client.indices.get_mapping(index="products-model-a-v1")["products-model-a-v1"]["mappings"]
    assert mapping["properties"]["phash_bits"]["space_type"] == "hamming"
    assert reopened.client.indices.get_settings(index="products-model-a-v1")  # created with index.knn

    facets = reopened.facets()
    assert sum(f["count"] for f in facets["facets"]["category"]) == 30 and facets["ranges"]["price"]["max"] == 29.0
    assert reopened.delete(["p0", "p1"]) == 2 and reopened.count() == 28

    new = create_version(uri, IndexInfo("model-b", DIM))
    new.upsert(make_rows(vectors[:5], hashes[:5], start=100))
    new.finish_bulk_load()
    assert open_index(uri).info.model_id == "model-a"  # the alias has not moved yet
    new.publish()
    assert set(reopened.client.indices.get_alias(name="products")) == {"products-model-b-v2"}
    assert open_index(uri).count() == 5 and open_index(uri).info.model_id == "model-b"


def test_bulk_partial_failures_are_reported_and_the_rest_kept(osmem_url):
    uri = osmem_url.replace("http://", "opensearch+http://") + "/products"
    vectors, hashes = _data(10)
    index = open_index(uri, IndexInfo("model-a", DIM))
    rows = make_rows(vectors, hashes)
    ids = rows.column("product_id").to_pylist()
    ids[2] = ids[7] = ""  # OpenSearch rejects empty _id per item (400)
    rows = rows.set_column(0, "product_id", __import__("pyarrow").array(ids))
    assert index.upsert(rows) == 8
    failures = index.drain_failures()
    assert len(failures) == 2 and all("400" in f["reason"] and "_id" in f["reason"] for f in failures)
    assert index.drain_failures() == []
    index.finish_bulk_load()
    assert index.count() == 8


def test_bulk_rejected_with_429_is_retried(proxy):
    uri = proxy.replace("http://", "opensearch+http://") + "/products"
    vectors, hashes = _data(12)
    index = open_index(uri, IndexInfo("model-a", DIM), initial_backoff_s=0.01)
    _Proxy.reject_bulk, _Proxy.bulk_requests = 2, 0
    assert index.upsert(make_rows(vectors, hashes)) == 12
    assert index.drain_failures() == [] and _Proxy.bulk_requests == 3  # two 429s, then accepted
    index.finish_bulk_load()
    assert index.count() == 12


def test_refused_credentials_are_a_clear_error(proxy, monkeypatch):
    uri = proxy.replace("http://", "opensearch+http://") + "/products"
    _Proxy.require_auth = "Basic cmVhZGVyOnJpZ2h0"  # reader:right
    monkeypatch.setenv("VS_OPENSEARCH_USER", "reader")
    monkeypatch.setenv("VS_OPENSEARCH_PASSWORD", "wrong")
    with pytest.raises(IndexOpenError, match="refused the credentials.*VS_OPENSEARCH_USER"):
        open_index(uri, IndexInfo("model-a", DIM))
    monkeypatch.setenv("VS_OPENSEARCH_PASSWORD", "right")
    assert open_index(uri, IndexInfo("model-a", DIM)).count() == 0


def test_unreachable_cluster_is_a_clear_error():
    with pytest.raises(IndexOpenError, match="cannot reach OpenSearch"):
        open_index("opensearch+http://127.0.0.1:9/products")
