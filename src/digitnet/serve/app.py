"""The FastAPI application factory.

`create_app` wires the layers, outermost first: security headers (on every response) → metrics
(times and counts every request, refusals included) → body limits (413 / 408 / 503, counted on the
bytes received; buffers the upload) → admission on /v1/* (slots plus a bounded FIFO queue; 503 +
Retry-After past it) → FastAPI (JSON error handlers, routers). A slow upload therefore never holds
one of the bounded prediction slots. Below the HTTP layer `serve.protocol` bounds connections and
header time. The model is loaded in the lifespan, in a worker thread, onto `app.state.predictor`,
with its micro-batcher; until then /readyz and the predict routes answer 503. All bounds: `Limits`.

`app_from_env` is the factory uvicorn imports in each worker process (`--workers N`); it reads the
same settings from `DIGITNET_SERVE_*` environment variables, which `digitnet serve` sets.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from digitnet import __version__
from digitnet.errors import ConfigError, DigitnetWarning
from digitnet.inference.predictor import Predictor
from digitnet.inference.reader import Reader
from digitnet.serve.limits import BodyLimitMiddleware, ConcurrencyLimitMiddleware, Limits
from digitnet.serve.memory import tune_allocator
from digitnet.serve.metrics import MetricsMiddleware
from digitnet.serve.responses import install_error_handlers
from digitnet.serve.routers import health, page, predict, read
from digitnet.serve.schemas import BatchRequest, PredictRequest, ReadRequest, exact_request_schema
from digitnet.serve.security import SWAGGER_DIR, SecurityHeadersMiddleware, docs_router
from digitnet.serve.state import ServeState, attach, attach_reader

DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 32
ENV_PREFIX = "DIGITNET_SERVE_"
log = logging.getLogger("digitnet.serve")


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema plus the request models that the predict routes read by hand."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (PredictRequest, BatchRequest, ReadRequest):
                s = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(s.pop("$defs", {}))
                comps[model.__name__] = s
            exact_request_schema(comps)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def _load_logged(
    kind: type[Predictor] | type[Reader], model: str | Path, backend: str, threads: int | None
) -> Any:
    """`Predictor.load` or `Reader.load`, its warnings (an untrusted .onnx, …) sent to the server log."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DigitnetWarning)
        loaded = kind.load(model, backend=backend, threads=threads)
    for w in caught:
        log.warning("%s", w.message)
    return loaded


def create_app(
    model: str | Path = "default",
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    predictor: Predictor | None = None,
    reader: Reader | None = None,
    reader_model: str | Path = "default",
    backend: str = "auto",
    threads: int | None = 1,
    retry_after_s: int = 1,
    limits: Limits | None = None,
) -> FastAPI:
    """Build the service. `predictor` (a ready `Predictor`, or a test double) skips loading `model`;
    `reader` (a ready `Reader`) skips loading `reader_model` (the bundled reader by default).

    `backend` is `Predictor.load`'s and `Reader.load`'s: "auto" runs ONNX Runtime when an
    up-to-date export sits beside the checkpoint (about 3× faster than torch for one image, 2× for
    a line), else torch. `threads` is the intra-op thread count of both: 1 suits a server, where
    concurrency comes from requests running side by side (and from `--workers`).

    `limits` sets every bound at once (queue, deadlines, memory budgets, batching: `Limits`); when
    given, it replaces `max_body_bytes`, `max_concurrency` and `retry_after_s`.
    """
    if limits is None:
        limits = Limits(
            max_body_bytes=max_body_bytes, max_concurrency=max_concurrency, retry_after_s=retry_after_s
        )
    state = ServeState(limits=limits)
    slots = limits.max_concurrency

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_allocator()
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, slots + 8)
        if app.state.predictor is None:
            attach(
                app.state, await anyio.to_thread.run_sync(_load_logged, Predictor, model, backend, threads)
            )
        if app.state.reader is None:
            loaded = await anyio.to_thread.run_sync(_load_logged, Reader, reader_model, backend, threads)
            attach_reader(app.state, loaded)
        try:
            yield
        finally:
            if state.batcher is not None:
                await state.batcher.aclose()

    app = FastAPI(
        title="digitnet",
        docs_url=None,  # served by `security.docs_router` from the package: works offline
        redoc_url=None,
        version=__version__,
        lifespan=lifespan,
        description="Handwritten-digit recognition: POST an image or 28×28 pixels, get the digit, "
        "calibrated probabilities and the preprocessed image the model saw. "
        'Errors are always JSON `{"error": {"code", "message"}}`.',
    )
    app.state.serve = state
    app.state.predictor = None
    app.state.reader = reader
    if predictor is not None:
        attach(app.state, predictor)
    install_error_handlers(app)
    app.include_router(predict.router)
    app.include_router(read.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.include_router(docs_router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=SWAGGER_DIR), name="docs-assets")
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    # add_middleware puts each new layer outside the previous one: the last added runs first.
    app.add_middleware(ConcurrencyLimitMiddleware, limits=limits, state=state)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=limits.max_body_bytes,
        read_timeout_s=limits.body_idle_timeout_s,
        limits=limits,
        buffered=state.body_budget,
    )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(ENV_PREFIX + name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None


def limits_from_env() -> Limits:
    """`DIGITNET_SERVE_LIMITS` (JSON, as `digitnet serve` writes it), else the two older variables."""
    raw = os.environ.get(ENV_PREFIX + "LIMITS", "")
    if raw:
        return Limits.from_json(raw, ENV_PREFIX + "LIMITS")
    return Limits(
        max_body_bytes=_env_int("MAX_BODY_BYTES", DEFAULT_MAX_BODY),
        max_concurrency=_env_int("MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY),
    )


def app_from_env() -> FastAPI:
    """uvicorn factory (`digitnet.serve.app:app_from_env`): settings from DIGITNET_SERVE_* vars."""
    return create_app(
        os.environ.get(ENV_PREFIX + "MODEL", "default"),
        backend=os.environ.get(ENV_PREFIX + "BACKEND", "auto"),
        threads=_env_int("THREADS", 1),
        limits=limits_from_env(),
    )
