"""Console reporting for training: a Rich bar per epoch, one summary line per epoch, or JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    """Rich progress bar for one epoch at a time: batches, loss, accuracy, images/s, ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  {task.fields[ips]:,.0f} img/s"
            ),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, loss=0.0, acc=0.0, ips=0.0)

    def step(self, n: int, loss: float, acc: float, images_per_s: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, loss=loss, acc=acc, ips=images_per_s)

    def end_epoch(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def epoch_line(row: dict[str, float], epochs: int) -> str:
    val = ""
    if "val_accuracy" in row:
        val = f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.2%}"
    return (
        f"epoch {int(row['epoch'])}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
        f"{val}  {row['seconds']:.1f}s  {row['images_per_s']:,.0f} img/s"
    )


class Reporter:
    """Chooses between human output (bar + lines on stderr/stdout), JSON lines, or silence."""

    def __init__(
        self, *, quiet: bool = False, log_json: bool = False, console: Console | None = None
    ) -> None:
        self.quiet, self.log_json = quiet, log_json
        self.console = console or Console(highlight=False)
        self.bar = None if (quiet or log_json) else EpochProgress()

    def epoch(self, row: dict[str, float], epochs: int) -> None:
        if self.log_json:
            self.json({"event": "epoch", **row})
        elif not self.quiet:
            self.console.print(epoch_line(row, epochs))

    def info(self, message: str) -> None:
        if not (self.quiet or self.log_json):
            self.console.print(message)

    def json(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
