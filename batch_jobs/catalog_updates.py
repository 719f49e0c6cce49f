"""Changing an index without a rebuild, and moving it: ``delete`` and ``export`` (no Ray import).

- :func:`delete_products` removes products by id from the version the alias serves, under the index's lease
  (:func:`serve_app.index.lease`), on either backend. A running Retriever sees it within its re-read interval
  (LanceDB: ``READ_CONSISTENCY_S``, 10 s); deleted rows are never returned (LanceDB marks them deleted in the
  table and its ANN index skips them; OpenSearch deletes the documents and refreshes).
- :func:`export_index` writes every product of a LanceDB index back as Parquet in the layout
  ``ingest --from-embeddings`` reads (``product_id``, ``embedding``, ``phash`` as int64, ``title``, ``image``,
  ``category``, ``price``, ``brand``, ``attributes`` as JSON), so an index can be moved, inspected or rebuilt
  (another ANN type, another backend) without re-embedding.
"""

import io
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa

from serve_app import storage
from serve_app.catalog import ManifestError
from serve_app.index import IndexOpenError, is_opensearch, lease, open_index

DELETE_CHUNK = 1000  # ids per delete call (one SQL IN list / one bulk request)
EXPORT_ROWS_PER_FILE = 100_000  # rows per exported Parquet file (~200 MB at 512-d)
EXPORT_COLUMNS = ("product_id", "title", "category", "brand", "price", "image_url", "attributes", "phash", "vector")


def read_ids(uri: str) -> list[str]:
    """Product ids from a text file (one a line; blank lines and ``#`` comments skipped) or a Parquet file with a
    ``product_id`` column, in order, repeats dropped.

    Raises:
        ManifestError: the file cannot be read, or a Parquet file has no ``product_id`` column.
    """
    try:
        data = storage.read_bytes(uri, max_bytes=1 << 34, timeout_s=300)
    except storage.StorageError as e:
        raise ManifestError(f"cannot read ids file {uri}: {e}") from e
    if uri.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if "product_id" not in table.column_names:
            raise ManifestError(f"{uri} has no product_id column (columns: {table.column_names})")
        ids = [str(v) for v in table.column("product_id").to_pylist() if v is not None]
    else:
        lines = (line.strip() for line in data.decode("utf-8-sig").splitlines())
        ids = [line for line in lines if line and not line.startswith("#")]
    return list(dict.fromkeys(ids))


@dataclass
class DeleteReport:
    """What a delete run did: ids asked for, products deleted (the rest were not in the index), seconds."""

    index: str
    version: str
    requested: int
    deleted: int
    not_found: int
    products_in_index: int
    seconds: float


def delete_products(index: str, product_ids: list[str], lease_wait_s: float = 0.0,
                    chunk: int = DELETE_CHUNK) -> DeleteReport:
    """Delete ``product_ids`` from the version the alias ``index`` serves, holding the index's lease.

    Safe to retry: deleting an id that is gone already counts it as ``not_found``.

    Raises:
        IndexOpenError: nothing at ``index``. LeaseHeld: another run holds the lease (after ``lease_wait_s``).
    """
    started = time.perf_counter()
    with lease(index, f"delete-{uuid.uuid4().hex[:8]}", wait_s=lease_wait_s) as held:
        target = open_index(index)
        deleted = 0
        for start in range(0, len(product_ids), chunk):
            deleted += target.delete(product_ids[start:start + chunk])
            held.check()
        target.finish_bulk_load()  # LanceDB: compact and fold the change into the ANN index; OpenSearch: refresh
        return DeleteReport(index=index, version=target.version, requested=len(product_ids), deleted=deleted,
                            not_found=len(product_ids) - deleted, products_in_index=target.count(),
                            seconds=round(time.perf_counter() - started, 3))


def export_index(index: str, out: str, rows_per_file: int = EXPORT_ROWS_PER_FILE) -> dict:
    """Write every product of the LanceDB index ``index`` under ``out`` as ``part-NNNNN.parquet`` files.

    Returns:
        ``{"index", "version", "model", "dim", "products", "files", "out"}``.

    Raises:
        IndexOpenError: nothing at ``index``, or an OpenSearch index (not supported yet: use its snapshot API).
    """
    import pyarrow.parquet as pq

    if is_opensearch(index):
        raise IndexOpenError("export reads LanceDB indexes only; for OpenSearch use its snapshot API or reindex")
    source = open_index(index)
    dim = source.info.dim
    files = products = 0
    for batch in source.scan_batches(list(EXPORT_COLUMNS), rows_per_file):
        if not batch.num_rows:
            continue
        table = pa.Table.from_batches([batch])
        table = pa.table({"product_id": table.column("product_id"),
                          "embedding": table.column("vector").cast(pa.list_(pa.float32(), dim)),
                          "phash": table.column("phash"), "title": table.column("title"),
                          "image": table.column("image_url"), "category": table.column("category"),
                          "price": table.column("price"), "brand": table.column("brand"),
                          "attributes": table.column("attributes")})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(f"{out.rstrip('/')}/part-{files:05d}.parquet", buffer.getvalue())
        files, products = files + 1, products + table.num_rows
    return {"index": index, "version": source.version, "model": source.info.model_id, "dim": dim,
            "products": products, "files": files, "out": out}
