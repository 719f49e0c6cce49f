"""Isolated worker processes (serve_app.isolated): answers, errors, time and memory limits, replacement."""

import asyncio
import os
import time

import numpy as np
import pytest

from serve_app.isolated import IsolatedCrash, IsolatedTimeout, WorkerPool


def allocate(n_bytes: int) -> int:
    return len(bytearray(n_bytes))


_KEPT: list = []


def keep(n_bytes: int) -> int:
    """Allocate ``n_bytes`` and keep them for the life of the worker; its pid."""
    _KEPT.append(np.ones(n_bytes, np.uint8))
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_call_returns_its_value_and_errors_come_back_as_themselves():
    async def main():
        pool = WorkerPool(1, preload=["numpy"])
        try:
            assert await pool.run(np.add, (2, 3), 10) == 5
            with pytest.raises(ValueError, match="bad clip"):
                await pool.run(fail, ("bad clip",), 10)
            assert await pool.run(np.add, (1, 1), 10) == 2  # the same worker goes on
        finally:
            pool.close()
    run(main())


def test_an_overrunning_call_is_killed_and_its_worker_replaced():
    async def main():
        pool = WorkerPool(1)
        try:
            started = time.monotonic()
            with pytest.raises(IsolatedTimeout):
                await pool.run(time.sleep, (30,), 0.5)
            assert time.monotonic() - started < 5
            assert await pool.run(np.multiply, (3, 4), 10) == 12  # a fresh worker answers
        finally:
            pool.close()
    run(main())


def test_a_call_over_the_memory_limit_costs_only_that_call():
    async def main():
        pool = WorkerPool(1, memory_bytes=512 * 2**20)
        try:
            assert await pool.run(allocate, (16 * 2**20,), 10) == 16 * 2**20
            with pytest.raises((MemoryError, IsolatedCrash)):
                await pool.run(allocate, (2 * 2**30,), 10)
            assert await pool.run(allocate, (2**20,), 10) == 2**20
        finally:
            pool.close()
    run(main())


def test_calls_beyond_the_pool_size_wait_for_a_free_worker():
    async def main():
        pool = WorkerPool(2)
        try:
            started = time.monotonic()
            await asyncio.gather(*[pool.run(time.sleep, (0.5,), 10) for _ in range(4)])
            assert 0.9 < time.monotonic() - started < 5  # two rounds of two
        finally:
            pool.close()
    run(main())


def test_a_worker_is_replaced_after_max_calls_and_the_calls_go_on():
    async def main():
        pool = WorkerPool(1, max_calls=3, max_rss_bytes=None)
        try:
            pids = [await pool.run(os.getpid, (), 10) for _ in range(7)]
            assert len(set(pids[:3])) == 1 and len(set(pids[3:6])) == 1 and pids[3] != pids[0]
            assert pids[6] not in pids[:6] and pool.retired == 2
        finally:
            pool.close()
    run(main())


def test_a_worker_left_holding_memory_over_the_bound_is_replaced():
    async def main():
        pool = WorkerPool(1, max_calls=None, max_rss_bytes=300 * 2**20)
        try:
            small = await pool.run(keep, (2**20,), 10)
            assert await pool.run(keep, (2**20,), 10) == small  # well under the bound: kept
            big = await pool.run(keep, (400 * 2**20,), 10)  # over it afterwards: this call answers, then it goes
            assert big == small
            fresh = await pool.run(keep, (2**20,), 10)
            assert fresh != small and pool.retired == 1
        finally:
            pool.close()
    run(main())
