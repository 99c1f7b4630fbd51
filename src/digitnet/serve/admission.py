"""Admission control any route can use: a fair, weighted limiter with a bounded queue and deadlines.

`Limiter(capacity)` hands out `weight` units of something scarce (request slots, bytes of decoded
pixels) to async callers in arrival order (FIFO: a big request is not starved by a stream of small
ones). A caller that cannot be served at once waits, but never without bound:

- the queue is bounded (`max_waiting` callers): past that the caller is refused at once;
- each wait has a deadline (`timeout_s`): past it the caller is refused and leaves the queue;
- a weight larger than the whole capacity can never be served and is refused at once.

A refusal is `Overloaded` (the route answers 503 with Retry-After) or `TooLarge` (a 4xx: that
request will never fit). Everything runs on the event loop thread, so no lock is needed; a limiter
rebinds itself when it meets a new event loop (each `TestClient` runs its own).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class Overloaded(Exception):
    """No room now and none within the deadline (or the queue is full): answer 503 + Retry-After."""


class TooLarge(Exception):
    """The request needs more than the limiter's whole capacity: it can never be served."""


@dataclass
class _Waiter:
    weight: int
    future: asyncio.Future[None]


@dataclass
class Limiter:
    """`capacity` units shared by async callers, FIFO, with a bounded queue (see the module doc)."""

    capacity: int
    max_waiting: int = 1 << 30
    name: str = "capacity"
    used: int = 0
    _waiters: deque[_Waiter] = field(default_factory=deque)
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop: whatever the old one held is gone with it
            self._loop, self.used, self._waiters = loop, 0, deque()

    def try_acquire(self, weight: int) -> bool:
        """Take `weight` units now if they are free and nobody is waiting; never waits."""
        self._bind()
        if self._waiters or self.used + weight > self.capacity:
            return False
        self.used += weight
        return True

    async def acquire(self, weight: int, timeout_s: float) -> None:
        self._bind()
        if weight > self.capacity:
            raise TooLarge(f"needs {weight:,} of {self.capacity:,} {self.name}")
        if not self._waiters and self.used + weight <= self.capacity:
            self.used += weight
            return
        if len(self._waiters) >= self.max_waiting:
            raise Overloaded(f"{self.name}: {len(self._waiters)} requests already waiting")
        assert self._loop is not None
        waiter = _Waiter(weight, self._loop.create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.future, timeout_s)
        except TimeoutError:
            self._leave(waiter)
            raise Overloaded(f"{self.name}: no room within {timeout_s:g} s") from None
        except BaseException:  # cancelled (the client went away, the server is stopping)
            self._leave(waiter)
            raise

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gives up: hand back what it was granted, or leave the queue."""
        if waiter.future.done() and not waiter.future.cancelled():
            self.release(waiter.weight)  # granted just as it gave up
            return
        waiter.future.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        self._wake()  # it may have been the head: the next in line may fit now

    def release(self, weight: int) -> None:
        self.used = max(0, self.used - weight)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0].weight <= self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.future.done():  # not one that gave up
                self.used += waiter.weight
                waiter.future.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, weight: int, timeout_s: float) -> AsyncIterator[None]:
        """`async with limiter.hold(n, timeout_s):` the n units are held inside the block."""
        await self.acquire(weight, timeout_s)
        try:
            yield
        finally:
            self.release(weight)
