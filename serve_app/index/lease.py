"""Leases: at most one ingestion run writes an index alias at a time (no Ray import).

An ingestion holds its alias's lease from creating its version to publishing it (:func:`serve_app.index.lease`).
The lease is a small JSON record — the owner (run id, host, pid, start time), a random token and an expiry —
created only where none exists, renewed by a heartbeat thread every ``ttl_s / 3`` seconds and deleted at the
end, also when the run fails. A run that finds the lease held waits up to ``wait_s`` seconds, then raises
:class:`LeaseHeld` naming the owner and the expiry; a lease past its expiry (its owner crashed or hung) is
taken over. Every change to an existing record is a compare-and-swap against what the changer last read, so a
holder whose lease was taken over can neither renew nor delete the new owner's: it gets :class:`LeaseLost`.

Where the record lives is the backend's choice (``lease_store``, see :mod:`serve_app.index.lease_stores`): a
lock file beside the LanceDB alias file (``O_CREAT | O_EXCL``), the same key on S3 (``If-None-Match: *``), or
a document in a small OpenSearch index (``op_type=create``).

Expiry is wall-clock UTC, so hosts that share an alias need clocks within a few seconds of each other (NTP);
``ttl_s`` must be much longer than that skew and than any pause of the process holding the lease.
"""

import abc
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from serve_app.index.base import IndexOpenError

log = logging.getLogger("visual_search.lease")
DEFAULT_TTL_S = 120.0  # a crashed run blocks the alias at most this long; renewed every ttl_s / 3
DEFAULT_WAIT_S = 0.0  # refuse at once: a second ingestion is more often a mistake than a queue
DEFAULT_POLL_S = 1.0
UNREADABLE_GRACE_S = 30.0  # a lock record that cannot be parsed counts as held this long after it was written


class LeaseHeld(IndexOpenError):
    """Another run holds the alias's lease (the message names it and when its lease expires)."""


class LeaseLost(IndexOpenError):
    """This run's lease expired and was taken over, or was deleted: it must not publish."""


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class LeaseRecord:
    """Who holds a lease and until when. ``started_at``/``expires_at``: ISO-8601 UTC; ``token``: unique per
    acquisition (what compare-and-swap checks, with the store's own version tag)."""

    run_id: str
    host: str
    pid: int
    token: str
    started_at: str
    expires_at: str

    @classmethod
    def new(cls, run_id: str, ttl_s: float) -> "LeaseRecord":
        now = time.time()
        return cls(run_id=run_id, host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                   started_at=_iso(now), expires_at=_iso(now + ttl_s))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LeaseRecord":
        """A stored record; missing fields read as ``"?"`` (a record written by hand or cut short)."""
        return cls(run_id=str(data.get("run_id", "?")), host=str(data.get("host", "?")),
                   pid=int(data.get("pid") or 0), token=str(data.get("token", "")),
                   started_at=str(data.get("started_at", "?")),
                   expires_at=str(data.get("expires_at") or _iso(0)))

    @classmethod
    def unreadable(cls, written_at_s: float) -> "LeaseRecord":
        """Stand-in for a record that cannot be parsed: held until ``UNREADABLE_GRACE_S`` after it was written."""
        return cls(run_id="? (unreadable lease record)", host="?", pid=0, token="", started_at=_iso(written_at_s),
                   expires_at=_iso(written_at_s + UNREADABLE_GRACE_S))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def renewed(self, ttl_s: float) -> "LeaseRecord":
        return replace(self, expires_at=_iso(time.time() + ttl_s))

    def expires_in_s(self) -> float:
        """Seconds until expiry (negative once expired)."""
        return datetime.fromisoformat(self.expires_at).timestamp() - time.time()

    def describe(self) -> str:
        return (f"run {self.run_id!r} on host {self.host!r} (pid {self.pid}, started {self.started_at}), "
                f"lease expires {self.expires_at}")


class LeaseStore(abc.ABC):
    """Where one alias's lease record lives. A ``tag`` is the store's version of the record last read or
    written (the bytes of a lock file, an S3 ETag, an OpenSearch ``(seq_no, primary_term)``)."""

    where: str  # for messages: the alias and where its lease is kept

    @abc.abstractmethod
    def create(self, record: dict[str, Any]) -> Any | None:
        """Store ``record`` only if no record exists: its tag, or ``None`` when one exists."""

    @abc.abstractmethod
    def read(self) -> tuple[LeaseRecord, Any] | None:
        """The stored record and its tag, or ``None`` when there is none."""

    @abc.abstractmethod
    def replace(self, record: dict[str, Any], tag: Any) -> Any | None:
        """Overwrite the record only if it is still the one tagged ``tag``: the new tag, or ``None``."""

    @abc.abstractmethod
    def delete(self, tag: Any) -> bool:
        """Delete the record only if it is still the one tagged ``tag``; whether it was deleted."""


