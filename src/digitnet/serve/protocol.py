"""uvicorn's HTTP protocol with the two bounds the ASGI app cannot enforce: connections and headers.

uvicorn closes an idle keep-alive connection, but nothing bounds a request whose headers never
finish: 300 connections sending one header line every 2 s stayed open forever, and each open
connection costs a file descriptor and buffers. `GuardedHttpToolsProtocol` (httptools, uvicorn's
default parser) adds

- a header deadline: from a request's first byte (or the connection's opening) its request line
  and headers must be complete within `Limits.header_timeout_s`, else 408 and the connection closes;
- a connection cap: past `Limits.max_connections` open connections in this worker a new one gets
  503 + Retry-After and is closed at once, before its request is read.

The body's own deadlines are the app's (`limits.BodyLimitMiddleware`). `digitnet serve` passes
`protocol_class(limits)` to uvicorn; worker processes (`--workers N`) import the plain class by
name, and it reads its limits from `DIGITNET_SERVE_LIMITS` as the app does.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from digitnet.serve.limits import Limits
from digitnet.serve.responses import error_bytes
from digitnet.serve.security import HEADERS

ENV_LIMITS = "DIGITNET_SERVE_LIMITS"
IMPORT_NAME = "digitnet.serve.protocol:GuardedHttpToolsProtocol"


def _raw_response(status: str, code: str, message: str, extra: str = "") -> bytes:
    """An error written by the protocol itself (the app never saw the request): JSON like every
    other error, with the same security headers."""
    body = error_bytes(code, message)
    security = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{security}{extra}\r\n"
    )
    return head.encode("latin-1") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits | None] = None  # None: read DIGITNET_SERVE_LIMITS on first use

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = self._limits()
        self._header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def _limits(cls) -> Limits:
        if cls.limits is None:
            raw = os.environ.get(ENV_LIMITS, "")
            cls.limits = Limits.from_json(raw, ENV_LIMITS) if raw else Limits()
        return cls.limits

    # -- connection cap ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._guard.max_connections:
            transport.write(
                _raw_response(
                    "503 Service Unavailable",
                    "overloaded",
                    "too many open connections; retry shortly",
                    f"retry-after: {self._guard.retry_after_s}\r\n",
                )
            )
            transport.close()
            return
        self._arm()  # the first request's headers are due from the moment the connection opens

    # -- header deadline --------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self._guard.header_timeout_s, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        msg = f"request headers not complete within {self._guard.header_timeout_s:g} s"
        self.transport.write(_raw_response("408 Request Timeout", "request_timeout", msg))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Bytes that are not HTTP (a garbage request line, a bad Content-Length, a broken chunk):
        uvicorn's plain-text 400, as JSON."""
        self.transport.write(_raw_response("400 Bad Request", "bad_request", f"{msg} (malformed HTTP)"))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a keep-alive connection's next request starts its clock
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_class(limits: Limits) -> type[GuardedHttpToolsProtocol]:
    """The protocol bound to `limits` (one process: `digitnet serve` with one worker, the tests)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
