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


def test_loading_inside_the_clip_actor_equals_the_separate_load_and_embed_stages(served_model, sample_rows):
    """LoadAndEmbed (threads load a whole block, forwards of batch_size) against load_images then EmbedImages."""
    from batch_jobs.stages import EmbedImages, LoadAndEmbed, load_images

    rows = sample_rows[:21]
    batch = {"product_id": np.array([r["product_id"] for r in rows], object),
             "image": np.array([r["image"] for r in rows], object),
             "error": np.array([""] * 20 + ["duplicate product_id"], object)}
    batch["image"][4] = str(Path(rows[4]["image"]).with_name("no-such-image.png"))
    fused = LoadAndEmbed(served_model, batch_size=8, load_threads=3)(batch)
    separate = EmbedImages(served_model)(load_images(batch, model=served_model))
    assert list(fused) == list(separate)
    assert list(fused["product_id"]) == list(batch["product_id"])  # order kept across the thread pool
    assert fused["error"][4].startswith("ObjectNotFound") and fused["error"][20] == "duplicate product_id"
    assert [bool(e) for e in fused["error"]] == [i in (4, 20) for i in range(21)]
    np.testing.assert_array_equal(fused["phash"], separate["phash"])
    np.testing.assert_allclose(fused["vector"], separate["vector"], atol=1e-5)
    assert not fused["vector"][[4, 20]].any()


@pytest.mark.slow
def test_load_tasks_and_loading_in_the_clip_actor_build_the_same_index(ingested, catalog, served_model, tmp_path):
    """The two shapes of the pipeline (load tasks for GPU actors, loading in the CPU actors by default)."""
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.index import open_index

    options = IngestOptions(model=served_model, batch_size=8, fetch_timeout_s=2.0, load_in_embed_actor=False)
    assert not options.loads_in_embed_actor and IngestOptions(model=served_model).loads_in_embed_actor
    assert not IngestOptions(model=served_model, embed_num_gpus=1).loads_in_embed_actor
    report = ingest(str(catalog), str(tmp_path / "tasks"), options)
    fused = ingested[1]
    assert report.indexed == fused.indexed and report.skipped == fused.skipped
    assert sorted((b["line"], b["reason"]) for b in report.bad_rows) == \
        sorted((b["line"], b["reason"]) for b in fused.bad_rows)
    a, b = open_index(str(tmp_path / "tasks")), open_index(ingested[0])
    ids, vectors = a.all_vectors()
    by_id = dict(zip(*b.all_vectors()))
    np.testing.assert_allclose(vectors, np.stack([by_id[i] for i in ids]), atol=1e-5)
    assert {r["product_id"]: r["phash"] for r in a.get(ids)} == {r["product_id"]: r["phash"] for r in b.get(ids)}
