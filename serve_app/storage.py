"""Read and write objects at local paths, ``file://``, ``http(s)://`` and ``s3://`` URIs (no Ray import).

S3 goes through boto3, which reads credentials and the endpoint from its usual environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``; ``AWS_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3`` for S3-compatible stores such as MinIO — see the boto3 "configuration" docs).
HTTP goes through httpx with a bounded timeout and size. This module is for catalog objects, which the shop
operator controls; shopper-supplied URLs go through :mod:`serve_app.url_fetch`, which adds SSRF checks.
"""

import functools
import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0


class StorageError(OSError):
    """An object could not be read or written; the message names the URI and the cause."""


class ObjectNotFound(StorageError):
    """No object at the URI (missing file, HTTP 404, S3 NoSuchKey)."""


class ObjectTooLarge(StorageError):
    """The object is larger than the configured limit."""


def scheme(uri: str) -> str:
    """``"s3"``, ``"http"``, ``"https"`` or ``"file"`` (plain paths are ``"file"``)."""
    parsed = urlparse(uri)
    return parsed.scheme.lower() if len(parsed.scheme) > 1 else "file"


def local_path(uri: str) -> Path:
    """Filesystem path of a plain path or ``file://`` URI."""
    return Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri).expanduser()


def join(base: str, relative: str) -> str:
    """Resolve ``relative`` (a catalog's image field) against the folder of ``base`` (the manifest URI).

    Absolute paths and URIs with a scheme are returned unchanged.
    """
    if scheme(relative) != "file" or relative.startswith("file://") or os.path.isabs(relative):
        return relative
    if scheme(base) == "file":
        return str(local_path(base).parent / relative)
    return base.rsplit("/", 1)[0] + "/" + relative


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``.

    Raises:
        ValueError: not an ``s3://bucket/key`` URI.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected s3://bucket/key, got {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


@functools.lru_cache(maxsize=1)
def s3_client():
    """A boto3 S3 client configured from the environment (cached per process)."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("VS_S3_ENDPOINT_URL") or None)


GLOB_CHARS = "*?["


def check_uri(uri: str) -> str:
    """``uri`` if it can name an object, else a ``ValueError`` saying why: control characters (a NUL byte),
    an unknown scheme, ``http(s)://`` without a host, ``s3://`` without a bucket or key."""
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise ValueError(f"{uri!r} holds a control character")
    kind = scheme(uri)
    parsed = urlparse(uri)
    if kind not in ("file", "http", "https", "s3"):
        raise ValueError(f"unsupported URI scheme {kind!r} in {uri!r}: expected a path, file://, http(s):// or s3://")
    if kind in ("http", "https") and not parsed.hostname:
        raise ValueError(f"{uri!r} has no host")
    if kind == "s3" and (not parsed.netloc or not parsed.path.strip("/")):
        raise ValueError(f"{uri!r} is not s3://bucket/key")
    return uri


