"""One conformance suite every index backend must pass, checked against exact NumPy / popcount answers.

LanceDB runs for real here and in CI. OpenSearch runs only when ``OPENSEARCH_URL`` points at a real cluster
with the k-NN plugin (e.g. ``OPENSEARCH_URL=https://localhost:9200 VS_OPENSEARCH_USER=admin
VS_OPENSEARCH_PASSWORD=... VS_OPENSEARCH_VERIFY_CERTS=false``); otherwise those cases are skipped with the
reason shown by ``pytest -ra``. No fake server answers k-NN queries here.
"""

import asyncio
import json
import os
import re
import uuid

import numpy as np
import pyarrow as pa
import pytest

from serve_app.filters import parse_filters
from serve_app.index import IndexInfo, IndexOpenError, LeaseHeld, create_version, lease, open_index, product_table
from serve_app.index.base import QueryDimensionError

DIM = 32
N = 2000
OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_rows(vectors: np.ndarray, hashes: np.ndarray, start: int = 0, title: str = "title") -> pa.Table:
    n = len(vectors)
    ids = [f"p{start + i}" for i in range(n)]
    return product_table(ids, vectors, hashes, title=[f"{title} {i}" for i in ids],
                         category=["rare" if (start + i) % 100 == 0 else ("kitchen" if (start + i) % 3 else "tools")
                                   for i in range(n)],
                         price=[float((start + i) % 200) for i in range(n)], image_url=["x.png"] * n,
                         attributes=[json.dumps({"color": "red"})] * n)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(16, DIM))
    vectors = _unit(centers[rng.integers(0, 16, N)] + 0.5 * rng.normal(size=(N, DIM)))
    queries = _unit(vectors[:8] + 0.2 * rng.normal(size=(8, DIM)))
    hashes = rng.integers(-(2**63), 2**63 - 1, size=N, dtype=np.int64)
    hashes[10:20] = hashes[0] ^ (1 << np.arange(10, dtype=np.int64))  # near-duplicates of p0 at 1 bit
    return vectors, queries, hashes


@pytest.fixture(params=["lancedb", "lancedb-sql", "opensearch"])
def backend(request, tmp_path, monkeypatch):
    """``(uri, module)`` of a fresh, empty index location for each backend. LanceDB runs twice: answering small
    tables from its in-memory snapshot (the default) and with every query going to LanceDB itself."""
    if request.param.startswith("lancedb"):
        from serve_app.index import lancedb_backend as module

        monkeypatch.setattr(module, "READ_CONSISTENCY_S", 0.0)
        if request.param == "lancedb-sql":
            monkeypatch.setattr(module, "MEMORY_ROWS", 0)
        yield str(tmp_path / "lancedb"), module
        return
    if not OPENSEARCH_URL:
        pytest.skip("OpenSearch conformance: OPENSEARCH_URL is not set (needs a real cluster with the k-NN plugin; "
                    "nothing here can run one, and no fake answers k-NN queries)")
    from opensearchpy import OpenSearch

    from serve_app.index import opensearch_backend as module

    monkeypatch.setattr(module, "READ_CONSISTENCY_S", 0.0)
    alias = f"vs-conformance-{uuid.uuid4().hex[:8]}"
    yield f"{OPENSEARCH_URL.rstrip('/')}/{alias}", module
    base, _ = module.parse_uri(f"{OPENSEARCH_URL.rstrip('/')}/{alias}")
    client = OpenSearch(**module.client_options(base))
    client.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
    for name in (alias, f"{alias}-eu"):
        client.delete(index="visual-search-leases", id=name, ignore=[404])  # normally released already


@pytest.fixture()
def loaded(backend, data):
    uri, _ = backend
    vectors, _, hashes = data
    index = open_index(uri, IndexInfo("model-a", DIM))
    assert index.upsert(make_rows(vectors, hashes)) == N
    index.finish_bulk_load()
    return uri, index


def _exact(vectors, query, mask=None):
    scores = vectors @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return np.argsort(-scores, kind="stable")


