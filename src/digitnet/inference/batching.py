"""User arrays → the one input every model takes, and batched model calls.

A model takes float32 `(B, 1, 28, 28)` in [0, 1]. `as_batch_array` accepts the forms people hold
(uint8 0–255 or float 0–1; `(N, 28, 28)`, `(N, 784)` or `(N, 1, 28, 28)`; NumPy or torch) and
refuses anything else with an `InputError`, so bad input never crashes deeper down.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from digitnet.errors import InputError
from digitnet.inference.preprocess import unit_pixels
from digitnet.networks import views_per_image


def as_batch(x: Any) -> torch.Tensor:
    """NumPy/tensor images → float32 tensor `(N, 1, 28, 28)` in [0, 1] (see `as_batch_array`)."""
    return torch.from_numpy(as_batch_array(x))


def as_batch_array(x: Any) -> np.ndarray:
    """NumPy/tensor images → float32 C-contiguous array `(N, 1, 28, 28)` in [0, 1], the input every
    model takes.

    Accepts uint8 0–255 `(N, 28, 28)` / `(N, 784)` / `(N, 1, 28, 28)`, or float 0–1 in the same
    shapes (the notebook's `x / 255` arrays). Anything else is an `InputError`, not a crash later.
    Plain NumPy on purpose: a torch op here would wake torch's OpenMP pool, whose spinning threads
    then slow an ONNX Runtime call that follows by a third.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # NumPy has no bfloat16
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 784:
        a = a.reshape(-1, 28, 28)
    if a.ndim == 3 and tuple(a.shape[1:]) == (28, 28):
        a = a[:, None]
    if a.ndim != 4 or tuple(a.shape[1:]) != (1, 28, 28):
        one = " (one image: pass x[None], a batch of one)" if a.shape in ((28, 28), (784,)) else ""
        raise InputError(f"expected images shaped (N, 28, 28) or (N, 784), got {tuple(a.shape)}{one}")
    return unit_pixels(a)


@torch.no_grad()
def batched_logits(model: nn.Module, x: Any, batch_size: int = 4096, bf16: bool = False) -> torch.Tensor:
    """Logits `(N, 10)` float32 for images `x` (any form `as_batch` accepts), in eval mode."""
    was_training = model.training
    model.eval()
    xb = as_batch(x)
    out = []
    batch_size = max(1, batch_size // views_per_image(model))  # TTA: the same number of views per pass
    for i in range(0, len(xb), batch_size):
        chunk = xb[i : i + batch_size].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out.append(model(chunk).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10)