class Lease:
    """A held lease, renewed by a daemon thread every ``renew_every_s`` seconds until :meth:`release`.

    Use :func:`hold` (or :func:`serve_app.index.lease`) rather than building one.
    """

    def __init__(self, store: LeaseStore, record: LeaseRecord, tag: Any, ttl_s: float,
                 renew_every_s: float | None = None):
        self.store, self.record, self.ttl_s = store, record, ttl_s
        self.renew_every_s = renew_every_s if renew_every_s is not None else ttl_s / 3
        self._tag = tag
        self._lock = threading.Lock()
        self._lost: LeaseLost | None = None
        self._released = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {record.run_id}", daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        """Whether a renewal found the record no longer this run's (no store access)."""
        return self._lost is not None

    def renew(self) -> None:
        """Push the expiry ``ttl_s`` seconds ahead (compare-and-swap).

        Raises:
            LeaseLost: the record is no longer this run's (taken over after expiring, or deleted), or the lease
                was already released.
            StorageError, IndexOpenError, TransportError: the store could not be reached (the lease may still
                be held; the heartbeat retries at its next beat).
        """
        with self._lock:
            if self._lost is not None:
                raise self._lost
            if self._released:
                raise LeaseLost(f"the lease on {self.store.where} was released")
            record = self.record.renewed(self.ttl_s)
            tag = self.store.replace(record.to_dict(), self._tag)
            if tag is None:
                found = self.store.read()
                now = f"it is now held by {found[0].describe()}" if found else "it was deleted"
                self._lost = LeaseLost(f"run {self.record.run_id!r} lost its lease on {self.store.where} "
                                       f"(its own expired {self.record.expires_at}); {now}")
                raise self._lost
            self.record, self._tag = record, tag

    def check(self) -> None:
        """Renew now, at a safe point such as just before publishing.

        Raises:
            LeaseLost: see :meth:`renew`.
        """
        self.renew()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every_s):
            try:
                self.renew()
            except LeaseLost as e:
                if not self._released:
                    log.error("%s", e)
                return
            except Exception as e:  # the store unreachable for a moment: retry at the next beat
                log.warning("could not renew the lease on %s (%s: %s); retrying in %.0f s", self.store.where,
                            type(e).__name__, e, self.renew_every_s)

    def release(self) -> None:
        """Stop renewing and delete the record if it is still this run's. A failure to delete is logged, not
        raised: the lease then expires at ``record.expires_at``."""
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            if self._released:
                return
            self._released = True
            if self._lost is not None:
                return
            try:
                if not self.store.delete(self._tag):
                    log.warning("the lease on %s was no longer run %r's when it ended", self.store.where,
                                self.record.run_id)
            except Exception as e:
                log.warning("could not release the lease on %s (%s: %s); it expires %s", self.store.where,
                            type(e).__name__, e, self.record.expires_at)


def acquire(store: LeaseStore, run_id: str, ttl_s: float = DEFAULT_TTL_S, wait_s: float = DEFAULT_WAIT_S,
            poll_s: float = DEFAULT_POLL_S, renew_every_s: float | None = None) -> Lease:
    """Take the lease in ``store`` for ``run_id``, waiting up to ``wait_s`` seconds while another run holds it.

    Args:
        ttl_s: seconds the lease lasts without a renewal (renewed every ``renew_every_s``, default ``ttl_s / 3``).
        wait_s: 0 refuses at once when the lease is held; otherwise seconds to wait for it.
        poll_s: seconds between looks at a held lease while waiting.

    Raises:
        ValueError: ``ttl_s`` not positive, or ``wait_s`` / ``poll_s`` negative.
        LeaseHeld: still held by another run after ``wait_s`` (the message names it and its expiry).
    """
    if ttl_s <= 0 or wait_s < 0 or poll_s < 0:
        raise ValueError(f"lease ttl_s must be > 0 and wait_s, poll_s >= 0, got ttl_s={ttl_s}, wait_s={wait_s}, "
                         f"poll_s={poll_s}")
    deadline = time.monotonic() + wait_s
    while True:
        record = LeaseRecord.new(run_id, ttl_s)
        tag = store.create(record.to_dict())
        if tag is not None:
            return Lease(store, record, tag, ttl_s, renew_every_s)
        found = store.read()
        if found is None:  # released between our create and our read
            continue
        held, held_tag = found
        if held.expires_in_s() <= 0:
            tag = store.replace(record.to_dict(), held_tag)
            if tag is not None:
                log.warning("took over the expired lease on %s from %s", store.where, held.describe())
                return Lease(store, record, tag, ttl_s, renew_every_s)
            continue  # someone else changed it first: look again
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f" (waited {wait_s:g} s)" if wait_s else ""
            raise LeaseHeld(f"{store.where} is being written by another ingestion: {held.describe()}{waited}. "
                            "Let it finish, or set lease_wait_s (--lease-wait-s) to wait that many seconds; a "
                            "lease whose run died is taken over once it expires.")
        time.sleep(max(0.0, min(poll_s, left, held.expires_in_s())))


@contextlib.contextmanager
def hold(store: LeaseStore, run_id: str, ttl_s: float = DEFAULT_TTL_S, wait_s: float = DEFAULT_WAIT_S,
         poll_s: float = DEFAULT_POLL_S, renew_every_s: float | None = None) -> Iterator[Lease]:
    """:func:`acquire` as a context manager that releases the lease on exit, also on an exception."""
    held = acquire(store, run_id, ttl_s, wait_s, poll_s, renew_every_s)
    try:
        yield held
    finally:
        held.release()
