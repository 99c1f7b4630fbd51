"""`digitnet serve` (the HTTP service under uvicorn) and `bench_serve` (wired as `digitnet bench serve`)."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
import uvicorn

from digitnet.errors import ConfigError


def serve_cmd(
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the service to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model: Annotated[
        str, typer.Option("--model", "-m", help="A run folder, a model.pt file, or 'default'.")
    ] = "default",
    workers: Annotated[int, typer.Option(help="Worker processes, each with its own model copy.")] = 1,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Request body cap (413 above).")] = 4
    * 1024
    * 1024,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", help="Prediction requests in flight per worker (503 above).")
    ] = 32,
    backend: Annotated[
        str,
        typer.Option(
            help="Inference backend: auto (onnx when model.onnx sits beside the "
            "checkpoint, else torch), torch, or onnx."
        ),
    ] = "auto",
    threads: Annotated[int, typer.Option(help="Inference threads per worker.")] = 1,
    max_queue: Annotated[
        int,
        typer.Option("--max-queue", help="Prediction requests waiting for a slot per worker (503 above)."),
    ] = 512,
    queue_timeout: Annotated[
        float, typer.Option("--queue-timeout", help="Longest wait for a slot, seconds (then 503).")
    ] = 3.0,
    decode_budget_mb: Annotated[
        int,
        typer.Option(
            "--decode-budget-mb", help="Decoded image memory in flight, MiB, shared by all workers."
        ),
    ] = 384,
    max_connections: Annotated[
        int, typer.Option("--max-connections", help="Open connections per worker (503 above).")
    ] = 512,
    header_timeout: Annotated[
        float, typer.Option("--header-timeout", help="Seconds to send request headers (then 408).")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", help="Seconds to send the whole request body (then 408).")
    ] = 20.0,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="Log every request.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve the REST API and the draw-a-digit page (http://HOST:PORT/, API docs at /docs)."""
    from digitnet.serve.limits import Limits  # no torch: bad flags are refused at once

    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {port}")
    if not 1 <= workers <= 64:
        raise ConfigError(f"workers must be between 1 and 64, got {workers}")
    if not 1 <= threads <= 64:
        raise ConfigError(f"threads must be between 1 and 64, got {threads}")
    if backend not in ("auto", "torch", "onnx"):
        raise ConfigError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ConfigError(f"unknown log level {log_level!r}")
    if not 16 <= decode_budget_mb <= 65536:
        raise ConfigError(f"--decode-budget-mb must be between 16 and 65536, got {decode_budget_mb}")
    limits = Limits(  # validates every bound; the two memory budgets are the whole server's
        max_body_bytes=max_body_bytes,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        queue_timeout_s=queue_timeout,
        max_decode_bytes=per_worker(decode_budget_mb * MiB, workers, LARGEST_DECODE),
        max_buffered_bytes=per_worker(Limits.max_buffered_bytes, workers, max_body_bytes),
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
    )
    from digitnet.checkpoint import resolve_model_path
    from digitnet.inference.predictor import Predictor
    from digitnet.serve.app import ENV_PREFIX, create_app
    from digitnet.serve.protocol import ENV_LIMITS, IMPORT_NAME, protocol_class

    if model != "default" and not model.endswith(".onnx"):
        model = str(resolve_model_path(model))  # absolute: worker processes may not share our cwd
    # Load here, before uvicorn starts: a bad model is a one-line error (exit 2), not a traceback
    # from a worker's failed startup. One worker serves this very predictor.
    predictor = Predictor.load(model, backend=backend, threads=threads)
    common: dict[str, Any] = dict(
        host=host,
        port=port,
        access_log=access_log,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        backlog=max(2048, limits.max_connections * workers),
    )
    if workers == 1:
        uvicorn.run(create_app(predictor=predictor, limits=limits), http=protocol_class(limits), **common)
        return
    # Every worker process builds its own app from these (uvicorn imports the factory in each).
    os.environ.update(
        {
            ENV_PREFIX + "MODEL": model,
            ENV_PREFIX + "MAX_BODY_BYTES": str(max_body_bytes),
            ENV_PREFIX + "MAX_CONCURRENCY": str(max_concurrency),
            ENV_PREFIX + "BACKEND": backend,
            ENV_PREFIX + "THREADS": str(threads),
            ENV_LIMITS: limits.to_json(),
        }
    )
    del predictor
    uvicorn.run("digitnet.serve.app:app_from_env", factory=True, workers=workers, http=IMPORT_NAME, **common)


MiB = 1024 * 1024
# The decode memory of the largest image the service takes (40 M pixels, RGBA, plus one strip and
# the result: `inference.decode.PendingImage.cost_bytes`): a worker's budget never goes below it.
LARGEST_DECODE = 40_000_000 * 4 + 8 * MiB + 640 * 640 * 4


