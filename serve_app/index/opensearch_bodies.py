"""OpenSearch request bodies and score conversions, as pure functions (no client, no Ray import).

Every body here is checked in ``tests/test_opensearch_bodies.py`` against golden files written from the
OpenSearch 2.x k-NN documentation:

- mapping: "k-NN vector" field type, faiss ``hnsw`` method with ``m``/``ef_construction``, ``"index.knn": true``
  and ``knn.algo_param.ef_search`` (docs.opensearch.org, *Supported field types → k-NN vector*, *Methods and
  engines*);
- pHash: a ``knn_vector`` with ``data_type: binary``, ``space_type: hamming``, ``dimension`` 64 **bits**, values
  as 8 signed bytes (*Memory-optimized vectors → Binary vectors*);
- filtered k-NN: the filter goes **inside** the ``knn`` clause ("efficient filtering", *Filtering data → Efficient
  k-NN filtering*), so k results come back whenever ≥ k documents match;
- exact Hamming k-NN: ``script_score`` with the ``knn_score`` script and ``space_type: hamming`` (*Exact k-NN with
  scoring script*), exact like the LanceDB backend's flat scan;
- several queries in one round trip: ``_msearch`` (header line + body line per query).
"""

from typing import Any

import numpy as np

from serve_app.filters import Clause
from serve_app.index.base import METADATA_FIELDS
from serve_app.phash import pack_bits

VECTOR_FIELD = "vector"
PHASH_FIELD = "phash_bits"
PHASH_BITS = 64
SOURCE_FIELDS = list(METADATA_FIELDS) + ["phash"]


KNN_MODES = ("in_memory", "on_disk")
# compression_level with the faiss engine: 1x (none), 2x (fp16), 8x/16x/32x (binary quantisation, rescored on full
# vectors); 4x is Lucene's byte quantisation and needs the lucene engine (docs.opensearch.org, *Memory-optimized
# vectors → Compression levels*).
FAISS_COMPRESSION_LEVELS = ("1x", "2x", "8x", "16x", "32x")


def vector_storage(mode: str | None = None, compression_level: str | None = None) -> dict[str, str]:
    """The ``knn_vector`` field's ``mode`` and ``compression_level`` (only those given; OpenSearch ≥ 2.17).

    Raises:
        ValueError: an unknown mode, or a compression level the faiss engine does not have.
    """
    if mode is not None and mode not in KNN_MODES:
        raise ValueError(f"knn_mode must be one of {KNN_MODES}, got {mode!r}")
    if compression_level is not None and compression_level not in FAISS_COMPRESSION_LEVELS:
        raise ValueError(f"compression_level must be one of {FAISS_COMPRESSION_LEVELS} with the faiss engine, got "
                         f"{compression_level!r} (4x needs the lucene engine)")
    return {k: v for k, v in (("mode", mode), ("compression_level", compression_level)) if v is not None}


def index_body(dim: int, m: int = 16, ef_construction: int = 128, ef_search: int = 100,
               meta: dict[str, Any] | None = None, shards: int = 1, replicas: int = 1, mode: str | None = None,
               compression_level: str | None = None) -> dict[str, Any]:
    """Settings and mappings of one physical index version.

    Args:
        dim: embedding dimension (e.g. 512). m, ef_construction: faiss HNSW build parameters (OpenSearch
            defaults 16 and 100; we default ``ef_construction`` to 128 for better recall at 512-d).
        ef_search: HNSW candidate list at query time (index setting ``knn.algo_param.ef_search``).
        meta: stored as the mapping's ``_meta`` (model id, dimension, weights kind).
        mode, compression_level: see :func:`vector_storage` (``on_disk`` defaults to 32x compression with
            rescoring; memory per vector ≈ 1.1 × (d·bits/8 + 8m) bytes, docs *k-NN memory estimation*).

    Raises:
        ValueError: see :func:`vector_storage`.
    """
    storage = vector_storage(mode, compression_level)
    return {
        "settings": {"index": {"knn": True, "knn.algo_param.ef_search": ef_search,
                               "number_of_shards": shards, "number_of_replicas": replicas}},
        "mappings": {
            "_meta": meta or {},
            "dynamic": "strict",
            "properties": {
                "product_id": {"type": "keyword"},
                "title": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 256}}},
                "category": {"type": "keyword"},
                "brand": {"type": "keyword"},
                "price": {"type": "double"},
                "image_url": {"type": "keyword", "index": False},
                "attributes": {"type": "keyword", "index": False, "doc_values": False},
                "phash": {"type": "long"},
                VECTOR_FIELD: {
                    "type": "knn_vector", "dimension": dim, "space_type": "innerproduct", **storage,
                    "method": {"name": "hnsw", "engine": "faiss",
                               "parameters": {"m": m, "ef_construction": ef_construction}},
                },
                PHASH_FIELD: {
                    "type": "knn_vector", "dimension": PHASH_BITS, "data_type": "binary", "space_type": "hamming",
                    "method": {"name": "hnsw", "engine": "faiss"},
                },
            },
        },
    }


