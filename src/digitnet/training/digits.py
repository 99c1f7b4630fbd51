"""The digit task: one 28×28 image, one of ten classes, and optionally "not a digit".

The whole dataset lives in memory as one uint8 tensor; batches are index slices of a per-epoch
permutation (no DataLoader); augmentation is one `affine_grid`/`grid_sample` call per batch, and
a distillation teacher (`--teacher`) sees exactly the augmented batch the student sees.

With `outlier_exposure` > 0 (Hendrycks et al. 2019), a quarter as many images that hold no digit
(`data.nondigits`, training kinds only, through the same `preprocess` a photo takes) join every
batch, augmented alike, and the loss adds `outlier_exposure` × their cross-entropy to the uniform
distribution: the network learns to spread its belief over all ten classes for what is not a digit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitnet.data import cache_dir
from digitnet.data.nondigits import TRAIN_KINDS, images
from digitnet.errors import ConfigError
from digitnet.inference.batching import as_batch
from digitnet.inference.preprocess import preprocess
from digitnet.networks import single_view
from digitnet.training.recipe import Teacher, random_affine
from digitnet.training.task import Batch, TaskSetup
from digitnet.utils import atomic_open

OUTLIERS = 12_000  # the pool of non-digits a run draws from (seeded; augmented every time it is used)
OUTLIER_SHARE = 0.25  # non-digits per digit in a batch
OUTLIER_FORMAT = "outliers-v2"  # bump when data.nondigits or preprocess change what the pool holds


def outlier_pool(seed: int, n: int = OUTLIERS) -> torch.Tensor:
    """(n, 1, 28, 28) uint8 images of the training kinds of non-digit, as `preprocess` leaves a
    photo of them; cached (atomically) beside the MNIST cache, since drawing them takes ~40 s."""
    path = cache_dir().parent / f"{OUTLIER_FORMAT}-{'-'.join(TRAIN_KINDS)}-n{n}-s{seed}.npy"
    with contextlib.suppress(OSError, ValueError):
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (n, 28, 28) and cached.dtype == np.uint8:
            return torch.from_numpy(cached).unsqueeze(1)
    drawn, _ = images(TRAIN_KINDS, n, seed)
    pool = np.stack([np.round(preprocess(img).image * 255).astype(np.uint8) for img in drawn])  # (n, 28, 28)
    with contextlib.suppress(OSError), atomic_open(path, "wb") as f:
        np.save(f, pool, allow_pickle=False)
    return torch.from_numpy(pool).unsqueeze(1)


def as_uint8(x: np.ndarray) -> torch.Tensor:
    """User images → (N, 1, 28, 28) uint8, the form the whole set is kept in memory."""
    return (as_batch(x) * 255).round().to(torch.uint8)


@torch.no_grad()
def accuracy_and_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 2500
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on uint8 images x (N, 1, 28, 28)."""
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device).float().div_(255).contiguous(memory_format=torch.channels_last)
        yb = y[i : i + batch_size].to(device)
        logits = model(xb).float()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    model.train()
    return correct / max(1, len(x)), loss / max(1, len(x))


class DigitTask:
    def __init__(self, setup: TaskSetup) -> None:
        cfg, x_val, y_val = setup.cfg, setup.x_val, setup.y_val
        self.cfg, self.device, self.gen = cfg, setup.device, setup.gen
        self.rank, self.world = setup.rank, setup.world
        self.x = as_uint8(setup.x_train)  # (N, 1, 28, 28)
        self.y = torch.as_tensor(np.asarray(setup.y_train), dtype=torch.long)  # (N,)
        if len(self.x) != len(self.y):
            raise ConfigError(f"{len(self.x)} images but {len(self.y)} labels")
        has_val = x_val is not None and y_val is not None and len(x_val) > 0
        self.x_val = as_uint8(x_val) if x_val is not None and has_val else None
        self.y_val = torch.as_tensor(np.asarray(y_val), dtype=torch.long) if has_val else None
        self.teacher = Teacher(cfg.teacher, self.device, cfg.distill) if cfg.teacher else None
        self.outliers = outlier_pool(cfg.seed) if cfg.outlier_exposure else None
        self.steps_per_epoch = max(1, len(self.x) // cfg.batch_size)  # drop the ragged last batch: stable BN

    def batches(self, epoch: int) -> Iterator[Batch]:
        cfg, local_bs = self.cfg, self.cfg.batch_size // self.world
        perm = torch.randperm(len(self.x), generator=self.gen)  # same on every rank: same seed
        for i in range(self.steps_per_epoch):
            rows = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            idx = rows[self.rank * local_bs : (self.rank + 1) * local_bs]
            xb = self.x[idx].to(self.device, non_blocking=True).float().div_(255)  # (b, 1, 28, 28)
            yb = self.y[idx].to(self.device, non_blocking=True)
            if self.outliers is not None:  # (b + b/4, 1, 28, 28): the digits, then the non-digits
                pick = torch.randint(
                    len(self.outliers), (max(1, round(len(idx) * OUTLIER_SHARE)),), generator=self.gen
                )
                xb = torch.cat([xb, self.outliers[pick].to(self.device).float().div_(255)])
            if cfg.augment:
                xb = random_affine(xb, cfg.augment, self.gen, cfg.elastic)
            yield Batch(xb.contiguous(memory_format=torch.channels_last), yb, len(idx))

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        digits = output[: batch.n].float()  # (b, 10); any rows after them are non-digits
        loss = F.cross_entropy(digits, batch.target, label_smoothing=self.cfg.label_smoothing)
        if self.teacher is not None:
            loss = self.teacher.loss(digits, batch.x[: batch.n], loss)
        if batch.n < len(output):  # outlier exposure: cross-entropy to the uniform distribution
            loss = loss - self.cfg.outlier_exposure * F.log_softmax(output[batch.n :].float(), 1).mean()
        return loss

    def n_correct(self, output: torch.Tensor, batch: Batch) -> int:
        return int((output[: batch.n].argmax(1) == batch.target).sum().item())

    def validate(self, model: nn.Module) -> tuple[float, float] | None:
        if self.x_val is None or self.y_val is None:
            return None
        with single_view(model):  # test-time augmentation would make this 9× dearer
            return accuracy_and_loss(model, self.x_val, self.y_val, self.device)