def per_worker(total: int, workers: int, floor: int) -> int:
    """A whole-server memory budget split between worker processes, never below `floor` each."""
    return max(total // workers, min(floor, total))


def bench_serve(
    duration: Annotated[float, typer.Option(help="Seconds of measured load.")] = 30.0,
    concurrency: Annotated[int, typer.Option(help="Client connections in flight.")] = 8,
    max_requests: Annotated[
        int, typer.Option("--max-requests", help="Stop after this many requests.")
    ] = 1_000_000,
    mode: Annotated[
        str,
        typer.Option(
            help="good: valid JSON predictions only; mixed: a share of bad input too; both: one run of each."
        ),
    ] = "both",
    bad_fraction: Annotated[
        float, typer.Option("--bad-fraction", help="Mixed mode: share of bad requests.")
    ] = 0.25,
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 1,
    backend: Annotated[str, typer.Option(help="Server inference backend: auto, torch or onnx.")] = "auto",
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model to serve (ignored with --url).")
    ] = "default",
    url: Annotated[
        str | None, typer.Option(help="A running server on 127.0.0.1 instead of starting one.")
    ] = None,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each run.")] = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    hostile: Annotated[
        bool,
        typer.Option(
            "--hostile",
            help="Hostile load instead: huge PNGs, slow bodies, a burst, steady mixed traffic, "
            "a killed worker.",
        ),
    ] = False,
    scenarios: Annotated[
        str, typer.Option(help="--hostile: comma-separated among big, slow, burst, steady, kill.")
    ] = "big,slow,burst,steady",
    baseline_src: Annotated[
        str | None,
        typer.Option(
            "--baseline-src", help="--hostile: also run each scenario on this source tree's server."
        ),
    ] = None,
    scale: Annotated[
        float, typer.Option(help="--hostile: scale connections and durations down for a quick check (0-1).")
    ] = 1.0,
) -> None:
    """Load-test the HTTP service on 127.0.0.1: requests/s, p50/p99 latency, errors."""
    from digitnet.bench.serve import ServeBenchConfig, run_bench_serve

    if hostile:
        from digitnet.bench.hostile import HostileConfig, run_hostile

        hcfg = HostileConfig(
            scenarios=tuple(s.strip() for s in scenarios.split(",") if s.strip()),
            workers=workers,
            model=model,
            backend=backend,
            baseline_src=baseline_src,
            scale=scale,
            steady_s=duration if duration != 30.0 else 60.0,
        )
        report = run_hostile(hcfg)
        typer.echo(json.dumps(report, indent=2) if json_out else _hostile_lines(report))
        return

    if mode not in ("good", "mixed", "both"):
        raise ConfigError(f"mode must be good, mixed or both, got {mode!r}")
    results = []
    for m in ("good", "mixed") if mode == "both" else (mode,):
        cfg = ServeBenchConfig(
            duration_s=duration,
            concurrency=concurrency,
            max_requests=max_requests,
            mode=m,
            bad_fraction=bad_fraction,
            workers=workers,
            backend=backend,
            model=model,
            url=url,
            warmup_s=warmup,
        )
        res = run_bench_serve(cfg)
        results.append(res)
        if not json_out:
            lat = res["latency_ms"]
            typer.echo(
                f"{m:>5}: {res['good_per_s']:,.0f} good predictions/s ({res['total_per_s']:,.0f} requests/s) "
                f"p50 {lat['p50']} ms  p99 {lat['p99']} ms  max {lat['max']} ms  "
                f"good errors {res['good_errors']}/{res['good']}"
                + (
                    f"  bad answered 4xx {res['bad_4xx']}/{res['bad']} (5xx/dropped {res['bad_errors']})"
                    if m == "mixed"
                    else ""
                )
                + f"  [{res['elapsed_s']:.1f} s, {concurrency} connections, {workers} worker(s), "
                f"load {res['loadavg_1m'][0]}]"
            )
            for sample in res.get("error_samples", []):
                typer.echo(f"       error: {sample}")
    if json_out:
        typer.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))


def _hostile_lines(report: dict[str, Any]) -> str:
    keys = {
        "big": ("statuses", "peak_rss_mb", "rss_mb_3s_after", "max_s", "alive_after", "healthz_max_ms"),
        "slow": ("statuses", "closed_by_server", "closed_within_s", "peak_rss_mb", "healthz_max_ms"),
        "burst": ("statuses", "ok_within_2s_pct", "server_errors", "p50_s", "max_s", "peak_rss_mb"),
        "steady": ("good_photo_uploads_per_s", "good_per_s", "latency_ms", "good_errors", "bad_errors",
                   "rss_mb_after_warmup", "rss_mb_at_end"),
        "kill": ("good_per_s", "good_errors", "kill"),
    }  # fmt: skip
    lines = [f"{report['cpu']} ({report['cpus']} CPUs), {report['date']}, load {report['loadavg_1m_before']}"]
    for name, row in report["results"].items():
        for side, res in row.items():
            shown = {k: res.get(k) for k in keys[name]}
            lines.append(f"{name:>6} {side:>8}: {json.dumps(shown)}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this concern's commands to the app (`bench_serve` is added by cli/bench.py)."""
    app.command("serve")(serve_cmd)
