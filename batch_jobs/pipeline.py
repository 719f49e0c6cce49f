"""Catalog ingestion with Ray Data: manifest → load/decode/hash → CLIP embed (actor pool) → index sink.

The same code runs on a laptop (a local Ray started here) and on a KubeRay cluster (``RAY_ADDRESS`` set, or
submitted as a RayJob). On a 2-core machine every task and actor asks for a fraction of a CPU; the embed
actors still use every core through torch's intra-op threads.
"""

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from batch_jobs.manifest import (MAX_LISTED_BAD_ROWS, ROWS_PER_BLOCK, ROWS_PER_WRITE, bad_row, bad_rows,
                                 catalog_rows, list_shards, mark_done)
from serve_app import storage
from serve_app.index import IndexInfo, create_version, is_opensearch, lease, open_index
from serve_app.index.lease import DEFAULT_TTL_S, DEFAULT_WAIT_S

log = logging.getLogger("visual_search.ingest")
# A run whose bad rows (manifest rows and images that failed) exceed this share of the manifest does not publish:
# one bad row in ten means something is wrong with the catalog or its storage (expired credentials, a moved
# bucket), and swapping the alias to a gutted index would be worse than keeping the previous one.
DEFAULT_MAX_BAD_FRACTION = 0.1


@dataclass
class IngestOptions:
    """Knobs of one ingestion run; the defaults suit a 2-core laptop (see configs/ingest.yaml)."""

    model: str
    dtype: str = "float32"  # float32 | bfloat16 (torch) | int8 (onnx)
    runtime: str = "torch"  # torch | onnx (ONNX Runtime, CPU)
    batch_size: int = 16
    embed_actors: int = 1
    embed_num_cpus: float = 0.5
    embed_num_gpus: float = 0.0  # GPUs per CLIP actor (1 on a GPU node group); the actor then runs on CUDA
    embed_threads: int | None = None
    load_num_cpus: float = 0.25
    load_concurrency: int = 2
    # fetch/decode/preprocess inside the CLIP actors (LoadAndEmbed) instead of separate load tasks; None: when
    # the actors run on CPU (embed_num_gpus 0), where the two would otherwise compete for the same cores
    load_in_embed_actor: bool | None = None
    max_image_bytes: int = storage.DEFAULT_MAX_BYTES
    fetch_timeout_s: float = storage.DEFAULT_TIMEOUT_S
    ann_min_rows: int = 50_000  # LanceDB: build the ANN index after a bulk load from this many products
    ann_index_type: str = "IVF_HNSW_SQ"  # LanceDB: IVF_HNSW_SQ | IVF_HNSW_PQ | IVF_PQ | IVF_FLAT
    ann_partitions: int | None = None  # LanceDB: IVF partitions (None: sqrt(N))
    ann_sub_vectors: int | None = None  # LanceDB *_PQ: PQ sub-vectors (None: D / 16)
    flag_duplicates: int | None = None  # report products within this many pHash bits of an indexed one
    mode: str = "new-version"  # "new-version": build a new index version, then switch the alias; "upsert": in place
    keep_versions: int = 2  # index versions kept after a switch (the new one and the one it replaced)
    hnsw_m: int = 16  # OpenSearch faiss HNSW graph degree
    hnsw_ef_construction: int = 128  # OpenSearch faiss HNSW build-time candidate list
    hnsw_ef_search: int = 100  # OpenSearch faiss HNSW query-time candidate list (index setting)
    knn_mode: str | None = None  # OpenSearch knn_vector mode: in_memory | on_disk (None: the engine's default)
    compression_level: str | None = None  # OpenSearch knn_vector compression with faiss: 1x 2x 8x 16x 32x
    lease_ttl_s: float = DEFAULT_TTL_S  # seconds a crashed run keeps the index's lease (renewed every ttl/3)
    lease_wait_s: float = DEFAULT_WAIT_S  # seconds to wait while another run holds it (0: refuse at once)
    write_concurrency: int = 2  # index writer tasks (LanceDB appends to a new version, OpenSearch bulk)
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION  # more bad rows than this share of the manifest: no publish
    resume: bool = False  # continue the newest unpublished version a killed or failed run left behind
    rows_per_block: int = ROWS_PER_BLOCK  # manifest rows per block: the unit an actor (or load task) loads
    rows_per_write: int = ROWS_PER_WRITE  # rows per index append (one Lance commit) and Parquet file

    def __post_init__(self):
        valid = {"torch": ("float32", "bfloat16"), "onnx": ("float32", "int8")}
        if self.dtype not in valid.get(self.runtime, ()):
            raise ValueError(f"runtime {self.runtime!r} with dtype {self.dtype!r}: the runtimes are "
                             f"{ {r: list(d) for r, d in valid.items()} }")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.keep_versions < 2:
            raise ValueError(f"keep_versions must be at least 2 (the new version and the previous one), got "
                             f"{self.keep_versions}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be within [0, 1], got {self.max_bad_fraction}")
        if min(self.write_concurrency, self.rows_per_block, self.rows_per_write) < 1:
            raise ValueError(f"write_concurrency, rows_per_block and rows_per_write must be at least 1, got "
                             f"{self.write_concurrency}, {self.rows_per_block} and {self.rows_per_write}")
        if self.resume and self.mode != "new-version":
            raise ValueError("resume continues an unpublished new version: it needs mode 'new-version'")
        if self.lease_ttl_s <= 0 or self.lease_wait_s < 0:
            raise ValueError(f"lease_ttl_s must be > 0 and lease_wait_s >= 0 (seconds), got {self.lease_ttl_s} "
                             f"and {self.lease_wait_s}")

    @classmethod
    def from_config(cls, path: str | os.PathLike | None = None, **overrides) -> "IngestOptions":
        """The options of a run: the YAML file at ``path`` (``configs/ingest.yaml``; none: the defaults), then
        ``VS_MODEL``/``VS_DTYPE``/``VS_RUNTIME`` from the environment, then every override that is not ``None``
        (the command line's flags). The model defaults to :data:`serve_app.embedding.DEFAULT_MODEL`.

        Raises:
            ValueError: the file has keys that are not options (the message lists the valid ones), or the
                options are inconsistent (see :class:`IngestOptions`).
        """
        import yaml

        from serve_app.embedding import DEFAULT_MODEL

        config = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
        valid = {f.name for f in fields(cls)}
        unknown = set(config) - valid
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in {path}; valid keys: {sorted(valid)}")
        for key, env in (("model", "VS_MODEL"), ("dtype", "VS_DTYPE"), ("runtime", "VS_RUNTIME")):
            if os.environ.get(env):
                config[key] = os.environ[env]
        config |= {k: v for k, v in overrides.items() if v is not None}
        config.setdefault("model", DEFAULT_MODEL)
        return cls(**config)

    @property
    def loads_in_embed_actor(self) -> bool:
        """Whether the CLIP actors load their own images (:class:`batch_jobs.stages.LoadAndEmbed`)."""
        return self.embed_num_gpus == 0 if self.load_in_embed_actor is None else self.load_in_embed_actor

    def index_options(self, uri: str) -> dict:
        """Backend settings for index ``uri`` (HNSW and compression for OpenSearch, the ANN index for LanceDB).

        Raises:
            ValueError: an option of the other backend was set (not left at its default): it names the option.
        """
        if is_opensearch(uri):
            self._refuse(LANCEDB_OPTIONS, "LanceDB", uri)
            return {"m": self.hnsw_m, "ef_construction": self.hnsw_ef_construction, "ef": self.hnsw_ef_search,
                    "mode": self.knn_mode, "compression_level": self.compression_level}
        self._refuse(OPENSEARCH_OPTIONS, "OpenSearch", uri)
        return {"ann_min_rows": self.ann_min_rows, "ann_index_type": self.ann_index_type,
                "ann_partitions": self.ann_partitions, "ann_sub_vectors": self.ann_sub_vectors}

    def _refuse(self, names: tuple[str, ...], backend: str, uri: str) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        changed = [n for n in names if getattr(self, n) != defaults[n]]
        if changed:
            raise ValueError(f"{', '.join(changed)}: {backend}-only option(s), but {uri} is not a {backend} index; "
                             "remove them from the config or the command line")


