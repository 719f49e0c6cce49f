"""Each model family end to end at base size: a random-weight folder made by make-random-model ingests the sample
catalog with Ray Data, is served by the real Serve graph, names its family on /healthz, and 20 of 20 products found
by a re-encoded copy of their photo (JPEG quality 80, 90 % size) come back first over HTTP. Random weights: only
near-identical images are expected to find each other, and they must, for every family."""

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.test_deploy_runtime import app_running, delete_app, wait_for

pytestmark = pytest.mark.slow  # three base-size ingestions and Serve apps: minutes

N_QUERIES = 20


def _query_photo(path: str) -> bytes:
    from serve_app.images import decode_image

    image = decode_image(Path(path).read_bytes())
    image = image.resize((max(1, image.width * 9 // 10), max(1, image.height * 9 // 10)), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


@pytest.mark.parametrize("family", ["clip", "siglip", "open_clip"])
def test_a_base_model_of_each_family_ingests_serves_and_finds_20_of_20_products_by_photo(
        family, ray_session, service, catalog, sample_rows, tmp_path_factory):
    from ray import serve

    from batch_jobs.pipeline import IngestOptions, ingest
    from serve_app.app import build_app
    from serve_app.models.random_weights import make_random_model

    folder = str(make_random_model(tmp_path_factory.mktemp("families") / f"{family}-base", family, "base"))
    index = str(tmp_path_factory.mktemp(f"index-{family}") / "lancedb")
    report = ingest(str(catalog), index, IngestOptions(model=folder, batch_size=8, fetch_timeout_s=2.0))
    assert report.products_in_index == len(sample_rows)
    # The vectors the index stores are what the family's own library computes from the same photos.
    from serve_app.images import decode_image
    from serve_app.index import open_index
    from tests.test_model_families import reference_embeddings

    rows = sample_rows[:10]
    stored = open_index(index).vectors([r["product_id"] for r in rows])
    reference, _ = reference_embeddings(family, folder, [decode_image(Path(r["image"]).read_bytes()) for r in rows],
                                        ["x"])
    cosines = [float(stored[r["product_id"]] @ reference[i]) for i, r in enumerate(rows)]
    assert min(cosines) >= 0.999, (family, min(cosines))
    name, prefix = f"family_{family}", f"/family-{family.replace('_', '-')}"
    serve.run(build_app({"model": folder, "index": index}), name=name, route_prefix=prefix, blocking=False)
    try:
        base = service + prefix
        wait_for(lambda: app_running(name), 180, f"the {family} app to start")
        health = httpx.get(base + "/healthz", timeout=30).json()
        assert health["family"] == health["index_family"] == family and health["model_weights"] == "random"
        assert health["preprocessing"] == health["index_preprocessing"]
        firsts = []
        for row in sample_rows[:: max(1, len(sample_rows) // N_QUERIES)][:N_QUERIES]:
            response = httpx.post(base + "/search/image", files={"file": ("q.jpg", _query_photo(row["image"]))},
                                  data={"k": "5"}, timeout=60)
            assert response.status_code == 200, response.text
            firsts.append(response.json()["results"][0]["product_id"] == row["product_id"])
        assert sum(firsts) == N_QUERIES, (family, sum(firsts))
    finally:
        delete_app(name)
