"""Embedded k-NN index on LanceDB in a local folder or on S3 (no Ray import).

One table per ingestion (a *version*, ``products-<model>-v<N>``, :func:`serve_app.index.base.row_schema`);
``visual_search.json`` beside them is the alias: which version is current, and each version's model id and
embedding dimension. Publishing a version rewrites that small file atomically (fsync'd temp file and rename
locally, one PUT on S3), so readers switch from one complete table to the next; serving handles re-read it
every ``READ_CONSISTENCY_S``. Writers take turns: an ingestion holds the lease ``visual_search.lock`` beside
the alias file (:mod:`serve_app.index.lease`) from creating its version to publishing it. Search uses LanceDB's ``cosine`` distance ``d = 1 − cos``, so
``score = 1 − d`` (LanceDB docs, "Vector search → distance metrics"). Below ``ann_min_rows`` the table has no
vector index and LanceDB scans it exactly (flat search); after a bulk load that reaches the threshold an
ANN index (``ann_index_type``, default ``IVF_HNSW_SQ``) is built and queried with ``nprobes``/``ef``/
``refine_factor`` (re-ranking the candidates with full-precision vectors). Filters are SQL predicates with
``prefilter=True``, so they are applied before the k-NN search. With an ANN index, a filter matching few rows
(``exact_filter_rows``) is answered by an exact search over them (found through the scalar indexes), a filter
matching a share ``s`` of the rows probes ``nprobes / s`` partitions, and a filtered ANN query that still finds
fewer than k rows is answered again exactly, so k results come back whenever ≥ k rows match. Rows upserted after the ANN build are searched
exactly beside it (LanceDB searches unindexed rows by default) until :meth:`LanceDBIndex.finish_bulk_load`
folds them in with ``optimize``; deleted rows are never returned. Hamming search goes through a
:class:`~serve_app.hamming_index.HammingIndex` (multi-index hashing) of the table version's pHashes.
"""

import json
import math
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app import storage
from serve_app.filters import Clause, sql_string, to_sql
from serve_app.hamming_index import HammingIndex
from serve_app.index.base import (FACET_FIELDS, METADATA_FIELDS, RANGE_FIELDS, HashHit, Hit, IndexInfo,
                                  IndexOpenError, VectorIndex, check_query_vectors, check_same_dimension,
                                  next_version_name, product_metadata, row_schema, stored_schema, version_of,
                                  versions_to_drop)
from serve_app.index.memory import COLUMNS as MEMORY_COLUMNS
from serve_app.index.memory import DEFAULT_MEMORY_ROWS, MemorySnapshot
from serve_app.phash import pack_bits

TABLE = "products"  # the alias; physical tables are version_name(TABLE, model, N)
READ_CONSISTENCY_S = 10.0
MEMORY_ROWS = DEFAULT_MEMORY_ROWS
INFO_FILE = "visual_search.json"
LEASE_FILE = "visual_search.lock"
# LanceDB's vector index types (LanceDB docs, "Vector indexes"): IVF partitions, then HNSW graphs per partition
# and/or scalar (SQ, 8-bit) or product (PQ) quantisation of the vectors; refine_factor re-ranks on full vectors.
ANN_INDEX_TYPES = ("IVF_HNSW_SQ", "IVF_HNSW_PQ", "IVF_PQ", "IVF_FLAT")
MAX_NPROBES = 100_000  # above any partition count: LanceDB probes all partitions then


