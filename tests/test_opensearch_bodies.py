"""OpenSearch request bodies against golden files written from the OpenSearch 2.x k-NN docs, score
conversions against the docs' formulas, and URI / credential handling (no server needed)."""

import json
from pathlib import Path

import numpy as np
import pytest

from serve_app.filters import parse_filters
from serve_app.index import is_opensearch
from serve_app.index import opensearch_bodies as bodies
from serve_app.index.base import version_name
from serve_app.index.opensearch_backend import client_options, parse_uri
from serve_app.phash import pack_bits

GOLDEN = Path(__file__).parent / "golden" / "opensearch"


def golden(name: str) -> dict:
    body = json.loads((GOLDEN / name).read_text())
    body.pop("_source_doc")
    return body


def test_mapping_matches_the_docs_shape():
    meta = {"model_id": "openai/clip-vit-base-patch32", "dim": 512, "weights": "pretrained", "alias": "products"}
    body = bodies.index_body(512, m=16, ef_construction=128, ef_search=100, meta=meta)
    assert body == golden("mapping_512.json")
    # The rules the docs state, checked on their own too.
    assert body["settings"]["index"]["knn"] is True
    phash = body["mappings"]["properties"]["phash_bits"]
    assert phash["data_type"] == "binary" and phash["space_type"] == "hamming"
    assert phash["dimension"] % 8 == 0 and phash["dimension"] == 64 and phash["method"]["engine"] == "faiss"
    vector = body["mappings"]["properties"]["vector"]
    assert vector["space_type"] == "innerproduct" and vector["method"]["engine"] == "faiss"


def test_filter_goes_inside_the_knn_clause():
    flt = parse_filters({"category": ["kitchen", "tools"], "price": {"gte": 5, "lte": 50}})
    assert bodies.knn_body(np.array([0.5, 0.25, 0, 0]), 5, flt) == golden("knn_with_filter.json")
    unfiltered = bodies.knn_body(np.array([0.5, 0.25, 0, 0]), 5)
    assert "filter" not in unfiltered["query"]["knn"]["vector"] and "post_filter" not in unfiltered


def test_exact_hamming_query_and_binary_bytes():
    body = bodies.hamming_body(0x0102030405060708, 10, parse_filters({"category": "kitchen"}), max_distance=12)
    assert body == golden("hamming_exact.json")
    assert "min_score" not in bodies.hamming_body(0, 10)
    lines = bodies.hamming_msearch_body("products", [1, -1], 3, max_distance=5)
    assert [line for line in lines[::2]] == [{"index": "products"}] * 2
    assert lines[1::2] == [bodies.hamming_body(1, 3, None, 5), bodies.hamming_body(-1, 3, None, 5)]
    for h in (0, -1, -(2**63), 2**63 - 1, 0x7F80FF0012345678, -1234567890123):
        as_bytes = bodies.phash_bytes(h)
        assert all(-128 <= b <= 127 for b in as_bytes) and len(as_bytes) == 8  # int8, 64 bits
        assert np.array(as_bytes, np.int8).view(np.uint8).tolist() == pack_bits(np.array([h]))[0].tolist()


def test_msearch_and_alias_switch_bodies():
    lines = bodies.msearch_body("products", np.eye(4, dtype=np.float32)[:2], 3)
    assert lines == golden("msearch_two_queries.json")["lines"]
    switch = bodies.alias_switch_actions("products", "products-clip-vit-base-patch32-v2",
                                         ["products-clip-vit-base-patch32-v1"])
    assert switch == golden("alias_switch.json")
    assert version_name("products", "openai/clip-vit-base-patch32", 2) == "products-clip-vit-base-patch32-v2"
    assert version_name("products", "/models/My_CLIP/", 7) == "products-my-clip-v7"


@pytest.mark.parametrize("cosine", [-1.0, -0.5, -1e-3, 0.0, 0.2, 0.999, 1.0])
def test_innerproduct_score_maps_back_to_cosine(cosine):
    d = -cosine  # faiss innerproduct distance (docs: d = -x.y)
    score = 1 / (1 + d) if d >= 0 else -d + 1  # docs' score formula
    assert bodies.innerproduct_score_to_cosine(score) == pytest.approx(cosine, abs=1e-9)


