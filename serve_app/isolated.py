"""Calls that run in killable worker processes with a time and memory limit (no Ray import).

Video decoding happens inside FFmpeg (through decord), which a thread cannot interrupt: a crafted clip could hold
a replica's CPU for minutes or grow it to gigabytes. :class:`WorkerPool` keeps a few long-lived worker processes
(``python -m serve_app.isolated``, started once, the decoder imported once), sends each call to an idle one
over a pipe, and when a call overruns its time the worker is killed (and replaced in the background) while the
caller gets :class:`IsolatedTimeout`. Each worker caps its own address space (``RLIMIT_AS``); one that dies —
over that limit, or a crash in native code — costs that call only (:class:`IsolatedCrash`). A worker is retired
after ``max_calls`` calls, or as soon as a call leaves it holding more than ``max_rss_bytes`` resident, and
replaced (like ``multiprocessing.Pool``'s ``maxtasksperchild``): FFmpeg's buffers and the allocator's arenas it
grew on one large clip are then returned to the system instead of being kept for the life of the replica.
The replica itself never runs the decoder.

Protocol on the worker's stdin/stdout: an 8-byte big-endian length, then a pickle; calls are
``(module, function, args)``, answers ``(ok, value or exception, the worker's resident bytes after the call)``.
"""

import asyncio
import importlib
import os
import pickle
import resource
import struct
import sys
from collections.abc import Sequence
from typing import Any

HEADER = struct.Struct(">Q")
DEFAULT_MAX_CALLS = 100  # calls per worker before it is replaced (~0.3 s of start-up, off the request path)
DEFAULT_MAX_RSS_BYTES = 512 * 2**20  # a worker left holding more than this after a call is replaced


class IsolatedTimeout(TimeoutError):
    """The call did not finish within its time limit; its worker was killed."""


class IsolatedCrash(RuntimeError):
    """The worker died without an answer (over its memory limit, or a crash in native code)."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.calls = 0
        self.rss_bytes = 0  # resident after the last call, as the worker reported it

    async def call(self, payload: bytes) -> Any:
        self.calls += 1
        self.process.stdin.write(HEADER.pack(len(payload)) + payload)
        await self.process.stdin.drain()
        size = HEADER.unpack(await self.process.stdout.readexactly(HEADER.size))[0]
        ok, value, self.rss_bytes = pickle.loads(await self.process.stdout.readexactly(size))
        if not ok:
            raise value
        return value

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


class WorkerPool:
    """``size`` worker processes taking one call at a time each.

    Args:
        size: workers (calls that can run at once; more wait for a free worker).
        memory_bytes: each worker's address-space limit (``None``: unlimited).
        preload: modules each worker imports when it starts (e.g. the decoder).
        max_calls: calls after which a worker is retired and replaced (``None``: never).
        max_rss_bytes: a worker resident above this after a call is retired and replaced (``None``: never).
            With ``max_calls`` it bounds the memory an idle worker keeps from earlier calls.

    Raises:
        ValueError: ``size`` or ``max_calls`` below 1.
    """

    def __init__(self, size: int = 2, memory_bytes: int | None = None, preload: Sequence[str] = (),
                 max_calls: int | None = DEFAULT_MAX_CALLS, max_rss_bytes: int | None = DEFAULT_MAX_RSS_BYTES):
        if size < 1 or (max_calls is not None and max_calls < 1):
            raise ValueError(f"size and max_calls must be at least 1, got {size} and {max_calls}")
        self.size, self.memory_bytes, self.preload = size, memory_bytes, list(preload)
        self.max_calls, self.max_rss_bytes = max_calls, max_rss_bytes
        self._idle: asyncio.Queue | None = None
        self.retired = 0  # workers replaced after max_calls calls or over max_rss_bytes

    async def _spawn(self) -> _Worker:
        args = [sys.executable, "-m", "serve_app.isolated", str(self.memory_bytes or 0), *self.preload]
        process = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                       stdout=asyncio.subprocess.PIPE, env=os.environ.copy())
        return _Worker(process)

    async def _replace(self) -> None:
        await self._idle.put(await self._spawn())

    async def start(self) -> None:
        """Start the workers (else the first call does)."""
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                await self._idle.put(await self._spawn())

    async def run(self, function, args: tuple, timeout_s: float) -> Any:
        """``function(*args)`` in a worker; its return value or exception. ``function`` must be importable by
        module and name; ``args`` and the result picklable.

        Raises:
            IsolatedTimeout: not finished within ``timeout_s`` seconds (of running, not of waiting for a worker).
            IsolatedCrash: the worker died without answering.
            whatever ``function`` raised.
        """
        await self.start()
        worker = await self._idle.get()
        payload = pickle.dumps((function.__module__, function.__name__, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            result = await asyncio.wait_for(worker.call(payload), timeout_s)
        except asyncio.TimeoutError:
            worker.kill()
            asyncio.get_running_loop().create_task(self._replace())
            raise IsolatedTimeout(f"did not finish within {timeout_s:g} s") from None
        except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
            worker.kill()
            code = await worker.process.wait()
            asyncio.get_running_loop().create_task(self._replace())
            raise IsolatedCrash(f"the worker process died (exit code {code})") from None
        except BaseException:
            await self._release(worker)  # the call raised in the worker: the worker is fine
            raise
        await self._release(worker)
        return result

    async def _release(self, worker: _Worker) -> None:
        """Put ``worker`` back, or retire it (``max_calls`` reached, or over ``max_rss_bytes``) and start its
        replacement."""
        worn = self.max_calls is not None and worker.calls >= self.max_calls
        if not worn and (self.max_rss_bytes is None or worker.rss_bytes <= self.max_rss_bytes):
            await self._idle.put(worker)
            return
        self.retired += 1
        worker.process.stdin.close()  # the worker's loop ends at end of input
        asyncio.get_running_loop().create_task(self._retire(worker))

    async def _retire(self, worker: _Worker) -> None:
        await self._replace()
        try:
            await asyncio.wait_for(worker.process.wait(), 5)
        except asyncio.TimeoutError:
            worker.kill()

    def close(self) -> None:
        """Kill every idle worker (busy ones end with their calls)."""
        while self._idle is not None and not self._idle.empty():
            self._idle.get_nowait().kill()


def _resident_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _serve(memory_bytes: int, preload: Sequence[str]) -> None:
    """The worker's loop: read calls from stdin, answer on stdout, until stdin closes."""
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for module in preload:
        importlib.import_module(module)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the answer pipe
    while header := stdin.read(HEADER.size):
        module, name, args = pickle.loads(stdin.read(HEADER.unpack(header)[0]))
        try:
            answer = (True, getattr(importlib.import_module(module), name)(*args))
        except Exception as e:  # noqa: BLE001 - the caller re-raises it
            answer = (False, e)
        answer += (_resident_bytes(),)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an unpicklable result or error
            data = pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} (unpicklable: {e})"),
                                 answer[2]))
        stdout.write(HEADER.pack(len(data)) + data)
        stdout.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2:])
