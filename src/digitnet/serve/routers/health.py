"""Operational routes: `/healthz` (alive), `/readyz` (model loaded), `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from digitnet.serve.responses import error_response
from digitnet.serve.schemas import ErrorResponse, Health, Ready
from digitnet.serve.state import ServeState, get_state

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


# HEAD is what many load balancers and uptime checks send; each answers as its GET, without a body.
@router.head("/healthz", include_in_schema=False)
def healthz_head() -> Response:
    return Response(status_code=200, media_type="application/json")


@router.head("/readyz", include_in_schema=False)
def readyz_head(state: ServeState = Depends(get_state)) -> Response:
    if state.model_info is None:
        return Response(status_code=503, headers=state.limits.retry_after(), media_type="application/json")
    return Response(status_code=200, media_type="application/json")


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": ErrorResponse}},
    summary="The model is loaded and predictions can be served",
)
def readyz(state: ServeState = Depends(get_state)) -> Response:
    if state.model_info is None:
        err = state.not_ready()
        return error_response(err.status, err.code, err.message, err.headers)
    return JSONResponse({"status": "ready", "model": state.model_info.model_dump()})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)")
def metrics(state: ServeState = Depends(get_state)) -> PlainTextResponse:
    text = state.metrics.render(
        inflight=state.inflight,
        ready=state.model_info is not None,
        queued=state.slots.waiting,
        decode_bytes=state.decode_budget.used,
        buffered_bytes=state.body_budget.used,
        batches=state.batcher.stats if state.batcher is not None else None,
    )
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
