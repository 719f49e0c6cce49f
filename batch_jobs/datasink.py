"""Ray Data sink that upserts embedded rows into the index and writes the embeddings Parquet."""

import io
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from batch_jobs.manifest import ALREADY_INDEXED, MAX_LISTED_BAD_ROWS, ROWS_PER_WRITE
from batch_jobs.stages import index_table
from serve_app import storage
from serve_app.index import IndexInfo, open_index
from serve_app.phash import hamming_matrix


NODE_COLUMNS = {"loaded_on": "load", "embedded_on": "embed"}  # per-row node columns the pipeline adds, by stage


@dataclass
class SinkResult:
    """What one write task did: rows seen, rows upserted, rows that failed (counted; the first
    :data:`MAX_LISTED_BAD_ROWS` listed with reasons), rows a resumed run had indexed already, and the rows each
    stage handled per Ray node."""

    rows: int = 0
    written: int = 0
    failed_count: int = 0
    already_indexed: int = 0
    normalised: int = 0  # loaded embeddings that were not unit length (see batch_jobs.embeddings_source)
    finish_s: float = 0.0  # seconds of the after-load step (compaction, ANN and scalar index build)
    failed: list[dict] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)
    nodes: dict[str, Counter] = field(default_factory=dict)

    def add(self, other: "SinkResult") -> None:
        self.rows += other.rows
        self.written += other.written
        self.failed_count += other.failed_count
        self.already_indexed += other.already_indexed
        self.normalised += other.normalised
        self.failed += other.failed[:max(0, MAX_LISTED_BAD_ROWS - len(self.failed))]
        self.near_duplicates += other.near_duplicates
        for stage, counts in other.nodes.items():
            self.nodes.setdefault(stage, Counter()).update(counts)

    def fail(self, entry: dict) -> None:
        self.failed_count += 1
        if len(self.failed) < MAX_LISTED_BAD_ROWS:
            self.failed.append(entry)


class IndexDatasink(Datasink[SinkResult]):
    """Upsert blocks into the index at ``index_uri`` and mirror them to Parquet under ``embeddings_uri``.

    Every row of the catalog reaches the sink, bad ones too: rows whose ``error`` is set (a manifest row that
    failed validation, an image that failed to load) are not written; they come back in :attr:`result`
    (``failed``) for the report, and rows marked :data:`~batch_jobs.manifest.ALREADY_INDEXED` are counted. With
    ``append`` (a new version, whose rows the manifest step made unique) each write task appends its rows
    (:meth:`IndexWriter.append`: Lance commits concurrent appends without conflict; OpenSearch bulk-indexes by
    id), so the pipeline runs several writer tasks and every finished task's rows are durable (``--resume``
    skips them). Without it (upsert mode) LanceDB's ``merge_insert`` commits conflict, so the pipeline runs one.
    After all blocks, :meth:`on_write_complete` runs :meth:`IndexWriter.finish_bulk_load` once.
    """

    def __init__(self, index_uri: str, info: IndexInfo, embeddings_uri: str | None,
                 index_options: dict | None = None, rows_per_write: int = ROWS_PER_WRITE,
                 flag_duplicates: int | None = None, append: bool = False):
        self.index_uri, self.info, self.embeddings_uri = index_uri, info, embeddings_uri
        self.index_options = index_options or {}
        self.rows_per_write = rows_per_write
        self.flag_duplicates = flag_duplicates
        self.append = append
        self.result = SinkResult()  # the sum over all write tasks, after the write completes

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_write

    def get_name(self) -> str:
        return "IndexSink"

    def write(self, blocks: Iterable[Block], ctx) -> SinkResult:
        index = open_index(self.index_uri, info=self.info, **self.index_options)
        result = SinkResult()
        writer_node = this_node()
        tables = []
        for block in blocks:
            accessor = BlockAccessor.for_block(block)
            if accessor.num_rows() == 0:
                continue
            table = accessor.to_arrow()
            result.rows += table.num_rows
            for column, stage in NODE_COLUMNS.items():
                if column in table.column_names:
                    counts = pc.value_counts(table.column(column)).to_pylist()
                    result.nodes.setdefault(stage, Counter()).update({c["values"]: c["counts"] for c in counts})
            errors = pc.fill_null(table.column("error").cast(pa.string()), "")
            done = pc.equal(errors, ALREADY_INDEXED)
            result.already_indexed += pc.sum(done).as_py() or 0
            failed = pc.and_(pc.not_equal(errors, ""), pc.invert(done))
            if pc.any(failed).as_py():
                where = ["shard", "line"] if "shard" in table.column_names else []
                for row in table.filter(failed).select(where + ["product_id", "image", "error"]).to_pylist():
                    row["reason"] = row.pop("error")
                    if "line" in row:
                        row["line"] = int(row["line"])
                    result.fail(row)
            good = table.filter(pc.equal(errors, ""))
            if "normalised" in good.column_names:
                result.normalised += pc.sum(good.column("normalised")).as_py() or 0
            if good.num_rows:
                vectors = BlockAccessor.for_block(good).to_numpy("vector")
                tables.append(index_table(good, vectors, self.info.dim))
        if tables:  # one append and one Parquet file per write call
            rows = pa.concat_tables(tables)
            if self.flag_duplicates is not None:
                result.near_duplicates += _near_duplicates(index, rows, self.flag_duplicates)
            written = index.append(rows) if self.append else index.upsert(rows)
            result.written += written
            result.nodes.setdefault("write", Counter())[writer_node] += written
            if self.embeddings_uri:
                self._write_parquet(rows)
        for f in index.drain_failures():
            result.fail(f | {"image": None})
        return result

    def _write_parquet(self, rows: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(rows.select(["product_id", "vector", "phash"]), buffer)
        uri = f"{self.embeddings_uri.rstrip('/')}/part-{uuid.uuid4().hex}.parquet"
        storage.write_bytes(uri, buffer.getvalue())

    def on_write_complete(self, write_result) -> None:
        for r in write_result.write_returns:
            self.result.add(r)
        started = time.perf_counter()
        open_index(self.index_uri, info=self.info, **self.index_options).finish_bulk_load()
        self.result.finish_s = round(time.perf_counter() - started, 2)


def this_node() -> str:
    """The Ray node this worker runs on, as the report names it: the first 12 hex digits of its node id."""
    import ray

    return ray.get_runtime_context().get_node_id()[:12]


def _near_duplicates(index, rows: pa.Table, max_distance: int) -> list[dict]:
    """Products in ``rows`` within ``max_distance`` pHash bits of another product: one already in the index,
    or an earlier row of the same block (both checked exactly)."""
    ids = rows.column("product_id").to_pylist()
    hashes = np.asarray(rows.column("phash").to_pylist(), dtype=np.int64)
    hits = index.hamming_search(hashes.tolist(), 3, max_distance)
    within = hamming_matrix(hashes, hashes)  # [n, n]
    found = []
    for i, (product_id, row_hits) in enumerate(zip(ids, hits)):
        candidates = [(h.distance, h.product_id) for h in row_hits if h.product_id != product_id]
        candidates += [(int(within[i, j]), ids[j]) for j in range(i) if within[i, j] <= max_distance
                       and ids[j] != product_id]
        if candidates:
            distance, other = min(candidates)
            found.append({"product_id": product_id, "duplicate_of": other, "hamming_distance": distance})
    return found
