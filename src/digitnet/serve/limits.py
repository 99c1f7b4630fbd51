"""What one request, and all of them together, may cost; and the pure ASGI middleware that holds it.

`Limits` is every bound of the service in one frozen value (`digitnet serve` flags, `create_app`,
and the `DIGITNET_SERVE_LIMITS` JSON each worker process reads). The bounds, outermost first:

- connections (`max_connections`) and the time to send request headers (`header_timeout_s`):
  enforced by the HTTP protocol itself (`serve.protocol`), before the app sees a request;
- the body (`BodyLimitMiddleware`): bytes actually received, not a claimed Content-Length
  (`max_body_bytes`, 413); a total deadline for the whole body (`body_timeout_s`) and for silence
  (`body_idle_timeout_s`), both 408; and the body bytes buffered by all requests at once
  (`max_buffered_bytes`, 503): 200 clients trickling 4 MB each cannot hold 800 MB;
- prediction requests (`ConcurrencyLimitMiddleware`): `max_concurrency` at work at once, up to
  `max_queue` more waiting in arrival order for at most `queue_timeout_s`; past that a 503 with
  Retry-After. A burst is queued and served, real overload is refused;
- decoded pixels in flight (`max_decode_bytes`, see `serve.decoding`): images are admitted by the
  memory their decode will hold, not by count, waiting at most until `request_timeout_s`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from digitnet.errors import ConfigError
from digitnet.serve.admission import Limiter, Overloaded
from digitnet.serve.responses import send_error

Scope = dict[str, Any]
MiB = 1024 * 1024

# field → (lowest, highest): every bound is checked once, here.
_RANGES: dict[str, tuple[float, float]] = {
    "max_body_bytes": (1, 1024**3),
    "max_concurrency": (1, 1024),
    "retry_after_s": (1, 3600),
    "max_queue": (0, 100_000),
    "queue_timeout_s": (0.0, 600.0),
    "request_timeout_s": (0.1, 3600.0),
    "max_decode_bytes": (16 * MiB, 64 * 1024 * MiB),
    "max_buffered_bytes": (1, 64 * 1024 * MiB),
    "body_timeout_s": (0.1, 3600.0),
    "body_idle_timeout_s": (0.1, 3600.0),
    "header_timeout_s": (0.1, 3600.0),
    "max_connections": (1, 100_000),
    "batch_max_items": (1, 4096),
    "batch_max_wait_s": (0.0, 1.0),
}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 4 * MiB
    max_concurrency: int = 32  # prediction requests at work at once, per worker process
    retry_after_s: int = 1
    max_queue: int = 512  # prediction requests waiting for a slot, per worker
    queue_timeout_s: float = 3.0  # longest wait for a slot before a 503
    request_timeout_s: float = 30.0  # longest wait for decode memory, from the request's arrival
    max_decode_bytes: int = 384 * MiB  # decoded pixels in flight, per worker
    max_buffered_bytes: int = 256 * MiB  # request bodies buffered at once, per worker
    body_timeout_s: float = 20.0  # the whole body must arrive within this
    body_idle_timeout_s: float = 15.0  # … and never stall longer than this
    header_timeout_s: float = 10.0  # request line + headers must arrive within this
    max_connections: int = 512  # open connections per worker; more are closed at once
    batch_max_items: int = 64  # images per model call
    batch_max_wait_s: float = 0.002  # how long a model call waits for more images

    def __post_init__(self) -> None:
        for f in fields(self):
            lo, hi = _RANGES[f.name]
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
                raise ConfigError(f"{f.name} must be between {lo:g} and {hi:g}, got {value!r}")

    def retry_after(self) -> dict[str, str]:
        """The header every 503 carries: when to try again."""
        return {"Retry-After": str(self.retry_after_s)}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, source: str = "limits") -> Limits:
        try:
            values = json.loads(text)
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in values.items() if k in names})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{source}: not valid limits ({exc})") from None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


class BodyLimitMiddleware:
    """Buffer the request body within the limits above; past them answer 413 / 408 / 503 and stop.

    It sits outside the concurrency limit, so a client that trickles its body in holds a
    connection and its buffered bytes, never a prediction slot.
    """

    def __init__(
        self,
        app: Any,
        max_body_bytes: int,
        read_timeout_s: float = 15.0,
        *,
        limits: Limits | None = None,
        buffered: Limiter | None = None,
    ) -> None:
        self.app = app
        self.limits = limits or Limits(max_body_bytes=max_body_bytes, body_idle_timeout_s=read_timeout_s)
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.buffered = buffered or Limiter(self.limits.max_buffered_bytes, name="buffered body bytes")

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
                msg = f"request body is {n} bytes; the limit is {cap}"
                await send_error(send, 413, "payload_too_large", msg, close=True)
                return
        held = 0
        try:
            body = bytearray()
            deadline = time.monotonic() + self.limits.body_timeout_s
            while True:
                left = deadline - time.monotonic()
                wait = min(self.read_timeout_s, left)
                try:
                    message = await asyncio.wait_for(receive(), max(wait, 0.0))
                except TimeoutError:
                    why = (
                        f"request body stalled for {self.read_timeout_s:g} s"
                        if wait < left
                        else f"request body not complete within {self.limits.body_timeout_s:g} s"
                    )
                    await send_error(send, 408, "request_timeout", why, close=True)
                    return
                if message["type"] == "http.disconnect":
                    return  # the client went away mid-upload; nothing to answer
                chunk = message.get("body", b"")
                if len(body) + len(chunk) > cap:
                    msg = f"request body exceeds the limit of {cap} bytes"
                    await send_error(send, 413, "payload_too_large", msg, close=True)
                    return
                if chunk:
                    if not self.buffered.try_acquire(len(chunk)):
                        msg = "the server is buffering too many uploads; retry shortly"
                        await send_error(send, 503, "overloaded", msg, self.limits.retry_after(), close=True)
                        return
                    held += len(chunk)
                    body += chunk
                if not message.get("more_body", False):
                    break
            payload = bytes(body)
            del body
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": payload, "more_body": False}
                return await receive()  # after the body: wait for http.disconnect as usual

            await self.app(scope, replay, send)
        finally:
            if held:
                self.buffered.release(held)


class ConcurrencyLimitMiddleware:
    """At most `limits.max_concurrency` requests under `prefix` at work; up to `max_queue` more wait
    (FIFO, at most `queue_timeout_s`); the rest get 503 + Retry-After."""

    def __init__(self, app: Any, limits: Limits, state: Any, prefix: str = "/v1/") -> None:
        self.app = app
        self.limits = limits
        self.state = state  # a ServeState: `.slots`, `.inflight` and `.metrics` are shared with /metrics
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        slots: Limiter = self.state.slots
        try:
            await slots.acquire(1, self.limits.queue_timeout_s)
        except Overloaded:
            self.state.metrics.observe_rejected()
            msg = "the server is busy; retry shortly"
            await send_error(send, 503, "overloaded", msg, self.limits.retry_after(), close=True)
            return
        self.state.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.inflight -= 1
            slots.release(1)
