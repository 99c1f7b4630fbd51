"""Operational routes (`/healthz`, `/readyz`, `/metrics`) and the web page (`/`, `/static/*`)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from digitnet.serve.schemas import ErrorResponse, Health, Ready

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Everything the page needs comes from this server; the policy makes a stray CDN link fail loudly.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorResponse}},
            summary="The model is loaded and predictions can be served")
def readyz(request: Request) -> JSONResponse:
    if request.app.state.predictor is None:
        return JSONResponse({"error": {"code": "not_ready", "message": "the model is still loading"}},
                            status_code=503, headers={"Retry-After": "1"})
    info = request.app.state.serve.model_info
    return JSONResponse({"status": "ready", "model": info.model_dump()})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)")
def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state.serve
    text = state.metrics.render(inflight=state.inflight, ready=request.app.state.predictor is not None)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
