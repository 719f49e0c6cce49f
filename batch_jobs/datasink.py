"""Ray Data sink that upserts embedded rows into the index and writes the embeddings Parquet."""

import io
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor

from batch_jobs.stages import to_index_rows
from serve_app import storage
from serve_app.index import IndexInfo, open_index
from serve_app.phash import hamming_matrix


@dataclass
class SinkResult:
    """What one write task did: rows upserted and rows that failed, with reasons."""

    written: int = 0
    failed: list[dict] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)


class IndexDatasink(Datasink[SinkResult]):
    """Upsert blocks into the index at ``index_uri`` and mirror them to Parquet under ``embeddings_uri``.

    Rows whose ``error`` is set are not written; they come back in :attr:`failed` for the report. With
    ``append`` (a new version, whose rows the manifest step made unique) each write task appends its rows
    (:meth:`VectorIndex.append`: Lance commits concurrent appends without conflict; OpenSearch bulk-indexes by
    id), so the pipeline runs several writer tasks and every finished task's rows are durable (``--resume``
    skips them). Without it (upsert mode) LanceDB's ``merge_insert`` commits conflict, so the pipeline runs one.
    After all blocks, :meth:`on_write_complete` runs :meth:`VectorIndex.finish_bulk_load` once.
    """

    def __init__(self, index_uri: str, info: IndexInfo, embeddings_uri: str | None,
                 index_options: dict | None = None, rows_per_write: int = 256, flag_duplicates: int | None = None,
                 append: bool = False):
        self.index_uri, self.info, self.embeddings_uri = index_uri, info, embeddings_uri
        self.index_options = index_options or {}
        self.rows_per_write = rows_per_write
        self.flag_duplicates = flag_duplicates
        self.append = append
        self.written = 0
        self.failed: list[dict] = []
        self.near_duplicates: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_write

    def get_name(self) -> str:
        return "IndexSink"

    def write(self, blocks: Iterable[Block], ctx) -> SinkResult:
        index = open_index(self.index_uri, info=self.info, **self.index_options)
        result = SinkResult()
        for block in blocks:
            accessor = BlockAccessor.for_block(block)
            if accessor.num_rows() == 0:  # every row of it was filtered out upstream
                continue
            batch = accessor.to_numpy()
            columns = {c: list(v) for c, v in batch.items()}
            for i, err in enumerate(columns["error"]):
                if err:
                    where = {"shard": columns["shard"][i], "line": int(columns["line"][i])} if "shard" in columns else {}
                    result.failed.append(where | {"product_id": columns["product_id"][i],
                                                  "image": columns["image"][i], "reason": err})
            rows = to_index_rows(columns, self.info.dim)
            if self.flag_duplicates is not None and rows.num_rows:
                result.near_duplicates += _near_duplicates(index, rows, self.flag_duplicates)
            result.written += index.append(rows) if self.append else index.upsert(rows)
            result.failed += [f | {"image": None} for f in index.drain_failures()]
            if self.embeddings_uri and rows.num_rows:
                self._write_parquet(rows)
        return result

    def _write_parquet(self, rows: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(rows.select(["product_id", "vector", "phash"]), buffer)
        uri = f"{self.embeddings_uri.rstrip('/')}/part-{uuid.uuid4().hex}.parquet"
        storage.write_bytes(uri, buffer.getvalue())

    def on_write_complete(self, write_result) -> None:
        for r in write_result.write_returns:
            self.written += r.written
            self.failed.extend(r.failed)
            self.near_duplicates.extend(r.near_duplicates)
        open_index(self.index_uri, info=self.info, **self.index_options).finish_bulk_load()


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
