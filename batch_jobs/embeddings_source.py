"""Precomputed embeddings as the source of an ingestion: Parquet rows → the rows the index sink writes.

``python -m batch_jobs ingest --from-embeddings SRC`` loads vectors computed elsewhere (a GPU cluster, another
tool such as clip-retrieval, an earlier index's ``export``) without embedding anything. ``SRC`` is a Parquet
file, folder, glob or ``s3://`` prefix; each file has:

- ``product_id`` (string, required) and ``embedding`` (list or fixed-size list of floats, ``D`` values, ``D``
  the model's dimension, required);
- optional ``phash`` (16 hex digits as ``imagehash`` prints them, or the signed int64 of
  :mod:`serve_app.phash`), ``title``, ``image``, ``category``, ``price``, ``brand``, ``attributes`` (a JSON
  object as text) and any other column, kept as an attribute.

Each file is read in one task, streamed in blocks of ``rows_per_block`` rows. Bad rows (missing id, missing
embedding, wrong dimension, NaN/inf, the zero vector, an unreadable phash, a ``product_id`` repeated further
down — the later row wins, as in a manifest) get ``error`` and are reported by the sink; vectors that are not
unit length are L2-normalised (counted as ``normalised``). The rows follow
:data:`batch_jobs.manifest.ROW_SCHEMA` plus ``phash``, ``vector`` and ``normalised``, so the manifest's
cross-file duplicate marking, ``--resume``'s skip and the sink work on them unchanged. No Ray import.
"""

import io
import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_jobs.manifest import LINE_BITS, ROW_SCHEMA, last_lines_of_repeats, replaced_by
from serve_app import storage
from serve_app.catalog import ManifestError

NAMED_COLUMNS = ("product_id", "embedding", "phash", "title", "image", "category", "price", "brand", "attributes")
ROWS_PER_BLOCK = 8192  # rows per block: vectors are small next to images, and per-block overheads add up
UNIT_TOLERANCE = 1e-3  # |‖v‖ − 1| above this: the vector is normalised (and counted)


def list_embedding_files(src: str) -> list[str]:
    """The Parquet files ``src`` names (a file, folder, glob or ``s3://`` prefix), sorted.

    Raises:
        ManifestError: nothing matches or the listing fails.
    """
    try:
        files = storage.list_objects(src, (".parquet",))
    except storage.StorageError as e:
        raise ManifestError(f"cannot read embeddings {src}: {e}") from e
    if not files:
        raise ManifestError(f"no .parquet file in {src}")
    return files


def embedding_schema(dim: int) -> pa.Schema:
    """The rows :func:`parse_embedding_file` yields: manifest rows plus ``phash`` (int64, null when the source
    has none), ``vector`` (``fixed_size_list<float32>[dim]``, L2-normalised; zeros in bad rows) and
    ``normalised`` (whether this row's vector was rescaled)."""
    return ROW_SCHEMA.append(pa.field("phash", pa.int64())).append(
        pa.field("vector", pa.list_(pa.float32(), dim))).append(pa.field("normalised", pa.bool_()))


def parse_embedding_file(batch: dict[str, np.ndarray], dim: int, rows_per_block: int = ROWS_PER_BLOCK
                         ) -> Iterator[pa.Table]:
    """Ray Data ``map_batches`` function (``batch_size=1`` over the file list): read one Parquet file and yield
    its rows as :func:`embedding_schema` tables of up to ``rows_per_block`` rows, each valid or with its
    ``error``. A file that cannot be read at all (or lacks a required column) is one bad row at line 0.

    Args:
        batch: ``{"shard": [uri], "index": [file number]}``. dim: the model's embedding dimension ``D``.
    """
    import pyarrow.parquet as pq

    for uri, index in zip(batch["shard"], batch["index"]):
        uri, index = str(uri), int(index)
        try:
            source = storage.local_path(uri) if not uri.startswith(("s3://", "http://", "https://")) else \
                io.BytesIO(storage.read_bytes(uri, max_bytes=1 << 40, timeout_s=600))
            parquet = pq.ParquetFile(source)
            missing = [c for c in ("product_id", "embedding") if c not in parquet.schema_arrow.names]
            if missing:
                raise ManifestError(f"no {' or '.join(missing)} column (columns: {parquet.schema_arrow.names})")
            winners = _last_lines(parquet.read(columns=["product_id"]).column("product_id"))
            line = 1
            for record_batch in parquet.iter_batches(batch_size=rows_per_block):
                yield rows_of(pa.Table.from_batches([record_batch]), dim, uri, index, line, winners)
                line += record_batch.num_rows
        except (storage.StorageError, ManifestError, pa.ArrowException, OSError, ValueError) as e:
            yield _file_error(uri, index, dim, f"cannot read embeddings file: {e}")


