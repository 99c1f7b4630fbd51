"""The run folder: one writer for what `train`, `DigitClassifier.save` and `ensemble` leave behind.

    runs/NAME/model.pt       best-on-validation weights + config + calibration (checkpoint.py)
    runs/NAME/metrics.json   test_accuracy, val_accuracy, train_seconds, epochs, …
    runs/NAME/history.csv    one row per epoch
    runs/NAME/manifest.json  config, data source + checksums, versions, git commit, machine, times
    runs/NAME/last.pt        resumable state after the last finished epoch (removed when done)

Every file is written atomically; `metrics.json` is written last, so a folder that has it is complete.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy
import torch
from torch import nn

from digitnet import __version__
from digitnet.checkpoint import save_checkpoint
from digitnet.errors import ModelError
from digitnet.training.loop import ResumeState
from digitnet.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, cpu_name, first_line

RESUME_FORMAT = "digitnet-resume/1"
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_s",
]


def now_iso() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def default_run_dir(model: str, seed: int, root: str | Path = "runs") -> Path:
    return Path(root) / f"{model}-s{seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str]:
    return {
        "digitnet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_run(
    out: Path,
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: dict[str, Any],
    config: dict[str, Any],
    temperature: float,
    unsure_threshold: float,
    not_digit_threshold: float = 0.0,
    metrics: dict[str, Any],
    history: list[dict[str, float]],
    data: dict[str, Any],
    started: str,
    checkpoint_meta: dict[str, Any],
    world_size: int = 1,
) -> None:
    """Write a complete run folder: model.pt, history.csv, manifest.json, then metrics.json.

    `data` describes what it was trained on: a dataset's `summary()`, or a dict for arrays that
    came from elsewhere (`DigitClassifier.fit`).
    """
    save_checkpoint(
        out / "model.pt",
        model,
        model_name=model_name,
        model_kwargs=model_kwargs,
        config=config,
        temperature=temperature,
        unsure_threshold=unsure_threshold,
        not_digit_threshold=not_digit_threshold,
        meta=checkpoint_meta,
    )
    write_history(out / "history.csv", history)
    atomic_write_json(
        out / "manifest.json",
        {
            "config": config,
            "data": data,
            "versions": versions(),
            "git_commit": git_commit(),
            "machine": machine(),
            "world_size": world_size,
            "command": sys.argv,
            "started": started,
            "finished": metrics.get("finished", now_iso()),
        },
    )
    atomic_write_json(out / "metrics.json", metrics)


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def read_history(path: str | Path) -> list[dict[str, float]]:
    """history.csv → one dict per epoch (empty cells dropped); a run without one → []."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def save_resume(out: Path, config: dict[str, Any], state: ResumeState) -> None:
    buf = io.BytesIO()
    torch.save({"format": RESUME_FORMAT, "config": config, "state": state.to_dict()}, buf)
    atomic_write_bytes(out / "last.pt", buf.getvalue())


def load_resume(out: Path) -> tuple[dict[str, Any], ResumeState]:
    """(config, state) from `out/last.pt`, read with weights_only=True."""
    path = Path(out) / "last.pt"
    if not path.is_file():
        hint = " (the run already finished)" if (Path(out) / "metrics.json").is_file() else ""
        raise ModelError(f"nothing to resume in {out}: no last.pt{hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: unreadable resume state ({first_line(exc)})") from None
    if not isinstance(blob, dict) or blob.get("format") != RESUME_FORMAT:
        raise ModelError(f"{path}: not a digitnet resume state")
    try:
        return blob["config"], ResumeState.from_dict(blob["state"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path}: resume state from another digitnet version ({first_line(exc)})") from None
