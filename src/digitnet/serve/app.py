"""The FastAPI application factory.

`create_app` wires the layers, outermost first: metrics (times and counts every request, refusals
included) → concurrency cap on /v1/* (503 + Retry-After) → body cap (413, counted on bytes
received) → FastAPI (JSON error handlers, routes). The model is loaded in the lifespan, in a worker
thread, onto `app.state.predictor`; until then /readyz and the predict routes answer 503.

`app_from_env` is the factory uvicorn imports in each worker process (`--workers N`); it reads the
same settings from `DIGITNET_SERVE_*` environment variables, which `digitnet serve` sets.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitnet.errors import ConfigError
from digitnet.serve.limits import Limits
from digitnet.serve.metrics import Metrics

DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 32
ENV_PREFIX = "DIGITNET_SERVE_"


@dataclass
class ServeState:
    """Mutable per-process state shared by middleware and routes (not configuration)."""

    limits: Limits
    metrics: Metrics = field(default_factory=Metrics)
    inflight: int = 0  # prediction requests in flight; touched only on the event loop thread
    model_info: Any = None  # schemas.ModelInfo once the predictor is set


def _attach(app: Any, predictor: Any) -> None:
    from digitnet.serve.schemas import ModelInfo

    app.state.serve.model_info = ModelInfo(name=str(predictor.name), version=str(predictor.version))
    app.state.predictor = predictor


def _openapi(app: Any) -> Any:
    """FastAPI's schema plus the request models that the predict routes read by hand."""
    from fastapi.openapi.utils import get_openapi

    from digitnet.serve.schemas import BatchRequest, PredictRequest

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (PredictRequest, BatchRequest):
                s = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(s.pop("$defs", {}))
                comps[model.__name__] = s
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def create_app(model: str | Path = "default", *, max_body_bytes: int = DEFAULT_MAX_BODY,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, predictor: Any = None,
               backend: str = "auto", threads: int | None = 1, retry_after_s: int = 1) -> Any:
    """Build the service. `predictor` (a ready `Predictor`, or a test double) skips loading `model`.

    `backend` is `Predictor.load`'s: "auto" runs ONNX Runtime when an up-to-date model.onnx sits
    beside the checkpoint (about 3× faster than torch for one image), else torch. `threads` is the
    intra-op thread count: 1 suits a server, where concurrency comes from requests running side by
    side (and from `--workers`).
    """
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from digitnet import __version__
    from digitnet.serve import routes_health, routes_predict
    from digitnet.serve.limits import BodyLimitMiddleware, ConcurrencyLimitMiddleware
    from digitnet.serve.metrics import MetricsMiddleware
    from digitnet.serve.responses import install_error_handlers

    limits = Limits(max_body_bytes=max_body_bytes, max_concurrency=max_concurrency, retry_after_s=retry_after_s)
    state = ServeState(limits=limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import anyio.to_thread

        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, limits.max_concurrency)
        if app.state.predictor is None:
            from digitnet.inference import Predictor

            loaded = await anyio.to_thread.run_sync(
                lambda: Predictor.load(model, backend=backend, threads=threads))
            _attach(app, loaded)
        yield

    app = FastAPI(
        title="digitnet", version=__version__, lifespan=lifespan,
        description="Handwritten-digit recognition: POST an image or 28×28 pixels, get the digit, "
                    "calibrated probabilities and the preprocessed image the model saw. "
                    "Errors are always JSON `{\"error\": {\"code\", \"message\"}}`.",
    )
    app.state.serve = state
    app.state.predictor = None
    if predictor is not None:
        _attach(app, predictor)
    install_error_handlers(app)
    app.include_router(routes_predict.router)
    app.include_router(routes_health.router)
    app.mount("/static", StaticFiles(directory=routes_health.STATIC_DIR), name="static")
    app.openapi = _openapi(app)
    # add_middleware puts each new layer outside the previous one: the last added runs first.
    # Outermost first: metrics → body cap (buffers the upload) → concurrency slot → routes, so a
    # slow upload never holds one of the bounded prediction slots.
    app.add_middleware(ConcurrencyLimitMiddleware, limits=limits, state=state)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(ENV_PREFIX + name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None


def app_from_env() -> Any:
    """uvicorn factory (`digitnet.serve.app:app_from_env`): settings from DIGITNET_SERVE_* vars."""
    return create_app(
        os.environ.get(ENV_PREFIX + "MODEL", "default"),
        max_body_bytes=_env_int("MAX_BODY_BYTES", DEFAULT_MAX_BODY) or DEFAULT_MAX_BODY,
        max_concurrency=_env_int("MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY) or DEFAULT_MAX_CONCURRENCY,
        backend=os.environ.get(ENV_PREFIX + "BACKEND", "auto"),
        threads=_env_int("THREADS", 1),
    )
