"""Per-process service state, and the FastAPI dependencies that hand it to the routes.

The predictor is loaded in the app's lifespan onto `app.state.predictor`; routes never read
`app.state` themselves: they declare `Depends(get_predictor)` / `Depends(get_state)` /
`Depends(get_batcher)`. The admission pieces live here too, one set per worker process: the
prediction slots and their queue, the decode memory budget and the body-buffer budget (all
`serve.admission.Limiter`s), and the model's `MicroBatcher`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fastapi import Request

from digitnet.inference.predictor import Predictor
from digitnet.inference.reader import Reader
from digitnet.serve.admission import Limiter
from digitnet.serve.batcher import MicroBatcher
from digitnet.serve.limits import Limits
from digitnet.serve.metrics import Metrics
from digitnet.serve.responses import HTTPError
from digitnet.serve.schemas import ModelInfo


@dataclass
class ServeState:
    """Mutable per-process state shared by middleware and routes (not configuration)."""

    limits: Limits
    metrics: Metrics = field(default_factory=Metrics)
    inflight: int = 0  # prediction requests at work; touched only on the event loop thread
    model_info: ModelInfo | None = None  # set with the predictor
    batcher: MicroBatcher | None = None  # set with the predictor
    slots: Limiter = field(init=False)  # prediction requests at work, and the queue for them
    decode_budget: Limiter = field(init=False)  # bytes of decoded pixels in flight
    body_budget: Limiter = field(init=False)  # bytes of request bodies buffered
    decode_threads: Limiter = field(init=False)  # image decodes running at once: one per core

    def __post_init__(self) -> None:
        lim = self.limits
        self.decode_threads = Limiter(max(1, os.cpu_count() or 1), name="decode threads")
        self.slots = Limiter(lim.max_concurrency, max_waiting=lim.max_queue, name="prediction slots")
        self.decode_budget = Limiter(lim.max_decode_bytes, name="bytes of decode memory")
        self.body_budget = Limiter(lim.max_buffered_bytes, name="buffered body bytes")

    def not_ready(self) -> HTTPError:
        return HTTPError(503, "not_ready", "the model is still loading", self.limits.retry_after())


def attach(app_state: object, predictor: Predictor) -> None:
    """Make `predictor` the one the routes get (in the lifespan, or at once for a given one)."""
    serve: ServeState = app_state.serve  # type: ignore[attr-defined]
    serve.model_info = ModelInfo(name=str(predictor.name), version=str(predictor.version))
    if serve.batcher is not None:
        serve.batcher.shutdown()
    batcher = MicroBatcher(
        predictor.model_outputs,
        max_items=serve.limits.batch_max_items,
        max_wait_s=serve.limits.batch_max_wait_s,
        name="digits",
        # wait for more only while other prediction requests are at work and not yet in the batcher
        more_coming=lambda: serve.inflight > batcher.callers,
    )
    serve.batcher = batcher
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


def get_batcher(request: Request) -> MicroBatcher:
    """The model's micro-batcher (set with the predictor)."""
    batcher = get_state(request).batcher
    if batcher is None:
        raise get_state(request).not_ready()
    return batcher
