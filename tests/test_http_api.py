"""The public HTTP contract, through the real Ray Serve app on the tiny random-weight model.

Random weights (ViT-B/32 shapes): only identical / near-identical pixels retrieve each other, so the checks are self-retrieval
and agreement with an exact NumPy k-NN over the stored embeddings — never semantic quality.
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CONTRACT_FIELDS = {"product_id", "title", "category", "image_url", "score"}


def _exact_knn(index_uri: str, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    from serve_app.index import open_index

    ids, vectors = open_index(index_uri).all_vectors()
    scores = vectors @ query  # cosine: both sides L2-normalised
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order], scores[order]


TIE = 2e-5  # cosines closer than this are a tie: two processes' float32 sums may order them either way


def _assert_same_ranking(results: list[dict], index_uri: str, query: np.ndarray) -> None:
    """``results`` are the exact k-NN answer for ``query``: the same scores (1e-4) and the same products in
    the same order, except that products whose exact cosines tie (within :data:`TIE`) may come in any order."""
    k = len(results)
    ids, scores = _exact_knn(index_uri, query, k + 10)
    np.testing.assert_allclose([r["score"] for r in results], scores[:k], atol=1e-4)
    for rank, result in enumerate(results):
        tied = {ids[j] for j in range(len(ids)) if abs(scores[j] - scores[rank]) <= TIE}
        assert result["product_id"] in tied, (rank, result["product_id"], ids[:k])
    assert len({r["product_id"] for r in results}) == k


def test_healthz_reports_model_index_and_random_weights(http, ingested, served_model):
    body = http.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["products"] == ingested[1].products_in_index
    assert body["model_id"] == served_model
    assert body["model_weights"] == "random"


def test_healthz_names_the_family_and_preprocessing_of_the_model_and_of_the_index(http, embedder):
    body = http.get("/healthz").json()
    assert body["family"] == body["index_family"] == "clip"
    assert body["preprocessing"] == body["index_preprocessing"] == embedder.spec.preprocessing()
    assert body["preprocessing"].startswith("shortest224-crop224-bicubic")


def test_openapi_docs_list_the_endpoints(http):
    spec = http.get("/openapi.json").json()
    assert {"/healthz", "/search/text", "/search/image"} <= set(spec["paths"])
    assert http.get("/docs").status_code == 200


@pytest.mark.parametrize("pick", [0, 7, 23, 41])
def test_image_search_with_a_catalog_image_returns_that_product_first(http, sample_rows, pick):
    row = sample_rows[pick]
    with open(row["image"], "rb") as f:
        response = http.post("/search/image", files={"file": ("q.png", f, "image/png")}, data={"k": "5"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["product_id"] == row["product_id"]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_image_search_matches_exact_numpy_knn(http, embedder, ingested, sample_rows):
    from serve_app.images import decode_image

    data = Path(sample_rows[5]["image"]).read_bytes()
    image = decode_image(data).rotate(7, fillcolor="white")  # a query that is not itself in the catalog
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    response = http.post("/search/image", files={"file": ("q.png", buffer.getvalue(), "image/png")},
                         data={"k": "10"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    query = embedder.embed_images([decode_image(buffer.getvalue())])[0]
    _assert_same_ranking(results, ingested[0], query)


def test_text_search_returns_k_results_with_contract_fields_matching_exact_knn(http, embedder, ingested):
    response = http.post("/search/text", json={"query": "a red apple on a table", "k": 7})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 7
    for r in results:
        assert CONTRACT_FIELDS <= set(r)
        assert -1.0 <= r["score"] <= 1.0
    _assert_same_ranking(results, ingested[0], embedder.embed_texts(["a red apple on a table"])[0])


def test_filters_are_applied_inside_the_knn_search(http, sample_rows):
    counts = {}
    for r in sample_rows:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    category, n = max(counts.items(), key=lambda kv: kv[1])
    k = min(n, 5)
    response = http.post("/search/text", json={"query": "something", "k": k, "filters": {"category": category}})
    results = response.json()["results"]
    assert len(results) == k and all(r["category"] == category for r in results)
    prices = sorted(r["price"] for r in sample_rows)
    low, high = prices[5], prices[25]
    expected = sum(low <= p <= high for p in prices)
    response = http.post("/search/text", json={"query": "x", "k": 1000,
                                               "filters": {"price": {"gte": low, "lte": high}}})
    results = response.json()["results"]
    assert len(results) == expected and all(low <= r["price"] <= high for r in results)
    with open(sample_rows[0]["image"], "rb") as f:
        response = http.post("/search/image", files={"file": f},
                             data={"k": "3", "filters": json.dumps({"category": [category]})})
    assert response.status_code == 200 and all(r["category"] == category for r in response.json()["results"])


def test_image_url_from_an_allowed_host(http, image_host, sample_rows):
    url = f"{image_host}/img/{Path(sample_rows[0]['image']).name}"
    response = http.post("/search/image", data={"image_url": url, "k": "3"})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["product_id"] == sample_rows[0]["product_id"]


def _png_bytes(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def _assert_error(response, status: int, code: str | None = None, mentions: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    if mentions:
        assert mentions.lower() in error["message"].lower()


BAD_INPUT = [
    ("non-image upload", lambda s: ("/search/image", {"files": {"file": ("a.txt", b"hello, not an image")}}), 415,
     "unsupported_media_type", "not an image"),
    ("empty upload", lambda s: ("/search/image", {"files": {"file": ("a.png", b"")}}), 415, None, "empty"),
    ("truncated png", lambda s: ("/search/image", {"files": {"file": ("a.png", _png_bytes()[:60])}}), 400,
     "invalid_image", None),
    ("upload too large", lambda s: ("/search/image", {"files": {"file": ("a.png", b"\x89PNG" + b"0" * 1_200_000)}}),
     413, "payload_too_large", None),
    ("empty query", lambda s: ("/search/text", {"json": {"query": "   "}}), 422, "invalid_request", "query"),
    ("missing query", lambda s: ("/search/text", {"json": {"k": 3}}), 422, "invalid_request", "query"),
    ("k zero", lambda s: ("/search/text", {"json": {"query": "a", "k": 0}}), 422, None, "k"),
    ("k 1001", lambda s: ("/search/text", {"json": {"query": "a", "k": 1001}}), 422, None, "k"),
    ("k 1001 image", lambda s: ("/search/image", {"files": {"file": ("a.png", _png_bytes())}, "data": {"k": "1001"}}),
     422, None, "k"),
    ("unknown filter field", lambda s: ("/search/text", {"json": {"query": "a", "filters": {"colour": "red"}}}), 422,
     "invalid_filter", "colour"),
    ("wrong filter type", lambda s: ("/search/text", {"json": {"query": "a", "filters": {"price": "cheap"}}}), 422,
     "invalid_filter", "price"),
    ("filters not json", lambda s: ("/search/image", {"files": {"file": ("a.png", _png_bytes())},
                                                      "data": {"filters": "{oops"}}), 422, "invalid_filter", None),
    ("no file no url", lambda s: ("/search/image", {"data": {"k": "3"}}), 422, None, "image_url"),
    ("url not http", lambda s: ("/search/image", {"data": {"image_url": "file:///etc/passwd"}}), 400,
     "invalid_image_url", None),
    ("url loopback", lambda s: ("/search/image", {"data": {"image_url": "http://127.0.0.1:8000/healthz"}}), 403,
     "image_url_forbidden", "127.0.0.1"),
    ("url metadata", lambda s: ("/search/image", {"data": {"image_url": "http://169.254.169.254/latest/"}}), 403,
     "image_url_forbidden", None),
    ("url private", lambda s: ("/search/image", {"data": {"image_url": "http://10.1.2.3/x.png"}}), 403,
     "image_url_forbidden", None),
    ("url redirect to private", lambda s: ("/search/image", {"data": {"image_url": s + "/redirect-private"}}), 403,
     "image_url_forbidden", "10.0.0.1"),
    ("url unresolvable", lambda s: ("/search/image", {"data": {"image_url": "http://no-such-host.invalid/x.png"}}),
     400, "image_url_unresolvable", None),
    ("url timeout", lambda s: ("/search/image", {"data": {"image_url": s + "/slow"}}), 408, "image_url_timeout",
     None),
    ("url too large", lambda s: ("/search/image", {"data": {"image_url": s + "/big"}}), 413, "image_url_too_large",
     None),
    ("url 404", lambda s: ("/search/image", {"data": {"image_url": s + "/img/nothing.png"}}), 400, None, "404"),
]


@pytest.mark.parametrize("name,make,status,code,mentions", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_gets_a_json_error_and_the_service_keeps_serving(http, image_host, name, make, status, code,
                                                                   mentions):
    path, kwargs = make(image_host)
    _assert_error(http.post(path, **kwargs), status, code, mentions)
    assert http.get("/healthz").status_code == 200
    assert http.post("/search/text", json={"query": "still here", "k": 2}).status_code == 200


def test_unknown_route_is_a_json_404(http):
    _assert_error(http.get("/nope"), 404, "not_found")
