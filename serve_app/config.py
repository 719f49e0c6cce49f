"""Application arguments of the Serve app (``args:`` in configs/serve.yaml), validated by pydantic.

Environment variables override the YAML: ``VS_MODEL`` (hub id or folder), ``VS_INDEX`` (index URI) and
``VS_DTYPE`` (``float32``/``bfloat16`` on torch, ``float32``/``int8`` on onnx) and ``VS_RUNTIME`` (``torch``/``onnx``).
An unknown key is an error that lists the valid ones (the habit of
Ray's ``app_builder`` docs).
"""

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.embedding import DEFAULT_MODEL
from serve_app.images import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS
from serve_app.near_duplicates import DEFAULT_CLIP_MIN_SCORE, DEFAULT_CONFIRM_MIN_SCORE, DEFAULT_MAX_DISTANCE
from serve_app.request_params import MAX_K
from serve_app.video import (DEFAULT_DECODE_MEMORY_BYTES, DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_DURATION_S,
                             DEFAULT_MAX_FRAMES)

MiB = 1024 * 1024


class AppArgs(BaseModel):
    """Arguments of :func:`serve_app.app.build_app`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = DEFAULT_MODEL
    index: str = "./data/index"
    dtype: Literal["float32", "bfloat16", "int8"] = "float32"
    runtime: Literal["torch", "onnx"] = "torch"
    encoder_threads: int | None = Field(None, ge=1, description="intra-op threads per Encoder replica (default: "
                                                                "its CPU share rounded up)")
    max_upload_bytes: int = Field(10 * MiB, ge=1024, description="uploads above this get 413")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=10_000, description="decompression-bomb limit")
    max_aspect_ratio: float = Field(MAX_ASPECT_RATIO, ge=1.0, description="longer / shorter side of a query photo")
    request_timeout_s: float = Field(30.0, gt=0, le=600, description="a stage slower than this answers 503")
    # Little's law: accepted latency ~ in-flight requests / throughput. 8 per replica (two ingress replicas: 16)
    # keeps a 2-core node's accepted p99 within ~3x its 8-client p99 under overload; size it as (requests/s the
    # Encoders answer) x (latency you accept) / (ingress replicas).
    max_in_flight: int = Field(8, ge=0, description="requests one ingress replica handles at once; more get 503 "
                                                     "with Retry-After (0: unlimited)")
    body_timeout_s: float = Field(10.0, gt=0, le=600, description="seconds a request body may take, plus 1 s "
                                                                  "per 64 KiB received (at most 120 s); slower: 408")
    niceness: int | None = Field(None, ge=-20, le=19, description="nice value of the Ingress, Encoder and "
                                 "Retriever replicas' threads (None: Ray's; see serve_app/cpu_priority.py)")
    max_k: int = Field(1000, ge=1, le=MAX_K, description="offset + k of a request is at most this (422 above); "
                                                        "the request fields' own bound is MAX_K")
    image_url_timeout_s: float = Field(5.0, gt=0, le=60)
    image_url_max_bytes: int = Field(10 * MiB, ge=1024)
    image_url_allow_networks: list[str] = Field(
        default_factory=list, description="CIDRs exempt from the SSRF private-address rule")
    max_video_bytes: int = Field(50 * MiB, ge=1024, description="video uploads above this get 413")
    max_video_duration_s: float = Field(DEFAULT_MAX_DURATION_S, gt=0, description="longer clips get 422")
    max_video_frames: int = Field(DEFAULT_MAX_FRAMES, ge=1, le=1000, description="clips sampling more frames get 422")
    max_video_fps: float = Field(10.0, gt=0, le=60)
    video_decode_timeout_s: float = Field(DEFAULT_DECODE_TIMEOUT_S, gt=0, le=600,
                                          description="a clip whose decode runs longer gets 422 (worker killed)")
    video_decode_memory_bytes: int = Field(DEFAULT_DECODE_MEMORY_BYTES, ge=256 * MiB,
                                           description="address-space limit of a decode worker process")
    video_decode_workers: int = Field(2, ge=1, le=64, description="decode worker processes per VideoDecoder")
    dedup_max_distance: int = Field(DEFAULT_MAX_DISTANCE, ge=0, le=64,
                                    description="default find_similar pHash threshold, bits")
    dedup_clip_min_score: float = Field(DEFAULT_CLIP_MIN_SCORE, ge=-1, le=1,
                                        description="robust mode: cosine for CLIP alone")
    dedup_confirm_min_score: float = Field(DEFAULT_CONFIRM_MIN_SCORE, ge=-1, le=1,
                                           description="robust mode: cosine confirming pHash")
    memory_rows: int = Field(50_000, ge=0, description="LanceDB: tables without an ANN index up to this many rows "
                                                        "are searched exactly from memory (0: never)")
    ann_nprobes: int = Field(20, ge=1)
    ann_ef: int = Field(100, ge=1)
    ann_refine_factor: int = Field(5, ge=1)
    exact_filter_rows: int = Field(1000, ge=0, description="LanceDB: filters matching at most this many products "
                                   "are searched exactly instead of through the ANN index")

    @model_validator(mode="after")
    def _runtime_offers_dtype(self) -> "AppArgs":
        offered = {"torch": ("float32", "bfloat16"), "onnx": ("float32", "int8")}[self.runtime]
        if self.dtype not in offered:
            raise ValueError(f"runtime {self.runtime!r} runs dtype {list(offered)}, got {self.dtype!r}")
        return self

    @model_validator(mode="after")
    def _backend_has_options(self) -> "AppArgs":
        from serve_app.index import is_opensearch

        given = sorted(LANCEDB_ONLY & self.model_fields_set)
        if given and is_opensearch(self.index):
            raise ValueError(f"{', '.join(given)}: LanceDB-only settings, but {self.index} is an OpenSearch index "
                             "(its HNSW settings are chosen at ingestion: configs/ingest.yaml)")
        return self

    @field_validator("index")
    @classmethod
    def _absolute_local_index(cls, v: str) -> str:
        # Replicas may run in another working directory than `serve run`: pin relative paths now.
        return v if "://" in v else os.path.abspath(os.path.expanduser(v))

    @classmethod
    def from_args(cls, args: dict | None) -> "AppArgs":
        """Validate ``args`` after applying the ``VS_*`` environment overrides.

        Raises:
            ValueError: an unknown key (listing the valid ones) or an invalid value.
        """
        merged = dict(args or {})
        unknown = sorted(set(merged) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown app args {unknown}; valid args are {sorted(cls.model_fields)}")
        for key, env in (("model", "VS_MODEL"), ("index", "VS_INDEX"), ("dtype", "VS_DTYPE"), ("runtime", "VS_RUNTIME")):
            if os.environ.get(env):
                merged[key] = os.environ[env]
        try:
            return cls(**merged)
        except ValidationError as e:
            raise ValueError(f"invalid app args: {e}") from e

    def index_options(self) -> dict:
        """The Retriever's backend settings: the LanceDB query knobs, nothing for OpenSearch."""
        from serve_app.index import is_opensearch

        if is_opensearch(self.index):
            return {}
        return {"nprobes": self.ann_nprobes, "ef": self.ann_ef, "refine_factor": self.ann_refine_factor,
                "memory_rows": self.memory_rows, "exact_filter_rows": self.exact_filter_rows}


LANCEDB_ONLY = {"memory_rows", "ann_nprobes", "ann_ef", "ann_refine_factor", "exact_filter_rows"}