def rows_of(table: pa.Table, dim: int, shard: str, index: int, first_line: int,
            winners: dict[str, int] | None = None) -> pa.Table:
    """One block of a source file as :func:`embedding_schema` rows (see the module docstring for the checks).

    Args:
        table: source rows. dim: ``D``. shard, index: the file's URI and number. first_line: line of the first
            row (1-based). winners: ``product_id`` → the line of its last row in the file, for ids it repeats.
    """
    n = table.num_rows
    errors: list[str | None] = [None] * n
    ids = table.column("product_id").cast(pa.string()).combine_chunks()
    for i in np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False) |
                            (pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(ids, ""))).to_numpy() == 0)):
        errors[i] = "missing product_id"
    vectors, normalised = _vectors(table.column("embedding").combine_chunks(), dim, errors)
    phash = _phashes(table, errors)
    lines = np.arange(first_line, first_line + n, dtype=np.int64)
    for i in np.flatnonzero(pc.is_in(ids, value_set=pa.array(list(winners or {}), pa.string())).to_numpy(
            zero_copy_only=False)) if winners else ():
        if errors[i] is None and winners[ids[i].as_py()] != lines[i]:
            errors[i] = replaced_by(shard, winners[ids[i].as_py()])
    columns = {name: _text_column(table, name, n) for name in ("title", "image", "category", "brand")}
    price = table.column("price").cast(pa.float64()) if "price" in table.column_names else pa.nulls(n, pa.float64())
    return pa.table({
        "product_id": ids, **{k: columns[k] for k in ("title", "image", "category")}, "price": price,
        "brand": columns["brand"], "attributes": _attributes(table), "shard": pa.array([shard] * n, pa.string()),
        "line": lines, "order": (np.int64(index) << LINE_BITS) | lines, "error": pa.array(errors, pa.string()),
        "phash": phash, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "normalised": pa.array(normalised),
    }, schema=embedding_schema(dim))


def _vectors(column: pa.Array, dim: int, errors: list) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(N, dim)`` L2-normalised vectors (zeros where the row is bad) and the ``normalised`` mask;
    ``errors`` gets each bad row's reason."""
    n = len(column)
    out = np.zeros((n, dim), np.float32)
    normalised = np.zeros(n, bool)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise ManifestError(f"the embedding column must be a list of floats, got {column.type}")
    lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy()
    for i in np.flatnonzero(lengths != dim):
        if errors[i] is None:
            errors[i] = "missing embedding" if lengths[i] < 0 else f"embedding has {lengths[i]} values, expected {dim}"
    ok = np.flatnonzero(lengths == dim)
    if len(ok):
        values = pc.list_flatten(column.take(pa.array(ok))).cast(pa.float32()).fill_null(np.nan)
        block = values.to_numpy(zero_copy_only=False).reshape(len(ok), dim)
        finite = np.isfinite(block).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], block, 0), axis=1)
        for j in np.flatnonzero(~finite | (norms == 0)):
            if errors[ok[j]] is None:
                errors[ok[j]] = "embedding has NaN or infinite values" if not finite[j] else "embedding is the zero vector"
        good = finite & (norms > 0)
        out[ok[good]] = block[good] / norms[good, None]
        normalised[ok[good]] = np.abs(norms[good] - 1) > UNIT_TOLERANCE
    return out, normalised


