"""Opportunistic batching (serve_app/batching.py): what queues during a forward is the next batch."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_app.batching import ModelBatcher


def _batcher(seconds: float = 0.05, wait: float = 0.0):
    calls: list[tuple[str, list]] = []
    threads: set[str] = set()

    def forward(kind):
        def fn(items):
            calls.append((kind, list(items)))
            threads.add(threading.current_thread().name)
            time.sleep(seconds)
            return [f"{kind}:{x}" for x in items]
        return fn

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    batcher = ModelBatcher(executor, wait)
    batcher.add_kind("image", forward("image"), 8)
    batcher.add_kind("text", forward("text"), 8)
    return batcher, calls, threads


def test_requests_that_arrive_during_a_forward_form_the_next_batch():
    batcher, calls, threads = _batcher()

    async def main():
        first = asyncio.create_task(batcher.submit("image", 0))
        await asyncio.sleep(0.01)  # the first forward is running
        rest = [asyncio.create_task(batcher.submit("image", i)) for i in range(1, 13)]
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    assert results == [f"image:{i}" for i in range(13)]  # each caller gets its own result, in order
    assert [len(items) for _, items in calls] == [1, 8, 4]  # 1 alone, then what queued, up to max_batch_size
    assert threads == {"model_0"}  # one forward thread


def test_a_lone_request_does_not_wait_for_company():
    batcher, calls, _ = _batcher(seconds=0.0)

    async def main():
        started = time.perf_counter()
        await batcher.submit("text", "a")
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.05 and calls == [("text", ["a"])]


def test_kinds_share_the_thread_and_the_oldest_waiting_kind_goes_first():
    batcher, calls, _ = _batcher()

    async def main():
        first = asyncio.create_task(batcher.submit("image", 0))
        await asyncio.sleep(0.01)
        texts = [asyncio.create_task(batcher.submit("text", i)) for i in range(3)]
        await asyncio.sleep(0.005)
        images = [asyncio.create_task(batcher.submit("image", i)) for i in range(1, 3)]
        await asyncio.gather(first, *texts, *images)

    asyncio.run(main())
    assert calls == [("image", [0]), ("text", [0, 1, 2]), ("image", [1, 2])]


def test_a_wait_collects_a_fuller_batch_when_the_model_is_free():
    batcher, calls, _ = _batcher(seconds=0.0, wait=0.05)

    async def main():
        tasks = [asyncio.create_task(batcher.submit("text", 0))]
        for i in range(1, 4):
            await asyncio.sleep(0.005)
            tasks.append(asyncio.create_task(batcher.submit("text", i)))
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert calls == [("text", [0, 1, 2, 3])]


def test_an_error_reaches_every_request_of_its_batch_and_the_next_batch_still_runs():
    executor = ThreadPoolExecutor(max_workers=1)
    batcher = ModelBatcher(executor)

    def fn(items):
        if "bad" in items:
            raise ValueError("bad item in batch")
        time.sleep(0.02)
        return items

    batcher.add_kind("text", fn, 4)

    async def main():
        first = asyncio.create_task(batcher.submit("text", "ok-0"))
        await asyncio.sleep(0.005)
        batch = [asyncio.create_task(batcher.submit("text", x)) for x in ("ok-1", "bad")]
        outcomes = await asyncio.gather(first, *batch, return_exceptions=True)
        after = await batcher.submit("text", "ok-2")
        return outcomes, after

    outcomes, after = asyncio.run(main())
    assert outcomes[0] == "ok-0" and all(isinstance(o, ValueError) for o in outcomes[1:]) and after == "ok-2"
    assert batcher.stats()["text"]["forwards"] == 3


def test_stats_and_bad_sizes():
    batcher, _, _ = _batcher(seconds=0.0)
    asyncio.run(batcher.submit("image", 1))
    stats = batcher.stats()
    assert stats["image"]["forwards"] == 1 and stats["image"]["mean_batch"] == 1.0 and batcher.stats() == {}
    with pytest.raises(ValueError):
        batcher.set_max_batch_size("image", 0)