def filter_query(clauses: list[Clause]) -> dict[str, Any] | None:
    """Contract filter clauses → a ``bool`` filter: ``terms`` for any-of keyword values, ``range`` for numbers."""
    parts: list[dict[str, Any]] = []
    for c in clauses:
        if c.values:
            parts.append({"terms": {c.field: list(c.values)}})
        if c.ranges:
            parts.append({"range": {c.field: {op: bound for op, bound in c.ranges}}})
    return {"bool": {"filter": parts}} if parts else None


def knn_body(vector: np.ndarray, k: int, clauses: list[Clause] | None = None) -> dict[str, Any]:
    """One k-NN search with the filter inside the ``knn`` clause; ``size`` = ``k``."""
    knn: dict[str, Any] = {"vector": [float(x) for x in np.asarray(vector, dtype=np.float32)], "k": k}
    flt = filter_query(clauses or [])
    if flt is not None:
        knn["filter"] = flt
    return {"size": k, "_source": SOURCE_FIELDS, "query": {"knn": {VECTOR_FIELD: knn}}}


def msearch_body(index: str, vectors: np.ndarray, k: int, clauses: list[Clause] | None = None) -> list[dict]:
    """``_msearch`` lines for ``Q`` k-NN queries: ``[header, body] × Q``."""
    lines: list[dict] = []
    for vector in np.asarray(vectors, dtype=np.float32):
        lines += [{"index": index}, knn_body(vector, k, clauses)]
    return lines


def phash_bytes(phash: int) -> list[int]:
    """A signed 64-bit pHash → the 8 signed bytes (int8, big-endian bit order, MSB first) OpenSearch's binary
    vectors take: bit ``i`` of the vector is bit ``63 − i`` of the hash, matching :func:`serve_app.phash.pack_bits`."""
    return pack_bits(np.array([phash]))[0].view(np.int8).tolist()


def hamming_body(phash: int, k: int, clauses: list[Clause] | None = None,
                 max_distance: int | None = None) -> dict[str, Any]:
    """Exact Hamming k-NN over the binary pHash field (``knn_score`` script, score = 1 / (1 + d)).

    With ``max_distance`` the cluster drops hits farther than that many bits (``min_score``, see
    :func:`hamming_min_score`) instead of returning ``k`` hits the caller throws away."""
    body: dict[str, Any] = {
        "size": k,
        "_source": SOURCE_FIELDS,
        "query": {"script_score": {
            "query": filter_query(clauses or []) or {"match_all": {}},
            "script": {"source": "knn_score", "lang": "knn",
                       "params": {"field": PHASH_FIELD, "query_value": phash_bytes(phash), "space_type": "hamming"}},
        }},
    }
    if max_distance is not None:
        body["min_score"] = hamming_min_score(max_distance)
    return body


def hamming_msearch_body(index: str, hashes: list[int], k: int, clauses: list[Clause] | None = None,
                         max_distance: int | None = None) -> list[dict]:
    """``_msearch`` lines for ``Q`` exact Hamming queries: ``[header, body] × Q``."""
    lines: list[dict] = []
    for phash in hashes:
        lines += [{"index": index}, hamming_body(int(phash), k, clauses, max_distance)]
    return lines


def hamming_min_score(max_distance: int) -> float:
    """The ``min_score`` keeping exactly the hits with ``d ≤ max_distance`` bits under ``score = 1 / (1 + d)``
    (docs.opensearch.org, *Exact k-NN with scoring script → Spaces*, hamming). It sits half a bit beyond
    ``max_distance`` so a score rounded to float32 at ``d = max_distance`` is still kept."""
    if max_distance < 0:
        raise ValueError(f"max_distance must be ≥ 0 bits, got {max_distance}")
    return 1.0 / (1.0 + max_distance + 0.5)


def alias_switch_actions(alias: str, new_index: str, old_indices: list[str]) -> dict[str, Any]:
    """One ``_aliases`` request moving ``alias`` to ``new_index``: OpenSearch applies all actions atomically."""
    actions: list[dict[str, Any]] = [{"remove": {"index": old, "alias": alias}} for old in old_indices]
    actions.append({"add": {"index": new_index, "alias": alias}})
    return {"actions": actions}


def facets_body(keyword_fields: tuple[str, ...], numeric_fields: tuple[str, ...], size: int = 100) -> dict[str, Any]:
    """``terms`` aggregations (value counts) and ``stats`` (min/max/count) without hits."""
    aggs: dict[str, Any] = {f: {"terms": {"field": f, "size": size}} for f in keyword_fields}
    aggs |= {f"{f}_stats": {"stats": {"field": f}} for f in numeric_fields}
    return {"size": 0, "track_total_hits": True, "aggs": aggs}


def innerproduct_score_to_cosine(score: float) -> float:
    """Invert the faiss ``innerproduct`` score: ``d = −x·y``; score = 1/(1 + d) if d ≥ 0 else 1 − d
    (docs.opensearch.org, *k-NN vector → Spaces*). On L2-normalised vectors ``x·y`` is the cosine."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score