class LanceDBIndex(VectorIndex):
    """LanceDB backend.

    Args:
        uri: folder path, ``file://`` or ``s3://`` URI of the LanceDB database (the alias).
        info: model id and dimension. Opening an empty location with ``info`` creates and publishes a first
            version (incremental ingestion); an existing index's dimension is checked against it.
        version: open this physical version instead of following the alias (ingestion writers).
        ann_min_rows: build an ANN index in :meth:`finish_bulk_load` from this many rows (default 50,000).
        memory_rows: a table without an ANN index and at most this many rows is searched from an in-memory
            snapshot (:mod:`serve_app.index.memory`: exact, the same answers, without LanceDB's per-query cost);
            0 always queries LanceDB; ``None``: :data:`MEMORY_ROWS` (50,000).
        nprobes: IVF partitions probed per query (LanceDB default 20).
        ef: HNSW candidate list size per query.
        refine_factor: re-rank ``k × refine_factor`` candidates on full vectors.
        ann_index_type: one of :data:`ANN_INDEX_TYPES`, built by :meth:`finish_bulk_load`.
        ann_partitions: IVF partitions (``None``: √N, the usual rule of thumb of LanceDB's "ANN indexes" guide).
        ann_sub_vectors: PQ sub-vectors (``*_PQ`` types; ``None``: D / 16, 32 for 512-d — 32 bytes a vector).
        exact_filter_rows: a filter matching at most this many rows is answered by an exact search over them;
            a filter matching a share ``s`` of a larger table probes ``nprobes / s`` IVF partitions (its nearest
            rows are spread over more partitions: at 2 % and 20 probes recall@10 fell to 0.3 at 100k in
            ``benchmarks/scale_ladder.py``; probing all partitions gave 1.0).

    Raises:
        IndexOpenError: no index at ``uri`` and no ``info``; an unknown ``version``; or ``info.dim`` differs
            from the current version's.
        ValueError: an unknown ``ann_index_type``.
    """

    def __init__(self, uri: str, info: IndexInfo | None = None, version: str | None = None,
                 ann_min_rows: int = 50_000, nprobes: int = 20, ef: int = 100, refine_factor: int = 5,
                 memory_rows: int | None = None, ann_index_type: str = "IVF_HNSW_SQ",
                 ann_partitions: int | None = None, ann_sub_vectors: int | None = None,
                 exact_filter_rows: int = 1000):
        import lancedb

        if ann_index_type not in ANN_INDEX_TYPES:
            raise ValueError(f"ann_index_type must be one of {ANN_INDEX_TYPES}, got {ann_index_type!r}")
        self.uri = uri
        self.ann_min_rows = ann_min_rows
        self.ann_index_type, self.ann_partitions, self.ann_sub_vectors = ann_index_type, ann_partitions, ann_sub_vectors
        self.exact_filter_rows = exact_filter_rows
        self._matching: dict[tuple[int, str], int] = {}
        self._hash_index: tuple[int, pa.Array, HammingIndex] | None = None
        self._hash_index_checked_at = -1e9
        self.nprobes, self.ef, self.refine_factor = nprobes, ef, refine_factor
        self.memory_rows = MEMORY_ROWS if memory_rows is None else memory_rows
        self._snapshot: MemorySnapshot | None = None
        self._snapshot_checked_at = -1e9
        self._follow_alias = version is None
        # Re-check the table version at most every READ_CONSISTENCY_S, so a long-running Retriever sees
        # re-ingestions (LanceDB's default never re-checks).
        self._db = lancedb.connect(uri, read_consistency_interval=timedelta(seconds=READ_CONSISTENCY_S),
                                   storage_options=storage_options(uri))
        self._ann_checked_at, self._ann = -1e9, False
        state = self._read_state()
        if version is None and state["current"] is None and info is not None:
            version = _new_version(self._db, uri, state, info)
            self._open(version, info)
            self.publish()
            return
        version = version or state["current"]
        if version is None:
            raise IndexOpenError(f"no index at {uri}: run `python -m batch_jobs ingest --index {uri}` first")
        if version not in state["versions"]:
            raise IndexOpenError(f"index {uri} has no version {version!r}; it has {sorted(state['versions'])}")
        stored = IndexInfo.from_record(state["versions"][version])
        check_same_dimension(uri, stored, info)
        self._open(version, stored)

    @classmethod
    def create_version(cls, uri: str, info: IndexInfo, **options) -> "LanceDBIndex":
        """A new, empty, unpublished version (table) for ``info``'s model; the alias is not touched."""
        import lancedb

        db = lancedb.connect(uri, storage_options=storage_options(uri))
        return cls(uri, version=_new_version(db, uri, _read_state(uri), info), **options)

    @classmethod
    def lease_store(cls, uri: str):
        """The lock ``visual_search.lock`` beside the alias file: a local file, or an S3 object."""
        from serve_app.index.lease_stores import FileLeaseStore, S3LeaseStore

        lock = uri.rstrip("/") + "/" + LEASE_FILE
        return S3LeaseStore(lock, uri) if uri.startswith("s3://") else FileLeaseStore(storage.local_path(lock), uri)

    def _open(self, version: str, info: IndexInfo) -> None:
        self.version, self.info = version, info
        self._tbl = self._db.open_table(version)
        self._alias_checked_at = time.monotonic()
        self._ann_checked_at = -1e9
        self._snapshot = None

    @property
    def _table(self):
        """The open table; a handle that follows the alias re-reads it every READ_CONSISTENCY_S and switches
        to a newly published version."""
        if self._follow_alias and time.monotonic() - self._alias_checked_at > READ_CONSISTENCY_S:
            self._alias_checked_at = time.monotonic()
            state = self._read_state()
            if state["current"] and state["current"] != self.version:
                self._open(state["current"], IndexInfo.from_record(state["versions"][state["current"]]))
        return self._tbl

    def _read_state(self) -> dict:
        return _read_state(self.uri)

    def _write_state(self, state: dict) -> None:
        _write_state(self.uri, state)

    def publish(self, keep: int = 2) -> list[str]:
        state = self._read_state()
        previous, state["current"] = state["current"], self.version
        dropped = versions_to_drop(own_versions(state), self.version, previous, keep)
        for name in dropped:
            del state["versions"][name]
        state["published_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write_state(state)  # the switch: one atomic write
        for name in dropped:
            self._db.drop_table(name)
        return dropped

    def drop(self) -> None:
        state = self._read_state()
        if state["current"] == self.version:
            raise IndexOpenError(f"version {self.version!r} is the current one of {self.uri}; publish another first")
        state["versions"].pop(self.version, None)
        self._write_state(state)
        self._db.drop_table(self.version)

    def versions(self) -> dict[str, Any]:
        """The alias state: ``current`` version name and every version's model id and dimension."""
        return self._read_state()

    def _stored_rows(self, rows: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        rows = rows.select(row_schema(self.info.dim).names).cast(row_schema(self.info.dim))
        phash = rows.column("phash").combine_chunks()
        bits = pack_bits(pc.fill_null(phash, 0).to_numpy())  # a product without a pHash: null bits
        missing = pc.is_null(phash) if phash.null_count else None
        return rows.append_column(stored_schema(self.info.dim).field("phash_bits"), pa.FixedSizeListArray.from_arrays(
            pa.array(bits.ravel(), pa.uint8()), 8, mask=missing))

    def upsert(self, rows: pa.Table) -> int:
        if rows.num_rows == 0:
            return 0
        (self._table.merge_insert("product_id").when_matched_update_all().when_not_matched_insert_all()
         .execute(self._stored_rows(rows)))
        self._snapshot = None
        return rows.num_rows

    def append(self, rows: pa.Table) -> int:
        """One Lance append commit: new fragments added to the table, which Lance's optimistic concurrency
        commits beside other writers' appends without conflict (it retries on a newer table version)."""
        if rows.num_rows == 0:
            return 0
        self._table.add(self._stored_rows(rows))
        self._snapshot = None
        return rows.num_rows

    def product_ids(self) -> list[str]:
        return self._scan(["product_id"]).column("product_id").to_pylist()

    def count(self) -> int:
        return self._table.count_rows()

    def _memory(self) -> MemorySnapshot | None:
        """The in-memory snapshot of the current table version, when it may be used (see ``memory_rows``);
        the version is re-checked at most every READ_CONSISTENCY_S, like the table itself."""
        if not self.memory_rows or self.has_ann_index():
            return None
        table = self._table
        if self._snapshot is not None and time.monotonic() - self._snapshot_checked_at <= READ_CONSISTENCY_S:
            return self._snapshot
        self._snapshot_checked_at = time.monotonic()
        version = table.version
        if self._snapshot is None or self._snapshot.version != version:
            rows = table.count_rows()
            self._snapshot = None if rows > self.memory_rows else MemorySnapshot.from_arrow(
                table.search().select(MEMORY_COLUMNS).limit(max(1, rows)).to_arrow(), version, self.info.dim)
        return self._snapshot

    def has_ann_index(self) -> bool:
        """Whether the ``vector`` column has an ANN index (re-checked at most every READ_CONSISTENCY_S)."""
        if time.monotonic() - self._ann_checked_at > READ_CONSISTENCY_S:
            self._ann = any(ix.columns == ["vector"] for ix in self._table.list_indices())
            self._ann_checked_at = time.monotonic()
        return self._ann

    def finish_bulk_load(self) -> None:
        """Compact the table's fragments and fold rows added since the ANN build into its index (LanceDB's
        ``optimize``: an update, not a rebuild); a table without an ANN index gets one (``ann_index_type``) once
        it holds ``ann_min_rows`` rows."""
        self._table.optimize()
        rows = self.count()
        has_index = any(ix.columns == ["vector"] for ix in self._table.list_indices())
        if rows >= self.ann_min_rows and not has_index:
            self.build_ann_index()
            self.build_scalar_indexes()

    def build_scalar_indexes(self) -> None:
        """B-tree on ``product_id`` (lookups by id: more-like-this, find_similar by product, deletes) and
        ``price``, bitmaps on the keyword filter fields (LanceDB docs, "Scalar indexes"): without them every
        lookup and prefilter reads the whole column. ``optimize`` keeps them current after updates."""
        for column, kind in (("product_id", "BTREE"), ("price", "BTREE")) + tuple((f, "BITMAP") for f in FACET_FIELDS):
            self._table.create_scalar_index(column, index_type=kind, replace=True)

    def build_ann_index(self) -> float:
        """(Re)build the ``ann_index_type`` index on ``vector`` now; returns the seconds it took."""
        started = time.perf_counter()
        partitions = self.ann_partitions or max(1, int(math.sqrt(self.count())))
        extra = {"num_sub_vectors": self.ann_sub_vectors or max(1, self.info.dim // 16)} \
            if self.ann_index_type.endswith("PQ") else {}
        self._table.create_index(metric="cosine", vector_column_name="vector", index_type=self.ann_index_type,
                                 num_partitions=partitions, replace=True, **extra)
        self._ann_checked_at = -1e9
        return time.perf_counter() - started

    def search(self, vectors: np.ndarray, k: int, filters: list[Clause] | None = None) -> list[list[Hit]]:
        vectors = check_query_vectors(vectors, self.info)
        n_queries = len(vectors)
        if n_queries == 0:
            return []
        memory = self._memory()
        if memory is not None:
            return memory.search(vectors, k, filters)
        query = (self._table.search(list(vectors) if n_queries > 1 else vectors[0], vector_column_name="vector")
                 .distance_type("cosine").limit(k).select(list(METADATA_FIELDS) + ["_distance"]))
        where = to_sql(filters or [])
        if where:
            query = query.where(where, prefilter=True)
        ann = self.has_ann_index()
        if ann and where:
            matching = self._matching_rows(where)
            if matching <= self.exact_filter_rows:  # few matches: an exact search over them is cheap and sure
                return _vector_hits(query.bypass_vector_index().to_arrow(), n_queries)
            # IVF partitions hold a share s of a filter's rows: probe 1/s times as many (Lance caps at all of them)
            share = matching / max(1, self._table.count_rows())
            query = query.nprobes(min(MAX_NPROBES, math.ceil(self.nprobes / share))).ef(self.ef) \
                .refine_factor(self.refine_factor)
        elif ann:
            query = query.nprobes(self.nprobes).ef(self.ef).refine_factor(self.refine_factor)
        hits = _vector_hits(query.to_arrow(), n_queries)
        if ann and where:  # the probed partitions may still hold fewer than k matching rows
            for i in (i for i, h in enumerate(hits) if len(h) < k):
                exact = (self._table.search(vectors[i], vector_column_name="vector").distance_type("cosine")
                         .limit(k).select(list(METADATA_FIELDS) + ["_distance"]).where(where, prefilter=True)
                         .bypass_vector_index())
                hits[i] = _vector_hits(exact.to_arrow(), 1)[0]
        return hits

    def _matching_rows(self, where: str) -> int:
        """Rows matching the SQL filter ``where`` (a count through the scalar indexes, cached per table version
        and filter)."""
        table = self._table
        key = (table.version, where)
        if key not in self._matching:
            if len(self._matching) > 256:
                self._matching.clear()
            self._matching[key] = table.count_rows(where)
        return self._matching[key]

    def _hashes(self) -> tuple[pa.Array, HammingIndex]:
        """The current table version's ids and :class:`HammingIndex` (rows without a pHash left out), rebuilt
        when the version changes (re-checked at most every READ_CONSISTENCY_S, like the table)."""
        import pyarrow.compute as pc

        table = self._table
        if self._hash_index is None or time.monotonic() - self._hash_index_checked_at > READ_CONSISTENCY_S:
            self._hash_index_checked_at = time.monotonic()
            version = table.version
            if self._hash_index is None or self._hash_index[0] != version:
                rows = self._scan(["product_id", "phash"])
                rows = rows.filter(pc.is_valid(rows.column("phash")))
                self._hash_index = (version, rows.column("product_id").combine_chunks(),
                                    HammingIndex(rows.column("phash").to_numpy()))
        return self._hash_index[1], self._hash_index[2]

    def hamming_search(self, hashes: list[int], k: int, max_distance: int = 64,
                       filters: list[Clause] | None = None) -> list[list[HashHit]]:
        """Exact: from the in-memory snapshot (small tables), a :class:`HammingIndex` radius search (no filter),
        or LanceDB's flat search with ``distance_type("hamming")`` on ``phash_bits`` (with a filter)."""
        if not hashes:
            return []
        memory = self._memory()
        if memory is not None:
            return memory.hamming_search(hashes, k, max_distance, filters)
        if not filters:
            ids, index = self._hashes()
            hits = []
            for positions, distances in index.radius_search(np.asarray(hashes, np.int64), max_distance):
                found = sorted(zip(distances.tolist(), ids.take(pa.array(positions)).to_pylist()))[:k]
                meta = {m["product_id"]: m for m in self.get([pid for _, pid in found])}
                hits.append([HashHit(pid, d, meta[pid]) for d, pid in found if pid in meta])
            return hits
        bits = pack_bits(np.asarray(hashes, dtype=np.int64))
        query = (self._table.search(list(bits) if len(bits) > 1 else bits[0], vector_column_name="phash_bits")
                 .distance_type("hamming").limit(k).select(list(METADATA_FIELDS) + ["phash", "_distance"])
                 .bypass_vector_index())
        where = to_sql(filters or [])
        if where:
            query = query.where(where, prefilter=True)
        table = query.to_arrow()
        hits: list[list[HashHit]] = [[] for _ in hashes]
        query_index = table.column("query_index").to_pylist() if "query_index" in table.column_names else None
        for i, row in enumerate(table.to_pylist()):
            distance = int(round(row.pop("_distance")))
            if distance <= max_distance:
                hits[query_index[i] if query_index else 0].append(
                    HashHit(row["product_id"], distance, product_metadata(row) | {"phash": row["phash"]}))
        for h in hits:
            h.sort(key=lambda hit: (hit.distance, hit.product_id))
        return hits

    def vectors(self, product_ids: list[str]) -> dict[str, np.ndarray]:
        if not product_ids:
            return {}
        memory = self._memory()
        if memory is not None:
            return memory.vectors_of(product_ids)
        table = (self._table.search().where(_ids_in(product_ids)).select(["product_id", "vector"])
                 .limit(len(product_ids)).to_arrow())
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, self.info.dim)
        return dict(zip(table.column("product_id").to_pylist(), vectors.astype(np.float32)))

    def _scan(self, columns: list[str]) -> pa.Table:
        """Every row, only ``columns`` read (LanceDB is columnar)."""
        return self._table.search().select(columns).limit(max(1, self.count())).to_arrow()

    def scan_batches(self, columns: list[str], rows_per_batch: int):
        """Every row, only ``columns``, as Arrow record batches of up to ``rows_per_batch`` rows (streamed: memory
        does not grow with the table)."""
        return self._table.search().select(columns).limit(max(1, self.count())).to_batches(rows_per_batch)

    def hashes(self) -> tuple[list[str], np.ndarray]:
        import pyarrow.compute as pc

        table = self._scan(["product_id", "phash"])
        table = table.filter(pc.is_valid(table.column("phash")))  # products loaded without a pHash have none
        return table.column("product_id").to_pylist(), table.column("phash").to_numpy().astype(np.int64)

    def delete(self, product_ids: list[str]) -> int:
        if not product_ids:
            return 0
        before = self.count()
        self._table.delete(_ids_in(product_ids))
        self._snapshot = None
        return before - self.count()

    def get(self, product_ids: list[str]) -> list[dict[str, Any]]:
        if not product_ids:
            return []
        memory = self._memory()
        if memory is not None:
            return memory.get(product_ids)
        rows = (self._table.search().where(_ids_in(product_ids)).select(list(METADATA_FIELDS) + ["phash"])
                .limit(len(product_ids)).to_arrow().to_pylist())
        return [product_metadata(r) | {"phash": r["phash"]} for r in rows]

    def facets(self) -> dict[str, Any]:
        """Reads only the facet and range columns; counts with ``pyarrow.compute.value_counts`` and
        ``min_max`` (nulls, empty strings and NaN skipped)."""
        import pyarrow.compute as pc

        table = self._scan(list(FACET_FIELDS + RANGE_FIELDS))
        facets: dict[str, list[dict[str, Any]]] = {}
        for field in FACET_FIELDS:
            column = pc.drop_null(table.column(field))
            column = column.filter(pc.not_equal(pc.utf8_trim_whitespace(column), ""))
            counts = pc.value_counts(column).to_pylist() if len(column) else []
            facets[field] = sorted(({"value": c["values"], "count": c["counts"]} for c in counts),
                                   key=lambda f: (-f["count"], f["value"]))
        ranges: dict[str, dict[str, Any]] = {}
        for field in RANGE_FIELDS:
            column = pc.drop_null(table.column(field))
            column = column.filter(pc.invert(pc.is_nan(column)))
            if len(column):
                bounds = pc.min_max(column).as_py()
                ranges[field] = {"min": bounds["min"], "max": bounds["max"], "count": len(column)}
        return {"products": table.num_rows, "facets": facets, "ranges": ranges}

    def all_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every ``(product_id, vector)`` — for evaluation against an exact NumPy search."""
        table = self._scan(["product_id", "vector"])
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, self.info.dim)
        return table.column("product_id").to_pylist(), vectors.astype(np.float32)


def _vector_hits(table: pa.Table, n_queries: int) -> list[list[Hit]]:
    """A LanceDB k-NN result (``_distance`` = 1 − cos, ``query_index`` for several queries) as ``n_queries``
    lists of hits, best first."""
    hits: list[list[Hit]] = [[] for _ in range(n_queries)]
    query_index = table.column("query_index").to_pylist() if "query_index" in table.column_names else None
    for i, row in enumerate(table.to_pylist()):
        row.pop("query_index", None)
        score = 1.0 - float(row.pop("_distance"))
        hits[query_index[i] if query_index else 0].append(Hit(row["product_id"], score, product_metadata(row)))
    for h in hits:
        h.sort(key=lambda hit: -hit.score)
    return hits


def storage_options(uri: str) -> dict[str, str] | None:
    """LanceDB object-store options for an ``s3://`` URI: the endpoint of an S3-compatible store from
    ``VS_S3_ENDPOINT_URL`` (plain HTTP allowed only when that URL says ``http://``) and the region; credentials
    come from the usual ``AWS_*`` variables, read by LanceDB itself. ``None`` for local folders."""
    if not uri.startswith("s3://"):
        return None
    options = {"aws_region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = os.environ.get("VS_S3_ENDPOINT_URL")
    if endpoint:
        options |= {"aws_endpoint": endpoint, "allow_http": str(endpoint.startswith("http://")).lower()}
    return options


def _state_uri(uri: str) -> str:
    return uri.rstrip("/") + "/" + INFO_FILE


def _read_state(uri: str) -> dict:
    """The alias file: ``{"alias", "current", "versions": {name: {model_id, dim, weights}}}``; empty when
    missing."""
    try:
        state = json.loads(storage.read_bytes(_state_uri(uri)))
    except storage.ObjectNotFound:
        return {"alias": TABLE, "current": None, "versions": {}}
    if "versions" not in state:  # written before versions existed: one table named like the alias
        state = {"alias": TABLE, "current": TABLE, "versions": {TABLE: state}}
    return state


def _write_state(uri: str, state: dict) -> None:
    """Rewrite the alias file in one atomic write (see :func:`serve_app.storage.write_bytes`)."""
    storage.write_bytes(_state_uri(uri), json.dumps(state, indent=2).encode())


def unpublished_versions(uri: str, info: IndexInfo) -> list[str]:
    """Versions of ``info``'s model recorded in the alias file and newer than the current one (left by runs that
    were killed or failed before publishing), oldest first."""
    state = _read_state(uri)
    current = version_of(TABLE, state["current"], info.model_id) if state["current"] else None
    mine = [(version_of(TABLE, name, info.model_id), name) for name in own_versions(state)]
    return [name for n, name in sorted(m for m in mine if m[0] is not None) if current is None or n > current]


def own_versions(state: dict) -> list[str]:
    """The alias file's versions that are this alias's: named exactly ``version_name(TABLE, model_id, N)`` for
    the model recorded with them (:func:`serve_app.index.base.version_of`), plus a table named ``TABLE`` itself
    (from before versions existed). Anything else in the file is left alone: never dropped, never counted."""
    return [name for name, meta in state["versions"].items()
            if name == TABLE or version_of(TABLE, name, str(meta.get("model_id", ""))) is not None]


def _table_names(db) -> list[str]:
    names, token = [], None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            return names


def _new_version(db, uri: str, state: dict, info: IndexInfo) -> str:
    """Create the next version's empty table and record it (unpublished) in the alias file. The number is one past
    the alias file's versions and any table already named like this model's versions (left by a run that died
    between creating its table and recording it), so the new name is free; callers hold the alias's lease.

    Raises:
        IndexOpenError: the table exists anyway (another writer without the lease).
    """
    taken = [t for t in _table_names(db) if version_of(TABLE, t, info.model_id) is not None]
    name = next_version_name(TABLE, info.model_id, own_versions(state) + taken)
    try:
        db.create_table(name, schema=stored_schema(info.dim))
    except ValueError as e:
        raise IndexOpenError(f"cannot create version {name!r} in {uri}: {e} (is another ingestion writing this "
                             "index without holding its lease?)") from e
    state["versions"][name] = info.record()
    _write_state(uri, state)
    return name


def _ids_in(product_ids: list[str]) -> str:
    return f"product_id IN ({', '.join(sql_string(p) for p in product_ids)})"

