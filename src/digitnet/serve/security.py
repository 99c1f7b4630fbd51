"""Security headers on every response, and the API docs page served from the package (offline).

`SecurityHeadersMiddleware` is the outermost layer, so every answer carries the headers: the page,
JSON results, the static assets, and the refusals the limits send on the raw ASGI channel (413,
408, 503). A route that needs another policy sets its own Content-Security-Policy (the docs do);
the middleware never overrides a header already set.

`/docs` is Swagger UI from the files the `fastapi-offline` package ships (no CDN), started by a
script of ours rather than an inline one, so the policy can forbid inline scripts there too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes from its scripts: its page alone allows inline styles.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_RAW = [(k.encode(), v.encode()) for k, v in HEADERS.items()]

SWAGGER_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>digitnet API</title>
<link rel="icon" type="image/png" href="/docs-assets/favicon.png">
<link rel="stylesheet" href="/docs-assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/static/docs-init.js"></script></body></html>
"""


class SecurityHeadersMiddleware:
    """Add `HEADERS` to every HTTP response that does not set them itself."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _RAW if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


docs_router = APIRouter()


@docs_router.get("/docs", include_in_schema=False)
def docs() -> HTMLResponse:
    return HTMLResponse(DOCS_HTML, headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"})
