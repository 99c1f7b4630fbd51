"""`digitnet predict`, `digitnet export` and `digitnet bench predict`.

predict reads every file it is given (files, folders, globs); an unreadable one gets a one-line
error on stderr and exit code 2 at the end, while the others are still predicted.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.table import Table

from digitnet.cli.options import Backend, DataDir, Dataset, JsonOut, Model, Offline, load_data
from digitnet.errors import ConfigError, InputError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
BATCH = 256  # files decoded and predicted per model call: bounds memory on huge folders


def expand_paths(args: list[str]) -> tuple[list[Path], list[str]]:
    """Files from files/folders/globs, in order, without duplicates; plus one error per bad argument."""
    files: list[Path] = []
    errors: list[str] = []
    for arg in args:
        path = Path(arg).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{arg}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif path.exists() or not glob.has_magic(arg):
            files.append(path)  # a missing file is reported when it is read, in order
        else:
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True) if Path(m).is_file())
            if not matches:
                errors.append(f"{arg}: no files match")
            files.extend(matches)
    return list(dict.fromkeys(files)), errors  # duplicates dropped, first place kept


def _top_k(probabilities: list[float], k: int) -> str:
    order = sorted(range(10), key=lambda d: -probabilities[d])[:k]
    return "  ".join(f"{d}:{probabilities[d]:.3f}" for d in order)


def predict_cmd(
    paths: Annotated[
        list[str], typer.Argument(help="Image files, folders or globs (PNG, JPEG, GIF, BMP, WebP, TIFF).")
    ],
    model: Model = "default",
    top_k: Annotated[int, typer.Option("--top-k", help="How many classes to list per image.")] = 3,
    json_out: JsonOut = False,
    backend: Backend = "auto",
    no_preprocess: Annotated[
        bool,
        typer.Option("--no-preprocess", help="Inputs are already MNIST-style 28×28 light-on-dark digits."),
    ] = False,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model (default: the backend's).")
    ] = None,
) -> None:
    """Read the digit in each image."""
    if not 1 <= top_k <= 10:
        raise ConfigError("--top-k must be between 1 and 10")
    from digitnet.inference.predictor import Predictor
    from digitnet.inference.preprocess import decode_image

    files, errors = expand_paths(paths)
    for message in errors:
        err_console.print(f"error: {message}", markup=False)
    predictor = Predictor.load(model, backend=backend, threads=threads) if files else None
    failed = len(errors)
    rows: list[dict] = []
    for start in range(0, len(files), BATCH):
        images: list[Image.Image | np.ndarray] = []
        batch: list[dict] = []  # in input order: a file's prediction, or its error
        for f in files[start : start + BATCH]:
            try:
                images.append(decode_image(f))
                batch.append({"file": str(f)})
            except InputError as exc:
                err_console.print(f"error: {exc}", markup=False)
                batch.append({"file": str(f), "error": str(exc)})
                failed += 1
        preds = iter(predictor.predict_images(images, preprocess=not no_preprocess) if predictor else [])
        rows.extend(row if "error" in row else {**row, **next(preds).to_dict()} for row in batch)
    predicted = [r for r in rows if "error" not in r]
    if json_out:
        typer.echo(json.dumps([r if "error" in r else _json_row(r) for r in rows]))
    elif predicted:
        _print_table(predicted, top_k)
    if failed:
        # An InputError (not typer.Exit, whose code main() would drop) → one summary line, exit 2.
        raise InputError(
            f"{failed} of {len(files) + len(errors)} inputs could not be read; {len(predicted)} predicted"
        )
    if not files:
        raise InputError("no input files")


def _json_row(row: dict) -> dict:
    out = {
        "file": row["file"],
        "digit": row["digit"],
        "confidence": round(row["confidence"], 6),
        "probabilities": [round(p, 6) for p in row["probabilities"]],
        "unsure": row["unsure"],
        "status": row["status"],
    }
    if row["empty"]:
        out["empty"] = True
    return out


def _print_table(rows: list[dict], top_k: int) -> None:
    table = Table(show_edge=False, header_style="bold")
    table.add_column("file", overflow="fold")  # never cut a path: the user needs all of it
    table.add_column("digit", justify="center")
    table.add_column("confidence", justify="right")
    table.add_column(f"top {top_k}", no_wrap=True)
    table.add_column("status", justify="center")
    for r in rows:
        if r["empty"]:
            table.add_row(r["file"], "–", "–", "(no ink: empty image)", "[yellow]empty[/]")
            continue
        flag = {"digit": "digit", "unsure": "[yellow]unsure[/]", "not_a_digit": "[red]not a digit[/]"}[
            r["status"]
        ]
        table.add_row(
            r["file"],
            f"[bold]{r['digit']}[/]",
            f"{r['confidence']:.1%}",
            _top_k(r["probabilities"], top_k),
            flag,
        )
    console.print(table)


def export_cmd(
    run: Annotated[str, typer.Argument(help="Run folder, model.pt file, or 'default'.")],
    fmt: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: model.onnx beside model.pt).")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 18,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="A reader's int8 export (about 3x faster convolutions), written where the float32 "
            "one would be, so `--backend auto` runs it; its ranges are measured on numbers composed "
            "from the training digits the run trained on (needs its dataset: --data-dir).",
        ),
    ] = False,
    dataset: Dataset = "mnist",
    data_dir: DataDir = None,
    offline: Offline = False,
) -> None:
    """Export a trained model (ONNX, with calibration in its metadata)."""
    if fmt.lower() != "onnx":
        raise ConfigError(f"unknown export format {fmt!r}; supported: onnx")
    if int8:
        from digitnet.checkpoint import load_checkpoint
        from digitnet.inference.export import check_int8
        from digitnet.training.int8 import int8_export

        check_int8(load_checkpoint(run).name)  # before loading (maybe downloading) the dataset
        path = int8_export(run, load_data(dataset, data_dir, offline), out, opset=opset)
    else:
        from digitnet.inference.export import export_onnx

        path = export_onnx(run, out, opset=opset)
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", markup=False)


def bench_predict(
    model: Model = "default",
    backend: Annotated[str, typer.Option("--backend", help="torch | onnx | auto | all")] = "all",
    json_out: JsonOut = False,
    n: Annotated[
        int, typer.Option("--n", help="Single-image timings (model call and end to end each).")
    ] = 1000,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per batch for the throughput figure.")
    ] = 1000,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed batches.")] = 20,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: the backend's).")] = None,
) -> None:
    """Prediction speed: batch throughput and single-image latency (model call, end to end from PNG)."""
    from digitnet.bench.predict import PredictBenchConfig, run_predict_bench

    cfg = PredictBenchConfig(
        model=model, backend=backend, n=n, batch_size=batch_size, batch_repeats=repeats, threads=threads
    )
    result = run_predict_bench(cfg)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    env = result["environment"]
    table = Table(title=f"predict: {model} on {env['cpu']} ({env['cpu_count']} CPUs)", header_style="bold")
    for col in (
        "backend",
        "images/s (batch)",
        "model p50 ms",
        "model p99 ms",
        "e2e p50 ms",
        "e2e p99 ms",
        "load s",
    ):
        table.add_column(col, justify="right")
    for r in result["results"]:
        table.add_row(
            r["backend"],
            f"{r['images_per_s']:,.0f}",
            f"{r['latency_p50_ms']:.3f}",
            f"{r['latency_p99_ms']:.3f}",
            f"{r['e2e_p50_ms']:.3f}",
            f"{r['e2e_p99_ms']:.3f}",
            f"{r['load_s']:.2f}",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this concern's commands to the app."""
    app.command("predict")(predict_cmd)
    app.command("export")(export_cmd)
