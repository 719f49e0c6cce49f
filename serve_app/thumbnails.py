"""Thumbnails for the web page: product images and video frames as small JPEGs, and a byte-bounded LRU cache.

No Ray import. Product images go through :func:`serve_app.images.decode_image` (EXIF orientation applied,
transparency composited onto white), so a thumbnail shows what the model embedded. Sizes are clamped to
``MIN_SIZE``–``MAX_SIZE`` pixels on the longer side, so a client cannot make the service render (and cache)
arbitrarily large images.
"""

import base64
import hashlib
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
from PIL import Image

from serve_app import storage
from serve_app.images import ImageDecodeError, decode_image

MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 64, 512, 256
JPEG_QUALITY = 85
FRAME_HEIGHT = 96
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024


class ProductNotFound(LookupError):
    """No product with this id in the index, or its catalog image is gone (the endpoint answers 404)."""


class ThumbnailUnavailable(RuntimeError):
    """The product's catalog image cannot be read or decoded (the endpoint answers 502)."""


def clamp_size(size: int | None) -> int:
    """The requested longer-side size in pixels, clamped to ``MIN_SIZE``–``MAX_SIZE`` (``None``: default)."""
    if size is None:
        return DEFAULT_SIZE
    return max(MIN_SIZE, min(MAX_SIZE, int(size)))


def _jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def render_thumbnail(data: bytes, size: int = DEFAULT_SIZE) -> bytes:
    """Encoded image bytes → JPEG whose longer side is at most ``clamp_size(size)`` pixels.

    Aspect ratio is kept; images already smaller are not enlarged. Resampling: Lanczos (Pillow's
    ``Image.thumbnail`` with ``reducing_gap``, which first reduces by an integer factor in the decoder).

    Raises:
        UnsupportedImageError, ImageDecodeError: ``data`` is not a decodable image.
    """
    side = clamp_size(size)
    image = decode_image(data, min_side=side)  # a large JPEG is decoded at a reduced scale first
    image.thumbnail((side, side), Image.LANCZOS, reducing_gap=2.0)
    return _jpeg(image)


def product_thumbnail(index, product_id: str, size: int) -> bytes:
    """JPEG thumbnail of the catalog image stored for ``product_id`` in ``index`` (a
    :class:`~serve_app.index.base.VectorIndex`). Only that stored ``image_url`` is read, so a request cannot
    name another path.

    Raises:
        ProductNotFound: unknown product id, or its image is gone.
        ThumbnailUnavailable: the stored image cannot be read or no longer decodes.
    """
    rows = index.get([product_id])
    if not rows or not rows[0].get("image_url"):
        raise ProductNotFound(f"no product with id {product_id!r}")
    uri = rows[0]["image_url"]
    try:
        return render_thumbnail(storage.read_bytes(uri), size)
    except storage.ObjectNotFound as e:
        raise ProductNotFound(f"the image of product {product_id!r} is gone: {e}") from None
    except (storage.StorageError, ImageDecodeError) as e:
        raise ThumbnailUnavailable(f"the image of product {product_id!r} cannot be read: {e}") from None


def frame_data_url(frame: np.ndarray, height: int = FRAME_HEIGHT, quality: int = 75) -> str:
    """A uint8 RGB ``(H, W, 3)`` video frame → ``data:image/jpeg;base64,...`` scaled to ``height`` pixels high.

    Used for the kept-frame strip of video search (a few KB per frame at 96 px high), so the page needs no
    client-side video decoding.

    Raises:
        ValueError: ``frame`` is not an ``(H, W, 3)`` uint8 array, or ``height`` < 1.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
    if height < 1:
        raise ValueError(f"height must be ≥ 1 pixel, got {height}")
    frame_height, frame_width = frame.shape[:2]
    width = max(1, round(frame_width * height / frame_height))
    image = Image.fromarray(frame).resize((width, height), Image.LANCZOS)
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg(image, quality)).decode("ascii")


def etag(data: bytes) -> str:
    """A strong HTTP ETag for a body: the quoted first 16 hex digits of its SHA-256."""
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class ByteLRU:
    """A thread-safe least-recently-used cache bounded by the total size of its values in bytes.

    Args:
        max_bytes: evict least recently used entries until the values add up to at most this.
            A single value larger than ``max_bytes`` is not cached.
        ttl_s: an entry older than this many seconds is a miss (so a re-ingested image shows up within
            ``ttl_s``); ``None``: entries never expire.
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be ≥ 0, got {max_bytes}")
        self.max_bytes, self.ttl_s, self._clock = max_bytes, ttl_s, clock
        self._items: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> bytes | None:
        """The cached value (marked most recently used), or ``None`` when absent or expired."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and self.ttl_s is not None and self._clock() - entry[0] > self.ttl_s:
                self._drop(key)
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: Hashable, value: bytes) -> None:
        """Store ``value`` under ``key``, evicting the least recently used entries to stay within budget."""
        with self._lock:
            self._drop(key)
            if len(value) > self.max_bytes:
                return
            self._items[key] = (self._clock(), value)
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def _drop(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])

    @property
    def size_bytes(self) -> int:
        """Total bytes of the cached values."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
