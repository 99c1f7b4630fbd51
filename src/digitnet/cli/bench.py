"""`digitnet bench train|predict|serve`: each benchmark's command lives beside its concern
(`cli/train.py: bench_train`, `cli/predict.py: bench_predict`, `cli/serve.py: bench_serve`);
this file only groups them under one `bench` sub-command."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from digitnet.cli import predict, serve, train

    bench_app = typer.Typer(help="Measure speed and memory (figures for BENCHMARKS.md).", no_args_is_help=True)
    for name, mod in (("train", train), ("predict", predict), ("serve", serve)):
        func = getattr(mod, f"bench_{name}", None)
        if func is not None:
            bench_app.command(name)(func)
    app.add_typer(bench_app, name="bench")
