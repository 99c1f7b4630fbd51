"""Prometheus metrics, written by hand (prometheus_client is not a dependency).

Counters live in one process: with `--workers N` each worker keeps and reports its own, as a
multi-process Prometheus setup without a shared store does. Route labels come from a fixed set of
paths (anything else is "other") so a scan of random URLs cannot grow the label space.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from digitnet.inference.predictor import Prediction

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
ROUTES = frozenset(
    {
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/read",
        "/docs",
        "/openapi.json",
    }
)


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/static/"):
        return "/static"
    return "/docs-assets" if path.startswith("/docs-assets/") else "other"


class Metrics:
    """Thread-safe counters: requests by route/method/status, latency histogram, predictions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency: dict[str, list[float]] = {}  # route → bucket counts + [sum, count]
        self.predictions: Counter[str] = Counter()  # digit as a string, or "none" for empty images
        self.unsure = 0
        self.statuses: Counter[str] = Counter()  # predictions by status
        self.empty = 0
        self.rejected = 0
        self.started = time.time()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            row = self.latency.get(route)
            if row is None:
                row = self.latency[route] = [0.0] * (len(BUCKETS) + 2)
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += seconds
            row[-1] += 1

    def observe_predictions(self, predictions: Sequence[Prediction]) -> None:
        with self._lock:
            for p in predictions:
                self.predictions["none" if p.digit is None else str(p.digit)] += 1
                self.unsure += bool(p.unsure)
                self.statuses[p.status] += 1
                self.empty += bool(p.empty)

    def observe_rejected(self) -> None:
        with self._lock:
            self.rejected += 1

    def render(
        self,
        *,
        inflight: int = 0,
        ready: bool = False,
        queued: int = 0,
        decode_bytes: int = 0,
        buffered_bytes: int = 0,
        batches: Any = None,
    ) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP digitnet_http_requests_total HTTP requests by route, method and status.",
                "# TYPE digitnet_http_requests_total counter",
            ]
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(
                    f'digitnet_http_requests_total{{route="{route}",method="{method}",status="{status}"}} {n}'
                )
            lines += [
                "# HELP digitnet_http_request_duration_seconds Request latency by route.",
                "# TYPE digitnet_http_request_duration_seconds histogram",
            ]
            for route, row in sorted(self.latency.items()):
                name = "digitnet_http_request_duration_seconds"
                for bound, count in zip(BUCKETS, row, strict=False):
                    lines.append(f'{name}_bucket{{route="{route}",le="{bound:g}"}} {int(count)}')
                lines.append(f'{name}_bucket{{route="{route}",le="+Inf"}} {int(row[-1])}')
                lines.append(f'{name}_sum{{route="{route}"}} {row[-2]:.6f}')
                lines.append(f'{name}_count{{route="{route}"}} {int(row[-1])}')
            lines += [
                '# HELP digitnet_predictions_total Predictions by digit ("none" for empty images).',
                "# TYPE digitnet_predictions_total counter",
            ]
            for digit in [*map(str, range(10)), "none"]:
                lines.append(f'digitnet_predictions_total{{digit="{digit}"}} {self.predictions[digit]}')
            lines += [
                "# HELP digitnet_unsure_predictions_total Predictions below the calibrated confidence "
                "threshold.",
                "# TYPE digitnet_unsure_predictions_total counter",
                f"digitnet_unsure_predictions_total {self.unsure}",
                "# HELP digitnet_predictions_by_status_total Predictions by status.",
                "# TYPE digitnet_predictions_by_status_total counter",
                *(
                    f'digitnet_predictions_by_status_total{{status="{s}"}} {self.statuses[s]}'
                    for s in ("digit", "unsure", "not_a_digit", "empty")
                ),
                "# HELP digitnet_empty_images_total Images with no ink.",
                "# TYPE digitnet_empty_images_total counter",
                f"digitnet_empty_images_total {self.empty}",
                "# HELP digitnet_overload_rejections_total Requests refused with 503 because the "
                "queue was full or its wait too long.",
                "# TYPE digitnet_overload_rejections_total counter",
                f"digitnet_overload_rejections_total {self.rejected}",
            ]
        lines += [
            "# HELP digitnet_inflight_requests Prediction requests in flight now.",
            "# TYPE digitnet_inflight_requests gauge",
            f"digitnet_inflight_requests {inflight}",
            "# HELP digitnet_queued_requests Prediction requests waiting for a slot now.",
            "# TYPE digitnet_queued_requests gauge",
            f"digitnet_queued_requests {queued}",
            "# HELP digitnet_decode_bytes_in_flight Bytes of decode memory held now (the memory budget).",
            "# TYPE digitnet_decode_bytes_in_flight gauge",
            f"digitnet_decode_bytes_in_flight {decode_bytes}",
            "# HELP digitnet_buffered_body_bytes Request body bytes buffered now.",
            "# TYPE digitnet_buffered_body_bytes gauge",
            f"digitnet_buffered_body_bytes {buffered_bytes}",
        ]
        if batches is not None:
            lines += [
                "# HELP digitnet_model_batches_total Model calls made by the micro-batcher.",
                "# TYPE digitnet_model_batches_total counter",
                f"digitnet_model_batches_total {batches.batches}",
                "# HELP digitnet_model_batch_items_total Images in those model calls.",
                "# TYPE digitnet_model_batch_items_total counter",
                f"digitnet_model_batch_items_total {batches.items}",
            ]
        lines += [
            "# HELP digitnet_model_ready 1 once the model is loaded.",
            "# TYPE digitnet_model_ready gauge",
            f"digitnet_model_ready {int(ready)}",
            "# HELP digitnet_process_start_time_seconds Start time of this worker, Unix seconds.",
            "# TYPE digitnet_process_start_time_seconds gauge",
            f"digitnet_process_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Outermost layer: times every HTTP request and counts it by route and final status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, ServerErrorMiddleware answers 500
        answered = gone = False

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = int(message["status"]), True
            await send(message)

        async def receive_wrapper() -> dict[str, Any]:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.metrics.observe_request(
                route_label(scope["path"]),
                method if (method := scope.get("method", "")) in METHODS else "OTHER",
                # the client left (or its body broke off) before an answer: nobody got a 500
                499 if gone and not answered else status,
                time.perf_counter() - start,
            )
