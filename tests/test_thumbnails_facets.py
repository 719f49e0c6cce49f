"""What the web page needs from the service: facets, thumbnails, video frame thumbnails, the static page.

Pure parts (the byte-bounded LRU, resizing, frame data URLs, LanceDB facets) are checked alone against
independent answers (Counter over the rows, Pillow resizing by hand); the endpoints through the real Serve app.
"""

import base64
import io
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from serve_app.images import decode_image
from serve_app.index import IndexInfo, open_index, product_table
from serve_app.phash import hamming_distance, phash64
from serve_app.thumbnails import ByteLRU, clamp_size, etag, frame_data_url, render_thumbnail

STATIC = Path(__file__).resolve().parent.parent / "serve_app" / "static"


def test_byte_lru_evicts_least_recently_used_within_its_byte_budget():
    cache = ByteLRU(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"5678")
    assert cache.get("a") == b"1234"  # "a" is now the most recently used
    cache.put("c", b"90ab")  # 12 bytes > 10: evict the least recently used, "b"
    assert cache.get("b") is None and cache.get("a") == b"1234" and cache.get("c") == b"90ab"
    assert cache.size_bytes == 8 and len(cache) == 2
    cache.put("a", b"x")  # replacing a value frees its old size
    assert cache.size_bytes == 5
    cache.put("huge", b"0" * 11)  # larger than the whole budget: not cached, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 2)


def test_byte_lru_entries_expire_after_ttl():
    now = [100.0]
    cache = ByteLRU(max_bytes=100, ttl_s=5, clock=lambda: now[0])
    cache.put("k", b"v")
    now[0] += 5
    assert cache.get("k") == b"v"
    now[0] += 0.1
    assert cache.get("k") is None and cache.size_bytes == 0


def test_clamp_size_and_etag():
    assert [clamp_size(s) for s in (None, 1, 64, 200, 512, 10_000, -5)] == [256, 64, 64, 200, 512, 512, 64]
    assert etag(b"abc") == etag(b"abc") != etag(b"abd") and re.fullmatch(r'"[0-9a-f]{16}"', etag(b"abc"))


@pytest.mark.parametrize("pick,size", [(0, 128), (3, 64), (9, 512)])
def test_render_thumbnail_matches_an_independent_resize(sample_rows, pick, size):
    data = Path(sample_rows[pick]["image"]).read_bytes()
    thumb = Image.open(io.BytesIO(render_thumbnail(data, size)))
    assert thumb.format == "JPEG" and thumb.mode == "RGB"
    # Independent answer: alpha onto white by hand, then Pillow's plain resize to the expected box.
    original = Image.open(io.BytesIO(data)).convert("RGBA")
    white = Image.new("RGBA", original.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, original).convert("RGB")
    scale = min(1.0, size / max(flat.size))
    expected_size = (max(1, round(flat.width * scale)), max(1, round(flat.height * scale)))
    assert abs(thumb.width - expected_size[0]) <= 1 and abs(thumb.height - expected_size[1]) <= 1
    expected = np.asarray(flat.resize(thumb.size, Image.BICUBIC), dtype=np.float32)
    assert np.abs(np.asarray(thumb, dtype=np.float32) - expected).mean() < 6.0  # JPEG + filter differences


def test_frame_data_url_is_a_96_px_high_jpeg_of_the_frame():
    rng = np.random.default_rng(0)
    frame = np.kron(rng.integers(0, 255, (7, 12, 3)), np.ones((32, 32, 1))).astype(np.uint8)  # 224 × 384
    url = frame_data_url(frame)
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (round(384 * 96 / 224), 96)
    assert hamming_distance(phash64(image), phash64(Image.fromarray(frame))) <= 4
    with pytest.raises(ValueError, match="uint8"):
        frame_data_url(frame.astype(np.float32))


def _rows(products: list[dict], dim: int = 4) -> pa.Table:
    n = len(products)
    columns = {f: [p.get(f) for p in products] for f in ("title", "category", "brand", "price")}
    return product_table([p.get("product_id") for p in products], np.ones((n, dim), np.float32), np.arange(n),
                         image_url=["x.png"] * n, attributes=["{}"] * n, **columns)


def test_lancedb_facets_match_an_independent_count(tmp_path):
    rnd = np.random.default_rng(1)
    categories = ["food", "toys", "garden", None, "", "  "]
    brands = ["acme", "globex", None]
    products = [{"product_id": f"p{i}", "title": f"t{i}", "category": categories[rnd.integers(len(categories))],
                 "brand": brands[rnd.integers(len(brands))],
                 "price": [None, float("nan"), float(rnd.uniform(1, 100))][rnd.integers(3)]} for i in range(200)]
    index = open_index(str(tmp_path), IndexInfo("m", 4))
    assert index.facets() == {"products": 0, "facets": {"category": [], "brand": []}, "ranges": {}}
    index.upsert(_rows(products))
    got = index.facets()
    assert got["products"] == 200
    for field in ("category", "brand"):
        counts = Counter(p[field] for p in products if p[field] and p[field].strip())
        expected = sorted(({"value": v, "count": c} for v, c in counts.items()), key=lambda f: (-f["count"], f["value"]))
        assert got["facets"][field] == expected
    prices = [p["price"] for p in products if p["price"] is not None and not math.isnan(p["price"])]
    assert got["ranges"] == {"price": {"min": min(prices), "max": max(prices), "count": len(prices)}}


