"""Exact Hamming radius search over many 64-bit pHashes by multi-index hashing (no Ray import).

A linear scan costs O(N) per query (and O(N²) for a whole-catalog duplicate report). Multi-index hashing
(Norouzi, Punjani & Fleet, "Fast Search in Hamming Space with Multi-Index Hashing", CVPR 2012) splits the 64
bits into ``m`` disjoint chunks of ``64 / m`` bits and keeps one hash table per chunk. By the pigeonhole
principle, a code within ``d`` bits of the query differs from it in at most ``⌊d / m⌋`` bits on at least one
chunk, so probing every table with the query's chunk and all its variants within ``⌊d / m⌋`` flipped bits
finds every candidate; each candidate's full distance is then computed exactly and those beyond ``d`` are
dropped. Nothing within ``d`` is missed and nothing beyond it is returned.

The tables and the probing are faiss's ``IndexBinaryMultiHash`` (``nhash`` tables of ``b`` bits, ``nflip``
bits flipped per probe; faiss wiki, "Binary indexes"): a well-kept C++ implementation. Beyond
:data:`MAX_FLIPS` flipped bits per chunk the probes outnumber a scan's work, so a radius that large is
answered by an exact NumPy scan (XOR + popcount) instead.
"""

import threading

import numpy as np

from serve_app.phash import HASH_BITS, hamming_distances, pack_bits

CHUNKS = 4  # 16-bit chunks: ~N / 65,536 codes per bucket (15 at 1M)
MAX_FLIPS = 3  # up to 1 + 16 + 120 + 560 = 697 probes per chunk; past that a scan is cheaper


class HammingIndex:
    """Every stored hash, searchable by Hamming radius.

    Args:
        hashes: int64 ``(N,)`` pHashes (:mod:`serve_app.phash`); row ``i`` is reported as position ``i``.
        chunks: ``m``, the number of hash tables (a divisor of 64).

    Raises:
        ValueError: ``hashes`` is not one-dimensional, or ``chunks`` does not divide 64.
    """

    def __init__(self, hashes: np.ndarray, chunks: int = CHUNKS):
        import faiss

        hashes = np.ascontiguousarray(hashes, dtype=np.int64)
        if hashes.ndim != 1:
            raise ValueError(f"hashes must have shape (N,), got {hashes.shape}")
        if HASH_BITS % chunks:
            raise ValueError(f"chunks must divide {HASH_BITS}, got {chunks}")
        self.hashes, self.chunks = hashes, chunks
        self._index = faiss.IndexBinaryMultiHash(HASH_BITS, chunks, HASH_BITS // chunks)
        if len(hashes):
            self._index.add(pack_bits(hashes))
        self._lock = threading.Lock()  # nflip is index state: one search at a time sets and uses it

    def __len__(self) -> int:
        return len(self.hashes)

    def radius_search(self, queries: np.ndarray, max_distance: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every stored hash within ``max_distance`` bits of each query, exactly.

        Args:
            queries: int64 ``(Q,)`` pHashes. max_distance: radius in bits (0–64, inclusive).

        Returns:
            ``Q`` pairs ``(positions, distances)``: int64 ``(M,)`` row positions and their distances in bits,
            sorted by distance, then position.

        Raises:
            ValueError: ``max_distance`` outside 0–64.
        """
        if not 0 <= max_distance <= HASH_BITS:
            raise ValueError(f"max_distance must be in 0..{HASH_BITS} bits, got {max_distance}")
        queries = np.asarray(queries, dtype=np.int64).reshape(-1)
        if not len(self.hashes) or not len(queries):
            return [(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in queries]
        flips = max_distance // self.chunks
        if flips > MAX_FLIPS:
            return [_scan(self.hashes, q, max_distance) for q in queries]
        with self._lock:
            self._index.nflip = flips
            # faiss returns distances strictly below the radius (IndexBinary.range_search)
            limits, distances, labels = self._index.range_search(pack_bits(queries), max_distance + 1)
        out = []
        for i in range(len(queries)):
            positions = labels[limits[i]:limits[i + 1]].astype(np.int64)
            dist = distances[limits[i]:limits[i + 1]].astype(np.int64)
            order = np.lexsort((positions, dist))
            out.append((positions[order], dist[order]))
        return out

    def pairs(self, max_distance: int, block: int = 65_536) -> np.ndarray:
        """All pairs of stored hashes within ``max_distance`` bits: int64 ``(P, 3)`` rows ``(i, j, d)`` with
        ``i < j``, sorted — a whole-catalog duplicate report in O(N · candidates) instead of O(N²).

        Raises:
            ValueError: ``max_distance`` outside 0–64.
        """
        found = []
        for start in range(0, len(self.hashes), block):
            for offset, (positions, distances) in enumerate(
                    self.radius_search(self.hashes[start:start + block], max_distance)):
                i = start + offset
                later = positions > i
                found.append(np.stack([np.full(int(later.sum()), i), positions[later], distances[later]], axis=1))
        return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def _scan(hashes: np.ndarray, query: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact radius search by XOR + popcount over every stored hash."""
    distances = hamming_distances(int(query), hashes)
    positions = np.flatnonzero(distances <= max_distance)
    order = np.lexsort((positions, distances[positions]))
    return positions[order], distances[positions][order]