def test_bulk_load_count_and_knn_match_numpy(loaded, data):
    uri, index = loaded
    vectors, queries, _ = data
    assert index.count() == N
    hits = index.search(queries, 10)
    recalls = []
    for q, row in enumerate(hits):
        assert len(row) == 10
        order = _exact(vectors, queries[q])[:10]
        recalls.append(len({h.product_id for h in row} & {f"p{i}" for i in order}) / 10)
        for h in row:  # score = cosine of the pair, identical across backends
            i = int(h.product_id[1:])
            assert h.score == pytest.approx(float(vectors[i] @ queries[q]), abs=1e-4)
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
    assert np.mean(recalls) >= 0.95
    assert hits[0][0].metadata["color"] == "red" and hits[0][0].metadata["title"].startswith("title")


def test_async_search_equals_search(loaded, data):
    _, index = loaded
    _, queries, _ = data
    sync = index.search(queries[:3], 5)
    async_ = asyncio.run(index.asearch(queries[:3], 5))
    assert [[h.product_id for h in r] for r in async_] == [[h.product_id for h in r] for r in sync]


def test_filter_matching_one_percent_still_returns_k(loaded, data):
    _, index = loaded
    vectors, queries, _ = data
    rare = np.array([i % 100 == 0 for i in range(N)])  # 20 of 2000 rows
    hits = index.search(queries, 10, parse_filters({"category": "rare"}))
    for q, row in enumerate(hits):
        assert len(row) == 10
        assert all(h.metadata["category"] == "rare" for h in row)
        assert [h.product_id for h in row] == [f"p{i}" for i in _exact(vectors, queries[q], rare)[:10]]


def test_any_of_and_range_filters(loaded, data):
    _, index = loaded
    vectors, queries, _ = data
    flt = {"category": ["tools", "rare"], "price": {"gte": 5, "lt": 50}}
    mask = np.array([(i % 100 == 0 or i % 3 == 0) and 5 <= i % 200 < 50 for i in range(N)])
    row = index.search(queries[:1], 20, parse_filters(flt))[0]
    assert len(row) == 20
    assert all(h.metadata["category"] in ("tools", "rare") and 5 <= h.metadata["price"] < 50 for h in row)
    expected = [f"p{i}" for i in _exact(vectors, queries[0], mask)[:20]]
    assert len({h.product_id for h in row} & set(expected)) >= 19


def test_hamming_search_matches_popcount(loaded, data):
    _, index = loaded
    _, _, hashes = data
    queries = [int(hashes[0]), int(hashes[500]) ^ 0b111]
    found = index.hamming_search(queries, 12, max_distance=64)
    for query, row in zip(queries, found):
        popcount = {f"p{i}": bin((query ^ int(h)) & (2**64 - 1)).count("1") for i, h in enumerate(hashes)}
        assert [h.distance for h in row] == sorted(popcount.values())[:12]  # ties at the cut may pick any id
        assert all(popcount[h.product_id] == h.distance for h in row)
    near = index.hamming_search([int(hashes[0])], 50, max_distance=1)[0]
    assert {h.product_id for h in near} == {"p0"} | {f"p{i}" for i in range(10, 20)}
    assert all(h.metadata["phash"] == int(hashes[int(h.product_id[1:])]) for h in near)


def test_upsert_replaces_delete_and_reopen(loaded, data):
    uri, index = loaded
    vectors, _, hashes = data
    index.upsert(make_rows(vectors[:5], hashes[:5], title="renamed"))
    index.finish_bulk_load()
    assert index.count() == N
    assert index.get(["p3"])[0]["title"] == "renamed p3"
    assert index.delete(["p0", "p1", "missing"]) == 2
    reopened = open_index(uri)
    assert reopened.count() == N - 2 and reopened.info == IndexInfo("model-a", DIM)
    assert reopened.get(["p0"]) == [] and reopened.get(["p2"])[0]["phash"] == int(hashes[2])
    stored = reopened.vectors(["p7", "p8", "nope"])
    assert sorted(stored) == ["p7", "p8"]
    np.testing.assert_allclose(stored["p7"], vectors[7], atol=1e-6)
    ids, stored_hashes = reopened.hashes()
    assert dict(zip(ids, stored_hashes.tolist()))["p9"] == int(hashes[9]) and len(ids) == N - 2


