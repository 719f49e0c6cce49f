"""k-NN index on OpenSearch (faiss HNSW, efficient filtering, binary Hamming vectors) via opensearch-py.

The index URI names an **alias**: ``https://host:9200/products``, ``opensearch://host:9200/products`` (HTTPS) or
``opensearch+http://host:9200/products`` (plain HTTP, for a local test cluster). Each ingestion writes a physical
index ``products-<model>-v<N>`` whose mapping ``_meta`` records the model id and dimension, then moves the
alias in one ``_aliases`` request (atomic in OpenSearch), so searches never see a half-built index. A version
belongs to the alias recorded in its ``_meta`` (never matched by name prefix: ``products-eu-…`` is not a
version of ``products``), and an ingestion holds the alias's lease document in ``visual-search-leases``
(:mod:`serve_app.index.lease_stores`) from creating its version to publishing it.

Credentials come from the environment only: ``VS_OPENSEARCH_USER`` / ``VS_OPENSEARCH_PASSWORD`` (HTTP basic
auth), ``VS_OPENSEARCH_CA_CERTS`` (CA bundle path) and ``VS_OPENSEARCH_VERIFY_CERTS`` (``true`` by default).
Request bodies are built in :mod:`serve_app.index.opensearch_bodies`; ``score`` is mapped back to cosine so it
equals the LanceDB backend's for the same data.
"""

import asyncio
import logging
import os
import time
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa

from serve_app.filters import Clause
from serve_app.index import opensearch_bodies as bodies
from serve_app.index.base import (FACET_FIELDS, RANGE_FIELDS, HashHit, Hit, IndexInfo, IndexOpenError,
                                  VectorIndex, check_query_vectors, check_same_dimension, product_metadata,
                                  next_version_name, row_schema, version_number, version_of, versions_to_drop)
from serve_app.phash import hamming_distance

log = logging.getLogger("visual_search.opensearch")
READ_CONSISTENCY_S = 10.0
HAMMING_MSEARCH_CHUNK = 100  # exact Hamming queries per ``_msearch`` (each is a scan of the filtered docs)
NEW_VERSION = "<new>"  # ``version=NEW_VERSION``: create the next physical index
SCHEMES = ("http://", "https://", "opensearch://", "opensearch+http://")


def parse_uri(uri: str) -> tuple[str, str]:
    """``(base URL, alias)`` of an OpenSearch index URI.

    Raises:
        ValueError: credentials in the URI, or not exactly one lower-case alias name in the path.
    """
    parsed = urlparse(uri)
    if parsed.username or parsed.password:
        raise ValueError("put OpenSearch credentials in VS_OPENSEARCH_USER / VS_OPENSEARCH_PASSWORD, not in the URI")
    scheme = {"opensearch": "https", "opensearch+http": "http"}.get(parsed.scheme, parsed.scheme)
    alias = parsed.path.strip("/")
    if not alias or "/" in alias or alias != alias.lower() or alias.startswith(("_", "-")):
        raise ValueError(f"OpenSearch index URI {uri!r} must end in one lower-case index/alias name, "
                         "e.g. https://host:9200/products")
    return f"{scheme}://{parsed.netloc}", alias


def client_options(base_url: str) -> dict[str, Any]:
    """Keyword arguments for ``OpenSearch``/``AsyncOpenSearch`` from ``VS_OPENSEARCH_*`` variables."""
    options: dict[str, Any] = {"hosts": [base_url], "timeout": 30, "max_retries": 3, "retry_on_timeout": True}
    user, password = os.environ.get("VS_OPENSEARCH_USER"), os.environ.get("VS_OPENSEARCH_PASSWORD")
    if user:
        options["http_auth"] = (user, password or "")
    if base_url.startswith("https://"):
        verify = os.environ.get("VS_OPENSEARCH_VERIFY_CERTS", "true").strip().lower() not in ("0", "false", "no")
        options |= {"use_ssl": True, "verify_certs": verify, "ssl_show_warn": verify}
        if os.environ.get("VS_OPENSEARCH_CA_CERTS"):
            options["ca_certs"] = os.environ["VS_OPENSEARCH_CA_CERTS"]
    return options


