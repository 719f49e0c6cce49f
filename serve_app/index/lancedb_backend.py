"""Embedded k-NN index on LanceDB in a local folder or on S3 (no Ray import).

One table, ``products`` (:func:`serve_app.index.base.row_schema`); ``visual_search.json`` beside it records
the model id and embedding dimension. Search uses LanceDB's ``cosine`` distance ``d = 1 − cos``, so
``score = 1 − d`` (LanceDB docs, "Vector search → distance metrics"). Below ``ann_min_rows`` the table has no
vector index and LanceDB scans it exactly (flat search); after a bulk load that reaches the threshold an
``IVF_HNSW_SQ`` index is built and queried with ``nprobes``/``ef``/``refine_factor`` (re-ranking the
candidates with full-precision vectors). Filters are SQL predicates with ``prefilter=True``, so they are
applied before the k-NN search and k results come back whenever ≥ k rows match.
"""

import json
import math
import time
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app import storage
from serve_app.filters import Clause, sql_string, to_sql
from serve_app.index.base import (METADATA_FIELDS, HashHit, Hit, IndexInfo, IndexOpenError, VectorIndex,
                                  row_schema, stored_schema)
from serve_app.phash import pack_bits

TABLE = "products"
READ_CONSISTENCY_S = 10.0
INFO_FILE = "visual_search.json"


