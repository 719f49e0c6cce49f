"""The embedded LanceDB backend against an exact NumPy k-NN."""

import json

import numpy as np
import pyarrow as pa
import pytest

from serve_app.filters import parse_filters
from serve_app.index import IndexInfo, IndexOpenError, open_index, product_table
from serve_app.index.base import QueryDimensionError

DIM = 32


def _rows(vectors: np.ndarray, start: int = 0) -> pa.Table:
    n = len(vectors)
    ids = [f"p{start + i}" for i in range(n)]
    return product_table(ids, vectors, np.arange(start, start + n), title=[f"title {i}" for i in ids],
                         category=["rare" if (start + i) % 100 == 0 else "common" for i in range(n)],
                         price=[float(start + i) for i in range(n)], image_url=["x.png"] * n,
                         attributes=[json.dumps({"color": "red"})] * n)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    return _unit(rng.normal(size=(2000, DIM))), _unit(rng.normal(size=(5, DIM)))


def test_knn_equals_exact_numpy_search(tmp_path, data):
    vectors, queries = data
    index = open_index(str(tmp_path), IndexInfo("m", DIM))
    index.upsert(_rows(vectors))
    hits = index.search(queries, 10)
    exact = queries @ vectors.T
    for q, row in enumerate(hits):
        order = np.argsort(-exact[q])[:10]
        assert [h.product_id for h in row] == [f"p{i}" for i in order]
        np.testing.assert_allclose([h.score for h in row], exact[q, order], atol=1e-5)
    assert hits[0][0].metadata["color"] == "red" and hits[0][0].metadata["title"].startswith("title")


def test_selective_filter_still_returns_k(tmp_path, data):
    vectors, queries = data
    index = open_index(str(tmp_path), IndexInfo("m", DIM))
    index.upsert(_rows(vectors))
    hits = index.search(queries, 10, parse_filters({"category": "rare"}))  # 20 of 2000 rows match (1 %)
    rare = np.array([i for i in range(2000) if i % 100 == 0])
    for q, row in enumerate(hits):
        assert len(row) == 10
        order = rare[np.argsort(-(vectors[rare] @ queries[q]))[:10]]
        assert [h.product_id for h in row] == [f"p{i}" for i in order]
    ranged = index.search(queries[:1], 1000, parse_filters({"price": {"gte": 10, "lt": 20}}))
    assert sorted(h.metadata["price"] for h in ranged[0]) == [float(i) for i in range(10, 20)]


def test_upsert_delete_reopen(tmp_path, data):
    vectors, _ = data
    index = open_index(str(tmp_path), IndexInfo("model-a", DIM))
    index.upsert(_rows(vectors[:100]))
    index.upsert(_rows(vectors[:100]))
    assert index.count() == 100
    index.upsert(_rows(vectors[50:150], start=50))
    assert index.count() == 150
    assert index.delete(["p0", "p1", "missing"]) == 2
    reopened = open_index(str(tmp_path))
    assert reopened.count() == 148 and reopened.info.model_id == "model-a"
    assert reopened.get(["p0"]) == [] and reopened.get(["p2"])[0]["phash"] == 2


def test_missing_index_and_dimension_mismatch_are_clear_errors(tmp_path):
    with pytest.raises(IndexOpenError, match="ingest"):
        open_index(str(tmp_path / "none"))
    open_index(str(tmp_path / "ix"), IndexInfo("m", DIM))
    with pytest.raises(IndexOpenError, match="dimensional"):
        open_index(str(tmp_path / "ix"), IndexInfo("other", 512))


def test_ann_index_after_bulk_load_keeps_recall(tmp_path):
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(20, DIM))
    vectors = _unit(centers[rng.integers(0, 20, 6000)] + 0.3 * rng.normal(size=(6000, DIM)))
    queries = _unit(vectors[:50] + 0.05 * rng.normal(size=(50, DIM)))
    index = open_index(str(tmp_path), IndexInfo("m", DIM), ann_min_rows=5000)
    index.upsert(_rows(vectors))
    index.finish_bulk_load()
    assert index.has_ann_index()
    hits = index.search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len({h.product_id for h in row} & {f"p{i}" for i in e}) / 10 for row, e in zip(hits, exact)])
    assert recall >= 0.95