MODES = ("new-version", "upsert")
LANCEDB_OPTIONS = ("ann_min_rows", "ann_index_type", "ann_partitions", "ann_sub_vectors")
OPENSEARCH_OPTIONS = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "knn_mode", "compression_level")
# Where the workers find S3 and OpenSearch. A local Ray's workers may have started before the caller set these,
# so they travel with the tasks (on KubeRay the pods have them anyway). None of them is a secret: Ray writes a
# runtime_env to its logs and keeps it in the cluster's metadata. Credentials (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, VS_OPENSEARCH_USER/PASSWORD) reach workers only through the
# environment Ray itself starts in: the one this process has when it starts a local Ray, the pods' Secrets on
# KubeRay, or an instance role.
WORKER_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "VS_S3_ENDPOINT_URL",
              "VS_OPENSEARCH_CA_CERTS", "VS_OPENSEARCH_VERIFY_CERTS")


def worker_runtime_env() -> dict:
    """``{"runtime_env": {"env_vars": ...}}`` with the :data:`WORKER_ENV` variables set here ({} if none) —
    endpoints, region and TLS settings, never credentials.

    Only for a Ray on this machine (no ``RAY_ADDRESS``): on a remote cluster the pods carry these settings."""
    if os.environ.get("RAY_ADDRESS"):
        return {}
    env = {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}
    return {"runtime_env": {"env_vars": env}} if env else {}


