"""Opportunistic batching for a model that runs one forward at a time (no Ray import).

Ray Serve's batching guide describes *opportunistic batching*: when the replica is free to evaluate the next
batch it takes the pending requests, up to ``max_batch_size``. Ray 2.60's ``@serve.batch`` forms a batch as soon
as its first request arrives and only then waits for the model (``max_concurrent_batches``), so under steady
load with ``batch_wait_timeout_s=0`` every batch held one request: measured here, 8 concurrent clients gave a
mean batch of 1.0, and 64 requests sent at once 38 batches. :class:`ModelBatcher` forms the next batch only
when the forward thread is free, so whatever queued during a forward becomes the next batch, and a lone request
never waits.

One batcher serves several *kinds* of input (``"image"``, ``"text"``, ``"clip"``) sharing one forward thread;
each kind has its own batch size, and the kind whose oldest request has waited longest goes next.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    queued_at: float


@dataclass
class _Kind:
    fn: Callable[[list], Sequence]
    max_batch_size: int
    queue: deque = field(default_factory=deque)
    forwards: int = 0
    items: int = 0
    seconds: float = 0.0


class ModelBatcher:
    """Batches calls to blocking batch functions run on ``executor`` (one worker thread: the model's).

    Args:
        executor: where every batch function runs (a ``ThreadPoolExecutor(max_workers=1)``).
        batch_wait_timeout_s: when the model is free and the next batch is not full, wait up to this many
            seconds for more requests (0: start at once, the default; a lone request never waits).
    """

    def __init__(self, executor: Executor, batch_wait_timeout_s: float = 0.0):
        self.executor = executor
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._kinds: dict[str, _Kind] = {}
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def add_kind(self, kind: str, fn: Callable[[list], Sequence], max_batch_size: int) -> None:
        """Register a batch function: ``fn(items) -> results``, same length and order."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._kinds[kind] = _Kind(fn, max_batch_size)

    def set_max_batch_size(self, kind: str, max_batch_size: int) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._kinds[kind].max_batch_size = max_batch_size

    async def submit(self, kind: str, item: Any) -> Any:
        """Queue one item and return its result once its batch has run.

        Raises:
            whatever the batch function raised for the batch this item was in.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(item, loop.create_future(), time.monotonic())
        self._kinds[kind].queue.append(pending)
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        return await pending.future

    def _next_kind(self) -> _Kind | None:
        waiting = [k for k in self._kinds.values() if k.queue]
        return min(waiting, key=lambda k: k.queue[0].queued_at) if waiting else None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while (kind := self._next_kind()) is not None:
            if self.batch_wait_timeout_s > 0 and len(kind.queue) < kind.max_batch_size:
                deadline = kind.queue[0].queued_at + self.batch_wait_timeout_s
                while len(kind.queue) < kind.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = [kind.queue.popleft() for _ in range(min(kind.max_batch_size, len(kind.queue)))]
            batch = [p for p in batch if not p.future.done()]  # a caller that gave up (timeout, disconnect)
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, kind.fn, [p.item for p in batch])
            except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            finally:
                kind.forwards, kind.items = kind.forwards + 1, kind.items + len(batch)
                kind.seconds += time.perf_counter() - started
            if len(results) != len(batch):
                error = RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
                for p in batch:
                    p.future.set_exception(error)
                continue
            for p, result in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(result)

    def stats(self, reset: bool = True) -> dict[str, dict[str, float]]:
        """Per kind since the last reset: ``forwards``, ``mean_batch``, ``mean_forward_ms``, ``forward_s``."""
        out = {}
        for name, k in self._kinds.items():
            if k.forwards:
                out[name] = {"forwards": k.forwards, "mean_batch": round(k.items / k.forwards, 2),
                             "mean_forward_ms": round(1000 * k.seconds / k.forwards, 2), "forward_s": round(k.seconds, 3)}
            if reset:
                k.forwards, k.items, k.seconds = 0, 0, 0.0
        return out
