"""The JSON error envelope of the public API and the mapping from stage errors to HTTP statuses.

Every error answers ``{"error": {"code": str, "message": str}}`` with a 4xx/5xx status. Stage modules raise
specific Python errors; only the ingress turns them into HTTP here.
"""

from fastapi.responses import JSONResponse

from serve_app.filters import FilterError
from serve_app.images import ImageDecodeError, UnsupportedImageError
from serve_app.index.base import QueryDimensionError
from serve_app.thumbnails import ProductNotFound, ThumbnailUnavailable
from serve_app.url_fetch import UrlFetchError
from serve_app.video import NoFramesError, VideoDecodeError, VideoLimitError


class ApiError(Exception):
    """An error with its HTTP status and code, raised by the ingress."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


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
    (ImageDecodeError, 400, "invalid_image"),
    (VideoDecodeError, 415, "unsupported_media_type"),
    (VideoLimitError, 422, "video_limit_exceeded"),
    (NoFramesError, 422, "no_frames"),
    (FilterError, 422, "invalid_filter"),
    (ProductNotFound, 404, "not_found"),
    (QueryDimensionError, 503, "model_index_mismatch"),
    (ThumbnailUnavailable, 502, "thumbnail_unavailable"),
)


def to_api_error(e: BaseException) -> ApiError:
    """Map a stage or deployment error to an :class:`ApiError`; unknown errors become 500."""
    if isinstance(e, ApiError):
        return e
    cause = _cause(e)
    if isinstance(cause, UrlFetchError):
        return ApiError(cause.status, cause.code, str(cause))
    for error_type, status, code in STATUS_OF:
        if isinstance(cause, error_type):
            return ApiError(status, code, str(cause))
    return ApiError(500, "internal_error", f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
