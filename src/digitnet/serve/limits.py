"""Pure ASGI middleware bounding what one request may cost: body bytes and concurrent predictions.

`BodyLimitMiddleware` counts the bytes actually received, not the Content-Length a client claims:
a chunked upload with no Content-Length is cut off as soon as it passes the cap, and the app only
ever sees a body that fitted. It applies to every content type (JSON and multipart alike).

`ConcurrencyLimitMiddleware` refuses work early: when `max_concurrency` prediction requests are
already in flight, the next one gets 503 with Retry-After at once instead of queueing without
bound. Both run on the event loop thread only, so the counters need no lock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from digitnet.errors import ConfigError
from digitnet.serve.responses import send_error

Scope = dict[str, Any]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_concurrency: int = 32  # prediction requests in flight at once, per worker process
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.max_body_bytes <= 1024**3:
            raise ConfigError(f"max_body_bytes must be between 1 and 1 GiB, got {self.max_body_bytes}")
        if not 1 <= self.max_concurrency <= 1024:
            raise ConfigError(f"max_concurrency must be between 1 and 1024, got {self.max_concurrency}")
        if not 1 <= self.retry_after_s <= 3600:
            raise ConfigError(f"retry_after_s must be between 1 and 3600, got {self.retry_after_s}")

    def retry_after(self) -> dict[str, str]:
        """The header every 503 carries: when to try again."""
        return {"Retry-After": str(self.retry_after_s)}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


class BodyLimitMiddleware:
    """Buffer the request body up to `max_body_bytes`; past that answer 413 and stop reading.

    It sits outside the concurrency limit, so a client that trickles its body in holds a
    connection, never a prediction slot; a body that stalls for `read_timeout_s` gets a 408.
    """

    def __init__(self, app: Any, max_body_bytes: int, read_timeout_s: float = 15.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                await send_error(send, 400, "bad_request", "Content-Length is not a number", close=True)
                return
            if n > cap:  # refuse before reading a byte of it
                await send_error(
                    send,
                    413,
                    "payload_too_large",
                    f"request body is {n} bytes; the limit is {cap}",
                    close=True,
                )
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except TimeoutError:
                await send_error(
                    send,
                    408,
                    "request_timeout",
                    f"request body stalled for {self.read_timeout_s:g} s",
                    close=True,
                )
                return
            if message["type"] == "http.disconnect":
                return  # the client went away mid-upload; nothing to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > cap:
                await send_error(
                    send,
                    413,
                    "payload_too_large",
                    f"request body exceeds the limit of {cap} bytes",
                    close=True,
                )
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for http.disconnect as usual

        await self.app(scope, replay, send)


class ConcurrencyLimitMiddleware:
    """At most `limits.max_concurrency` requests under `prefix` in flight; the rest get 503 now."""

    def __init__(self, app: Any, limits: Limits, state: Any, prefix: str = "/v1/") -> None:
        self.app = app
        self.limits = limits
        self.state = state  # a ServeState: `.inflight` and `.metrics` are shared with /metrics
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        if self.state.inflight >= self.limits.max_concurrency:
            self.state.metrics.observe_rejected()
            await send_error(
                send,
                503,
                "overloaded",
                "the server is busy; retry shortly",
                self.limits.retry_after(),
                close=True,
            )
            return
        self.state.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.inflight -= 1
