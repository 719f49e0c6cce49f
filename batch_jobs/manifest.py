"""The catalog manifest as a Ray Data dataset: shards listed on the driver, read, parsed and validated in the
workers, duplicate ``product_id``\\s found across shards with a Ray Data group-by.

``--catalog`` names one file, a folder, a glob or an ``s3://`` prefix of JSON Lines (``.jsonl``/``.ndjson``/
``.json``), CSV (``.csv``) or Parquet (``.parquet``) shards, mixed freely. The driver only lists the shard
names. One Ray task per shard reads it (:mod:`serve_app.storage`: local, ``s3://``, ``http(s)://``) and yields
blocks of :data:`ROWS_PER_BLOCK` validated rows; every row keeps its ``shard`` and 1-based ``line`` (the data row
of a Parquet shard), and a row that fails validation keeps its ``error``: it is a bad row of the report, never
an exception. Ray Data's own JSON and CSV readers are not used for this step because they fail a whole file on
its first malformed line; ours makes that line a bad row.

Duplicates: a later row updates an earlier one (shards in sorted order, then lines), as in one file. Within a
shard the task that parses it marks every row but the last of a repeated id (:func:`mark_repeats_within`), so a
one-file catalog streams straight into ingestion. Across shards, :func:`duplicate_winners` groups the
``product_id`` column of all shards (``Dataset.groupby``: a distributed hash shuffle, so the driver receives
only the ids that occur in more than one shard) and :func:`mark_duplicates` turns every row but the last of each
such id into a bad row; :func:`catalog_rows` does the whole step.
"""

import io
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app import storage
from serve_app.catalog import ManifestError, parse_lines, to_product