def _phashes(table: pa.Table, errors: list) -> pa.Array:
    """int64 pHashes from an int column or 16-hex-digit strings (null where absent); bad ones go to ``errors``."""
    n = table.num_rows
    if "phash" not in table.column_names:
        return pa.nulls(n, pa.int64())
    column = table.column("phash").combine_chunks()
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    values: list[int | None] = []
    for i, text in enumerate(column.cast(pa.string()).to_pylist()):
        if text is None:
            values.append(None)
            continue
        try:
            if len(text.strip()) != 16:
                raise ValueError
            unsigned = int(text.strip(), 16)
            values.append(unsigned - (1 << 64) if unsigned >= (1 << 63) else unsigned)
        except ValueError:
            values.append(None)
            if errors[i] is None:
                errors[i] = f"phash {text!r} is not 16 hex digits"
    return pa.array(values, pa.int64())


def _text_column(table: pa.Table, name: str, n: int) -> pa.Array:
    return table.column(name).cast(pa.string()).combine_chunks() if name in table.column_names \
        else pa.nulls(n, pa.string())


def _attributes(table: pa.Table) -> pa.Array:
    """Every column not named in :data:`NAMED_COLUMNS`, plus an ``attributes`` JSON column, as one JSON object
    per row (``"{}"`` when there are none)."""
    extra = [c for c in table.column_names if c not in NAMED_COLUMNS]
    given = table.column("attributes").cast(pa.string()).to_pylist() if "attributes" in table.column_names else None
    if not extra and given is None:
        return pa.array(["{}"] * table.num_rows, pa.string())
    rows = table.select(extra).to_pylist() if extra else [{} for _ in range(table.num_rows)]
    out = []
    for i, row in enumerate(rows):
        base = json.loads(given[i]) if given and given[i] else {}
        out.append(json.dumps(base | {k: v for k, v in row.items() if v is not None}, sort_keys=True, default=str))
    return pa.array(out, pa.string())


def _last_lines(ids: pa.ChunkedArray) -> dict[str, int]:
    """``product_id`` → line (1-based) of its last row, for the ids that occur more than once in one file."""
    return last_lines_of_repeats(ids.cast(pa.string()), pa.array(np.arange(1, len(ids) + 1, dtype=np.int64)))


def _file_error(uri: str, index: int, dim: int, reason: str) -> pa.Table:
    """One bad row (line 0) standing for a whole file that could not be read."""
    return pa.table({"product_id": [None], "title": [None], "image": [None], "category": [None], "price": [None],
                     "brand": [None], "attributes": ["{}"], "shard": [uri], "line": [0], "order": [index << LINE_BITS],
                     "error": [reason], "phash": [None],
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(dim, np.float32)), dim),
                     "normalised": [False]}, schema=embedding_schema(dim))


def embedding_rows(files: list[str], dim: int, rows_per_block: int = ROWS_PER_BLOCK, **ray_remote_args):
    """Every row of ``files`` as a Ray Data dataset of :func:`embedding_schema` rows (good and bad), ids repeated
    across files marked (:func:`batch_jobs.manifest.duplicate_winners`, only for several files)."""
    import ray

    from batch_jobs.manifest import duplicate_winners, mark_duplicates

    listing = ray.data.from_items([{"shard": f, "index": i} for i, f in enumerate(files)],
                                  override_num_blocks=len(files))
    ds = listing.map_batches(parse_embedding_file, batch_size=1, batch_format="numpy", num_cpus=0.25,
                             fn_kwargs={"dim": dim, "rows_per_block": rows_per_block}, **ray_remote_args)
    if len(files) == 1:
        return ds
    ds = ds.materialize()
    winners = duplicate_winners(ds, partitions=max(2, min(32, len(files))))
    if winners:
        ds = ds.map_batches(mark_duplicates, batch_size=None, batch_format="pyarrow",
                            fn_kwargs={"winners": winners, "shards": files}, num_cpus=0.1)
    return ds
