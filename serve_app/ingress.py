"""HTTP ingress (FastAPI on Ray Serve): validates requests, prepares query photos, chains the stages.

No model or index code here. A photo is read (or fetched) once and turned into CLIP's uint8 input here
(:func:`serve_app.query_image.prepare_query_image`, in a worker thread): the Encoder receives 150 KB of
pixels, never the upload. The ingress awaits each hop's answer before the next (:func:`_then`), so a replica that
dies mid-request fails fast and is retried instead of stalling the chain; with Ray Serve's gRPC transport the
arguments pass through the caller either way. Hops per path: text and photo
search 2 (Encoder, Retriever), video 3 (VideoDecoder, Encoder, Retriever), ``find_similar`` 1 (Retriever; 2 in
robust mode). Errors follow the contract envelope (:mod:`serve_app.errors`); a failed hop is retried once
(every endpoint only reads), then answers 503 with ``Retry-After``.
"""
# No `from __future__ import annotations` here: FastAPI must see real types to recognise UploadFile.

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

from fastapi import FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.config import AppArgs
from serve_app.cpu_priority import renice_threads
from serve_app.errors import ApiError, error_response, replica_failure, to_api_error
from serve_app.http_limits import RequestLimits, RequestLimitsMiddleware
from serve_app.model_match import mismatch
from serve_app.images import ImageDecodeError, open_image
from serve_app.preprocess import ClipGeometry
from serve_app.query_image import QueryImage, prepare_query_image
from serve_app.request_params import (CROP_FIELD, MAX_K, MIN_SCORE_FIELD, OFFSET_FIELD, TEXT_FIELD, TEXT_WEIGHT_FIELD,
                                      SimilarQuery, TextQuery, check_filters, check_page, crop_field, filters_field,
                                      soft_filter_args)
from serve_app.results import search_body, video_body
from serve_app.thumbnails import DEFAULT_SIZE, ByteLRU, clamp_size, etag
from serve_app.url_fetch import fetch_image_url

STATIC_DIR = Path(__file__).parent / "static"
THUMBNAIL_MAX_AGE_S = 300
HEALTH_TTL_S = 1.0  # /healthz reuses the stages' info for this long, seconds
HEALTH_TIMEOUT_S = 2.0  # and waits this long for fresh info
HEALTH_STALE_S = 15.0  # before a slow refresh fails the check, the last good info serves this long
app = FastAPI(title="Visual Search", version="0.1.0",
              description="Search a product catalog by photo, text or video (CLIP embeddings, k-NN).")
# The web page's assets (the page itself is GET /); everything is served from this origin, nothing external.
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
# Admission, body size and body time limits before any route runs (serve_app.http_limits); the Ingress replica
# sets them from its app args when it starts.
app.state.request_limits = RequestLimits()
app.add_middleware(RequestLimitsMiddleware, limits=lambda: app.state.request_limits)


@app.exception_handler(ApiError)
async def _api_error(_: Request, e: ApiError):
    return error_response(e.status, e.code, e.message, e.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError):
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return error_response(422, "invalid_request", "; ".join(parts))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(e.status_code, "http_error")
    return error_response(e.status_code, code, str(e.detail))


@app.exception_handler(Exception)
async def _unhandled(_: Request, e: Exception):
    err = to_api_error(e)
    return error_response(err.status, err.code, err.message, err.headers)


async def _then(first, then):
    """Await ``first`` here, then ``then(its result)``: each hop's answer comes back to the ingress, so a replica
    that dies mid-request fails this call at once (a response handed on unresolved to the next deployment can
    wait for a dead replica until the request timeout) and :meth:`Ingress._call` retries it."""
    return await then(await first)


async def _none():
    return None


def _elapsed_ms(started: float) -> float:
    return 1000 * (time.perf_counter() - started)


