"""The reusable admission pieces of the service on their own: `Limiter` and `MicroBatcher`."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from digitnet.errors import ConfigError
from digitnet.serve.admission import Limiter, Overloaded, TooLarge
from digitnet.serve.batcher import MicroBatcher


def test_limiter_is_fifo_weighted_and_bounded():
    async def main():
        lim = Limiter(10, max_waiting=2)
        await lim.acquire(8, 1)
        order = []

        async def take(name, weight):
            await lim.acquire(weight, 5)
            order.append(name)

        big = asyncio.create_task(take("big", 6))  # must wait for the 8
        await asyncio.sleep(0.01)
        small = asyncio.create_task(take("small", 1))  # would fit now, but the big one is first
        await asyncio.sleep(0.01)
        assert order == [] and lim.waiting == 2
        with pytest.raises(Overloaded, match="already waiting"):
            await lim.acquire(1, 5)  # the queue is full
        with pytest.raises(TooLarge):
            await lim.acquire(11, 5)  # never fits
        lim.release(8)
        await asyncio.gather(big, small)
        assert order == ["big", "small"] and lim.used == 7

    asyncio.run(main())


def test_limiter_deadline_leaves_the_queue_and_wakes_the_next():
    async def main():
        lim = Limiter(4)
        await lim.acquire(3, 1)
        t0 = time.monotonic()
        with pytest.raises(Overloaded, match=r"within 0\.1 s"):
            await lim.acquire(4, 0.1)
        assert 0.08 < time.monotonic() - t0 < 0.5 and lim.waiting == 0
        assert lim.try_acquire(1) and not lim.try_acquire(1)
        lim.release(4)
        assert lim.used == 0

    asyncio.run(main())


def test_batcher_coalesces_callers_and_returns_each_its_rows():
    calls = []

    def fn(x):
        calls.append(len(x))
        time.sleep(0.02)
        return x * 2

    async def main():
        b = MicroBatcher(fn, max_items=8, max_wait_s=0.01)
        arrays = [np.full((k, 3), i, np.float32) for i, k in enumerate([1, 2, 1, 3, 1, 1])]
        outs = await asyncio.gather(*(b.submit(a) for a in arrays))
        for a, o in zip(arrays, outs, strict=True):
            np.testing.assert_array_equal(o, a * 2)
        big = await b.submit(np.ones((20, 3), np.float32))  # larger than max_items: a batch of its own
        assert big.shape == (20, 3)
        await b.aclose()
        b.shutdown()
        return b.stats

    stats = asyncio.run(main())
    assert calls[:1] == [8] and sum(calls) == 29 and stats.largest == 20 and stats.batches == len(calls)


def test_batcher_runs_fn_off_the_event_loop_and_raises_to_every_caller():
    loop_thread = threading.get_ident()

    def fn(x):
        assert threading.get_ident() != loop_thread
        raise RuntimeError("model broke")

    async def main():
        b = MicroBatcher(fn, max_items=4, max_wait_s=0.005)
        results = await asyncio.gather(
            *(b.submit(np.zeros((1, 2))) for _ in range(3)), return_exceptions=True
        )
        await b.aclose()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "model broke" in str(r) for r in results)


def test_batcher_does_not_wait_when_nobody_else_can_come():
    async def main():
        b = MicroBatcher(lambda x: x, max_items=64, max_wait_s=0.5, more_coming=lambda: False)
        t0 = time.monotonic()
        await b.submit(np.zeros((1, 2)))
        await b.aclose()
        return time.monotonic() - t0

    assert asyncio.run(main()) < 0.2


def test_batcher_refuses_silly_settings():
    with pytest.raises(ConfigError):
        MicroBatcher(lambda x: x, max_items=0)
    with pytest.raises(ConfigError):
        MicroBatcher(lambda x: x, max_wait_s=5)