@dataclass
class IngestReport:
    """Outcome of a run: counts, where things were written, and every skipped row with its reason."""

    catalog: str
    index: str
    model: str
    rows_in_manifest: int = 0
    indexed: int = 0
    skipped: int = 0
    products_in_index: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    embeddings: str | None = None
    report: str | None = None
    mode: str = "new-version"
    version: str | None = None
    published: bool = False
    not_published_because: str | None = None
    bad_fraction: float = 0.0
    resumed: dict | None = None  # the unpublished version this run continued: {"version", "products"}
    source: str = "catalog"  # "catalog" (images embedded here) or "embeddings" (precomputed vectors loaded)
    normalised: int = 0  # loaded embeddings that were not unit length and were L2-normalised
    nodes: dict = field(default_factory=dict)  # rows each stage ("load", "embed", "write") handled per Ray node
    phases: dict = field(default_factory=dict)  # seconds from the start: Ray up, catalog listed, pipeline done, published
    dropped_versions: list[str] = field(default_factory=list)
    bad_rows: list[dict] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("bad_rows", "near_duplicates")}
        return out | {"near_duplicates_flagged": len(self.near_duplicates)}


def init_ray() -> None:
    """Connect to ``RAY_ADDRESS`` when set (a KubeRay cluster), else start a local Ray without the dashboard."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


def model_info(model: str, runtime: str = "torch", dtype: str = "float32") -> IndexInfo:
    """Model id, family, embedding dimension, preprocessing signature and weights kind (read from the model's
    config without loading weights), and the runtime and precision that will embed the catalog.

    Raises:
        ModelLoadError: the config cannot be read.
    """
    from serve_app.embedding import model_spec, weights_kind

    spec = model_spec(model)
    return IndexInfo(model_id=model, dim=spec.dim, weights=weights_kind(model), runtime=runtime, dtype=dtype,
                     family=spec.family, preprocessing=spec.preprocessing())


def ingest(catalog: str, index: str, options: IngestOptions, report: str | None = None,
           embeddings: str | None = None, from_embeddings: bool = False) -> IngestReport:
    """Embed and index every product of ``catalog`` into ``index`` — or, with ``from_embeddings``, load the
    precomputed embeddings of the Parquet files ``catalog`` names (:mod:`batch_jobs.embeddings_source`; the
    vectors must come from ``options.model``, whose dimension they are checked against).

    ``options.mode == "new-version"`` (default) writes a new physical index version and, when at least one
    product was indexed, switches the alias ``index`` to it atomically (older versions beyond
    ``keep_versions`` are dropped); searches keep using the previous version until then, and a failed run
    drops its unpublished version. ``"upsert"`` writes into the current version in place (same model only).
    Either way the run holds the index's lease (:func:`serve_app.index.lease`) from creating or opening the
    version until its report is written: a second run into the same index waits up to ``options.lease_wait_s``
    seconds, then fails with :class:`~serve_app.index.LeaseHeld` naming the run that holds the lease.

    Args:
        catalog: manifest URI (JSON Lines or CSV; local, http(s) or s3), or the embeddings' Parquet source.
        index: index URI (LanceDB folder or s3:// prefix, or an OpenSearch alias URL).
        options: model, precision, parallelism, mode.
        report: where to write the JSON report (default ``<index>/ingest_report.json`` for LanceDB,
            ``./ingest_report.json`` for OpenSearch).
        embeddings: folder for the embeddings Parquet (default ``<index>/embeddings/run=<UTC time>`` for
            LanceDB; none for OpenSearch, or when loading embeddings, unless given).
        from_embeddings: ``catalog`` holds precomputed embeddings: nothing is embedded.

    Returns:
        The report (also written to ``report``). Bad rows are skipped and listed, good rows always kept.
        ``resume`` on an index whose last run completed (nothing unpublished, the alias on a version of this
        model) changes nothing and returns that run's report with ``resumed.already_complete`` set.

    Raises:
        ManifestError: the manifest cannot be read at all.
        ModelLoadError: the model cannot be loaded.
        IndexOpenError: the index cannot be opened, or ``upsert`` mode with another model than the index's.
        LeaseHeld: another ingestion into ``index`` holds its lease (an IndexOpenError).
        LeaseLost: this run's lease expired and another run took it over before the publish (an IndexOpenError;
            nothing was published, and in new-version mode the unpublished version is left for a later run).
    """
    import ray

    from batch_jobs.datasink import IndexDatasink

    from batch_jobs.embeddings_source import embedding_rows, list_embedding_files

    started = time.perf_counter()
    # fail fast (ManifestError) before the lease, Ray and the model
    shards = list_embedding_files(catalog) if from_embeddings else list_shards(catalog)
    info = model_info(options.model, options.runtime, options.dtype)
    remote_index = is_opensearch(index)
    report = report or ("ingest_report.json" if remote_index else f"{index.rstrip('/')}/ingest_report.json")
    if options.resume and not remote_index:
        complete = _already_complete(index, info, report)
        if complete is not None:
            return complete
    with lease(index, f"ingest-{uuid.uuid4().hex[:8]}", ttl_s=options.lease_ttl_s,
               wait_s=options.lease_wait_s) as held:
        init_ray()
        phases = {"ray_ready_s": round(time.perf_counter() - started, 2)}
        run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")  # after any wait for the lease
        if not remote_index and not from_embeddings:
            embeddings = embeddings or f"{index.rstrip('/')}/embeddings/run={run}"
        result = IngestReport(catalog=catalog, index=index, model=options.model, embeddings=embeddings,
                              report=report, mode=options.mode,
                              source="embeddings" if from_embeddings else "catalog")

        target, done = _target_version(index, info, options)
        result.version = target.version
        result.resumed = {k: done[k] for k in ("version", "products")} if done else None
        if from_embeddings:
            rows = embedding_rows(shards, info.dim, **worker_runtime_env())
        else:
            rows, shards = catalog_rows(catalog, rows_per_block=options.rows_per_block, shards=shards,
                                        **worker_runtime_env())
        if done:
            rows = rows.map_batches(mark_done, batch_size=None, batch_format="pyarrow",
                                    fn_kwargs={"done": done["product_ids"]}, num_cpus=0.1)
        phases["catalog_listed_s"] = round(time.perf_counter() - started, 2)
        sink = IndexDatasink(index, info, embeddings, index_options=options.index_options(index) | {"version": target.version},
                             flag_duplicates=options.flag_duplicates, append=options.mode == "new-version",
                             rows_per_write=options.rows_per_write)
        writers = options.write_concurrency if options.mode == "new-version" or remote_index else 1
        try:
            if from_embeddings:  # nothing to embed: rows go straight to the writers
                rows.write_datasink(sink, concurrency=writers,
                                    ray_remote_args={"num_cpus": 0.25} | worker_runtime_env())
            else:
                _run_pipeline(ray, rows, options, sink, concurrency=writers)
        except BaseException:
            log.error("the run failed; version %s is left unpublished: `--resume` continues it", target.version)
            raise
        phases["pipeline_done_s"] = round(time.perf_counter() - started, 2)
        phases["index_build_s"] = sink.result.finish_s  # part of the pipeline: compaction, ANN + scalar indexes
        held.check()  # renews the lease now; raises LeaseLost if another run took it over meanwhile

        written = sink.result
        log.info("catalog %s: %d shards, %d rows, %d bad, %d already indexed", catalog, len(shards), written.rows,
                 written.failed_count, written.already_indexed)
        result.rows_in_manifest = written.rows
        result.indexed = written.written
        result.bad_rows = sorted(written.failed, key=lambda r: (str(r.get("shard")), r.get("line") or 0))
        result.skipped = written.failed_count
        result.bad_fraction = round(result.skipped / max(1, written.rows), 4)
        result.near_duplicates = written.near_duplicates
        result.normalised = written.normalised
        result.nodes = {stage: dict(counts) for stage, counts in written.nodes.items()}
        if result.bad_fraction > options.max_bad_fraction:
            result.not_published_because = (
                f"{result.skipped} of {written.rows} rows are bad ({result.bad_fraction:.1%}), over "
                f"max_bad_fraction {options.max_bad_fraction:.1%}: the alias stays where it was; fix the rows "
                f"and run again, or raise --max-bad-fraction")
            log.error("%s", result.not_published_because)
        elif options.mode == "new-version":
            if written.written or done:
                result.dropped_versions = target.publish(keep=options.keep_versions)
                result.published = True
            else:
                result.not_published_because = "nothing was indexed"
                log.error("nothing was indexed; the alias %s still points at the previous version", index)
                target.drop()
        else:
            result.published = True
        result.products_in_index = _products_in_index(index)
        result.seconds = round(time.perf_counter() - started, 3)
        result.phases = phases | {"published_s": result.seconds}
        result.images_per_s = round(result.indexed / result.seconds, 2) if result.seconds else 0.0
        storage.write_bytes(report, json.dumps(asdict(result), indent=2).encode())
        return result


def _already_complete(index: str, info: IndexInfo, report: str) -> IngestReport | None:
    """``--resume`` with nothing to resume: when no unpublished version of ``info``'s model is left and the alias
    serves a version of that model, the last run's report (marked ``resumed.already_complete``), so a retried
    job exits 0 without touching the index; ``None`` otherwise (there is something to resume, or nothing was
    ever published: the caller's usual path says so)."""
    from serve_app.index import IndexOpenError, unpublished_versions

    if unpublished_versions(index, info):
        return None
    try:
        current = open_index(index)
    except IndexOpenError:
        return None
    if current.info.model_id != info.model_id:
        return None
    try:
        previous = json.loads(storage.read_bytes(report))
    except (storage.StorageError, ValueError):
        previous = {}
    known = {f.name for f in fields(IngestReport)}
    result = IngestReport(**{k: v for k, v in previous.items() if k in known} |
                          {"index": index, "model": info.model_id, "catalog": previous.get("catalog", ""),
                           "report": report})
    result.version, result.published, result.products_in_index = current.version, True, current.count()
    result.resumed = {"version": current.version, "products": result.products_in_index, "already_complete": True}
    log.info("nothing to resume: %s already serves the complete version %s", index, current.version)
    return result


@dataclass
class ValidatedCatalog:
    """What a dry run found: counts and the first :data:`MAX_LISTED_BAD_ROWS` bad rows."""

    shards: int
    rows: int
    bad: int
    bad_rows: list[dict]
    duplicates: int


def validated_catalog(catalog: str, check_images: bool = False, timeout_s: float = 10.0,
                      rows_per_block: int | None = None) -> ValidatedCatalog:
    r"""Read and validate every shard of ``catalog`` in Ray tasks (:func:`batch_jobs.manifest.catalog_rows`),
    mark the repeated ``product_id``\s, optionally check that every image exists; only counts and the first
    :data:`MAX_LISTED_BAD_ROWS` bad rows come to the driver. Embeds nothing.

    Raises:
        ManifestError: ``catalog`` names no shard.
    """
    rows, shards = catalog_rows(catalog, rows_per_block=rows_per_block or ROWS_PER_BLOCK, **worker_runtime_env())
    if check_images:
        rows = rows.map_batches(check_image_exists, batch_size=None, batch_format="pyarrow",
                                fn_kwargs={"timeout_s": timeout_s}, num_cpus=0.1, **worker_runtime_env())
    rows = rows.materialize()  # in the object store; the driver holds block references
    bad = rows.map_batches(bad_rows, batch_size=None, batch_format="pyarrow", num_cpus=0.1).materialize()
    listed = [bad_row(r) for r in bad.take(MAX_LISTED_BAD_ROWS)]
    return ValidatedCatalog(shards=len(shards), rows=rows.count(), bad=bad.count(), bad_rows=listed,
                            duplicates=sum(1 for r in listed if r["reason"].startswith("duplicate product_id")))


def check_image_exists(batch, timeout_s: float = 10.0):
    """Ray Data ``map_batches`` function: valid rows whose image is missing (or cannot be checked) get ``error``."""
    import pyarrow as pa

    errors = batch.column("error").to_pylist()
    for i, (uri, error) in enumerate(zip(batch.column("image").to_pylist(), errors)):
        if error is None:
            try:
                if not storage.exists(uri, timeout_s=timeout_s):
                    errors[i] = f"image not found: {uri}"
            except storage.StorageError as e:
                errors[i] = f"image cannot be checked: {e}"
    return batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))


