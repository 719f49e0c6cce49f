"""64-bit perceptual hash (pHash) and Hamming distance, one definition for ingestion and serving.

pHash is ``imagehash.phash`` (DCT of the 32×32 greyscale image, sign of the 8×8 low frequencies against
their median; Zauner 2010, "Implementation and Benchmarking of Perceptual Image Hash Functions"), computed on
the RGB image from :func:`serve_app.images.decode_image` so transparency is already on white.

The 64 bits are stored as a signed int64 (two's complement of the unsigned value, bit 63 first as in
``imagehash``'s ``hash.flatten()``), which every index backend and Arrow handle natively.
"""

import imagehash
import numpy as np
from PIL import Image

HASH_BITS = 64


def phash64(image: Image.Image) -> int:
    """Return the 64-bit pHash of an RGB image as a signed int64 (range −2⁶³ … 2⁶³−1)."""
    bits = imagehash.phash(image, hash_size=8).hash.flatten()  # [64] bool, most significant first
    unsigned = int("".join("1" if b else "0" for b in bits), 2)
    return unsigned - (1 << 64) if unsigned >= (1 << 63) else unsigned


def to_unsigned(h: int) -> int:
    """Signed int64 hash → unsigned 64-bit integer."""
    return h & 0xFFFF_FFFF_FFFF_FFFF


def to_hex(h: int) -> str:
    """Hash as the 16-digit hex string ``imagehash`` prints."""
    return f"{to_unsigned(h):016x}"


def hash_array(hashes) -> np.ndarray:
    """Hashes given as signed or unsigned 64-bit Python ints → the int64 ``(N,)`` array of their bits."""
    return np.array([to_unsigned(int(h)) for h in hashes], dtype=np.uint64).view(np.int64)


def hamming_distance(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (0–64)."""
    return (to_unsigned(a) ^ to_unsigned(b)).bit_count()


def hamming_distances(query: int, hashes: np.ndarray) -> np.ndarray:
    """Hamming distances from one hash to many.

    Args:
        query: a hash as returned by :func:`phash64`.
        hashes: int64 array of shape ``(N,)``.

    Returns:
        int64 array ``(N,)`` of distances in 0–64.
    """
    return hamming_matrix(np.array([query], dtype=np.int64), hashes)[0]


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances between two sets of hashes.

    Args:
        a: int64 array ``(M,)``. b: int64 array ``(N,)``.

    Returns:
        int64 array ``(M, N)`` of distances in 0–64 (``M·N·8`` bytes: block large sets).
    """
    x = np.bitwise_xor(np.asarray(a, dtype=np.int64)[:, None], np.asarray(b, dtype=np.int64)[None, :])
    return np.bitwise_count(x.view(np.uint64)).astype(np.int64)


def match_percent(distance: int) -> float:
    """``100 · (1 − d / 64)``: the share of equal bits, in percent."""
    return 100.0 * (1.0 - distance / HASH_BITS)


def pack_bits(hashes: np.ndarray) -> np.ndarray:
    """int64 ``(N,)`` hashes → uint8 ``(N, 8)`` packed bits, big-endian (bit 63 first): the layout of binary
    k-NN vectors (LanceDB ``phash_bits``, OpenSearch ``data_type: binary``)."""
    return np.asarray(hashes, dtype=np.int64).astype(">i8").view(np.uint8).reshape(-1, 8)
