"""k-NN index backends behind one interface; :func:`open_index` picks one from the index URI."""

from serve_app.index.base import Hit, IndexInfo, IndexOpenError, VectorIndex, row_schema


def open_index(uri: str, info: IndexInfo | None = None, **options) -> VectorIndex:
    """Open (or, given ``info``, create if missing) the index at ``uri``.

    ``uri`` is a folder path, ``file://`` or ``s3://`` URI for the embedded LanceDB backend.
    ``options`` are backend settings (see :class:`serve_app.index.lancedb_backend.LanceDBIndex`).

    Raises:
        IndexOpenError: nothing at ``uri`` and no ``info`` to create it with, or a dimension mismatch.
        ValueError: an ``http(s)://`` URI (the OpenSearch backend is not part of this build yet).
    """
    if uri.startswith(("http://", "https://", "opensearch://")):
        raise ValueError(f"index URI {uri!r} names an OpenSearch index; that backend is not available yet. "
                         "Use a folder path for the embedded LanceDB index.")
    from serve_app.index.lancedb_backend import LanceDBIndex

    return LanceDBIndex(uri, info=info, **options)


__all__ = ["Hit", "IndexInfo", "IndexOpenError", "VectorIndex", "open_index", "row_schema"]
