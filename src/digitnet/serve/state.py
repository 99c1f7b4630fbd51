"""Per-process service state, and the FastAPI dependencies that hand it to the routes.

The predictor is loaded in the app's lifespan onto `app.state.predictor`; routes never read
`app.state` themselves: they declare `Depends(get_predictor)` / `Depends(get_state)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from digitnet.inference.predictor import Predictor
from digitnet.inference.reader import Reader
from digitnet.serve.limits import Limits
from digitnet.serve.metrics import Metrics
from digitnet.serve.responses import HTTPError
from digitnet.serve.schemas import ModelInfo


@dataclass
class ServeState:
    """Mutable per-process state shared by middleware and routes (not configuration)."""

    limits: Limits
    metrics: Metrics = field(default_factory=Metrics)
    inflight: int = 0  # prediction requests in flight; touched only on the event loop thread
    model_info: ModelInfo | None = None  # set with the predictor

    def not_ready(self) -> HTTPError:
        return HTTPError(503, "not_ready", "the model is still loading", self.limits.retry_after())


def attach(app_state: object, predictor: Predictor) -> None:
    """Make `predictor` the one the routes get (in the lifespan, or at once for a given one)."""
    serve: ServeState = app_state.serve  # type: ignore[attr-defined]
    serve.model_info = ModelInfo(name=str(predictor.name), version=str(predictor.version))
    app_state.predictor = predictor  # type: ignore[attr-defined]


def get_state(request: Request) -> ServeState:
    state: ServeState = request.app.state.serve
    return state


def attach_reader(app_state: object, reader: Reader) -> None:
    app_state.reader = reader  # type: ignore[attr-defined]


def get_reader(request: Request) -> Reader:
    """The loaded number reader, or 503 + Retry-After while the lifespan is still loading it."""
    reader: Reader | None = request.app.state.reader
    if reader is None:
        raise get_state(request).not_ready()
    return reader


def get_predictor(request: Request) -> Predictor:
    """The loaded predictor, or 503 + Retry-After while the lifespan is still loading it (raised
    before the body is read)."""
    predictor: Predictor | None = request.app.state.predictor
    if predictor is None:
        raise get_state(request).not_ready()
    return predictor
