"""The three places a lease record can live (see :mod:`serve_app.index.lease`; no Ray import).

- :class:`FileLeaseStore`: a lock file created with ``O_CREAT | O_EXCL`` (POSIX ``open(2)``: fails if it
  exists). Renewals, take-overs and the release compare the file's bytes and rewrite or unlink it while holding
  an ``flock`` on ``<lock>.guard`` — held for milliseconds and dropped by the kernel if the process dies, so a
  crash never leaves the guard stuck.
- :class:`S3LeaseStore`: ``PutObject`` with ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to rewrite
  and delete (AWS S3 user guide, "Add preconditions to S3 operations with conditional requests"; 412
  ``PreconditionFailed`` or 409 ``ConditionalRequestConflict`` when another writer got there first). A store
  that answers ``NotImplemented`` to a conditional delete gets a read-compare-delete instead.
- :class:`OpenSearchLeaseStore`: document ``<alias>`` of the index :data:`LEASE_INDEX`, created with
  ``op_type=create`` (409 if it exists), rewritten and deleted with ``if_seq_no`` / ``if_primary_term``
  (OpenSearch docs, "Index document" → optimistic concurrency control).
"""

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from serve_app import storage
from serve_app.index.lease import LeaseRecord, LeaseStore

LEASE_INDEX = "visual-search-leases"  # OpenSearch index holding one lease document per alias
_LOST_RACE = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=2).encode()


def _decode(data: bytes, written_at_s: float) -> LeaseRecord:
    try:
        return LeaseRecord.from_dict(json.loads(data))
    except (ValueError, TypeError, AttributeError):  # cut short, emptied, or not a JSON object
        return LeaseRecord.unreadable(written_at_s)


