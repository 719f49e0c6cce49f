"""k-NN index backends behind one interface; :func:`open_index` picks one from the index URI.

- a folder path, ``file://`` or ``s3://`` URI → the embedded LanceDB backend;
- ``http(s)://host:port/<alias>``, ``opensearch://…`` (HTTPS) or ``opensearch+http://…`` → OpenSearch.

:func:`lease` takes the alias's ingestion lease, kept where the backend keeps the alias.
"""

from contextlib import AbstractContextManager

from serve_app.index.base import (Hit, IndexInfo, IndexOpenError, IndexReader, IndexWriter, VectorIndex, product_table,
                                  row_schema)
from serve_app.index.lease import DEFAULT_POLL_S, DEFAULT_TTL_S, DEFAULT_WAIT_S, Lease, LeaseHeld, LeaseLost, hold


def is_opensearch(uri: str) -> bool:
    """Whether ``uri`` names an OpenSearch index (see module doc)."""
    from serve_app.index.opensearch_backend import SCHEMES

    return uri.startswith(SCHEMES)


def _backend(uri: str):
    if is_opensearch(uri):
        from serve_app.index.opensearch_backend import OpenSearchIndex

        return OpenSearchIndex
    from serve_app.index.lancedb_backend import LanceDBIndex

    return LanceDBIndex


def check_options(uri: str, options: dict) -> None:
    """Refuse settings the backend of ``uri`` does not have (a LanceDB option given for an OpenSearch index, or
    the other way round) instead of dropping them silently.

    Raises:
        ValueError: the message names the unknown options, the backend and the options it has.
    """
    import inspect

    backend = _backend(uri)
    valid = [p for p in inspect.signature(backend.__init__).parameters if p not in ("self", "uri", "info", "version")]
    unknown = sorted(set(options) - set(valid) - {"version"})
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not option(s) of the {backend.__name__} backend that serves {uri}; "
                         f"its options are {valid}")


def open_index(uri: str, info: IndexInfo | None = None, **options) -> VectorIndex:
    """Open the version the alias at ``uri`` points at (given ``info``, create and publish a first one if
    there is none). ``options`` are backend settings (``version=`` opens one physical version; see
    :class:`~serve_app.index.lancedb_backend.LanceDBIndex`, :class:`~serve_app.index.opensearch_backend.OpenSearchIndex`).

    Raises:
        IndexOpenError: nothing at ``uri`` and no ``info``; a dimension mismatch; refused credentials.
        ValueError: a malformed OpenSearch URI; an option the backend does not have (:func:`check_options`).
    """
    check_options(uri, options)
    return _backend(uri)(uri, info=info, **options)


def create_version(uri: str, info: IndexInfo, **options) -> VectorIndex:
    """A new, empty physical index version for ``info``'s model under the alias ``uri``; search keeps using the
    current version until the returned handle's :meth:`~VectorIndex.publish` switches the alias."""
    check_options(uri, options)
    return _backend(uri).create_version(uri, info, **options)


def unpublished_versions(uri: str, info: IndexInfo) -> list[str]:
    """The versions of ``info``'s model that killed or failed runs left unpublished under the alias ``uri``,
    oldest first (what ``ingest --resume`` continues).

    Raises:
        IndexOpenError: the backend cannot resume (OpenSearch: not yet).
    """
    if is_opensearch(uri):
        raise IndexOpenError("--resume is supported for LanceDB indexes only (OpenSearch: run again; bulk "
                             "indexing by product id makes a re-run idempotent)")
    from serve_app.index.lancedb_backend import unpublished_versions as lancedb_unpublished

    return lancedb_unpublished(uri, info)


def lease(uri: str, run_id: str, ttl_s: float = DEFAULT_TTL_S, wait_s: float = DEFAULT_WAIT_S,
          poll_s: float = DEFAULT_POLL_S) -> AbstractContextManager[Lease]:
    """Hold the alias ``uri``'s ingestion lease for ``run_id`` inside a ``with`` block (released on exit, also on
    an exception; renewed every ``ttl_s / 3`` seconds meanwhile). At most one holder at a time per alias: a lock
    file beside the LanceDB alias file, a conditional PUT on S3, an ``op_type=create`` document on OpenSearch.

    Args:
        uri: index URI, as for :func:`open_index`. run_id: names this run in the messages of other runs.
        ttl_s: seconds the lease outlives its holder's last renewal (a crashed run blocks the alias this long).
        wait_s: 0 refuses at once when another run holds the lease; else seconds to wait for it.
        poll_s: seconds between looks while waiting.

    Raises:
        LeaseHeld: another run still holds it after ``wait_s`` (the message names that run and its expiry).
        ValueError: a bad ``ttl_s``/``wait_s``, or a malformed OpenSearch URI.
        IndexOpenError: OpenSearch refused the credentials or cannot be reached.
        StorageError: S3 or the local folder could not be written.
    """
    return hold(_backend(uri).lease_store(uri), run_id, ttl_s, wait_s, poll_s)


__all__ = ["Hit", "IndexInfo", "IndexOpenError", "IndexReader", "IndexWriter", "Lease", "LeaseHeld", "LeaseLost",
           "VectorIndex", "create_version", "is_opensearch", "lease", "open_index", "product_table", "row_schema",
           "unpublished_versions"]