SHARD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Rows per block out of the parse step. Ingestion streams at block granularity (a load task decodes a whole
# block before the CLIP actors see any of it), so its blocks are small: 128 rows keep every stage busy from the
# first seconds. A dry run only counts, so it takes 8,192 (a 1M-row catalog is 123 blocks, not 7,800).
ROWS_PER_BLOCK = 128
VALIDATE_ROWS_PER_BLOCK = 8192
# Rows a write task gathers (Ray Data bundles blocks up to this) before one append + one Parquet file. Every
# append is a Lance commit (a manifest and a version) and each write call a task, so larger writes cost less
# CPU; smaller ones make a killed run's finished work durable sooner (``--resume`` skips what was written).
ROWS_PER_WRITE = 256
MAX_LISTED_BAD_ROWS = 10_000  # bad rows a report lists (all are counted)
MAX_SHARD_BYTES = 2 * 1024**3  # one shard is read whole by one task
LINE_BITS = 40  # order = shard index << LINE_BITS | line: one sortable int64 per row

ROW_SCHEMA = pa.schema([("product_id", pa.string()), ("title", pa.string()), ("image", pa.string()),
                        ("category", pa.string()), ("price", pa.float64()), ("brand", pa.string()),
                        ("attributes", pa.string()), ("shard", pa.string()), ("line", pa.int64()),
                        ("order", pa.int64()), ("error", pa.string())])


def shard_format(uri: str) -> str:
    """``"jsonl"``, ``"csv"`` or ``"parquet"`` from a shard's extension.

    Raises:
        ManifestError: any other extension.
    """
    lower = uri.lower().split("?")[0]
    for suffix, fmt in SHARD_SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    raise ManifestError(f"unknown manifest format for {uri!r}: expected {', '.join(SHARD_SUFFIXES)}")


def list_shards(catalog: str) -> list[str]:
    """The shards ``catalog`` names (a file, folder, glob or ``s3://`` prefix), sorted.

    Raises:
        ManifestError: nothing matches, a listing fails, or a named file has an unknown extension.
    """
    try:
        shards = storage.list_objects(catalog, tuple(SHARD_SUFFIXES))
    except storage.StorageError as e:
        raise ManifestError(f"cannot read catalog manifest {catalog}: {e}") from e
    for shard in shards:
        shard_format(shard)
    return shards


def _raw_rows(data: bytes, fmt: str) -> Iterator[tuple[int, dict | str]]:
    """``(line, raw row dict or error message)`` for each row of one shard's bytes."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        for number, row in enumerate(table.to_pylist(), start=1):
            yield number, {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and
                                                                                 math.isnan(v))}
        return
    yield from parse_lines(data.decode("utf-8-sig"), fmt)


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


class _Rows:
    """Columns of :data:`ROW_SCHEMA` rows of one shard, filled row by row, emptied into a table."""

    def __init__(self, uri: str, index: int):
        self.uri, self.index = uri, index
        self.columns: dict[str, list] = {name: [] for name in ROW_SCHEMA.names}

    def __len__(self) -> int:
        return len(self.columns["line"])

    def add(self, line: int, product: dict | None, raw: dict | None, error: str | None) -> None:
        values = product or {k: _text(raw.get(k)) if raw else None for k in ("product_id", "image")}
        for name in ("product_id", "title", "image", "category", "price", "brand", "attributes"):
            self.columns[name].append(values.get(name))
        self.columns["shard"].append(self.uri)
        self.columns["line"].append(line)
        self.columns["order"].append(self.index << LINE_BITS | line)
        self.columns["error"].append(error)

    def take(self) -> pa.Table:
        table = pa.Table.from_pydict(self.columns, schema=ROW_SCHEMA)
        self.columns = {name: [] for name in ROW_SCHEMA.names}
        return table


def parse_shard(batch: dict[str, np.ndarray], rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[pa.Table]:
    """Ray Data ``map_batches`` function (``batch_size=1`` over the shard list): read one shard and yield its
    rows in :data:`ROW_SCHEMA` tables of up to ``rows_per_block`` rows, each valid or with its ``error``. A
    ``product_id`` repeated within the shard keeps its last row; the earlier ones are bad rows
    (:func:`mark_repeats_within`), so only ids repeated *across* shards need :func:`duplicate_winners`.

    Args:
        batch: ``{"shard": [uri], "index": [shard number]}``.
    """
    for uri, index in zip(batch["shard"], batch["index"]):
        rows = _Rows(str(uri), int(index))
        try:
            data = storage.read_bytes(rows.uri, max_bytes=MAX_SHARD_BYTES, timeout_s=60)
            for line, raw in _raw_rows(data, shard_format(rows.uri)):
                if isinstance(raw, str):
                    rows.add(line, None, None, raw)
                else:
                    try:
                        p = to_product(raw, rows.uri)
                        rows.add(line, {"product_id": p.product_id, "title": p.title, "image": p.image,
                                        "category": p.category, "price": p.price, "brand": p.brand,
                                        "attributes": json.dumps(p.attributes, sort_keys=True)}, None, None)
                    except ValueError as e:
                        rows.add(line, None, raw, str(e))
            del data
        except (storage.StorageError, ManifestError, UnicodeDecodeError, pa.ArrowException, OSError) as e:
            rows = _Rows(str(uri), int(index))  # the whole shard: one bad row
            rows.add(0, None, None, f"cannot read shard: {type(e).__name__}: {e}")
        table = mark_repeats_within(rows.take())
        for start in range(0, table.num_rows, rows_per_block):
            yield table.slice(start, rows_per_block)


def replaced_by(shard: str, line: int) -> str:
    """The reason given for a row whose ``product_id`` a later row (``shard``, ``line``) replaces."""
    return f"duplicate product_id; {shard} line {line} replaces it"


def last_lines_of_repeats(ids, lines) -> dict[str, int]:
    """``product_id`` → the largest of its ``lines``, for the non-null ids that occur more than once (Arrow
    arrays of equal length)."""
    import pyarrow.compute as pc

    last = pa.table({"product_id": ids, "line": lines}).group_by("product_id").aggregate(
        [("line", "max"), ("line", "count")])
    last = last.filter(pc.and_(pc.is_valid(last.column("product_id")), pc.greater(last.column("line_count"), 1)))
    return dict(zip(last.column("product_id").to_pylist(), last.column("line_max").to_pylist()))


def mark_repeats_within(table: pa.Table) -> pa.Table:
    """Rows of one shard (``ROW_SCHEMA``, in line order) whose valid ``product_id`` occurs again further down get
    ``error`` naming the line that replaces them (a later row updates an earlier one, as in one file)."""
    import pyarrow.compute as pc

    valid = pc.is_null(table.column("error"))
    ids = pc.if_else(valid, table.column("product_id"), pa.scalar(None, pa.string()))
    winners = last_lines_of_repeats(ids, table.column("line"))
    if not winners:
        return table
    errors = table.column("error").to_pylist()
    for i, (pid, line) in enumerate(zip(ids.to_pylist(), table.column("line").to_pylist())):
        if pid in winners and winners[pid] != line:
            errors[i] = replaced_by(table.column("shard")[i].as_py(), winners[pid])
    return table.set_column(table.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))


def read_catalog(shards: list[str], num_cpus: float = 0.25, rows_per_block: int = ROWS_PER_BLOCK,
                 **ray_remote_args):
    """The validated rows of ``shards`` (from :func:`list_shards`) as a Ray Data dataset of :data:`ROW_SCHEMA`
    rows (good and bad), lazily, in blocks of up to ``rows_per_block`` rows (``ray_remote_args``: e.g. the
    runtime_env that points workers at S3)."""
    import ray

    listing = ray.data.from_items([{"shard": s, "index": i} for i, s in enumerate(shards)],
                                  override_num_blocks=len(shards))
    parsed = listing.map_batches(parse_shard, batch_size=1, batch_format="numpy", num_cpus=num_cpus,
                                 fn_kwargs={"rows_per_block": rows_per_block}, **ray_remote_args)
    # A task's outputs are merged into blocks of up to 128 MiB: split them again (a streaming split, no shuffle).
    return parsed.repartition(target_num_rows_per_block=rows_per_block)


def catalog_rows(catalog: str, rows_per_block: int = ROWS_PER_BLOCK, shards: list[str] | None = None,
                 **ray_remote_args):
    """Every row of ``catalog`` (:data:`ROW_SCHEMA`, good and bad), duplicates marked, as a Ray Data dataset and
    the shard list (``shards``: the listing the caller already made, else the catalog is listed here).

    One shard: lazy and streaming (its parse task marks its own repeats). Several: the parsed rows are
    materialised in the object store (not on the driver) and grouped by ``product_id`` once to find the ids
    repeated across shards — a blocking step of a few seconds before the first image is loaded.

    Raises:
        ManifestError: ``catalog`` names no shard (see :func:`list_shards`).
    """
    shards = shards if shards is not None else list_shards(catalog)
    ds = read_catalog(shards, rows_per_block=rows_per_block, **ray_remote_args)
    if len(shards) == 1:
        return ds, shards
    ds = ds.materialize()
    winners = duplicate_winners(ds, partitions=max(2, min(32, len(shards))))
    if winners:
        ds = ds.map_batches(mark_duplicates, batch_size=None, batch_format="pyarrow",
                            fn_kwargs={"winners": winners, "shards": shards}, num_cpus=0.1)
    return ds, shards


def mark_done(batch: pa.Table, done) -> pa.Table:
    """Ray Data ``map_batches`` function (``batch_format="pyarrow"``): valid rows whose ``product_id`` is in
    ``done`` (an object ref of a list of ids, fetched once per worker process, or the list) get ``error``
    :data:`ALREADY_INDEXED`, so the stages pass them by and the sink counts them apart from bad rows."""
    import pyarrow.compute as pc
    import ray

    if isinstance(done, ray.ObjectRef):
        if _DONE_CACHE.get("key") != done.hex():
            _DONE_CACHE.update(key=done.hex(), ids=pa.array(ray.get(done), pa.string()))
        ids = _DONE_CACHE["ids"]
    else:
        ids = pa.array(list(done), pa.string())
    hit = pc.and_(pc.is_null(batch.column("error")),
                  pc.is_in(batch.column("product_id"), value_set=ids))
    if not pc.any(hit).as_py():
        return batch
    errors = pc.if_else(hit, pa.scalar(ALREADY_INDEXED, pa.string()), batch.column("error"))
    return batch.set_column(batch.schema.get_field_index("error"), "error", errors)


ALREADY_INDEXED = "already indexed by the run this one resumes"
_DONE_CACHE: dict = {}


def valid_rows(batch: pa.Table) -> pa.Table:
    """Ray Data ``map_batches`` function (``batch_format="pyarrow"``): the rows without an ``error``."""
    import pyarrow.compute as pc

    return batch.filter(pc.is_null(batch.column("error")))


def bad_rows(batch: pa.Table) -> pa.Table:
    """Ray Data ``map_batches`` function (``batch_format="pyarrow"``): the rows with an ``error``."""
    import pyarrow.compute as pc

    return batch.filter(pc.is_valid(batch.column("error")))


def _repeated(batch: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.greater(batch.column("count()"), 1))


def duplicate_winners(ds, partitions: int = 2) -> dict[str, int]:
    """``product_id`` → ``order`` of its last row, for the valid ids that occur more than once (only those
    reach the driver: a distributed group-by into ``partitions`` hash partitions — Ray's default of 200 costs
    ~15 s of task overhead on 2 cores even for a small catalog)."""
    from ray.data.aggregate import Count, Max

    valid = ds.map_batches(valid_rows, batch_size=None, batch_format="pyarrow", num_cpus=0.1)
    grouped = valid.select_columns(["product_id", "order"]).groupby("product_id", num_partitions=partitions).aggregate(
        Count(), Max("order"))
    repeated = grouped.map_batches(_repeated, batch_size=None, batch_format="pyarrow", num_cpus=0.1)
    return {r["product_id"]: int(r["max(order)"]) for r in repeated.iter_rows()}


def mark_duplicates(batch: pa.Table, winners: dict[str, int], shards: list[str]) -> pa.Table:
    """Ray Data ``map_batches`` function (``batch_format="pyarrow"``): rows of a repeated ``product_id`` other
    than its last one get ``error`` naming the row that replaces them (``shards``: the shard list, in order)."""
    if not winners:
        return batch
    ids, orders, errors = (batch.column(c).to_pylist() for c in ("product_id", "order", "error"))
    changed = False
    for i, (pid, order, error) in enumerate(zip(ids, orders, errors)):
        if error is None and pid in winners and winners[pid] != order:
            errors[i] = replaced_by(shards[winners[pid] >> LINE_BITS], winners[pid] & ((1 << LINE_BITS) - 1))
            changed = True
    if not changed:
        return batch
    return batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))


def bad_row(row: dict) -> dict:
    """A report entry for a bad row: shard, line, product id, image, reason."""
    return {"shard": row["shard"], "line": int(row["line"]), "product_id": row.get("product_id"),
            "image": row.get("image"), "reason": row["error"]}
