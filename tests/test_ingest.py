"""The real Ray Data ingestion on ~60 Tux Paint images with random-weight CLIP models."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import BAD_ROWS


def test_good_rows_are_indexed_and_bad_rows_reported_with_reasons(ingested, sample_rows):
    index, report = ingested
    assert report.indexed == len(sample_rows)
    assert report.products_in_index == len(sample_rows)
    reasons = {b["product_id"]: b["reason"] for b in report.bad_rows}
    assert set(reasons) >= {b["product_id"] for b in BAD_ROWS}
    assert "no such file" in reasons["bad-missing-file"]
    assert "not an image" in reasons["bad-corrupt"]
    assert "ImageDecodeError" in reasons["bad-truncated"]
    assert "StorageError" in reasons["bad-unreachable-url"]
    malformed = [b for b in report.bad_rows if b["product_id"] is None]
    assert {b["line"] for b in malformed} == {len(sample_rows) + len(BAD_ROWS) + 1, len(sample_rows) + len(BAD_ROWS) + 2}
    assert report.skipped == len(BAD_ROWS) + 2
    on_disk = json.loads(Path(report.report).read_text())
    assert on_disk["skipped"] == report.skipped and len(on_disk["bad_rows"]) == report.skipped


def test_stored_vectors_and_hashes_equal_a_direct_computation(ingested, embedder, sample_rows):
    from serve_app.images import decode_image
    from serve_app.index import open_index
    from serve_app.phash import phash64

    index = open_index(ingested[0])
    picks = sample_rows[::15]
    images = [decode_image(Path(r["image"]).read_bytes()) for r in picks]
    direct = embedder.embed_images(images)
    ids, vectors = index.all_vectors()
    by_id = dict(zip(ids, vectors))
    for row, vector, image in zip(picks, direct, images):
        np.testing.assert_allclose(by_id[row["product_id"]], vector, atol=1e-5)
        stored = index.get([row["product_id"]])[0]
        assert stored["phash"] == phash64(image)
        assert stored["title"] == row["title"] and stored["category"] == row["category"]
        assert stored["subcategory"] == row["subcategory"]
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_embeddings_parquet_is_written_for_every_indexed_product(ingested, sample_rows, embedder):
    _, report = ingested
    files = sorted(Path(report.embeddings).glob("*.parquet"))
    assert files
    table = pq.read_table(files)
    assert sorted(table.column("product_id").to_pylist()) == sorted(r["product_id"] for r in sample_rows)
    assert table.schema.field("vector").type.list_size == embedder.dim


@pytest.mark.slow
def test_reingesting_the_same_catalog_is_idempotent(ingested, catalog, served_model, tmp_path):
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import open_index

    index, first = ingested
    before = open_index(index).get(["bad-missing-file"])
    second = ingest(str(catalog), index, IngestOptions(model=served_model, batch_size=8, fetch_timeout_s=2.0),
                    report=str(tmp_path / "report.json"), embeddings=str(tmp_path / "emb"))
    assert second.products_in_index == first.products_in_index
    assert open_index(index).count() == first.products_in_index
    assert before == []
    assert second.skipped == first.skipped


@pytest.mark.slow
def test_catalog_update_replaces_a_product_by_id(ray_session, tiny_model, tmp_path, sample_rows):
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import open_index

    index = str(tmp_path / "index")
    a, b = sample_rows[3], sample_rows[4]
    header = "product_id,title,image,category,price\n"
    manifest = tmp_path / "catalog.csv"
    for title_a, price_a in ((a["title"], a["price"]), ("Renamed product", 1.5)):
        manifest.write_text(header + f"{a['product_id']},{title_a},{a['image']},{a['category']},{price_a}\n"
                            f"{b['product_id']},{b['title']},{b['image']},{b['category']},{b['price']}\n")
        report = ingest(str(manifest), index, IngestOptions(model=tiny_model))
        assert report.indexed == 2 and report.products_in_index == 2
    stored = open_index(index).get([a["product_id"]])[0]
    assert stored["title"] == "Renamed product" and stored["price"] == 1.5