def _clear_error(e: Exception, base_url: str) -> Exception:
    """Turn opensearch-py's transport errors into messages that say what to fix."""
    from opensearchpy import exceptions as ose

    if isinstance(e, ose.AuthenticationException):
        return IndexOpenError(f"OpenSearch at {base_url} refused the credentials (HTTP 401): set "
                              "VS_OPENSEARCH_USER and VS_OPENSEARCH_PASSWORD to a user of that cluster")
    if isinstance(e, ose.AuthorizationException):
        return IndexOpenError(f"OpenSearch at {base_url} denied the request (HTTP 403): the user needs index "
                              f"read/write and alias permissions ({e.error})")
    if isinstance(e, ose.ConnectionError):
        return IndexOpenError(f"cannot reach OpenSearch at {base_url}: {e.error}")
    return e


class OpenSearchIndex(VectorIndex):
    """OpenSearch backend (same contract as :class:`serve_app.index.lancedb_backend.LanceDBIndex`).

    Args:
        uri: OpenSearch index URI (see module doc); its path is the alias.
        info: model id and dimension; creates and publishes a first version when the alias does not exist.
        version: a physical index to use instead of following the alias (ingestion writers).
        m, ef_construction: faiss HNSW build parameters for new versions (configs/ingest.yaml).
        ef: HNSW ``ef_search`` for new versions (index setting).
        bulk_chunk: documents per ``_bulk`` request. max_retries: retries of documents rejected with 429.
        mode, compression_level: the vector field's ``mode`` (``in_memory``/``on_disk``) and
            ``compression_level`` (``1x``–``32x``) for new versions (:func:`~serve_app.index.opensearch_bodies.vector_storage`).

    Raises:
        IndexOpenError: no alias and no ``info``; wrong dimension; refused credentials; unreachable cluster.
        ValueError: a malformed URI, an unknown mode or compression level.
    """

    def __init__(self, uri: str, info: IndexInfo | None = None, version: str | None = None, m: int = 16,
                 ef_construction: int = 128, ef: int = 100, bulk_chunk: int = 500, max_retries: int = 5,
                 initial_backoff_s: float = 0.5, mode: str | None = None, compression_level: str | None = None):
        from opensearchpy import OpenSearch

        self.uri = uri
        self.base_url, self.alias = parse_uri(uri)
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef
        self.storage = {"mode": mode, "compression_level": compression_level}
        bodies.vector_storage(**self.storage)  # refuse a bad value before anything is created
        self.bulk_chunk, self.max_retries, self.initial_backoff_s = bulk_chunk, max_retries, initial_backoff_s
        self.client = OpenSearch(**client_options(self.base_url))
        self._async_client = None
        self._failures: list[dict[str, Any]] = []
        self._follow_alias = version is None
        self._checked_at = time.monotonic()
        try:
            if version == NEW_VERSION:
                version = self._create(info)
            current = self._current_version()
            if version is None and current is None and info is not None:
                self.version, self.info = self._create(info), info
                self.publish()
                return
            self.version = version or current
            if self.version is None:
                raise IndexOpenError(f"no index at {uri}: run `python -m batch_jobs ingest --index {uri}` first")
            self.info = self._read_info(self.version)
        except Exception as e:
            raise _clear_error(e, self.base_url) from e
        check_same_dimension(uri, self.info, info)

    # --- versions and the alias -------------------------------------------------------------------------
    @classmethod
    def create_version(cls, uri: str, info: IndexInfo, **options) -> "OpenSearchIndex":
        """A new, empty, unpublished physical index for ``info``'s model; the alias is not touched."""
        return cls(uri, info=info, version=NEW_VERSION, **options)

    @classmethod
    def lease_store(cls, uri: str):
        """The lease document ``<alias>`` in the cluster's ``visual-search-leases`` index.

        Raises:
            ValueError: a malformed URI.
        """
        from serve_app.index.lease_stores import OpenSearchLeaseStore

        return OpenSearchLeaseStore(*parse_uri(uri))

    def _candidates(self) -> dict[str, dict]:
        """``{index: _meta}`` of every index whose name has this alias's version shape (``<alias>-*-v*``)."""
        found = self.client.indices.get(index=f"{self.alias}-*-v*", ignore_unavailable=True, allow_no_indices=True)
        return {name: (value.get("mappings") or {}).get("_meta") or {} for name, value in found.items()}

    def _versions(self, candidates: dict[str, dict] | None = None) -> list[str]:
        """This alias's versions, oldest first: indices whose ``_meta`` names this alias (or names none, for an
        index created by hand) and whose name is exactly ``version_name(alias, _meta.model_id, N)``. Another
        alias's versions (``products-eu-…`` when this is ``products``) are never listed, so never dropped."""
        candidates = self._candidates() if candidates is None else candidates
        own = [name for name, meta in candidates.items() if meta.get("alias", self.alias) == self.alias
               and "model_id" in meta and version_of(self.alias, name, str(meta["model_id"])) is not None]
        return sorted(own, key=version_number)

    def _current_version(self) -> str | None:
        answer = self.client.indices.get_alias(name=self.alias, ignore=[404])  # 404: no such alias yet
        held = [name for name, value in answer.items() if isinstance(value, dict) and "aliases" in value]
        if held:
            return held[0]
        return self.alias if self.client.indices.exists(index=self.alias) else None  # a plain index, no alias

    def _create(self, info: IndexInfo) -> str:
        candidates = self._candidates()  # the numbering also skips names another alias happens to use
        taken = [name for name in candidates if version_of(self.alias, name, info.model_id) is not None]
        name = next_version_name(self.alias, info.model_id, self._versions(candidates) + taken)
        meta = info.record() | {"alias": self.alias}
        self.client.indices.create(index=name, body=bodies.index_body(
            info.dim, self.m, self.ef_construction, self.ef_search, meta=meta, **self.storage))
        return name

    def _read_info(self, index: str) -> IndexInfo:
        mapping = self.client.indices.get_mapping(index=index)
        meta = next(iter(mapping.values()))["mappings"].get("_meta") or {}
        if "dim" not in meta:
            raise IndexOpenError(f"OpenSearch index {index} was not created by visual-search (no _meta.dim)")
        return IndexInfo.from_record(meta)

    def _refresh_alias(self) -> None:
        """Follow a newly published version (its model/dimension) at most every READ_CONSISTENCY_S."""
        if self._follow_alias and time.monotonic() - self._checked_at > READ_CONSISTENCY_S:
            self._checked_at = time.monotonic()
            current = self._current_version()
            if current and current != self.version:
                self.version, self.info = current, self._read_info(current)

    def publish(self, keep: int = 2) -> list[str]:
        previous = self._current_version()
        if previous == self.alias:
            raise IndexOpenError(f"{self.uri}: a plain index named {self.alias!r} exists where the alias should be; "
                                 "reindex it into a version or pick another alias name")
        old = [previous] if previous else []
        self.client.indices.update_aliases(body=bodies.alias_switch_actions(self.alias, self.version, old))
        dropped = versions_to_drop(self._versions(), self.version, previous, keep)
        for name in dropped:
            self.client.indices.delete(index=name)
        return dropped

    def drop(self) -> None:
        if self._current_version() == self.version:
            raise IndexOpenError(f"version {self.version!r} is the current one of {self.uri}; publish another first")
        self.client.indices.delete(index=self.version, ignore_unavailable=True)

    # --- writes -----------------------------------------------------------------------------------------
    def _actions(self, rows: pa.Table):
        for row in rows.to_pylist():
            vector = row.pop("vector")
            yield {"_op_type": "index", "_index": self.version, "_id": row["product_id"],
                   "_source": row | {"vector": [float(x) for x in vector],
                                     bodies.PHASH_FIELD: bodies.phash_bytes(row["phash"])}}

    def upsert(self, rows: pa.Table) -> int:
        """Bulk-index ``rows`` (by ``product_id``) with opensearch-py's ``streaming_bulk``: documents rejected
        with 429 are retried with exponential back-off; other per-item errors are collected for
        :meth:`drain_failures`, not raised. Visible to search after :meth:`finish_bulk_load` (refresh).

        Raises:
            IndexOpenError: the cluster refused the credentials or permissions (every item 401/403).
        """
        from opensearchpy import helpers

        if rows.num_rows == 0:
            return 0
        rows = rows.select(row_schema(self.info.dim).names).cast(row_schema(self.info.dim))
        written = 0
        for ok, item in helpers.streaming_bulk(
                self.client, self._actions(rows), chunk_size=self.bulk_chunk, max_retries=self.max_retries,
                initial_backoff=self.initial_backoff_s, raise_on_error=False, raise_on_exception=False):
            if ok:
                written += 1
                continue
            detail = next(iter(item.values()))
            status, error = detail.get("status"), detail.get("error")
            if status in (401, 403):
                raise _clear_error(detail.get("exception") or RuntimeError(error), self.base_url)
            reason = f"{error.get('type')}: {error.get('reason')}" if isinstance(error, dict) else str(error)
            self._failures.append({"product_id": detail.get("_id"), "reason": f"OpenSearch {status}: {reason}"})
        return written

    def drain_failures(self) -> list[dict[str, Any]]:
        failures, self._failures = self._failures, []
        return failures

    def finish_bulk_load(self) -> None:
        """Refresh so the bulk-loaded documents become searchable."""
        self.client.indices.refresh(index=self.version)

    def delete(self, product_ids: list[str]) -> int:
        if not product_ids:
            return 0
        result = self.client.delete_by_query(index=self.version, refresh=True,
                                             body={"query": {"ids": {"values": list(product_ids)}}})
        return int(result.get("deleted", 0))

    # --- reads ------------------------------------------------------------------------------------------
    def count(self) -> int:
        self._refresh_alias()
        return int(self.client.count(index=self._target())["count"])

    def _target(self) -> str:
        return self.alias if self._follow_alias else self.version

    def search(self, vectors: np.ndarray, k: int, filters: list[Clause] | None = None) -> list[list[Hit]]:
        """k-NN with the filter inside the ``knn`` clause; several queries go in one ``_msearch``."""
        self._refresh_alias()
        vectors = check_query_vectors(vectors, self.info)
        if len(vectors) == 0:
            return []
        if len(vectors) == 1:
            return [_hits(self.client.search(index=self._target(), body=bodies.knn_body(vectors[0], k, filters)))]
        answer = self.client.msearch(body=bodies.msearch_body(self._target(), vectors, k, filters))
        return [_hits(_ok(r)) for r in answer["responses"]]

    async def asearch(self, vectors: np.ndarray, k: int, filters: list[Clause] | None = None) -> list[list[Hit]]:
        """:meth:`search` through ``AsyncOpenSearch`` (created on first use, in the caller's event loop); follows a
        newly published version as :meth:`search` does (the alias look-up, when due, in a worker thread)."""
        from opensearchpy import AsyncOpenSearch

        if self._follow_alias and time.monotonic() - self._checked_at > READ_CONSISTENCY_S:
            await asyncio.to_thread(self._refresh_alias)
        vectors = check_query_vectors(vectors, self.info)
        if len(vectors) == 0:
            return []
        if self._async_client is None:
            self._async_client = AsyncOpenSearch(**client_options(self.base_url))
        answer = await self._async_client.msearch(body=bodies.msearch_body(self._target(), vectors, k, filters))
        return [_hits(_ok(r)) for r in answer["responses"]]

    def hamming_search(self, hashes: list[int], k: int, max_distance: int = 64,
                       filters: list[Clause] | None = None) -> list[list[HashHit]]:
        """Exact Hamming k-NN (``knn_score`` script on the binary field), ``HAMMING_MSEARCH_CHUNK`` hashes per
        ``_msearch`` round trip (an ingestion block checks all its rows at once) and hits beyond ``max_distance``
        dropped by the cluster (``min_score``). Distances are recomputed from the stored int64 pHash, so they
        are exact integers whatever the score's float rounding."""
        self._refresh_alias()
        hashes = [int(h) for h in hashes]
        responses: list[dict] = []
        for start in range(0, len(hashes), HAMMING_MSEARCH_CHUNK):
            chunk = hashes[start:start + HAMMING_MSEARCH_CHUNK]
            body = bodies.hamming_msearch_body(self._target(), chunk, k, filters, max_distance)
            responses += [_ok(r) for r in self.client.msearch(body=body)["responses"]]
        results = []
        for query_hash, answer in zip(hashes, responses):
            found = []
            for doc in answer["hits"]["hits"]:
                source = doc["_source"]
                distance = hamming_distance(int(query_hash), int(source["phash"]))
                if distance <= max_distance:
                    found.append(HashHit(source["product_id"], distance, product_metadata(source) | {"phash": source["phash"]}))
            results.append(sorted(found, key=lambda h: (h.distance, h.product_id)))
        return results

    def _mget(self, product_ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        if not product_ids:
            return []
        answer = self.client.mget(index=self._target(), body={"ids": list(product_ids)}, _source_includes=fields)
        return [d["_source"] for d in answer["docs"] if d.get("found")]

    def vectors(self, product_ids: list[str]) -> dict[str, np.ndarray]:
        return {d["product_id"]: np.asarray(d["vector"], np.float32)
                for d in self._mget(product_ids, ["product_id", "vector"])}

    def get(self, product_ids: list[str]) -> list[dict[str, Any]]:
        return [product_metadata(d) | {"phash": d["phash"]} for d in self._mget(product_ids, bodies.SOURCE_FIELDS)]

    def hashes(self) -> tuple[list[str], np.ndarray]:
        from opensearchpy import helpers

        ids, values = [], []
        for doc in helpers.scan(self.client, index=self._target(), _source_includes=["product_id", "phash"],
                                query={"query": {"match_all": {}}}):
            ids.append(doc["_source"]["product_id"])
            values.append(doc["_source"]["phash"])
        return ids, np.asarray(values, dtype=np.int64)

    def facets(self) -> dict[str, Any]:
        answer = self.client.search(index=self._target(), body=bodies.facets_body(FACET_FIELDS, RANGE_FIELDS))
        aggs = answer["aggregations"]
        facets = {f: [{"value": b["key"], "count": int(b["doc_count"])} for b in aggs[f]["buckets"]
                      if str(b["key"]).strip()]
                  for f in FACET_FIELDS}
        ranges = {f: {"min": aggs[f"{f}_stats"]["min"], "max": aggs[f"{f}_stats"]["max"],
                      "count": int(aggs[f"{f}_stats"]["count"])}
                  for f in RANGE_FIELDS if aggs[f"{f}_stats"]["count"]}
        return {"products": int(answer["hits"]["total"]["value"]), "facets": facets, "ranges": ranges}


def _ok(response: dict[str, Any]) -> dict[str, Any]:
    """One ``_msearch`` response, or its error raised."""
    if "error" in response:
        from opensearchpy import TransportError

        error = response["error"]
        raise TransportError(response.get("status", 500), error.get("type", "error") if isinstance(error, dict)
                             else str(error), error)
    return response


def _hits(answer: dict[str, Any]) -> list[Hit]:
    return [Hit(d["_source"]["product_id"], bodies.innerproduct_score_to_cosine(float(d["_score"])),
                product_metadata(d["_source"])) for d in answer["hits"]["hits"]]