class FileLeaseStore(LeaseStore):
    """A lock file at ``path`` (a local folder; parents are created)."""

    def __init__(self, path: Path, alias: str):
        self.path = Path(path)
        self.guard = self.path.with_name(self.path.name + ".guard")
        self.where = f"index {alias} (lock file {self.path})"

    def create(self, record: dict[str, Any]) -> bytes | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = _encode(record)
        # Written whole to a private file first, then hard-linked into place: link() fails if the lock file
        # exists, so creation stays exclusive, and no reader ever sees it empty or half written (an O_EXCL
        # create then write let a second run starting at the same moment read an empty record).
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, self.path)
        except FileExistsError:
            return None
        finally:
            temp.unlink(missing_ok=True)
        return data

    def _current(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def read(self) -> tuple[LeaseRecord, bytes] | None:
        try:
            data, written_at = self.path.read_bytes(), self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return _decode(data, written_at), data

    @contextlib.contextmanager
    def _guarded(self):
        import fcntl

        fd = os.open(self.guard, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def replace(self, record: dict[str, Any], tag: bytes) -> bytes | None:
        with self._guarded():
            if self._current() != tag:
                return None
            data = _encode(record)
            storage.write_bytes(str(self.path), data)  # temp file, fsync, rename, fsync of the folder
            return data

    def delete(self, tag: bytes) -> bool:
        with self._guarded():
            if self._current() != tag:
                return False
            self.path.unlink()
            return True


class S3LeaseStore(LeaseStore):
    """A lease object at ``uri`` (``s3://bucket/key``), through :func:`serve_app.storage.s3_client`."""

    def __init__(self, uri: str, alias: str):
        self.uri = uri
        self.bucket, self.key = storage.split_s3(uri)
        self.where = f"index {alias} (lease object {uri})"

    def _call(self, method: str, **kwargs) -> dict | None:
        """The S3 call's answer, or ``None`` when a precondition failed or the object is gone.

        Raises:
            StorageError: any other S3 error (the message names the object and the code).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(storage.s3_client(), method)(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as e:
            if _error_code(e) in _LOST_RACE:
                return None
            raise storage.StorageError(f"{self.uri}: S3 {method} failed with {_error_code(e)}: {e}") from e
        except BotoCoreError as e:
            raise storage.StorageError(f"{self.uri}: S3 {method} failed: {type(e).__name__}: {e}") from e

    def create(self, record: dict[str, Any]) -> str | None:
        answer = self._call("put_object", Body=_encode(record), IfNoneMatch="*", ContentType="application/json")
        return answer["ETag"] if answer else None

    def read(self) -> tuple[LeaseRecord, str] | None:
        answer = self._call("get_object")
        if answer is None:
            return None
        return _decode(answer["Body"].read(), answer["LastModified"].timestamp()), answer["ETag"]

    def replace(self, record: dict[str, Any], tag: str) -> str | None:
        answer = self._call("put_object", Body=_encode(record), IfMatch=tag, ContentType="application/json")
        return answer["ETag"] if answer else None

    def delete(self, tag: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            return self._call("delete_object", IfMatch=tag) is not None
        except storage.StorageError as e:
            if not isinstance(e.__cause__, ClientError) or _error_code(e.__cause__) not in ("NotImplemented", "501"):
                raise
        found = self.read()  # no conditional delete here: compare, then delete (a narrow race)
        return found is not None and found[1] == tag and self._call("delete_object") is not None


def _error_code(e) -> str:
    return str(e.response.get("Error", {}).get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


class OpenSearchLeaseStore(LeaseStore):
    """Document ``alias`` of :data:`LEASE_INDEX` on the cluster at ``base_url`` (created on first use)."""

    def __init__(self, base_url: str, alias: str):
        from opensearchpy import OpenSearch

        from serve_app.index.opensearch_backend import client_options

        self.base_url, self.alias = base_url, alias
        self.client = OpenSearch(**client_options(base_url))
        self.where = f"index {base_url}/{alias} (lease document {LEASE_INDEX}/{alias})"
        self._index_ready = False

    @contextlib.contextmanager
    def _clear_errors(self):
        from serve_app.index.opensearch_backend import _clear_error

        try:
            yield
        except Exception as e:
            clear = _clear_error(e, self.base_url)
            if clear is e:
                raise
            raise clear from e

    def _ensure_index(self) -> None:
        from opensearchpy.exceptions import RequestError

        if self._index_ready:
            return
        try:  # stored, not searched: no dynamic mapping of the record's fields
            self.client.indices.create(index=LEASE_INDEX, body={"settings": {"index": {"number_of_shards": 1}},
                                                                "mappings": {"dynamic": False}})
        except RequestError as e:
            if e.error != "resource_already_exists_exception":
                raise
        self._index_ready = True

    def create(self, record: dict[str, Any]) -> tuple[int, int] | None:
        from opensearchpy.exceptions import ConflictError

        with self._clear_errors():
            self._ensure_index()
            try:
                answer = self.client.create(index=LEASE_INDEX, id=self.alias, body=record, refresh=True)
            except ConflictError:
                return None
        return answer["_seq_no"], answer["_primary_term"]

    def read(self) -> tuple[LeaseRecord, tuple[int, int]] | None:
        with self._clear_errors():
            answer = self.client.get(index=LEASE_INDEX, id=self.alias, ignore=[404])
        if not answer.get("found"):
            return None
        return LeaseRecord.from_dict(answer["_source"]), (answer["_seq_no"], answer["_primary_term"])

    def replace(self, record: dict[str, Any], tag: tuple[int, int]) -> tuple[int, int] | None:
        from opensearchpy.exceptions import ConflictError, NotFoundError

        with self._clear_errors():
            try:
                answer = self.client.index(index=LEASE_INDEX, id=self.alias, body=record, if_seq_no=tag[0],
                                           if_primary_term=tag[1], refresh=True)
            except (ConflictError, NotFoundError):
                return None
        return answer["_seq_no"], answer["_primary_term"]

    def delete(self, tag: tuple[int, int]) -> bool:
        from opensearchpy.exceptions import ConflictError, NotFoundError

        with self._clear_errors():
            try:
                self.client.delete(index=LEASE_INDEX, id=self.alias, if_seq_no=tag[0], if_primary_term=tag[1],
                                   refresh=True)
            except (ConflictError, NotFoundError):
                return False
        return True