def _products_in_index(uri: str) -> int:
    """Products the alias now serves (0 when no version was ever published)."""
    from serve_app.index import IndexOpenError

    try:
        return open_index(uri).count()
    except IndexOpenError:
        return 0


def _target_version(index: str, info: IndexInfo, options: IngestOptions):
    """The physical version this run writes and, when resuming, what is in it already: a new version, the
    newest unpublished one of this model (``resume``), or (upsert mode) the current one of the same model.

    Returns:
        ``(index handle, None or {"version", "products", "product_ids"})`` (``product_ids``: an object ref).

    Raises:
        IndexOpenError: ``resume`` with no unpublished version to continue, or upsert mode with another model.
    """
    from serve_app.index import IndexOpenError, unpublished_versions

    if options.mode == "new-version" and options.resume:
        left = unpublished_versions(index, info)
        if not left:
            raise IndexOpenError(f"nothing to resume in {index}: no unpublished version of {info.model_id!r} "
                                 "(run without --resume)")
        import ray

        target = open_index(index, version=left[-1], **options.index_options(index))
        ids = target.product_ids()
        log.info("resuming version %s: %d products already written", target.version, len(ids))
        return target, {"version": target.version, "products": len(ids), "product_ids": ray.put(ids)}
    if options.mode == "new-version":
        return create_version(index, info, **options.index_options(index)), None
    current = open_index(index, info=info, **options.index_options(index))
    if current.info.model_id != info.model_id:
        raise IndexOpenError(f"index {index} holds embeddings from {current.info.model_id!r}; upserting "
                             f"{info.model_id!r} embeddings would mix two models: use --mode new-version")
    return current, None


