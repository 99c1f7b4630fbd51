"""`digitnet bench train|predict|serve`: each benchmark's command lives beside its concern
(`cli/train.py: bench_train`, `cli/predict.py: bench_predict`, `cli/serve.py: bench_serve`);
this file only groups them under one `bench` sub-command."""

from __future__ import annotations

import typer

from digitnet.cli import predict, read, serve, train


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(
        help="Measure speed and memory (figures for BENCHMARKS.md).", no_args_is_help=True
    )
    bench_app.command("train")(train.bench_train)
    bench_app.command("predict")(predict.bench_predict)
    bench_app.command("serve")(serve.bench_serve)
    bench_app.command("read")(read.bench_read)
    app.add_typer(bench_app, name="bench")
