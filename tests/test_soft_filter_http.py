"""Hard filters and the soft text filter over HTTP through the real Ray Serve app, checked against cosines
computed here from the same model and the index's stored vectors."""

import json
from pathlib import Path

import numpy as np
import pytest


def _image_search(http, path, **data):
    with open(path, "rb") as f:
        return http.post("/search/image", files={"file": f}, data={k: str(v) for k, v in data.items()})


def test_soft_filter_scores_are_the_image_and_text_cosines(http, embedder, sample_rows, catalog_vectors):
    from serve_app.images import decode_image

    row, text = sample_rows[7], "a small red animal"
    response = _image_search(http, row["image"], k=8, text=text, text_weight=0.4)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == text and body["text_weight"] == 0.4 and len(body["results"]) == 8
    image_query = embedder.embed_images([decode_image(Path(row["image"]).read_bytes())])[0]
    text_query = embedder.embed_texts([text])[0]
    for r in body["results"]:
        stored = catalog_vectors[r["product_id"]]
        assert r["image_score"] == pytest.approx(float(stored @ image_query), abs=1e-3)
        assert r["text_score"] == pytest.approx(float(stored @ text_query), abs=1e-3)
        assert 0.0 <= r["score"] <= 1.0
    assert [r["score"] for r in body["results"]] == sorted((r["score"] for r in body["results"]), reverse=True)


def test_text_weight_zero_keeps_the_visual_order_and_one_orders_by_text(http, sample_rows):
    row = sample_rows[11]
    plain = _image_search(http, row["image"], k=6).json()["results"]
    visual = _image_search(http, row["image"], k=6, text="kitchen tool", text_weight=0.0).json()["results"]
    assert [r["product_id"] for r in visual] == [r["product_id"] for r in plain]
    assert visual[0]["product_id"] == row["product_id"] and visual[0]["score"] == 1.0
    by_text = _image_search(http, row["image"], k=6, text="kitchen tool", text_weight=1.0).json()["results"]
    assert [r["text_score"] for r in by_text] == sorted((r["text_score"] for r in by_text), reverse=True)


def test_soft_filter_respects_hard_filters(http, sample_rows):
    counts = {}
    for r in sample_rows:
        counts[r["category"]] = counts.get(r["category"], 0) + 1
    category = max(counts, key=counts.get)
    other = next(r for r in sample_rows if r["category"] != category)
    response = _image_search(http, other["image"], k=5, text="round", text_weight=0.7,
                             filters=json.dumps({"category": [category]}))
    results = response.json()["results"]
    assert len(results) == min(5, counts[category]) and all(r["category"] == category for r in results)


def test_video_search_with_a_soft_text_filter(http, embedder, catalog_vectors, clip_vectors, clear_video_rows,
                                              tmp_path):
    from batch_jobs.make_clip import make_clip

    row = clear_video_rows(1)[0]
    path = tmp_path / "one.mp4"
    make_clip(path, [row["image"]], 2.0)
    _, frames = clip_vectors(path)  # [K, D]: the kept frames, embedded here
    text_query = embedder.embed_texts(["a toy"])[0]

    def search(weight: float) -> dict:
        with open(path, "rb") as f:
            response = http.post("/search/video", files={"file": ("one.mp4", f, "video/mp4")},
                                 data={"k": "5", "text": "a toy", "text_weight": str(weight)})
        assert response.status_code == 200, response.text
        return response.json()

    body = search(0.2)
    assert body["text_weight"] == 0.2 and len(body["results"]) == 5
    for r in body["results"]:  # the best frame's cosine and the text cosine, computed here
        stored = catalog_vectors[r["product_id"]]
        assert r["image_score"] == pytest.approx(float(np.max(frames @ stored)), abs=1e-3)
        assert r["text_score"] == pytest.approx(float(stored @ text_query), abs=1e-3)
        assert 0.0 <= r["score"] <= 1.0
    assert [r["score"] for r in body["results"]] == sorted((r["score"] for r in body["results"]), reverse=True)
    # w = 0 keeps the visual order, led by the clip's product (its margin over every other one was measured here).
    visual = search(0.0)["results"]
    assert visual[0]["product_id"] == row["product_id"]
    assert [r["image_score"] for r in visual] == sorted((r["image_score"] for r in visual), reverse=True)


@pytest.mark.parametrize("data, message", [
    ({"text_weight": "0.5"}, "text_weight: give a `text`"),
    ({"text": "red", "text_weight": "1.5"}, "text_weight"),
    ({"filters": json.dumps({"colour": "red"})}, "'colour'"),
    ({"filters": json.dumps({"price": {"gte": "cheap"}})}, "'price'"),
    ({"filters": json.dumps({"category": [3]})}, "'category'"),
])
def test_bad_soft_or_hard_filter_is_a_422_naming_the_field(http, sample_rows, data, message):
    response = _image_search(http, sample_rows[0]["image"], **data)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]
    assert http.get("/healthz").status_code == 200
