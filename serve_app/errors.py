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


def to_api_error(e: BaseException) -> ApiError:
    """Map a stage or deployment error to an :class:`ApiError`; unknown errors become 500."""
    if isinstance(e, ApiError):
        return e
    cause = _cause(e)
    if isinstance(cause, UnsupportedImageError) or isinstance(e, UnsupportedImageError):
        return ApiError(415, "unsupported_media_type", str(cause))
    if isinstance(cause, ImageDecodeError) or isinstance(e, ImageDecodeError):
        return ApiError(400, "invalid_image", str(cause))
    if isinstance(cause, VideoDecodeError):
        return ApiError(415, "unsupported_media_type", str(cause))
    if isinstance(cause, VideoLimitError):
        return ApiError(422, "video_limit_exceeded", str(cause))
    if isinstance(cause, NoFramesError):
        return ApiError(422, "no_frames", str(cause))
    if isinstance(cause, FilterError):
        return ApiError(422, "invalid_filter", str(cause))
    if isinstance(cause, UrlFetchError):
        return ApiError(cause.status, cause.code, str(cause))
    if isinstance(cause, ProductNotFound):
        return ApiError(404, "not_found", str(cause))
    if isinstance(cause, QueryDimensionError):
        return ApiError(503, "model_index_mismatch", str(cause))
    if isinstance(cause, ThumbnailUnavailable):
        return ApiError(502, "thumbnail_unavailable", str(cause))
    return ApiError(500, "internal_error", f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