def load_images_here(batch, **kwargs):
    """:func:`batch_jobs.stages.load_images`, plus the ``loaded_on`` column naming this Ray node (the report's
    ``nodes``)."""
    import numpy as np

    from batch_jobs.datasink import this_node
    from batch_jobs.stages import load_images

    out = load_images(batch, **kwargs)
    return out | {"loaded_on": np.full(len(out["error"]), this_node(), dtype=object)}


class EmbedImagesHere:
    """:class:`batch_jobs.stages.EmbedImages` (same arguments), plus the ``embedded_on`` column naming this Ray
    node (the report's ``nodes``)."""

    def __init__(self, **kwargs):
        from batch_jobs.datasink import this_node
        from batch_jobs.stages import EmbedImages

        self.embed, self.node = EmbedImages(**kwargs), this_node()

    def __call__(self, batch):
        import numpy as np

        out = self.embed(batch)
        return out | {"embedded_on": np.full(len(out["error"]), self.node, dtype=object)}


class LoadAndEmbedHere(EmbedImagesHere):
    """:class:`batch_jobs.stages.LoadAndEmbed` (same arguments), plus ``loaded_on`` and ``embedded_on``."""

    def __init__(self, **kwargs):
        from batch_jobs.datasink import this_node
        from batch_jobs.stages import LoadAndEmbed

        self.embed, self.node = LoadAndEmbed(**kwargs), this_node()

    def __call__(self, batch):
        out = super().__call__(batch)
        return out | {"loaded_on": out["embedded_on"]}