# ---------- over HTTP, the real Serve app ----------

def test_facets_endpoint_counts_the_ingested_catalog(http, sample_rows, ingested):
    body = http.get("/facets").json()
    assert body["products"] == ingested[1].products_in_index == len(sample_rows)  # the bad rows are not ingested
    counts = Counter(r["category"] for r in sample_rows)
    assert {f["value"]: f["count"] for f in body["facets"]["category"]} == dict(counts)
    assert [f["count"] for f in body["facets"]["category"]] == sorted(counts.values(), reverse=True)
    assert body["facets"]["brand"] == []  # the sample catalog has no brands
    prices = [r["price"] for r in sample_rows]
    assert body["ranges"]["price"] == {"min": min(prices), "max": max(prices), "count": len(prices)}


def test_thumbnail_endpoint_resizes_caches_and_revalidates(http, sample_rows):
    row = max(sample_rows, key=lambda r: max(Image.open(r["image"]).size))  # a large one, so 512 is a real clamp
    response = http.get(f"/thumbnails/{row['product_id']}", params={"size": 128})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert "max-age" in response.headers["cache-control"]
    image = Image.open(io.BytesIO(response.content))
    assert max(image.size) == 128
    assert response.content == render_thumbnail(Path(row["image"]).read_bytes(), 128)
    tag = response.headers["etag"]
    again = http.get(f"/thumbnails/{row['product_id']}", params={"size": 128}, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.headers["etag"] == tag and not again.content
    big = http.get(f"/thumbnails/{row['product_id']}", params={"size": 100_000})
    assert max(Image.open(io.BytesIO(big.content)).size) == 512
    default = http.get(f"/thumbnails/{row['product_id']}")
    assert max(Image.open(io.BytesIO(default.content)).size) == 256


def test_thumbnail_of_an_unknown_product_is_a_404_json_error(http):
    response = http.get("/thumbnails/no-such-product", params={"size": 128})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found" and "no-such-product" in error["message"]
    quoted = http.get("/thumbnails/x' OR '1'='1")  # the id is a value, never SQL
    assert quoted.status_code == 404 and quoted.json()["error"]["code"] == "not_found"


def test_video_search_returns_kept_frame_thumbnails_on_request(http, sample_rows, tmp_path):
    from batch_jobs.make_clip import make_clip, shot_frame

    rows = [sample_rows[2], sample_rows[30]]
    path = tmp_path / "two.mp4"
    shots = make_clip(path, [r["image"] for r in rows], [2.0, 2.0])
    files = {"file": ("two.mp4", path.read_bytes(), "video/mp4")}
    body = http.post("/search/video", files=files, data={"k": "3", "frame_thumbnails": "true"}).json()
    assert body["frames_kept"] == len(body["kept_frames"]) == 2
    for frame in body["kept_frames"]:
        assert frame["thumbnail"].startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(frame["thumbnail"].split(",", 1)[1])))
        assert image.height == 96 and image.width == round(96 * 640 / 360)
        # it shows the shot that was on screen at t: pHash close to the frame make_clip wrote
        shot = next(i for i, (start, end) in enumerate(shots) if start <= frame["t"] < end)
        written = shot_frame(decode_image(Path(rows[shot]["image"]).read_bytes()))
        assert hamming_distance(phash64(image), phash64(Image.fromarray(written))) <= 10
    plain = http.post("/search/video", files=files, data={"k": "3"}).json()
    assert [f["t"] for f in plain["kept_frames"]] == [f["t"] for f in body["kept_frames"]]
    assert all(set(f) == {"t"} for f in plain["kept_frames"])


def test_page_and_static_assets_are_served_and_reference_no_other_host(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = http.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    missing = http.get("/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "/" not in {p for p in http.get("/openapi.json").json()["paths"]}  # the page is not an API endpoint
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.findall(r"(?:https?:)?//[a-z0-9]", text, re.I), f"{path.name} names an external URL"
        assert "@import" not in text and "fonts.g" not in text, path.name


def test_openapi_lists_the_modes_the_page_looks_for(http):
    spec = http.get("/openapi.json").json()
    assert {"/search/image", "/search/text", "/search/video", "/find_similar", "/facets"} <= set(spec["paths"])
    video = spec["paths"]["/search/video"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    name = video["$ref"].split("/")[-1]
    assert "frame_thumbnails" in spec["components"]["schemas"][name]["properties"]