def list_objects(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """The objects a file, folder, glob or ``s3://`` prefix names, sorted; only names ending in one of
    ``suffixes`` (case-insensitive) when given and ``uri`` is not itself one object.

    ``uri``: a path or ``s3://bucket/key`` (one object), a folder or ``s3://bucket/prefix/`` (everything under
    it, recursively), or a glob (``*``, ``?``, ``[...]`` in the last part: ``shards/part-*.jsonl``). An
    ``http(s)://`` URI is one object.

    Raises:
        ObjectNotFound: nothing matches. StorageError: the listing failed.
    """
    import fnmatch

    kind = scheme(uri)
    if kind in ("http", "https"):
        return [uri]
    wanted = tuple(s.lower() for s in suffixes)

    def keep(name: str) -> bool:
        return not wanted or name.lower().endswith(wanted)

    if kind == "file":
        import glob

        path = local_path(uri)
        if any(c in str(path) for c in GLOB_CHARS):
            found = sorted(p for p in glob.glob(str(path)) if os.path.isfile(p))
        elif path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and keep(p.name))
        else:
            found = [str(path)] if path.is_file() else []
    elif kind == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri) if urlparse(uri).path.strip("/") else (urlparse(uri).netloc, "")
        pattern = key if any(c in key for c in GLOB_CHARS) else None
        prefix = key[:min(key.index(c) for c in GLOB_CHARS if c in key)] if pattern else key
        try:
            keys = [o["Key"] for page in s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as e:
            raise StorageError(f"cannot list {uri}: {e}") from e
        if pattern:
            found = [f"s3://{bucket}/{k}" for k in sorted(keys) if fnmatch.fnmatchcase(k, pattern)]
        elif key in keys:
            found = [uri]
        else:
            found = [f"s3://{bucket}/{k}" for k in sorted(keys) if not k.endswith("/") and keep(k)]
    else:
        raise StorageError(f"cannot list {uri!r}: unsupported scheme {kind!r}")
    if not found:
        raise ObjectNotFound(f"no objects match {uri}" + (f" (looked for {', '.join(suffixes)})" if suffixes else ""))
    return found


def exists(uri: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether an object is at ``uri`` (a local stat, an HTTP HEAD, an S3 HEAD).

    Raises:
        StorageError: the check itself failed (timeout, permission denied, ...).
    """
    kind = scheme(uri)
    if kind == "file":
        return local_path(uri).is_file()
    if kind in ("http", "https"):
        import httpx

        try:
            return httpx.head(uri, timeout=timeout_s, follow_redirects=True).status_code < 400
        except httpx.HTTPError as e:
            raise StorageError(f"{uri}: {type(e).__name__}: {e}") from e
    if kind == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code", "") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"{uri}: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"{uri}: {type(e).__name__}: {e}") from e
    raise StorageError(f"unsupported URI scheme {kind!r} in {uri!r}")


def read_bytes(uri: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """Read a whole object.

    Args:
        uri: local path, ``file://``, ``http(s)://`` or ``s3://`` URI.
        max_bytes: refuse objects larger than this.
        timeout_s: connect/read timeout for HTTP, in seconds.

    Raises:
        ObjectNotFound: nothing at ``uri``.
        ObjectTooLarge: larger than ``max_bytes``.
        StorageError: any other read failure (timeout, connection refused, permission denied, …).
    """
    kind = scheme(uri)
    if kind == "file":
        return _read_local(uri, max_bytes)
    if kind in ("http", "https"):
        return _read_http(uri, max_bytes, timeout_s)
    if kind == "s3":
        return _read_s3(uri, max_bytes)
    raise StorageError(f"unsupported URI scheme {kind!r} in {uri!r}: expected a path, file://, http(s):// or s3://")


def _read_local(uri: str, max_bytes: int) -> bytes:
    path = local_path(uri)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ObjectTooLarge(f"{uri}: {size} bytes is over the {max_bytes}-byte limit")
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ObjectNotFound(f"{uri}: no such file") from e
    except IsADirectoryError as e:
        raise StorageError(f"{uri}: is a directory, expected a file") from e
    except PermissionError as e:
        raise StorageError(f"{uri}: permission denied") from e


def _read_http(uri: str, max_bytes: int, timeout_s: float) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", uri, timeout=timeout_s, follow_redirects=True) as response:
            if response.status_code == 404:
                raise ObjectNotFound(f"{uri}: HTTP 404")
            if response.status_code >= 400:
                raise StorageError(f"{uri}: HTTP {response.status_code}")
            return bounded_body(response.iter_bytes(), max_bytes, uri)
    except httpx.TimeoutException as e:
        raise StorageError(f"{uri}: timed out after {timeout_s} s") from e
    except httpx.HTTPError as e:
        raise StorageError(f"{uri}: {type(e).__name__}: {e}") from e


def bounded_body(chunks, max_bytes: int, uri: str) -> bytes:
    """Join an iterator of byte chunks, raising :class:`ObjectTooLarge` once past ``max_bytes``."""
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise ObjectTooLarge(f"{uri}: larger than the {max_bytes}-byte limit")
    return bytes(body)


def _read_s3(uri: str, max_bytes: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        obj = s3_client().get_object(Bucket=bucket, Key=key)
        if obj["ContentLength"] > max_bytes:
            raise ObjectTooLarge(f"{uri}: {obj['ContentLength']} bytes is over the {max_bytes}-byte limit")
        return obj["Body"].read()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise ObjectNotFound(f"{uri}: {code}") from e
        raise StorageError(f"{uri}: S3 error {code}: {e}") from e
    except BotoCoreError as e:
        raise StorageError(f"{uri}: {type(e).__name__}: {e}") from e


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object to a local path (parents created) or ``s3://``, atomically: readers see the old or
    the new object, never half of one (locally a temp file renamed over it; an S3 PUT is atomic).

    Raises:
        StorageError: unsupported scheme or a write failure.
    """
    kind = scheme(uri)
    if kind == "file":
        _write_local(local_path(uri), data)
    elif kind == "s3":
        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as e:
            raise StorageError(f"{uri}: could not write: {e}") from e
    else:
        raise StorageError(f"cannot write to {uri!r}: expected a local path or s3://")


def _write_local(path: Path, data: bytes) -> None:
    """Write ``path`` durably: a temp file beside it is written and fsync'd, renamed over ``path``, then the
    folder is fsync'd, so after a crash ``path`` holds the old bytes or the new ones, never an empty or partial
    file (the rename alone can reach the disk before the data; see ``rename(2)`` and ext4's ``auto_da_alloc``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename is all it offers
        return
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
