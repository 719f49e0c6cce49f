"""k-NN index backends behind one interface; :func:`open_index` picks one from the index URI.

- a folder path, ``file://`` or ``s3://`` URI → the embedded LanceDB backend;
- ``http(s)://host:port/<alias>``, ``opensearch://…`` (HTTPS) or ``opensearch+http://…`` → OpenSearch.
"""

from serve_app.index.base import Hit, IndexInfo, IndexOpenError, VectorIndex, product_table, row_schema


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


def open_index(uri: str, info: IndexInfo | None = None, **options) -> VectorIndex:
    """Open the version the alias at ``uri`` points at (given ``info``, create and publish a first one if
    there is none). ``options`` are backend settings (``version=`` opens one physical version; see
    :class:`~serve_app.index.lancedb_backend.LanceDBIndex`, :class:`~serve_app.index.opensearch_backend.OpenSearchIndex`).

    Raises:
        IndexOpenError: nothing at ``uri`` and no ``info``; a dimension mismatch; refused credentials.
        ValueError: a malformed OpenSearch URI.
    """
    return _backend(uri)(uri, info=info, **options)


def create_version(uri: str, info: IndexInfo, **options) -> VectorIndex:
    """A new, empty physical index version for ``info``'s model under the alias ``uri``; search keeps using the
    current version until the returned handle's :meth:`~VectorIndex.publish` switches the alias."""
    return _backend(uri).create_version(uri, info, **options)


__all__ = ["Hit", "IndexInfo", "IndexOpenError", "VectorIndex", "create_version", "is_opensearch", "open_index",
           "product_table", "row_schema"]