# Two replicas by default: HAProxy sends a request that finds one dead to the other, so killing an ingress costs
# only the requests it held.
@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
@serve.ingress(app)
class Ingress:
    """The HTTP front door; holds handles to the Encoder, Retriever and VideoDecoder deployments."""

    def __init__(self, encoder: DeploymentHandle, retriever: DeploymentHandle, decoder: DeploymentHandle,
                 args: dict):
        self.encoder, self.retriever, self.decoder = encoder, retriever, decoder
        self.args = AppArgs(**args)
        renice_threads(self.args.niceness)
        app.state.request_limits = RequestLimits.from_app_args(self.args)
        self.thumbnails = ByteLRU(ttl_s=THUMBNAIL_MAX_AGE_S)  # (product_id, size) → JPEG bytes
        self._geometry: ClipGeometry | None = None
        self._health: tuple[float, tuple[dict, dict]] | None = None  # (monotonic time, (encoder, retriever info))
        self._refresh: asyncio.Task | None = None  # a background refresh of _health started by a search

    async def _call(self, make, retries: int = 1):
        """Await ``make()`` (a deployment response or chain of them) within ``request_timeout_s``. A replica that
        died mid-request gets the request once more (every call is a read); any other stage error becomes its
        :class:`ApiError`."""
        for attempt in range(retries + 1):
            try:
                return await asyncio.wait_for(make(), self.args.request_timeout_s)
            except Exception as e:
                failure = replica_failure(e)
                if failure is None or failure.code != "service_unavailable" or attempt == retries:
                    raise to_api_error(e) from None

    async def _geometry_of_model(self) -> ClipGeometry:
        """The served model's resize/crop settings (asked of the Encoder once)."""
        if self._geometry is None:
            info = await self._call(lambda: self.encoder.info.remote())
            self._geometry = ClipGeometry(**info["geometry"]) if info["geometry"] else ClipGeometry()
        return self._geometry

    @staticmethod
    async def _read_upload(file: UploadFile, limit: int) -> bytes:
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "payload_too_large", f"uploaded file is over the {limit}-byte limit")
        return data

    async def _image_bytes(self, file: UploadFile | None, image_url: str | None) -> bytes:
        """Exactly one of an upload or an ``image_url`` (fetched under the SSRF, size and time limits)."""
        if (file is None) == (not image_url):
            raise ApiError(422, "invalid_request", "send exactly one of a multipart `file` or an `image_url` field")
        if file is not None:
            return await self._read_upload(file, self.args.max_upload_bytes)
        try:
            return await fetch_image_url(image_url, self.args.image_url_max_bytes, self.args.image_url_timeout_s,
                                         self.args.image_url_allow_networks)
        except Exception as e:
            raise to_api_error(e) from None

    async def _photo(self, data: bytes, crop, pixels: bool = True, phash: bool = False) -> QueryImage:
        """Decode and prepare a query photo in a worker thread (415/400/422 for what is not a usable image)."""
        try:
            open_image(data, self.args.max_image_pixels, self.args.max_aspect_ratio)  # header only: fail fast
        except ImageDecodeError as e:
            raise to_api_error(e) from None
        geometry = await self._geometry_of_model()
        try:
            return await asyncio.to_thread(prepare_query_image, data, geometry, pixels=pixels, phash=phash, crop=crop,
                                           max_pixels=self.args.max_image_pixels,
                                           max_aspect_ratio=self.args.max_aspect_ratio)
        except ImageDecodeError as e:
            raise to_api_error(e) from None

    @app.get("/", include_in_schema=False)
    async def page(self):
        """The web page (serve_app/static/index.html): photo, text, video and duplicate search."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/facets")
    async def facets(self):
        """Filter values: ``{"products", "facets": {"category"|"brand": [{"value", "count"}]}, "ranges":
        {"price": {"min", "max", "count"}}}``, counts descending."""
        return await self._call(lambda: self.retriever.facets.remote())

    @app.get("/thumbnails/{product_id:path}", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(self, request: Request, product_id: str,
                        size: int = Query(DEFAULT_SIZE, description="longer side in pixels, clamped to 64–512")):
        """JPEG thumbnail of a product's catalog image, resized on the Retriever and cached here (LRU in bytes)
        and by the browser (``Cache-Control``, ``ETag`` → 304). Unknown product: 404."""
        size = clamp_size(size)
        body = self.thumbnails.get((product_id, size))
        if body is None:
            body = await self._call(lambda: self.retriever.thumbnail.remote(product_id, size))
            self.thumbnails.put((product_id, size), body)
        headers = {"ETag": etag(body), "Cache-Control": f"public, max-age={THUMBNAIL_MAX_AGE_S}"}
        if headers["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="image/jpeg", headers=headers)

    async def _health_info(self) -> tuple[dict, dict]:
        """The Encoder's and Retriever's ``info``, at most ``HEALTH_TTL_S`` old. A refresh that takes longer than
        ``HEALTH_TIMEOUT_S`` (a busy Encoder queue) answers from the last good one while it is under
        ``HEALTH_STALE_S`` old, so readiness does not flap with load; an unreachable stage fails it."""
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_TTL_S:
            return self._health[1]
        try:
            info = await asyncio.wait_for(asyncio.gather(self.encoder.info.remote(), self.retriever.info.remote()),
                                          HEALTH_TIMEOUT_S)
        except Exception as e:
            if self._health is not None and now - self._health[0] < HEALTH_STALE_S:
                return self._health[1]
            raise to_api_error(e) from None
        self._health = (now, tuple(info))
        return self._health[1]

    @app.get("/healthz")
    async def healthz(self):
        """200 when the model and index are loaded: product count; the served model's id, family, weights kind,
        runtime, precision and preprocessing signature; and the ones that embedded the index (answered within
        ``HEALTH_TIMEOUT_S``). 503 ``model_index_mismatch`` when the model cannot search the index
        (:func:`serve_app.model_match.mismatch`: another dimension, family or preprocessing)."""
        encoder, index = await self._health_info()
        body = {"status": "ok", "products": index["products"], "model_id": encoder["model_id"],
                "family": encoder["family"], "model_weights": encoder["weights"], "runtime": encoder["runtime"],
                "dtype": encoder["dtype"], "dim": encoder["dim"], "preprocessing": encoder["preprocessing"],
                "index": index["index"], "index_model_id": index["model_id"], "index_family": index["family"],
                "index_runtime": index["runtime"], "index_dtype": index["dtype"],
                "index_preprocessing": index["preprocessing"]}
        reason = mismatch(encoder, index)
        if reason:
            return error_response(503, "model_index_mismatch", reason)
        return body

    async def _check_model_matches_index(self) -> None:
        """Refuse a search (503 ``model_index_mismatch``) when the served model cannot search the index. Uses the
        stages' info as ``/healthz`` last saw it (fetched here only before the first one; refreshed in the
        background after ``HEALTH_TTL_S``), so a search never waits on it; when the info cannot be had, the search
        goes on and the stages answer for themselves."""
        if self._health is None:
            with contextlib.suppress(Exception):
                await self._health_info()
        elif time.monotonic() - self._health[0] >= HEALTH_TTL_S and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self._health_info())
            self._refresh.add_done_callback(lambda task: task.cancelled() or task.exception())  # no "never retrieved"
        reason = None if self._health is None else mismatch(*self._health[1])
        if reason:
            raise ApiError(503, "model_index_mismatch", reason)

    @app.post("/search/text")
    async def search_text(self, body: TextQuery):
        """Text → CLIP text embedding → k-NN over product image embeddings."""
        started = time.perf_counter()
        check_filters(body.filters)
        check_page(body.k, body.offset, self.args.max_k)
        await self._check_model_matches_index()
        results = await self._call(lambda: _then(self.encoder.embed_text.remote(body.query), lambda vector:
                                   self.retriever.search.remote(vector, body.k, body.filters, body.offset,
                                                                body.min_score)))
        return search_body(results, body.k, _elapsed_ms(started), body.offset, body.min_score)

    @app.post("/search/image")
    async def search_image(self, file: UploadFile | None = File(None), image_url: str | None = Form(None),
                           k: int = Form(10, ge=1, le=MAX_K), offset: int = OFFSET_FIELD,
                           min_score: float | None = MIN_SCORE_FIELD,
                           filters: str | None = Form(None, description="JSON object"), crop: str | None = CROP_FIELD,
                           text: str | None = TEXT_FIELD, text_weight: float | None = TEXT_WEIGHT_FIELD):
        """Photo (multipart ``file`` or form field ``image_url``; ``crop``: a region of it) → CLIP image embedding
        → k-NN; with ``text``, re-ranked by ``(1 − w)·minmax(image_score) + w·minmax(text_score)`` (README,
        "Soft text filter")."""
        started = time.perf_counter()
        parsed_filters, box = filters_field(filters), crop_field(crop)
        text, text_weight = soft_filter_args(text, text_weight)
        check_page(k, offset, self.args.max_k)
        await self._check_model_matches_index()
        photo = await self._photo(await self._image_bytes(file, image_url), box)
        if text is None:
            results = await self._call(lambda: _then(self.encoder.embed_pixels.remote(photo.pixels), lambda vector:
                                       self.retriever.search.remote(vector, k, parsed_filters, offset, min_score)))
            return search_body(results, k, _elapsed_ms(started), offset, min_score)
        results = await self._call(lambda: _then(
            asyncio.gather(self.encoder.embed_pixels.remote(photo.pixels), self.encoder.embed_text.remote(text)),
            lambda vectors: self.retriever.search_soft.remote(*vectors, k, parsed_filters, text_weight, offset,
                                                              min_score)))
        return search_body(results, k, _elapsed_ms(started), offset, min_score, text=text, text_weight=text_weight)

    @app.post("/search/similar")
    async def search_similar(self, body: SimilarQuery):
        """More like this: products like the ``positive`` ones (and unlike the ``negative`` ones) by their stored
        image embeddings, ``q = 2·avg(positive) − avg(negative)`` (Qdrant's average-vector rule), the inputs left
        out; ``text`` re-ranks as in image search. Unknown product ids: 404 naming them."""
        started = time.perf_counter()
        check_filters(body.filters)
        check_page(body.k, body.offset, self.args.max_k)
        text, text_weight = soft_filter_args(body.text, body.text_weight)
        results = await self._call(lambda: _then(
            self.encoder.embed_text.remote(text) if text is not None else _none(),
            lambda text_vector: self.retriever.search_similar.remote(
                body.positive, body.negative, body.k, body.filters, body.offset, body.min_score, text_vector,
                text_weight)))
        extra = {"text": text, "text_weight": text_weight} if text is not None else {}
        return search_body(results, body.k, _elapsed_ms(started), body.offset, body.min_score,
                           positive=body.positive, negative=body.negative, **extra)

    async def _find_similar(self, data: bytes | None, product_id: str | None, top: int, max_distance: int | None,
                            mode: str, crop) -> dict:
        """Near-duplicates of a photo (``data``) or of a catalog product's stored pHash (``product_id``)."""
        started = time.perf_counter()
        if top > self.args.max_k:  # the request field admits MAX_K; the configured depth is max_k
            raise ApiError(422, "invalid_request", f"top = {top}: at most {self.args.max_k} results are returned")
        max_distance = self.args.dedup_max_distance if max_distance is None else max_distance
        thresholds = {"clip_min_score": self.args.dedup_clip_min_score,
                      "confirm_min_score": self.args.dedup_confirm_min_score}
        if product_id is not None:
            body = await self._call(lambda: self.retriever.find_similar_product.remote(
                product_id, top, max_distance, mode, thresholds))
        else:
            photo = await self._photo(data, crop, pixels=mode == "robust", phash=True)
            body = await self._call(lambda: _then(
                self.encoder.embed_pixels.remote(photo.pixels) if mode == "robust" else _none(),
                lambda vector: self.retriever.find_similar.remote(photo.phash, top, max_distance, mode, vector,
                                                                  thresholds)))
        if mode == "robust":
            body |= thresholds
        return body | {"top": top, "took_ms": round(_elapsed_ms(started), 2)}

    async def _similar_source(self, file: UploadFile | None, image_url: str | None, product_id: str | None,
                              crop) -> bytes | None:
        """The photo bytes of a find_similar query, or ``None`` for a ``product_id`` query (then nothing else
        may be sent)."""
        if product_id is None:
            return await self._image_bytes(file, image_url)
        if file is not None or image_url or crop is not None:
            raise ApiError(422, "invalid_request", "send a `product_id` alone, or a photo (`file` or `image_url`, "
                                                   "optionally `crop`) without one")
        if not product_id.strip():
            raise ApiError(422, "invalid_request", "`product_id` is empty")
        return None

    @app.get("/find_similar")
    async def find_similar_url(self, image_url: str | None = None, product_id: str | None = None,
                               top: int = Query(10, ge=1, le=MAX_K),
                               max_distance: int | None = Query(None, ge=0, le=64),
                               mode: str = Query("phash", pattern="^(phash|robust)$"),
                               crop: str | None = Query(None, description="JSON [x0, y0, x1, y1] fractions")):
        """Near-duplicate listings of the image at ``image_url`` (same SSRF and size rules as image search) or of
        the catalog product ``product_id`` (its stored pHash; the product itself is left out): per hit
        ``hamming_distance`` (0–64 bits) and ``match_percent`` = 100·(1 − d/64), closest first."""
        box = crop_field(crop)
        data = await self._similar_source(None, image_url, product_id, box)
        return await self._find_similar(data, product_id, top, max_distance, mode, box)

    @app.post("/find_similar")
    async def find_similar_upload(self, file: UploadFile | None = File(None), product_id: str | None = Form(None),
                                  top: int = Form(10, ge=1, le=MAX_K),
                                  max_distance: int | None = Form(None, ge=0, le=64),
                                  mode: str = Form("phash", pattern="^(phash|robust)$"), crop: str | None = CROP_FIELD):
        """Near-duplicate listings of an uploaded image (``mode=robust`` adds CLIP image k-NN candidates) or of
        the catalog product named by the form field ``product_id``."""
        box = crop_field(crop)
        data = await self._similar_source(file, None, product_id, box)
        return await self._find_similar(data, product_id, top, max_distance, mode, box)

    @app.post("/search/video")
    async def search_video(self, file: UploadFile = File(..., description="video clip"),
                           k: int = Form(10, ge=1, le=MAX_K), offset: int = OFFSET_FIELD,
                           min_score: float | None = MIN_SCORE_FIELD, fps: float = Form(1.0, gt=0),
                           max_frames: int | None = Form(None, ge=1), fusion: str = Form("max", pattern="^(max|rrf)$"),
                           filters: str | None = Form(None, description="JSON object"),
                           frame_thumbnails: bool = Form(False, description="add kept_frames[i].thumbnail, a "
                                                         "~96 px high JPEG data URL of each kept frame"),
                           text: str | None = TEXT_FIELD, text_weight: float | None = TEXT_WEIGHT_FIELD):
        """Clip → sample at ``fps`` → pHash frame dedup and shots → CLIP (one batch) → multi-query k-NN → fusion:
        one ranking for the clip and one per shot (``shots``)."""
        started = time.perf_counter()
        parsed_filters = filters_field(filters)
        text, text_weight = soft_filter_args(text, text_weight)
        check_page(k, offset, self.args.max_k)
        if fps > self.args.max_video_fps:
            raise ApiError(422, "invalid_request", f"fps: at most {self.args.max_video_fps:g} frames per second")
        if max_frames is not None and max_frames > self.args.max_video_frames:
            raise ApiError(422, "video_limit_exceeded",
                           f"max_frames: at most {self.args.max_video_frames} frames per clip")
        data = await self._read_upload(file, self.args.max_video_bytes)
        await self._check_model_matches_index()

        async def chain():
            text_vector = None if text is None else self.encoder.embed_text.remote(text)
            geometry = dataclasses.asdict(await self._geometry_of_model())  # frames prepared as the model wants
            clip = await self.encoder.embed_clip.remote(await self.decoder.decode.remote(data, fps, max_frames,
                                                                                         frame_thumbnails, geometry))
            return await self.retriever.search_clip.remote(clip, k, parsed_filters, fusion,
                                                           None if text_vector is None else await text_vector,
                                                           text_weight, offset, min_score)

        answer = await self._call(chain)
        extra = {"text": text, "text_weight": text_weight} if text is not None else {}
        return video_body(answer, k, _elapsed_ms(started), offset, min_score, fusion=fusion, **extra)
