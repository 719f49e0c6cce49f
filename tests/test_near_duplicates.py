"""Near-duplicate detection: binary Hamming index, find_similar over HTTP, the batch dedup report."""

import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageEnhance

from batch_jobs.dedup_report import clusters_from_pairs, near_duplicate_pairs
from serve_app.images import decode_image
from serve_app.index import IndexInfo, open_index, product_table
from serve_app.phash import match_percent, phash64


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _hash_rows(hashes: list[int], dim: int = 4) -> pa.Table:
    n = len(hashes)
    return product_table([f"h{i}" for i in range(n)], np.ones((n, dim), np.float32) / 2, [_signed(h) for h in hashes],
                         title=["t"] * n, category=["c"] * n, price=[1.0] * n, image_url=["x"] * n,
                         attributes=["{}"] * n)


def test_hamming_search_in_the_index_matches_an_independent_count(tmp_path):
    rnd = random.Random(0)
    hashes = [rnd.getrandbits(64) for _ in range(3000)]
    index = open_index(str(tmp_path), IndexInfo("m", 4))
    index.upsert(_hash_rows(hashes))
    for q in [hashes[5] ^ 0b1011, rnd.getrandbits(64), hashes[77]]:
        hits = index.hamming_search([_signed(q)], 10)[0]
        expected = sorted((bin(q ^ h).count("1"), f"h{i}") for i, h in enumerate(hashes))[:10]
        assert [h.distance for h in hits] == [d for d, _ in expected]
        kth = expected[-1][0]  # ties at the k-th distance may come back in any order
        assert {h.product_id for h in hits if h.distance < kth} == {p for d, p in expected if d < kth}
        truth = {f"h{i}": bin(q ^ h).count("1") for i, h in enumerate(hashes)}
        assert all(truth[h.product_id] == h.distance for h in hits)
    within = index.hamming_search([_signed(hashes[5])], 50, max_distance=3)[0]
    assert [h.product_id for h in within] == ["h5"] and within[0].distance == 0