class LanceDBIndex(VectorIndex):
    """LanceDB backend.

    Args:
        uri: folder path, ``file://`` or ``s3://`` URI of the LanceDB database.
        info: model id and dimension; required to create a new index, checked against an existing one.
        ann_min_rows: build an ANN index in :meth:`finish_bulk_load` from this many rows (default 50,000).
        nprobes: IVF partitions probed per query (LanceDB default 20).
        ef: HNSW candidate list size per query.
        refine_factor: re-rank ``k × refine_factor`` candidates on full vectors.

    Raises:
        IndexOpenError: no index at ``uri`` and no ``info``; or ``info.dim`` differs from the stored one.
    """

    def __init__(self, uri: str, info: IndexInfo | None = None, ann_min_rows: int = 50_000,
                 nprobes: int = 20, ef: int = 100, refine_factor: int = 5):
        import lancedb

        self.uri = uri
        self.ann_min_rows = ann_min_rows
        self.nprobes, self.ef, self.refine_factor = nprobes, ef, refine_factor
        # Re-check the table version at most every READ_CONSISTENCY_S, so a long-running Retriever sees
        # re-ingestions (LanceDB's default never re-checks).
        self._db = lancedb.connect(uri, read_consistency_interval=timedelta(seconds=READ_CONSISTENCY_S))
        self._ann_checked_at, self._ann = -1e9, False
        stored = self._read_info()
        if TABLE in self._db.table_names() and stored is not None:
            self._table = self._db.open_table(TABLE)
            if info is not None and info.dim != stored.dim:
                raise IndexOpenError(
                    f"index {uri} holds {stored.dim}-dimensional embeddings from {stored.model_id!r}, but the "
                    f"model {info.model_id!r} makes {info.dim}-dimensional ones; use a new --index folder")
            self.info = stored
        elif info is not None:
            self._table = self._db.create_table(TABLE, schema=stored_schema(info.dim), exist_ok=True)
            self.info = info
            self._write_info(info)
        else:
            raise IndexOpenError(f"no index at {uri}: run `python -m batch_jobs ingest --index {uri}` first")

    def _info_uri(self) -> str:
        return self.uri.rstrip("/") + "/" + INFO_FILE

    def _read_info(self) -> IndexInfo | None:
        try:
            return IndexInfo(**json.loads(storage.read_bytes(self._info_uri())))
        except storage.ObjectNotFound:
            return None

    def _write_info(self, info: IndexInfo) -> None:
        storage.write_bytes(self._info_uri(), json.dumps(info.__dict__, indent=2).encode())

    def upsert(self, rows: pa.Table) -> int:
        if rows.num_rows == 0:
            return 0
        rows = rows.select(row_schema(self.info.dim).names).cast(row_schema(self.info.dim))
        bits = pack_bits(rows.column("phash").to_numpy(zero_copy_only=False))
        rows = rows.append_column(stored_schema(self.info.dim).field("phash_bits"),
                                  pa.FixedSizeListArray.from_arrays(pa.array(bits.ravel(), pa.uint8()), 8))
        (self._table.merge_insert("product_id").when_matched_update_all().when_not_matched_insert_all()
         .execute(rows))
        return rows.num_rows

    def count(self) -> int:
        return self._table.count_rows()

    def has_ann_index(self) -> bool:
        """Whether the ``vector`` column has an ANN index (re-checked at most every READ_CONSISTENCY_S)."""
        if time.monotonic() - self._ann_checked_at > READ_CONSISTENCY_S:
            self._ann = any(ix.columns == ["vector"] for ix in self._table.list_indices())
            self._ann_checked_at = time.monotonic()
        return self._ann

    def finish_bulk_load(self) -> None:
        """Compact the table's fragments and, from ``ann_min_rows`` rows, (re)build the IVF_HNSW_SQ index."""
        self._table.optimize()
        rows = self.count()
        if rows >= self.ann_min_rows:
            # ~sqrt(N) partitions, the usual IVF rule of thumb (LanceDB "ANN indexes" guide).
            partitions = max(1, int(math.sqrt(rows)))
            self._table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ",
                                     num_partitions=partitions, replace=True)
            self._ann_checked_at = -1e9

    def search(self, vectors: np.ndarray, k: int, filters: list[Clause] | None = None) -> list[list[Hit]]:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.info.dim:
            raise ValueError(f"query vectors must have shape (Q, {self.info.dim}), got {vectors.shape}")
        n_queries = len(vectors)
        if n_queries == 0:
            return []
        query = (self._table.search(list(vectors) if n_queries > 1 else vectors[0], vector_column_name="vector")
                 .distance_type("cosine").limit(k).select(list(METADATA_FIELDS) + ["_distance"]))
        where = to_sql(filters or [])
        if where:
            query = query.where(where, prefilter=True)
        if self.has_ann_index():
            query = query.nprobes(self.nprobes).ef(self.ef).refine_factor(self.refine_factor)
        table = query.to_arrow()
        hits: list[list[Hit]] = [[] for _ in range(n_queries)]
        query_index = table.column("query_index").to_pylist() if "query_index" in table.column_names else None
        for i, row in enumerate(table.to_pylist()):
            row.pop("query_index", None)
            score = 1.0 - float(row.pop("_distance"))
            hits[query_index[i] if query_index else 0].append(Hit(row["product_id"], score, _metadata(row)))
        for h in hits:
            h.sort(key=lambda hit: -hit.score)
        return hits

    def hamming_search(self, hashes: list[int], k: int, max_distance: int = 64,
                       filters: list[Clause] | None = None) -> list[list[HashHit]]:
        """LanceDB flat search with ``distance_type("hamming")`` on ``phash_bits`` (exact)."""
        if not hashes:
            return []
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
                    HashHit(row["product_id"], distance, _metadata(row) | {"phash": row["phash"]}))
        for h in hits:
            h.sort(key=lambda hit: (hit.distance, hit.product_id))
        return hits

    def vectors(self, product_ids: list[str]) -> dict[str, np.ndarray]:
        if not product_ids:
            return {}
        table = (self._table.search().where(_ids_in(product_ids)).select(["product_id", "vector"])
                 .limit(len(product_ids)).to_arrow())
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, self.info.dim)
        return dict(zip(table.column("product_id").to_pylist(), vectors.astype(np.float32)))

    def _scan(self, columns: list[str]) -> pa.Table:
        """Every row, only ``columns`` read (LanceDB is columnar)."""
        return self._table.search().select(columns).limit(max(1, self.count())).to_arrow()

    def hashes(self) -> tuple[list[str], np.ndarray]:
        table = self._scan(["product_id", "phash"])
        return table.column("product_id").to_pylist(), table.column("phash").to_numpy().astype(np.int64)

    def delete(self, product_ids: list[str]) -> int:
        if not product_ids:
            return 0
        before = self.count()
        self._table.delete(_ids_in(product_ids))
        return before - self.count()

    def get(self, product_ids: list[str]) -> list[dict[str, Any]]:
        if not product_ids:
            return []
        rows = (self._table.search().where(_ids_in(product_ids)).select(list(METADATA_FIELDS) + ["phash"])
                .limit(len(product_ids)).to_arrow().to_pylist())
        return [_metadata(r) | {"phash": r["phash"]} for r in rows]

    def all_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every ``(product_id, vector)`` — for evaluation against an exact NumPy search."""
        table = self._scan(["product_id", "vector"])
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, self.info.dim)
        return table.column("product_id").to_pylist(), vectors.astype(np.float32)


def _ids_in(product_ids: list[str]) -> str:
    return f"product_id IN ({', '.join(sql_string(p) for p in product_ids)})"


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    meta = {k: row.get(k) for k in METADATA_FIELDS if k != "attributes"}
    attributes = json.loads(row["attributes"]) if row.get("attributes") else {}
    return attributes | meta
