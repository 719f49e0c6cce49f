"""Batch near-duplicate report: ``python -m batch_jobs dedup-report --index URI --out FILE``.

Groups the whole catalog into near-duplicate clusters: the connected components of the graph whose edges
join products with pHash Hamming distance ≤ ``max_distance`` bits. Pairs are found exactly by multi-index hashing
(:mod:`serve_app.hamming_index`), and components with a union-find. Output is JSON (clusters with members and the pairs that join them) or, for a ``.csv`` path,
one row per clustered product.
"""

import csv
import io
import json
from typing import Any

import numpy as np

from serve_app import storage
from serve_app.index import open_index
from serve_app.near_duplicates import DEFAULT_MAX_DISTANCE
from serve_app.hamming_index import HammingIndex
from serve_app.phash import match_percent

def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All ``(i, j, d)`` with ``i < j`` and Hamming distance ``d ≤ max_distance`` between int64 hashes, found
    exactly by multi-index hashing (:meth:`serve_app.hamming_index.HammingIndex.pairs`: O(N · candidates),
    not O(N²))."""
    return [tuple(p) for p in HammingIndex(np.asarray(hashes, dtype=np.int64)).pairs(max_distance).tolist()]


def clusters_from_pairs(n: int, pairs: list[tuple[int, int, int]]) -> list[list[int]]:
    """Connected components (size ≥ 2) of ``n`` nodes joined by ``pairs``, largest first."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def dedup_report(index_uri: str, max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, Any]:
    """Cluster the catalog at ``index_uri``; returns ``{"max_distance", "products", "clusters": [...]}``."""
    index = open_index(index_uri)
    ids, hashes = index.hashes()
    pairs = near_duplicate_pairs(hashes, max_distance)
    groups = clusters_from_pairs(len(ids), pairs)
    meta = {m["product_id"]: m for m in index.get([ids[i] for g in groups for i in g])}
    cluster_of = {i: c for c, g in enumerate(groups) for i in g}
    edges: dict[int, list[dict]] = {}
    for i, j, d in pairs:
        edges.setdefault(cluster_of[i], []).append({"a": ids[i], "b": ids[j], "hamming_distance": d,
                                                    "match_percent": round(match_percent(d), 2)})
    clusters = [{"cluster_id": c, "size": len(g),
                 "members": [{"product_id": ids[i], "title": meta.get(ids[i], {}).get("title"),
                              "image_url": meta.get(ids[i], {}).get("image_url")} for i in g],
                 "pairs": sorted(edges.get(c, []), key=lambda e: e["hamming_distance"])}
                for c, g in enumerate(groups)]
    return {"index": index_uri, "max_distance": max_distance, "products": len(ids),
            "products_in_clusters": sum(len(g) for g in groups), "clusters": clusters}


def write_report(report: dict[str, Any], out: str) -> None:
    """JSON, or CSV (``cluster_id, product_id, title, closest_product_id, hamming_distance``) for ``.csv``."""
    if not out.lower().endswith(".csv"):
        storage.write_bytes(out, json.dumps(report, indent=2).encode())
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["cluster_id", "product_id", "title", "closest_product_id", "hamming_distance"])
    for cluster in report["clusters"]:
        for member in cluster["members"]:
            pid = member["product_id"]
            near = [(p["hamming_distance"], p["b"] if p["a"] == pid else p["a"]) for p in cluster["pairs"]
                    if pid in (p["a"], p["b"])]
            d, other = min(near)
            writer.writerow([cluster["cluster_id"], pid, member["title"], other, d])
    storage.write_bytes(out, buffer.getvalue().encode())