def test_pairs_and_clusters_against_brute_force():
    rnd = random.Random(3)
    base = [rnd.getrandbits(64) for _ in range(300)]
    hashes = base + [base[0] ^ 0b111, base[0] ^ (0b11 << 40), base[10] ^ 1, base[200] ^ (0xFF << 8)]
    signed = np.array([_signed(h) for h in hashes], dtype=np.int64)
    pairs = near_duplicate_pairs(signed, 6)
    brute = [(i, j, bin(hashes[i] ^ hashes[j]).count("1")) for i in range(len(hashes))
             for j in range(i + 1, len(hashes)) if bin(hashes[i] ^ hashes[j]).count("1") <= 6]
    assert sorted(pairs) == sorted(brute)
    clusters = clusters_from_pairs(len(hashes), pairs)
    assert [0, 300, 301] in clusters and [10, 302] in clusters
    assert all(len(c) >= 2 for c in clusters)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def planted(ray_session, tiny_model, sample_rows, tmp_path_factory):
    """A catalog of 12 products where 3 are planted copies (resize, JPEG, brightness) of two others."""
    from batch_jobs.pipeline import IngestOptions, ingest

    folder = tmp_path_factory.mktemp("planted")
    rows = [dict(r) for r in sample_rows[20:29]]
    a, b = decode_image(Path(rows[0]["image"]).read_bytes()), decode_image(Path(rows[1]["image"]).read_bytes())
    copies = {"copy-a-resized": a.resize((a.width // 2, a.height // 2)), "copy-a-jpeg": Image.open(
        io.BytesIO(_jpeg(a, 40))), "copy-b-bright": ImageEnhance.Brightness(b).enhance(1.2)}
    for name, image in copies.items():
        image.save(folder / f"{name}.png")
        rows.append({"product_id": name, "title": name, "image": str(folder / f"{name}.png"), "category": "copies"})
    manifest = folder / "catalog.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = str(folder / "index")
    report = ingest(str(manifest), index, IngestOptions(model=tiny_model, flag_duplicates=10))
    return index, rows, report


@pytest.mark.slow
def test_dedup_report_finds_the_planted_clusters(planted, tmp_path):
    from batch_jobs.dedup_report import dedup_report, write_report

    index, rows, _ = planted
    report = dedup_report(index, max_distance=10)
    clusters = [sorted(m["product_id"] for m in c["members"]) for c in report["clusters"]]
    assert sorted([rows[0]["product_id"], "copy-a-jpeg", "copy-a-resized"]) in clusters
    assert sorted([rows[1]["product_id"], "copy-b-bright"]) in clusters
    ids, hashes = open_index(index).hashes()
    by_id = dict(zip(ids, hashes.tolist()))
    for cluster in report["clusters"]:
        for pair in cluster["pairs"]:
            expected = bin((by_id[pair["a"]] ^ by_id[pair["b"]]) & (2**64 - 1)).count("1")
            assert pair["hamming_distance"] == expected <= 10
            assert pair["match_percent"] == pytest.approx(match_percent(expected), abs=0.01)
    write_report(report, str(tmp_path / "r.csv"))
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("cluster_id,product_id") and len(lines) == 1 + report["products_in_clusters"]


def test_ingestion_flags_new_products_close_to_indexed_ones(planted):
    _, rows, report = planted
    flagged = {d["product_id"]: d for d in report.near_duplicates}
    # The copies come after their sources in the manifest, so each copy is flagged against an earlier
    # product of its own planted group.
    group_a = {rows[0]["product_id"], "copy-a-resized", "copy-a-jpeg"}
    assert flagged["copy-a-resized"]["duplicate_of"] in group_a - {"copy-a-resized"}
    assert flagged["copy-a-jpeg"]["duplicate_of"] in group_a - {"copy-a-jpeg"}
    assert flagged["copy-b-bright"]["duplicate_of"] == rows[1]["product_id"]
    assert all(d["hamming_distance"] <= 10 for d in flagged.values())


def test_find_similar_over_http_phash_mode(http, sample_rows):
    row = sample_rows[2]
    source = decode_image(Path(row["image"]).read_bytes())
    copy = _jpeg(source, 60)
    response = http.post("/find_similar", files={"file": ("c.jpg", copy, "image/jpeg")}, data={"top": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    hit = body["results"][0]
    expected = bin((phash64(decode_image(copy)) ^ phash64(source)) & (2**64 - 1)).count("1")
    assert hit["product_id"] == row["product_id"] and hit["hamming_distance"] == expected
    assert hit["match_percent"] == pytest.approx(100 * (1 - expected / 64), abs=0.01)
    assert all(r["hamming_distance"] <= body["max_distance"] for r in body["results"])
    distances = [r["hamming_distance"] for r in body["results"]]
    assert distances == sorted(distances)
    tight = http.post("/find_similar", files={"file": ("c.jpg", copy)}, data={"max_distance": "0"}).json()
    assert all(r["hamming_distance"] == 0 for r in tight["results"])


def test_find_similar_by_url_and_robust_mode_reports_both_distances(http, image_host, sample_rows, embedder,
                                                                    ingested):
    row = sample_rows[0]
    url = f"{image_host}/img/{Path(row['image']).name}"
    body = http.get("/find_similar", params={"image_url": url, "top": "3"}).json()
    assert body["results"][0]["product_id"] == row["product_id"]
    assert body["results"][0]["hamming_distance"] == 0 and body["results"][0]["match_percent"] == 100.0
    source = decode_image(Path(row["image"]).read_bytes())
    w, h = source.size
    crop = source.crop((w // 10, h // 10, w - w // 10, h - h // 10))  # 20 % crop: pHash usually misses it
    buffer = io.BytesIO()
    crop.save(buffer, "PNG")
    robust = http.post("/find_similar", files={"file": ("crop.png", buffer.getvalue())},
                       data={"top": "10", "mode": "robust"}).json()
    assert robust["mode"] == "robust"
    query = embedder.embed_images([decode_image(buffer.getvalue())])[0]
    ids, vectors = open_index(ingested[0]).all_vectors()
    stored = dict(zip(ids, vectors))
    for r in robust["results"]:
        assert set(r["tiers"]) <= {"phash", "clip"} and r["tiers"]
        confirmed = r["hamming_distance"] <= robust["max_distance"] and \
            r["cosine_similarity"] >= robust["confirm_min_score"]
        assert ("phash" in r["tiers"]) == confirmed
        assert r["tiers"] == (["phash", "clip"] if confirmed else ["clip"])
        assert confirmed or r["cosine_similarity"] >= robust["clip_min_score"]
        assert r["cosine_similarity"] == pytest.approx(float(stored[r["product_id"]] @ query), abs=1e-4)


@pytest.mark.parametrize("params,status", [({"mode": "fuzzy"}, 422), ({"max_distance": "65"}, 422),
                                           ({"top": "0"}, 422), ({"top": "1001"}, 422)])
def test_find_similar_bad_parameters(http, sample_rows, params, status):
    with open(sample_rows[0]["image"], "rb") as f:
        response = http.post("/find_similar", files={"file": f}, data=params)
    assert response.status_code == status and response.json()["error"]["message"]


def test_find_similar_bad_input(http):
    assert http.post("/find_similar", files={"file": ("x.png", b"not an image")}).status_code == 415
    forbidden = http.get("/find_similar", params={"image_url": "http://127.0.0.1:1/x.png"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "image_url_forbidden"
    assert http.get("/find_similar").status_code == 422
    assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize("max_distance", [0, 3, 8, 10, 13, 20, 64])
def test_hamming_index_radius_search_equals_brute_force(max_distance):
    from serve_app.hamming_index import HammingIndex

    rng = np.random.default_rng(max_distance)
    hashes = rng.integers(-2**63, 2**63 - 1, 20_000, dtype=np.int64)
    for i in range(0, 400, 2):  # planted near-duplicates at 0-16 bits
        flips = rng.choice(64, int(rng.integers(0, 17)), replace=False)
        hashes[i + 1] = hashes[i] ^ np.int64(sum(1 << int(b) for b in flips) - (1 << 64 if 63 in flips else 0))
    index = HammingIndex(hashes)
    queries = np.concatenate([hashes[:40], rng.integers(-2**63, 2**63 - 1, 5, dtype=np.int64)])
    for query, (positions, distances) in zip(queries, index.radius_search(queries, max_distance)):
        truth = np.array([bin((int(query) ^ int(h)) & (2**64 - 1)).count("1") for h in hashes])
        expected = np.flatnonzero(truth <= max_distance)
        assert sorted(positions.tolist()) == expected.tolist()
        assert distances.tolist() == truth[positions].tolist() and distances.tolist() == sorted(distances.tolist())


def test_lancedb_hamming_search_through_the_multi_index_matches_brute_force(tmp_path):
    rnd = random.Random(5)
    hashes = [rnd.getrandbits(64) for _ in range(2000)]
    hashes += [hashes[7] ^ 0b101, hashes[7] ^ (0b111111 << 30), hashes[99] ^ (1 << 63)]
    index = open_index(str(tmp_path), IndexInfo("m", 4), memory_rows=0)  # no snapshot: the multi-index path
    index.upsert(_hash_rows(hashes))
    for q in (hashes[7], hashes[99] ^ 0b11, rnd.getrandbits(64)):
        hits = index.hamming_search([_signed(q)], 50, max_distance=10)[0]
        expected = sorted((bin(q ^ h).count("1"), f"h{i}") for i, h in enumerate(hashes)
                          if bin(q ^ h).count("1") <= 10)
        assert [(h.distance, h.product_id) for h in hits] == expected
        assert all(h.metadata["phash"] == _signed(hashes[int(h.product_id[1:])]) for h in hits)
    index.delete(["h2000"])  # a new table version: the multi-index is rebuilt from it
    index._hash_index_checked_at = -1e9
    assert [h.product_id for h in index.hamming_search([_signed(hashes[7])], 50, 10)[0]] == ["h7", "h2001"]


def test_find_similar_by_product_id_over_http(http, ingested):
    ids, hashes = open_index(ingested[0]).hashes()
    product, query = ids[3], int(hashes[3])
    body = http.get("/find_similar", params={"product_id": product, "max_distance": "20", "top": "50"}).json()
    truth = sorted((bin((query ^ int(h)) & (2**64 - 1)).count("1"), pid) for pid, h in zip(ids, hashes)
                   if pid != product and bin((query ^ int(h)) & (2**64 - 1)).count("1") <= 20)
    assert [(r["hamming_distance"], r["product_id"]) for r in body["results"]] == truth[:50]
    assert body["product_id"] == product and int(body["query_phash"], 16) == query & (2**64 - 1)
    posted = http.post("/find_similar", data={"product_id": product, "max_distance": "20", "top": "50"}).json()
    assert posted["results"] == body["results"]
    missing = http.get("/find_similar", params={"product_id": "no-such-product"})
    assert missing.status_code == 404 and "no-such-product" in missing.json()["error"]["message"]
    both = http.get("/find_similar", params={"product_id": product, "image_url": "http://127.0.0.2/x.png"})
    assert both.status_code == 422 and "product_id" in both.json()["error"]["message"]
