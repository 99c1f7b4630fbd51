"""The model registry: every architecture digitnet can train, by name.

Every model takes float32 `(B, 1, 28, 28)` in [0, 1] and returns logits `(B, 10)`. The MNIST
mean/std normalisation is a buffer inside the model (`Normalize`), so a checkpoint, its ONNX
export and the server all see the same function of the raw pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from digitnet.errors import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Normalize(nn.Module):
    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SeedMLP(nn.Module):
    """The original notebook's Keras model: Dense 784→10 sigmoid → 10 sigmoid → 10 softmax.

    The softmax lives in the loss (cross-entropy on logits), as Keras' does numerically.
    No input normalisation beyond /255: the notebook fed raw [0, 1] pixels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 10), nn.Sigmoid(), nn.Linear(10, 10), nn.Sigmoid(), nn.Linear(10, 10)
        )
        # Keras initialises Dense kernels Glorot-uniform and biases to zero; torch does not.
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 10)


class MLP(nn.Module):
    """A strong MLP: two wide hidden layers with BN, ReLU and dropout."""

    def __init__(self, hidden: int = 1024, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Normalize(),
            nn.Flatten(),
            nn.Linear(784, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBN(nn.Module):
    """conv3x3 (no bias) → [maxpool 2] → BN → ReLU.

    Pooling before BN/ReLU gives the same function class with 4× less memory-bound elementwise
    work, which is what dominates a small CNN's time on a CPU.
    """

    def __init__(self, c_in: int, c_out: int, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.pool(self.conv(x))))


class CNN(nn.Module):
    """A stride-2 4×4 stem (28×28 → 14×14, so nothing runs at full resolution), then `blocks`
    of `ConvBN` given as [(channels, pool), …], then a linear head on the flattened map."""

    def __init__(self, stem: int = 32, blocks: list | tuple = ((32, True), (64, True))) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(), nn.Conv2d(1, stem, 4, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(stem), nn.ReLU(inplace=True)]  # (B, stem, 14, 14)
        c, hw = stem, 14
        for c_out, pool in blocks:
            layers.append(ConvBN(c, c_out, bool(pool)))
            c, hw = c_out, hw // 2 if pool else hw
        self.features = nn.Sequential(*layers)  # (B, c, hw, hw)
        self.head = nn.Linear(c * hw * hw, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))  # (B, 10)


class Ensemble(nn.Module):
    """Average of member models' calibrated probabilities; returns log-probabilities as logits.

    `members`: [{"model": registry name, "kwargs": {...}, "temperature": float}, …]. Because the
    output is log(mean p), softmax of it gives back the averaged probabilities exactly, so every
    consumer (evaluate, predict, ONNX, serve) treats an ensemble like any single model.
    """

    def __init__(self, members: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        members = members or []
        if not members:
            raise ConfigError("an ensemble needs at least one member run")
        self.members = nn.ModuleList(build_model(m["model"], **m.get("kwargs", {})) for m in members)
        self.register_buffer("temperatures", torch.tensor([float(m.get("temperature", 1.0)) for m in members]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float() / self.temperatures[i], 1) for i, m in enumerate(self.members)])
        return probs.mean(0).clamp_min(1e-12).log()  # (B, 10)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the network and the training recipe that suits it."""

    name: str
    factory: type[nn.Module]
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)  # TrainConfig defaults for this model


MODELS: dict[str, ModelSpec] = {
    "seed-mlp": ModelSpec(
        "seed-mlp", SeedMLP, "the original notebook's 784-10-10-10 sigmoid MLP (baseline)",
        recipe=dict(epochs=10, batch_size=32, lr=1e-3, optimizer="adam", schedule="constant",
                    label_smoothing=0.0, weight_decay=0.0, augment=0.0, bf16=False, ema=0.0),
    ),
    "mlp": ModelSpec(
        "mlp", MLP, "784-1024-1024-10 MLP with BN and dropout",
        recipe=dict(epochs=8, batch_size=256, lr=0.2, optimizer="sgd", schedule="onecycle",
                    label_smoothing=0.1, weight_decay=5e-4, augment=0.0, bf16=True, ema=0.0),
    ),
    "cnn": ModelSpec(
        "cnn", CNN, "stride-2 stem + 2 conv blocks, EMA, light augmentation: the default, 99 %+ in seconds",
        kwargs=dict(stem=32, blocks=[(32, True), (64, True)]),
        recipe=dict(epochs=8, batch_size=512, lr=0.4, optimizer="sgd", schedule="onecycle", warmup=0.15,
                    label_smoothing=0.1, weight_decay=5e-4, augment=0.8, bf16=True, ema=0.99),
    ),
    "best": ModelSpec(
        "best", CNN, "wider 3-block CNN, augmentation, EMA: the most accurate single model",
        kwargs=dict(stem=32, blocks=[(64, False), (64, True), (128, True)]),
        recipe=dict(epochs=20, batch_size=512, lr=0.3, optimizer="sgd", schedule="onecycle", warmup=0.15,
                    label_smoothing=0.1, weight_decay=5e-4, augment=1.0, bf16=True, ema=0.998),
    ),
    "ensemble": ModelSpec("ensemble", Ensemble, "average of saved runs' probabilities (digitnet ensemble RUN…)"),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh, randomly initialised network for registry entry `name`."""
    spec = get_spec(name)
    return spec.factory(**{**spec.kwargs, **kwargs})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def as_batch(x: Any) -> torch.Tensor:
    """NumPy/tensor images → float32 `(N, 1, 28, 28)` in [0, 1], the input every model takes.

    Accepts uint8 0–255 `(N, 28, 28)` / `(N, 784)` / `(N, 1, 28, 28)`, or float 0–1 in the same
    shapes (the notebook's `x / 255` arrays). Anything else is an `InputError`, not a crash later.
    """
    import numpy as np

    from digitnet.errors import InputError

    t = torch.from_numpy(np.require(x, requirements='CW')) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.ndim == 2 and t.shape[1] == 784:
        t = t.reshape(-1, 28, 28)
    if t.ndim == 3 and tuple(t.shape[1:]) == (28, 28):
        t = t.unsqueeze(1)
    if t.ndim != 4 or tuple(t.shape[1:]) != (1, 28, 28):
        raise InputError(f"expected images shaped (N, 28, 28) or (N, 784), got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise InputError(f"expected uint8 0-255 or float 0-1 pixels, got dtype {t.dtype}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise InputError("pixels contain NaN or infinity")
    if t.numel() and (t.min() < 0.0 or t.max() > 1.0):
        raise InputError("float pixels must lie in [0, 1] (divide uint8 images by 255)")
    return t


@torch.no_grad()
def batched_logits(model: nn.Module, x: Any, batch_size: int = 4096, bf16: bool = False) -> torch.Tensor:
    """Logits `(N, 10)` float32 for images `x` (any form `as_batch` accepts), in eval mode."""
    was_training = model.training
    model.eval()
    xb = as_batch(x)
    out = []
    for i in range(0, len(xb), batch_size):
        chunk = xb[i : i + batch_size].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out.append(model(chunk).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10)
