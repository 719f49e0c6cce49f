"""Precomputed embeddings into the index (``ingest --from-embeddings``), ``export`` and re-load, ``delete``,
upserts from embeddings and ``--resume`` on a complete index — through the real Ray Data pipeline and LanceDB.
Expected answers come from the vectors written here (NumPy), not from the code under test."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_jobs.embeddings_source import rows_of
from serve_app.phash import to_hex

DIM = 512  # the random base CLIP's projection dimension (served_model)


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_source(path, ids, vectors, **columns) -> None:
    table = pa.table({"product_id": ids, "embedding": pa.array(list(vectors), pa.list_(pa.float32()))} | columns)
    pq.write_table(table, path)


def test_rows_of_reports_each_bad_row_and_normalises_the_rest():
    good = unit_vectors(3, 0)
    rows = [good[0], good[1] * 3.0, good[2][:100], np.full(DIM, np.nan, np.float32), np.zeros(DIM, np.float32),
            good[0], good[1]]
    ids = ["a", "b", "short", "nan", "zero", None, "a"]
    table = pa.table({"product_id": ids, "embedding": pa.array([list(r) for r in rows], pa.list_(pa.float32())),
                      "phash": ["00000000000000ff", "zz", None, None, None, None, "ffffffffffffffff"],
                      "color": ["red", None, None, None, None, None, "blue"]})
    out = rows_of(table, DIM, "src.parquet", 0, 1, winners={"a": 7})
    errors = out.column("error").to_pylist()
    assert errors[0] == "duplicate product_id; src.parquet line 7 replaces it"
    assert errors[1] == "phash 'zz' is not 16 hex digits"
    assert errors[2] == f"embedding has 100 values, expected {DIM}"
    assert errors[3] == "embedding has NaN or infinite values"
    assert errors[4] == "embedding is the zero vector"
    assert errors[5] == "missing product_id"
    assert errors[6] is None
    vectors = np.stack(out.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vectors[6], good[1], atol=1e-6)
    assert out.column("normalised").to_pylist()[1] is True and out.column("normalised").to_pylist()[6] is False
    assert out.column("phash").to_pylist()[0] == 255 and out.column("phash").to_pylist()[6] == -1
    assert json.loads(out.column("attributes").to_pylist()[6]) == {"color": "blue"}


@pytest.fixture(scope="module")
def loaded(ray_session, served_model, tmp_path_factory):
    """300 products from two Parquet files (one id repeated across them, 3 bad rows), loaded into a new index."""
    from batch_jobs.pipeline import IngestOptions, ingest

    root = tmp_path_factory.mktemp("from-embeddings")
    vectors = unit_vectors(300, 1)
    hashes = np.random.default_rng(2).integers(-2**63, 2**63 - 1, 300, dtype=np.int64)
    ids = [f"p{i:04d}" for i in range(300)]
    write_source(root / "a.parquet", ids[:150], vectors[:150] * 2.0, phash=[to_hex(int(h)) for h in hashes[:150]],
                 category=["even" if i % 2 == 0 else "odd" for i in range(150)], price=np.arange(150.0),
                 brand=["acme"] * 150)
    bad = unit_vectors(3, 3)
    bad[1, 0] = np.inf
    write_source(root / "b.parquet", ids[150:] + ["short", "inf", "p0000"],
                 list(vectors[150:]) + [bad[0][:10], bad[1], vectors[0]], phash=list(hashes[150:]) + [0, 0, hashes[0]],
                 category=["even" if i % 2 == 0 else "odd" for i in range(150, 300)] + ["x", "x", "even"],
                 price=list(np.arange(150.0, 300.0)) + [0.0, 0.0, 0.0], brand=["acme"] * 153)
    index = str(root / "index")
    report = ingest(str(root), index, IngestOptions(model=served_model), from_embeddings=True)
    return root, index, report, dict(zip(ids, vectors)), dict(zip(ids, hashes))


def test_embeddings_load_with_bad_rows_reported_and_vectors_stored_normalised(loaded):
    from serve_app.index import open_index

    root, index, report, vectors, hashes = loaded
    assert report.source == "embeddings" and report.published
    assert report.indexed == 300 and report.products_in_index == 300
    reasons = {(b["product_id"], b["reason"]) for b in report.bad_rows}
    assert ("short", f"embedding has 10 values, expected {DIM}") in reasons
    assert ("inf", "embedding has NaN or infinite values") in reasons
    assert any(pid == "p0000" and reason.startswith("duplicate product_id") for pid, reason in reasons)
    # a.parquet's 150 vectors are twice unit length; its p0000 is replaced by b.parquet's (unit) row
    assert report.skipped == 3 and report.normalised == 149
    ids, stored = open_index(index).all_vectors()
    by_id = dict(zip(ids, stored))
    for pid in ("p0001", "p0149", "p0150", "p0299"):
        assert float(by_id[pid] @ vectors[pid]) > 0.99999
    meta = {m["product_id"]: m for m in open_index(index).get(["p0003", "p0200"])}
    assert meta["p0003"]["phash"] == hashes["p0003"] and meta["p0003"]["category"] == "odd"
    assert meta["p0200"]["price"] == 200.0


def test_knn_and_filters_on_loaded_embeddings_match_numpy(loaded):
    from serve_app.filters import parse_filters
    from serve_app.index import open_index

    _, index, _, vectors, _ = loaded
    ids = sorted(vectors)
    matrix = np.stack([vectors[i] for i in ids])
    query = vectors["p0042"]
    hits = open_index(index).search(query[None, :], 10, parse_filters({"category": "even"}))[0]
    even = [i for i in ids if int(i[1:]) % 2 == 0]
    scores = {i: float(vectors[i] @ query) for i in even}
    expected = sorted(even, key=lambda i: -scores[i])[:10]
    assert [h.product_id for h in hits] == expected
    assert np.allclose([h.score for h in hits], [scores[i] for i in expected], atol=1e-4)
    assert matrix.shape == (300, DIM)


def test_export_then_reload_gives_the_same_ids_and_vectors(loaded, served_model):
    from batch_jobs.catalog_updates import export_index
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import open_index

    root, index, _, _, _ = loaded
    summary = export_index(index, str(root / "export"), rows_per_file=128)
    assert summary["products"] == 300 and summary["files"] == 3
    again = ingest(str(root / "export"), str(root / "again"), IngestOptions(model=served_model), from_embeddings=True)
    assert again.indexed == 300 and again.skipped == 0 and again.normalised == 0
    a_ids, a_vectors = open_index(index).all_vectors()
    b = dict(zip(*open_index(str(root / "again")).all_vectors()))
    assert set(a_ids) == set(b)
    cosines = np.array([float(v @ b[pid]) for pid, v in zip(a_ids, a_vectors)])
    assert cosines.min() > 0.999999
    original = {m["product_id"]: m for m in open_index(index).get(a_ids[:20])}
    reloaded = {m["product_id"]: m for m in open_index(str(root / "again")).get(a_ids[:20])}
    assert original == reloaded


def test_resume_on_a_complete_index_exits_0_with_the_same_counts(loaded, served_model):
    from batch_jobs.cli import main

    root, index, report, _, _ = loaded
    assert main(["ingest", "--from-embeddings", str(root / "a.parquet"), "--index", index, "--model", served_model,
                 "--resume"]) == 0
    on_disk = json.loads((root / "index" / "ingest_report.json").read_text())
    assert on_disk["indexed"] == report.indexed == 300


def test_upsert_from_embeddings_and_delete_are_seen_by_search(loaded, served_model, tmp_path):
    from batch_jobs.catalog_updates import delete_products
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import open_index

    root, index, _, vectors, _ = loaded
    new = unit_vectors(20, 9)
    write_source(tmp_path / "new.parquet", [f"n{i}" for i in range(20)] + ["p0010"],
                 list(new) + [new[0]], category=["new"] * 21)
    up = ingest(str(tmp_path / "new.parquet"), index, IngestOptions(model=served_model, mode="upsert"),
                report=str(tmp_path / "r.json"), from_embeddings=True)
    assert up.indexed == 21 and up.products_in_index == 320
    reader = open_index(index)
    assert reader.search(new[5][None, :], 1)[0][0].product_id == "n5"
    assert float(reader.vectors(["p0010"])["p0010"] @ new[0]) > 0.99999  # replaced in place
    (tmp_path / "ids.txt").write_text("n5\np0011\n# a comment\nnot-there\n")
    from batch_jobs.catalog_updates import read_ids

    gone = delete_products(index, read_ids(str(tmp_path / "ids.txt")))
    assert (gone.requested, gone.deleted, gone.not_found, gone.products_in_index) == (3, 2, 1, 318)
    reader = open_index(index)
    assert "n5" not in [h.product_id for h in reader.search(new[5][None, :], 50)[0]]
    assert reader.get(["p0011"]) == [] and "p0011" not in reader.vectors(["p0011"])
    assert vectors  # the module fixture's answers stay untouched for the other tests
