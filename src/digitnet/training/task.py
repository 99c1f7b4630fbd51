"""What the training loop asks of a task: batches, a loss, a score, a validation.

Two tasks exist: `digits.DigitTask` (one 28×28 digit, cross-entropy; every registry model but the
reader) and `numbers.NumberTask` (a whole number as a text line, CTC; the reader). The loop in
`loop.py` is the same for both: same seed, schedule, EMA, checkpoints, resume and run folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from digitnet.training.config import TrainConfig


@dataclass(frozen=True)
class TaskSetup:
    """What a task is built from: the config, this rank's data, and where and how it runs."""

    cfg: TrainConfig
    x_train: np.ndarray  # (N, 28, 28) or (N, 1, 28, 28) uint8 MNIST training digits
    y_train: np.ndarray  # (N,)
    x_val: np.ndarray | None  # the held-out validation digits, if any
    y_val: np.ndarray | None
    device: torch.device
    gen: torch.Generator  # the run's one seeded generator (batch order, augmentation)
    rank: int = 0  # this process, of `world` (distributed data parallel)
    world: int = 1


@dataclass
class Batch:
    x: torch.Tensor  # the model's input, on the device, channels_last
    target: Any  # what `Task.loss` compares the output with
    n: int  # examples in it (this rank's share)


class Task(Protocol):
    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterator[Batch]:
        """This rank's batches of one epoch, in order (seeded: same seed, same batches)."""
        ...

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor: ...

    def n_correct(self, output: torch.Tensor, batch: Batch) -> int: ...

    def validate(self, model: nn.Module) -> tuple[float, float] | None:
        """(accuracy, loss) on the validation set, or None without one."""
        ...