def test_query_shape_is_checked(tmp_path):
    index = open_index(str(tmp_path), IndexInfo("m", DIM))
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros(DIM, np.float32), 5)  # one query must still be (1, D)
    with pytest.raises(QueryDimensionError, match=f"{DIM + 1}-d but the index holds {DIM}-d embeddings from 'm'"):
        index.search(np.zeros((1, DIM + 1), np.float32), 5)


def test_a_long_lived_reader_sees_a_later_ingestion(tmp_path, data, monkeypatch):
    from serve_app.index import lancedb_backend

    monkeypatch.setattr(lancedb_backend, "READ_CONSISTENCY_S", 0.0)  # serving re-checks every 10 s
    vectors, queries = data
    writer = open_index(str(tmp_path), IndexInfo("m", DIM))
    writer.upsert(_rows(vectors[:100]))
    reader = open_index(str(tmp_path))
    assert reader.count() == 100
    writer.upsert(_rows(vectors[100:300], start=100))
    assert reader.count() == 300
    assert reader.search(vectors[250:251], 1)[0][0].product_id == "p250"


def test_product_table_fills_missing_metadata_with_nulls_and_refuses_unknown_columns():
    table = product_table(["a", "b"], np.eye(2, DIM, dtype=np.float32), [1, -2], title=["A", "B"])
    assert table.column("title").to_pylist() == ["A", "B"] and table.column("brand").to_pylist() == [None, None]
    assert table.column("phash").to_pylist() == [1, -2] and table.column("vector").to_pylist()[1][1] == 1.0
    with pytest.raises(ValueError, match="colour"):
        product_table(["a"], np.ones((1, DIM), np.float32), [0], colour=["red"])


def test_with_an_ann_index_selective_filters_are_exact_and_updates_keep_the_index(tmp_path):
    """1 % of rows (60) match ``rare``: answered exactly over the matches; rows
    upserted after the build are searchable at once and ``finish_bulk_load`` updates the ANN index instead of
    rebuilding it; deleted rows never come back."""
    rng = np.random.default_rng(4)
    centers = rng.normal(size=(20, DIM))
    vectors = _unit(centers[rng.integers(0, 20, 6000)] + 0.3 * rng.normal(size=(6000, DIM)))
    index = open_index(str(tmp_path), IndexInfo("m", DIM), ann_min_rows=5000, memory_rows=0)
    index.upsert(_rows(vectors))
    index.finish_bulk_load()
    assert index.has_ann_index()
    rare = np.array([i for i in range(6000) if i % 100 == 0])
    queries = _unit(rng.normal(size=(5, DIM)))
    hits = index.search(queries, 10, parse_filters({"category": "rare"}))
    for q, row in zip(queries, hits):
        expected = [f"p{i}" for i in rare[np.argsort(-(vectors[rare] @ q))[:10]]]
        assert [h.product_id for h in row] == expected
    through_ann = open_index(str(tmp_path), exact_filter_rows=0, memory_rows=0)  # probes scaled by 1 / 1 %
    found = [{h.product_id for h in row} for row in through_ann.search(queries, 10, parse_filters({"category": "rare"}))]
    exact = [{f"p{i}" for i in rare[np.argsort(-(vectors[rare] @ q))[:10]]} for q in queries]
    assert all(len(f) == 10 and all(int(p[1:]) % 100 == 0 for p in f) for f in found)
    assert np.mean([len(f & e) / 10 for f, e in zip(found, exact)]) >= 0.9
    new = _unit(rng.normal(size=(10, DIM)))
    index.upsert(_rows(new, start=6000))
    assert [row[0].product_id for row in index.search(new, 1)] == [f"p{6000 + i}" for i in range(10)]
    index.delete(["p6003", "p17"])
    index.build_ann_index = lambda: pytest.fail("an index that exists is updated by optimize, not rebuilt")
    index.finish_bulk_load()
    vector_index = next(ix for ix in index._table.list_indices() if ix.columns == ["vector"])
    assert index._table.index_stats(vector_index.name).num_unindexed_rows == 0
    assert index.search(new[3:4], 5)[0][0].product_id != "p6003"
    assert "p17" not in {h.product_id for h in index.search(vectors[17:18], 5)[0]}
    assert index.count() == 6008
