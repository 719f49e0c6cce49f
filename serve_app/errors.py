"""The JSON error envelope of the public API and the mapping from stage errors to HTTP statuses.

Every error answers ``{"error": {"code": str, "message": str}}`` with a 4xx/5xx status. Stage modules raise
specific Python errors; only the ingress turns them into HTTP here.
"""

import asyncio
import logging

from fastapi.responses import JSONResponse

from serve_app.filters import FilterError
from serve_app.images import ImageDecodeError, ImageLimitError, UnsupportedImageError
from serve_app.index.base import QueryDimensionError
from serve_app.near_duplicates import NoStoredHash
from serve_app.query_image import CropError
from serve_app.recommend import RecommendError
from serve_app.thumbnails import ProductNotFound, ThumbnailUnavailable
from serve_app.url_fetch import UrlFetchError
from serve_app.video import NoFramesError, VideoDecodeError, VideoLimitError

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = 1  # what a 503 tells a client to wait before retrying, seconds


class ApiError(Exception):
    """An error with its HTTP status and code (and extra headers, e.g. ``Retry-After``), raised by the ingress."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def unavailable(code: str, message: str, retry_after_s: int = RETRY_AFTER_S) -> ApiError:
    """A 503 with ``Retry-After``: the service could not answer now, the request may be sent again."""
    return ApiError(503, code, message, {"Retry-After": str(retry_after_s)})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}}, headers=headers)


def _cause(e: BaseException) -> BaseException:
    """The user exception inside a Ray ``RayTaskError`` (Ray re-raises replica errors wrapped)."""
    seen = 0
    while seen < 5 and getattr(e, "cause", None) is not None and e.cause is not e:
        e, seen = e.cause, seen + 1
    return e


# Stage error → (HTTP status, code), first match wins (a subclass before its base: UnsupportedImageError is an
# ImageDecodeError). Errors that carry their own status (UrlFetchError) are handled in to_api_error.
STATUS_OF = (
    (UnsupportedImageError, 415, "unsupported_media_type"),
    (ImageLimitError, 422, "image_limit_exceeded"),
    (ImageDecodeError, 400, "invalid_image"),
    (VideoDecodeError, 415, "unsupported_media_type"),
    (VideoLimitError, 422, "video_limit_exceeded"),
    (NoFramesError, 422, "no_frames"),
    (FilterError, 422, "invalid_filter"),
    (ProductNotFound, 404, "not_found"),
    (QueryDimensionError, 503, "model_index_mismatch"),
    (ThumbnailUnavailable, 502, "thumbnail_unavailable"),
    (CropError, 422, "invalid_request"),
    (RecommendError, 422, "invalid_request"),
    (NoStoredHash, 422, "no_stored_phash"),
)


def replica_failure(e: BaseException) -> ApiError | None:
    """A 503 for a failure of the graph rather than of the request: a replica that died or is restarting, a
    deployment over its queue limit, a hop that timed out. ``None`` for anything else."""
    from ray.exceptions import ObjectLostError, OwnerDiedError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError

    if isinstance(e, BackPressureError):
        return unavailable("overloaded", "the service is at capacity; retry shortly")
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return unavailable("timeout", "the request took longer than the service allows; retry shortly")
    if isinstance(e, (RayActorError, DeploymentUnavailableError, RequestCancelledError, ObjectLostError,
                      OwnerDiedError)):
        return unavailable("service_unavailable", f"a stage of the service failed while answering "
                                                  f"({type(e).__name__}); retry shortly")
    return None


def to_api_error(e: BaseException) -> ApiError:
    """Map a stage or deployment error to an :class:`ApiError`: the stage's own error first, then a failure
    of the graph (503, :func:`replica_failure`); anything else is a 500."""
    if isinstance(e, ApiError):
        return e
    cause = _cause(e)
    if isinstance(cause, UrlFetchError):
        return ApiError(cause.status, cause.code, str(cause))
    for error_type, status, code in STATUS_OF:
        if isinstance(cause, error_type):
            return ApiError(status, code, str(cause))
    failure = replica_failure(e) or replica_failure(cause)
    if failure is not None:
        return failure
    # Internals (exception text, paths, addresses) stay in the replica's log, not in the answer.
    logger.error("internal error answering a request: %s: %s", type(cause).__name__, cause, exc_info=cause)
    return ApiError(500, "internal_error", "the service failed to answer this request (logged); retry or report it")
