"""Calls that run in killable worker processes with a time and memory limit (no Ray import).

Video decoding happens inside FFmpeg (through decord), which a thread cannot interrupt: a crafted clip could hold
a replica's CPU for minutes or grow it to gigabytes. :class:`WorkerPool` keeps a few long-lived worker processes
(``python -m serve_app.isolated``, started once, the decoder imported once), sends each call to an idle one
over a pipe, and when a call overruns its time the worker is killed (and replaced in the background) while the
caller gets :class:`IsolatedTimeout`. Each worker caps its own address space (``RLIMIT_AS``); one that dies —
over that limit, or a crash in native code — costs that call only (:class:`IsolatedCrash`). The replica itself
never runs the decoder.

Protocol on the worker's stdin/stdout: an 8-byte big-endian length, then a pickle; calls are
``(module, function, args)``, answers ``(ok, value or exception)``.
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


class IsolatedTimeout(TimeoutError):
    """The call did not finish within its time limit; its worker was killed."""


class IsolatedCrash(RuntimeError):
    """The worker died without an answer (over its memory limit, or a crash in native code)."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process

    async def call(self, payload: bytes) -> Any:
        self.process.stdin.write(HEADER.pack(len(payload)) + payload)
        await self.process.stdin.drain()
        size = HEADER.unpack(await self.process.stdout.readexactly(HEADER.size))[0]
        ok, value = pickle.loads(await self.process.stdout.readexactly(size))
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
    """

    def __init__(self, size: int = 2, memory_bytes: int | None = None, preload: Sequence[str] = ()):
        self.size, self.memory_bytes, self.preload = size, memory_bytes, list(preload)
        self._idle: asyncio.Queue | None = None

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
            await self._idle.put(worker)  # the call raised in the worker: the worker is fine
            raise
        await self._idle.put(worker)
        return result

    def close(self) -> None:
        """Kill every idle worker (busy ones end with their calls)."""
        while self._idle is not None and not self._idle.empty():
            self._idle.get_nowait().kill()


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
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - an unpicklable result or error
            data = pickle.dumps((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} (unpicklable: {e})")))
        stdout.write(HEADER.pack(len(data)) + data)
        stdout.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2:])
