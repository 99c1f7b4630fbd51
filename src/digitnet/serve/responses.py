"""Every error the service returns has one shape: `{"error": {"code": str, "message": str}}`.

The handlers installed here cover our own `HTTPError`, digitnet's `InputError` (422), FastAPI's
request validation, Starlette's HTTP exceptions (404, 405, …) and, last, any other exception, which
becomes a 500 with a fixed message: the traceback goes to the server log, never to the client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from digitnet.errors import DigitnetError, InputError
from digitnet.utils import first_line

log = logging.getLogger("digitnet.serve")

STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class HTTPError(Exception):
    """An error response raised from inside the app: status, machine code, one-line message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_bytes(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        error_bytes(code, message), status_code=status, headers=headers, media_type="application/json"
    )


async def send_error(
    send: Any,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    close: bool = False,
) -> None:
    """Send a complete JSON error response on a raw ASGI `send` (for pure ASGI middleware).

    `close`: the request body was not (fully) read, so the connection cannot carry another
    request; `Connection: close` makes the server drop it instead of parsing the unread rest of
    the body as the next request (or waiting for it indefinitely).
    """
    body = error_bytes(code, message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        raw.append((b"connection", b"close"))
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def validation_message(errors: Sequence[Mapping[str, Any]], limit: int = 3) -> str:
    """Pydantic errors → one line: 'pixels.3: Input should be a finite number; …'."""
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # our own validators' text
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = len(errors) - limit
    line = "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
    return line.replace("\n", " ")[:500] or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def on_http_error(request: Request, exc: HTTPError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def on_input_error(request: Request, exc: InputError) -> Response:
        return error_response(
            422, "invalid_input", first_line(exc, 500) if str(exc).strip() else "invalid input"
        )

    async def on_digitnet_error(request: Request, exc: DigitnetError) -> Response:
        # A ModelError mid-request is the server's problem, not the client's; say so without detail.
        log.error("digitnet error while serving %s: %s", request.url.path, exc)
        return error_response(503, "unavailable", "the model is unavailable")

    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_input", validation_message(list(exc.errors())))

    async def on_starlette_http(request: Request, exc: StarletteHTTPException) -> Response:
        code = STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error while serving %s", request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "internal server error")

    handlers: list[tuple[type[Exception], Any]] = [
        (HTTPError, on_http_error),
        (InputError, on_input_error),
        (DigitnetError, on_digitnet_error),
        (RequestValidationError, on_validation),
        (StarletteHTTPException, on_starlette_http),
        (Exception, on_unexpected),
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, handler)
