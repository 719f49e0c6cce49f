"""An in-memory snapshot of a small index table, searched exactly with NumPy (no Ray import).

A LanceDB query has a fixed cost of several milliseconds (planning, scanning files, Arrow conversion) even for
a few hundred rows, which is most of what a small catalog's k-NN search costs. Below a size limit
(``memory_rows``, default 50,000 rows ≈ 100 MB at 512-d) and while the table has no ANN index, the LanceDB
backend keeps one :class:`MemorySnapshot` of it — ids, float32 vectors, pHashes, metadata and the filterable
columns — and answers from it: an exact k-NN (``V @ q``, the same cosine LanceDB's flat search computes) with
the filter as a boolean mask inside the search, exact Hamming k-NN by popcount, and lookups by id. The
snapshot is tied to one table version; the backend reloads it when the version changes (re-checked as often as
the table itself, ``READ_CONSISTENCY_S``).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app.filters import Clause, to_mask
from serve_app.index.base import METADATA_FIELDS, HashHit, Hit, product_metadata
from serve_app.phash import hamming_matrix

DEFAULT_MEMORY_ROWS = 50_000
COLUMNS = list(METADATA_FIELDS) + ["phash", "vector"]


@dataclass
class MemorySnapshot:
    """One table version in memory (see module docstring).

    Attributes:
        version: the table version it was read at. ids: ``N`` product ids.
        vectors: float32 ``(N, D)`` L2-normalised embeddings. hashes: int64 ``(N,)`` pHashes.
        metadata: per row, what :func:`~serve_app.index.base.product_metadata` returns.
        columns: the filterable columns as NumPy arrays (strings as objects with ``None``, numbers with NaN).
    """

    version: int
    ids: list[str]
    vectors: np.ndarray
    hashes: np.ndarray
    metadata: list[dict[str, Any]]
    columns: dict[str, np.ndarray]
    position: dict[str, int]
    id_rank: np.ndarray  # int64 (N,): each row's rank in id order (ties of equal distance go by id)
    has_hash: np.ndarray  # bool (N,): rows with a pHash (products loaded from embeddings may have none)

    @classmethod
    def from_arrow(cls, table: pa.Table, version: int, dim: int) -> "MemorySnapshot":
        """Build from every row of the table (its :data:`COLUMNS`)."""
        ids = table.column("product_id").to_pylist()
        vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), np.float32).reshape(-1, dim)
        import pyarrow.compute as pc

        phash = table.column("phash")
        hashes = np.asarray(pc.fill_null(phash, 0).to_numpy(), np.int64)
        has_hash = pc.is_valid(phash).to_numpy()
        rows = table.select([c for c in METADATA_FIELDS]).to_pylist()
        columns = {"product_id": np.asarray(ids, dtype=object),
                   "category": np.asarray(table.column("category").to_pylist(), dtype=object),
                   "brand": np.asarray(table.column("brand").to_pylist(), dtype=object),
                   "price": np.asarray(table.column("price").to_numpy(zero_copy_only=False), np.float64)}
        id_rank = np.empty(len(ids), np.int64)
        id_rank[np.argsort(np.asarray(ids, dtype=object), kind="stable")] = np.arange(len(ids))
        return cls(version, ids, vectors, hashes, [product_metadata(r) for r in rows], columns,
                   {pid: i for i, pid in enumerate(ids)}, id_rank, np.asarray(has_hash, bool))

    def __len__(self) -> int:
        return len(self.ids)

    def _candidates(self, filters: Sequence[Clause] | None) -> np.ndarray:
        if not filters:
            return np.arange(len(self.ids))
        return np.flatnonzero(to_mask(filters, self.columns))

    def search(self, vectors: np.ndarray, k: int, filters: Sequence[Clause] | None = None) -> list[list[Hit]]:
        """Exact k-NN by cosine (both sides unit length) among the rows the filter keeps; best first, ties by
        position. ``vectors``: float32 ``(Q, D)``."""
        rows = self._candidates(filters)
        scores = np.asarray(vectors, np.float32) @ self.vectors[rows].T  # [Q, M]
        top = min(k, len(rows))
        out = []
        for q in scores:
            best = np.argpartition(-q, top - 1)[:top] if 0 < top < len(rows) else np.arange(len(rows))
            best = best[np.argsort(-q[best], kind="stable")]
            out.append([Hit(self.ids[rows[i]], float(q[i]), dict(self.metadata[rows[i]])) for i in best])
        return out

    def hamming_search(self, hashes: Sequence[int], k: int, max_distance: int,
                       filters: Sequence[Clause] | None = None) -> list[list[HashHit]]:
        """Exact Hamming k-NN over the stored pHashes, ``distance ≤ max_distance``, closest first (ties by id)."""
        rows = self._candidates(filters)
        rows = rows[self.has_hash[rows]]
        distances = hamming_matrix(np.asarray(hashes, np.int64), self.hashes[rows])  # [Q, M]
        out = []
        for d in distances:
            near = np.flatnonzero(d <= max_distance)
            ranked = near[np.lexsort((self.id_rank[rows[near]], d[near]))][:k]
            out.append([HashHit(self.ids[rows[i]], int(d[i]), dict(self.metadata[rows[i]]) |
                                {"phash": int(self.hashes[rows[i]])}) for i in ranked])
        return out

    def vectors_of(self, product_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of the given products (float32 ``(D,)``); unknown ids are left out."""
        return {p: self.vectors[self.position[p]] for p in product_ids if p in self.position}

    def get(self, product_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Stored metadata and ``phash`` of the given products, in the order given; unknown ids are left out."""
        return [dict(self.metadata[i]) | {"phash": int(self.hashes[i]) if self.has_hash[i] else None}
                for i in (self.position.get(p) for p in product_ids) if i is not None]