def test_facets_count_like_numpy(loaded):
    _, index = loaded
    facets = index.facets()
    expected = {"rare": 20, "tools": sum(1 for i in range(N) if i % 100 and i % 3 == 0)}
    expected["kitchen"] = N - sum(expected.values())
    assert {f["value"]: f["count"] for f in facets["facets"]["category"]} == expected
    assert facets["ranges"]["price"] == {"min": 0.0, "max": 199.0, "count": N}


def test_alias_switch_is_atomic_and_old_versions_are_dropped(backend, data):
    uri, _ = backend
    vectors, queries, hashes = data
    first = open_index(uri, IndexInfo("model-a", DIM))
    first.upsert(make_rows(vectors[:100], hashes[:100]))
    first.finish_bulk_load()
    reader = open_index(uri)  # a long-lived serving handle that follows the alias

    # Re-embedding with another model (another dimension) builds a new version beside the current one.
    other = _unit(np.random.default_rng(1).normal(size=(50, 16)))
    second = create_version(uri, IndexInfo("model-b", 16))
    second.upsert(make_rows(other, hashes[:50], start=1000))
    second.finish_bulk_load()
    assert reader.count() == 100 and reader.info.model_id == "model-a"  # not switched yet
    assert reader.search(queries[:1], 3)[0][0].product_id.startswith("p")

    assert second.publish() == []
    assert open_index(uri).info == IndexInfo("model-b", 16)
    assert reader.count() == 50 and reader.info.dim == 16  # followed the alias
    assert reader.search(other[:1], 1)[0][0].product_id == "p1000"
    with pytest.raises(IndexOpenError, match="current"):
        second.drop()

    third = create_version(uri, IndexInfo("model-c", 16))
    third.upsert(make_rows(other[:10], hashes[:10], start=2000))
    third.finish_bulk_load()
    assert third.publish(keep=2) == [first.version]  # model-a's version goes; model-b stays for a roll-back
    assert open_index(uri).count() == 10
    with pytest.raises(IndexOpenError):
        open_index(uri, version=first.version)


def test_unpublished_version_can_be_dropped_and_empty_location_is_an_error(backend):
    uri, _ = backend
    with pytest.raises(IndexOpenError, match="ingest"):
        open_index(uri)
    current = open_index(uri, IndexInfo("model-a", DIM))
    spare = create_version(uri, IndexInfo("model-a", DIM))
    spare.drop()
    with pytest.raises(IndexOpenError):
        open_index(uri, version=spare.version)
    assert open_index(uri).version == current.version
    with pytest.raises(IndexOpenError, match="dimensional"):
        open_index(uri, IndexInfo("model-x", DIM * 2))
    with pytest.raises(QueryDimensionError, match=f"{DIM + 1}-d but the index holds {DIM}-d"):
        current.search(np.ones((1, DIM + 1), np.float32), 3)


def test_versions_of_a_longer_alias_are_left_alone(backend, data):
    uri, _ = backend
    vectors, _, hashes = data
    other = f"{uri}-eu"  # OpenSearch: its versions match "<alias>-*-v*"; LanceDB: a sibling folder
    theirs = open_index(other, IndexInfo("model-a", DIM))
    theirs.upsert(make_rows(vectors[:10], hashes[:10]))
    theirs.finish_bulk_load()
    ours = []
    for _ in range(3):
        version = create_version(uri, IndexInfo("model-a", DIM))
        version.upsert(make_rows(vectors[:5], hashes[:5]))
        version.finish_bulk_load()
        version.publish(keep=2)
        ours.append(version.version)
    assert open_index(other).version == theirs.version and open_index(other).count() == 10
    assert open_index(other, version=theirs.version).count() == 10
    assert open_index(uri).version == ours[-1]


def test_the_ingestion_lease_is_exclusive_and_released(backend):
    uri, _ = backend
    with lease(uri, "run-a", ttl_s=30) as held:
        with pytest.raises(LeaseHeld, match=f"run 'run-a' .*lease expires {re.escape(held.record.expires_at)}"):
            with lease(uri, "run-b"):
                pass
        with lease(f"{uri}-eu", "run-c"):  # another alias has its own lease
            pass
    with lease(uri, "run-b") as again:
        assert again.record.run_id == "run-b"