def _run_pipeline(ray, ds, options: IngestOptions, sink, concurrency: int = 1) -> None:
    """manifest rows (bad ones pass through to the sink's report) → load/decode/hash → CLIP embed (actor pool)
    → ``concurrency`` index writers, as one streaming execution: the CLIP actors load their model while the
    first blocks are parsed. With ``options.loads_in_embed_actor`` (CPU actors) the CLIP actors load their own
    images (:class:`LoadAndEmbedHere`) and only manifest rows reach them; otherwise load tasks do it."""
    load = {"model": options.model, "max_bytes": options.max_image_bytes, "timeout_s": options.fetch_timeout_s}
    embed = {"model": options.model, "dtype": options.dtype, "runtime": options.runtime,
             "num_threads": options.embed_threads}
    if options.loads_in_embed_actor:  # a call per block: loaded at once by the actor's threads, then embedded
        actor, kwargs, rows_per_call = LoadAndEmbedHere, embed | load | {"batch_size": options.batch_size}, None
    else:
        ds = ds.map_batches(load_images_here, batch_size=options.batch_size, batch_format="numpy", fn_kwargs=load,
                            num_cpus=options.load_num_cpus,
                            compute=ray.data.TaskPoolStrategy(size=options.load_concurrency),
                            **worker_runtime_env())
        actor, kwargs, rows_per_call = EmbedImagesHere, embed, options.batch_size
    ds = ds.map_batches(actor, batch_size=rows_per_call, batch_format="numpy", fn_constructor_kwargs=kwargs,
                        num_cpus=options.embed_num_cpus, num_gpus=options.embed_num_gpus,
                        compute=ray.data.ActorPoolStrategy(size=options.embed_actors), **worker_runtime_env())
    ds.write_datasink(sink, concurrency=concurrency, ray_remote_args={"num_cpus": 0.25} | worker_runtime_env())
