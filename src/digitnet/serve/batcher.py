"""Dynamic batching: concurrent callers' arrays coalesced into one model call.

`MicroBatcher(fn)` wraps any `fn(batch: np.ndarray) -> np.ndarray` that maps N rows to N rows
(a model: images (N, 1, 28, 28) → logits (N, 10)). Callers `await batcher.submit(x)` with their own
(k, ...) array and get their own k rows back. A single loop task collects submissions until it
holds `max_items` rows or `max_wait_s` has passed since the first one arrived (what Triton, BentoML
and Ray Serve call dynamic batching), concatenates them along axis 0, runs `fn` once in a dedicated
thread, and splits the result. While one call runs, new submissions pile up and form the next
batch, so under load batches grow by themselves and an idle server adds no more than `max_wait_s`.
`more_coming()`, when given, tells whether anyone else could still join (a server knows how many
requests are at work): when nobody could, a lone submission runs at once instead of waiting.

Each call runs in the batcher's own thread: model calls never queue behind image decoding in the
shared thread pool, and never run two at once (a CPU model with one intra-op thread gains nothing
from that). An exception from `fn` is raised to every caller in that batch. An array larger than
`max_items` runs as a batch of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from digitnet.errors import ConfigError

BatchFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Job:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    busy_s: float = 0.0  # seconds spent inside fn


class MicroBatcher:
    def __init__(
        self,
        fn: BatchFn,
        *,
        max_items: int = 64,
        max_wait_s: float = 0.002,
        name: str = "model",
        more_coming: Callable[[], bool] | None = None,
    ) -> None:
        if not 1 <= max_items <= 65536:
            raise ConfigError(f"batch max_items must be between 1 and 65536, got {max_items}")
        if not 0.0 <= max_wait_s <= 1.0:
            raise ConfigError(f"batch max_wait_s must be between 0 and 1 s, got {max_wait_s}")
        self.fn, self.max_items, self.max_wait_s, self.name = fn, max_items, max_wait_s, name
        self.more_coming = more_coming  # None: always wait up to max_wait_s for more
        self._running = 0  # callers whose rows are in the model call now
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"digitnet-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: list[_Job] = []
        self._rows = 0
        self._arrived: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Rows submitted and not yet in a model call."""
        return self._rows

    @property
    def callers(self) -> int:
        """Callers waiting on the batcher now: queued, or in the running model call."""
        return len(self._jobs) + self._running

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Run `fn` on `x` (k rows) as part of a batch; returns the k rows of output that are x's."""
        self._bind()
        if len(x) == 0:
            assert self._loop is not None
            return np.asarray(await self._loop.run_in_executor(self._executor, self.fn, x))
        assert self._loop is not None and self._arrived is not None and self._full is not None
        job = _Job(x, self._loop.create_future())
        self._jobs.append(job)
        self._rows += len(x)
        self._arrived.set()
        if self._rows >= self.max_items:
            self._full.set()
        return await job.future

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop, self._jobs, self._rows = loop, [], 0
        self._arrived, self._full = asyncio.Event(), asyncio.Event()
        self._task = loop.create_task(self._run(), name=f"digitnet-{self.name}-batcher")

    def _take(self) -> list[_Job]:
        """Whole submissions, in order, up to max_items rows (at least one)."""
        taken: list[_Job] = []
        rows = 0
        while self._jobs and (not taken or rows + len(self._jobs[0].x) <= self.max_items):
            job = self._jobs.pop(0)
            taken.append(job)
            rows += len(job.x)
        self._rows -= rows
        return taken

    async def _run(self) -> None:
        assert self._loop is not None and self._arrived is not None and self._full is not None
        loop, arrived, full = self._loop, self._arrived, self._full
        while True:
            await arrived.wait()
            if (
                self._rows < self.max_items
                and self.max_wait_s > 0
                and (self.more_coming is None or self.more_coming())
            ):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(full.wait(), self.max_wait_s)
            jobs = self._take()
            if not self._jobs:
                arrived.clear()
            if self._rows < self.max_items:
                full.clear()
            jobs = [j for j in jobs if not j.future.done()]  # a caller that went away
            if not jobs:
                continue
            batch = jobs[0].x if len(jobs) == 1 else np.concatenate([j.x for j in jobs])
            t0 = time.perf_counter()
            self._running = len(jobs)
            try:
                out = await loop.run_in_executor(self._executor, self.fn, batch)
            except Exception as exc:
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            finally:
                self._running = 0
                self.stats.busy_s += time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.items += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            start = 0
            for j in jobs:
                n = len(j.x)
                if not j.future.done():
                    j.future.set_result(out[start : start + n])
                start += n

    async def aclose(self) -> None:
        """Stop the loop task (lifespan shutdown); pending callers are cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for j in self._jobs:
            j.future.cancel()
        self._jobs, self._rows = [], 0

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