@pytest.mark.parametrize("max_distance", [0, 1, 7, 12, 32, 63])
def test_hamming_min_score_keeps_exactly_the_hits_within_max_distance(max_distance):
    min_score = bodies.hamming_min_score(max_distance)
    for d in range(65):
        score = float(np.float32(1 / (1 + d)))  # the docs' hamming score, as the cluster's float32 carries it
        assert (score >= min_score) == (d <= max_distance), d


def test_uri_forms_and_credentials_from_environment(monkeypatch):
    assert parse_uri("https://search.example:9200/products") == ("https://search.example:9200", "products")
    assert parse_uri("opensearch://search.example:9200/products") == ("https://search.example:9200", "products")
    assert parse_uri("opensearch+http://127.0.0.1:9200/products") == ("http://127.0.0.1:9200", "products")
    assert is_opensearch("https://h:9200/p") and is_opensearch("opensearch://h/p") and not is_opensearch("./data/ix")
    for bad in ("https://h:9200/", "https://h:9200/a/b", "https://h:9200/Products"):
        with pytest.raises(ValueError, match="index/alias"):
            parse_uri(bad)
    with pytest.raises(ValueError, match="VS_OPENSEARCH_USER"):
        parse_uri("https://admin:secret@h:9200/products")

    for var in ("VS_OPENSEARCH_USER", "VS_OPENSEARCH_PASSWORD", "VS_OPENSEARCH_VERIFY_CERTS", "VS_OPENSEARCH_CA_CERTS"):
        monkeypatch.delenv(var, raising=False)
    options = client_options("https://h:9200")
    assert options["verify_certs"] is True and "http_auth" not in options  # TLS verification on by default
    monkeypatch.setenv("VS_OPENSEARCH_USER", "reader")
    monkeypatch.setenv("VS_OPENSEARCH_PASSWORD", "pw")
    monkeypatch.setenv("VS_OPENSEARCH_CA_CERTS", "/etc/ssl/certs/ca.pem")
    options = client_options("https://h:9200")
    assert options["http_auth"] == ("reader", "pw") and options["ca_certs"] == "/etc/ssl/certs/ca.pem"
    monkeypatch.setenv("VS_OPENSEARCH_VERIFY_CERTS", "false")
    assert client_options("https://h:9200")["verify_certs"] is False


def test_on_disk_mode_and_compression_level_go_on_the_vector_field():
    meta = {"model_id": "openai/clip-vit-base-patch32", "dim": 512, "weights": "pretrained", "alias": "products"}
    body = bodies.index_body(512, m=16, ef_construction=128, ef_search=100, meta=meta, mode="on_disk",
                             compression_level="16x")
    assert body == golden("mapping_512_on_disk_16x.json")
    assert "mode" not in body["mappings"]["properties"]["phash_bits"]  # binary pHash vectors stay as they are
    with pytest.raises(ValueError, match="lucene"):
        bodies.index_body(512, compression_level="4x")
    with pytest.raises(ValueError, match="knn_mode"):
        bodies.index_body(512, mode="fast")


def test_an_option_of_the_other_backend_is_refused_by_name(tmp_path):
    from batch_jobs.pipeline import IngestOptions
    from serve_app.config import AppArgs
    from serve_app.index import open_index

    with pytest.raises(ValueError, match="ann_index_type: LanceDB-only"):
        IngestOptions(model="m", ann_index_type="IVF_PQ").index_options("http://127.0.0.1:9200/products")
    with pytest.raises(ValueError, match="compression_level: OpenSearch-only"):
        IngestOptions(model="m", compression_level="32x").index_options(str(tmp_path))
    assert IngestOptions(model="m").index_options("http://127.0.0.1:9200/products")["compression_level"] is None
    with pytest.raises(ValueError, match="refine_factor: not option"):
        open_index("http://127.0.0.1:9200/products", refine_factor=3)
    with pytest.raises(ValueError, match="ann_refine_factor: LanceDB-only"):
        AppArgs.from_args({"index": "http://127.0.0.1:9200/products", "ann_refine_factor": 3})
    assert AppArgs.from_args({"index": "http://127.0.0.1:9200/products"}).index_options() == {}
