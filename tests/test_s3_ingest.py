"""S3 end to end on moto's real HTTP server: an ``s3://`` manifest naming ``s3://`` images is ingested by the
Ray Data pipeline into a LanceDB index on S3, with the embeddings Parquet written back to S3; the stored
vectors equal embeddings computed here from the same images."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serve_app import storage
from tests.test_storage_config import s3  # noqa: F401 - the moto fixture

pytestmark = pytest.mark.slow  # a real ingestion against moto's S3 server


def test_ingest_from_s3_manifest_into_an_index_on_s3(s3, ray_session, tiny_model, sample_rows):  # noqa: F811
    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.embedding import load_clip
    from serve_app.images import decode_image
    from serve_app.index import open_index

    rows = sample_rows[:6]
    lines = []
    for r in rows:
        key = f"{s3}/images/{Path(r['image']).name}"
        storage.write_bytes(key, Path(r["image"]).read_bytes())
        lines.append(json.dumps(r | {"image": key}))
    lines.append(json.dumps({"product_id": "missing-on-s3", "title": "gone", "image": f"{s3}/images/none.png"}))
    storage.write_bytes(f"{s3}/catalog.jsonl", ("\n".join(lines) + "\n").encode())

    index_uri = f"{s3}/index"
    # 1 bad row of 7 is over the default max_bad_fraction (0.1): allow it, this test is about the good rows
    report = ingest(f"{s3}/catalog.jsonl", index_uri,
                    IngestOptions(model=tiny_model, batch_size=4, max_bad_fraction=0.2),
                    embeddings=f"{s3}/embeddings/run=test")
    assert report.indexed == 6 and report.skipped == 1 and report.published
    assert report.bad_rows[0]["product_id"] == "missing-on-s3" and "none.png" in report.bad_rows[0]["reason"]
    assert json.loads(storage.read_bytes(f"{index_uri}/ingest_report.json"))["indexed"] == 6

    listed = storage.s3_client().list_objects_v2(Bucket="shop", Prefix="embeddings/run=test/")["Contents"]
    parquet = pa.concat_tables(pq.read_table(io.BytesIO(storage.read_bytes(f"{s3}/{part['Key']}"))) for part in listed)
    assert sorted(parquet.column("product_id").to_pylist()) == sorted(r["product_id"] for r in rows)

    embedder = load_clip(tiny_model)
    expected = embedder.embed_images([decode_image(Path(r["image"]).read_bytes()) for r in rows])  # [6, D]
    stored = dict(zip(parquet.column("product_id").to_pylist(), parquet.column("vector").to_pylist()))
    for r, vector in zip(rows, expected):
        np.testing.assert_allclose(stored[r["product_id"]], vector, atol=1e-4)

    index = open_index(index_uri)  # LanceDB reading its tables from S3
    assert index.count() == 6
    top = index.search(expected[2:3], 1)[0][0]
    assert top.product_id == rows[2]["product_id"] and top.score > 0.999
