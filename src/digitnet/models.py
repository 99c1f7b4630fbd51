"""The model registry: every architecture digitnet can train, by name.

Every model takes float32 `(B, 1, 28, 28)` in [0, 1] and returns logits `(B, 10)`. The MNIST
mean/std normalisation is a buffer inside the model (`Normalize`), so a checkpoint, its ONNX
export and the server all see the same function of the raw pixels.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from digitnet.errors import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Normalize(nn.Module):
    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
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
            nn.Linear(784, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
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
    of `ConvBN` given as [(channels, pool), …], then [dropout and] a linear head on the flattened map.

    `tta` (test-time augmentation): in eval mode, with `tta=r`, the output is the log of the mean
    softmax over the (2r+1)² copies of the input shifted by up to r pixels each way, so evaluate,
    predict, the ONNX export and the server all see the averaged function. Training never does it.
    """

    def __init__(
        self,
        stem: int = 32,
        blocks: list | tuple = ((32, True), (64, True)),
        dropout: float = 0.0,
        tta: int = 0,
    ) -> None:
        super().__init__()
        if tta not in (0, 1, 2):
            raise ConfigError(f"tta must be 0, 1 or 2 pixels, got {tta!r}")
        self.tta = tta
        layers: list[nn.Module] = [
            Normalize(),
            nn.Conv2d(1, stem, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        ]  # (B, stem, 14, 14)
        c, hw = stem, 14
        for c_out, pool in blocks:
            layers.append(ConvBN(c, c_out, bool(pool)))
            c, hw = c_out, hw // 2 if pool else hw
        self.features = nn.Sequential(*layers)  # (B, c, hw, hw)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Linear(c * hw * hw, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.tta:
            return self.head(self.dropout(self.features(x).flatten(1)))  # (B, 10)
        views = shifted_views(x, self.tta)  # (V·B, 1, 28, 28), V = (2·tta+1)²
        logits = self.head(self.features(views).flatten(1)).float()  # (V·B, 10)
        probs = torch.softmax(logits, 1).reshape((2 * self.tta + 1) ** 2, -1, 10).mean(0)  # (B, 10)
        return probs.clamp_min(1e-12).log()


def shifted_views(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, H, W) → ((2r+1)²·B, C, H, W): every copy of x shifted by -r…r pixels in each
    direction, zeros shifted in (MNIST digits sit inside a ~4-pixel blank border, so little is lost)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (r, r, r, r))
    return torch.cat(
        [padded[..., dy : dy + h, dx : dx + w] for dy in range(2 * r + 1) for dx in range(2 * r + 1)]
    )


def views_per_image(model: nn.Module) -> int:
    """How many copies of each input image one forward pass of `model` runs (max over submodules,
    e.g. an ensemble's members): callers divide their batch by it to bound memory."""
    return max((2 * getattr(m, "tta", 0) + 1) ** 2 for m in model.modules())


@contextmanager
def single_view(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model` and every submodule with `tta` (an ensemble's members too)
    predict from the input alone: the cheap per-epoch validation during training, a distillation
    teacher. Other models pass through unchanged."""
    saved = [(m, int(getattr(m, "tta", 0))) for m in model.modules() if getattr(m, "tta", 0)]
    for m, _ in saved:
        setattr(m, "tta", 0)  # noqa: B010 - `tta` is CNN's attribute, not Module's
    try:
        yield model
    finally:
        for m, tta in saved:
            setattr(m, "tta", tta)  # noqa: B010


READER_CLASSES = 12  # CTC blank (0), digits 0-9 (1-10), a mark that is not a digit (11)
READER_STRIDE = 4  # strip columns per output frame


class NumberReader(nn.Module):
    """A handwritten number, end to end: a text-line strip (B, 1, 32, W) in [0, 1], light on dark
    (`inference.reader.normalize_line`), → per-frame logits (B, 12, W/4) for CTC.

    Convolutions only: two pooled blocks take the strip to 8 × W/4, a third pools height to 4, a
    (4, 1) convolution collapses it, and 1-D convolutions along the line, dilated by `dilations`,
    give each frame context on each side (with (1, 2, 4, 8): 31 frames, ~140 px at a 28 px text
    height, where a digit is ~20 px wide: enough to untangle strokes that cross into a neighbour).
    """

    input_size = (1, 32, 160)  # (C, H, W) of a typical input: what the precision probe times

    def __init__(
        self,
        channels: list | tuple = (32, 48, 96),
        hidden: int = 128,
        dropout: float = 0.1,
        dilations: list | tuple = (1, 2, 4),
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels

        def block(c_in: int, c_out: int, pool: tuple[int, int]) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(pool),
            ]

        self.features = nn.Sequential(
            Normalize(),
            *block(1, c1, (2, 2)),
            *block(c1, c2, (2, 2)),
            *block(c2, c3, (2, 1)),  # (B, c3, 4, W/4)
            nn.Conv2d(c3, hidden, (4, 1), bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),  # (B, h, 1, W/4)
        )
        context: list[nn.Module] = []
        for d in dilations:
            context += [
                nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
            ]
        self.context = nn.Sequential(
            *context,
            nn.Dropout(dropout),
        )
        self.head = nn.Conv1d(hidden, READER_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).squeeze(2)  # (B, hidden, W/4)
        return self.head(self.context(f))  # (B, 12, W/4)


class Screened(nn.Module):
    """A digit classifier screened by a detector trained with outlier exposure, as one model.

    logits = classifier(x) · d(x)^power, d = the detector's top calibrated probability. Scaling by a
    positive factor never changes the argmax, so the digit is the classifier's and so is its
    accuracy; but on what is not a digit the detector spreads its belief over all ten classes
    (d ≈ 0.1–0.3), the logits shrink and the confidence falls below the not-a-digit threshold.
    `classifier`, `detector`: {"model": registry name, "kwargs": {...}, "temperature": float}.
    """

    def __init__(
        self,
        classifier: dict[str, Any] | None = None,
        detector: dict[str, Any] | None = None,
        power: float = 3.0,
    ) -> None:
        super().__init__()
        if classifier is None or detector is None:
            raise ConfigError("a screened model needs a classifier run and a detector run")
        self.classifier, self.detector = (
            build_model(m["model"], **saved_network_kwargs(m["model"], m.get("kwargs", {})))
            for m in (classifier, detector)
        )
        self.power = float(power)
        self.detector_temperature: torch.Tensor
        self.register_buffer("detector_temperature", torch.tensor(float(detector.get("temperature", 1.0))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.classifier(x).float()  # (B, 10)
        belief = torch.softmax(self.detector(x).float() / self.detector_temperature, 1).amax(1)  # (B,)
        return z * belief.pow(self.power).unsqueeze(1)


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
        self.members = nn.ModuleList(
            build_model(m["model"], **saved_network_kwargs(m["model"], m.get("kwargs", {}))) for m in members
        )
        self.temperatures: torch.Tensor
        self.register_buffer(
            "temperatures", torch.tensor([float(m.get("temperature", 1.0)) for m in members])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([m(x) for m in self.members])

    def combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        """The ensemble's output from its members' logits [(B, 10), …], in member order."""
        probs = torch.stack(
            [torch.softmax(lg.float() / self.temperatures[i], 1) for i, lg in enumerate(member_logits)]
        )
        return probs.mean(0).clamp_min(1e-12).log()  # (B, 10)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the network and the training recipe that suits it."""

    name: str
    factory: type[nn.Module]
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)  # overrides on TrainConfig's defaults
    task: str = "digits"  # what it learns: "digits" (one 28×28 digit) or "numbers" (a text line, CTC)
    trainable: bool = True  # False: a composite of trained runs (digitnet ensemble / screen)


MODELS: dict[str, ModelSpec] = {
    "seed-mlp": ModelSpec(
        "seed-mlp",
        SeedMLP,
        "the original notebook's 784-10-10-10 sigmoid MLP (baseline)",
        recipe=dict(
            epochs=10,
            batch_size=32,
            lr=1e-3,
            optimizer="adam",
            schedule="constant",
            warmup=0.2,
            label_smoothing=0.0,
            weight_decay=0.0,
            augment=0.0,
            precision="fp32",
            ema=0.0,
        ),
    ),
    "mlp": ModelSpec(
        "mlp",
        MLP,
        "784-1024-1024-10 MLP with BN and dropout",
        recipe=dict(batch_size=256, lr=0.2, warmup=0.2, augment=0.0, ema=0.0),
    ),
    "cnn": ModelSpec(
        "cnn",
        CNN,
        "stride-2 stem + 2 conv blocks, EMA, light augmentation: the default, 99 %+ in seconds",
        kwargs=dict(stem=32, blocks=[(32, True), (64, True)]),
        recipe={},  # TrainConfig's defaults are cnn's recipe
    ),
    "best": ModelSpec(
        "best",
        CNN,
        "4-block CNN, 40 epochs of augmentation, EMA, 9-shift TTA: the most accurate single model",
        # Two blocks at 14×14 before pooling: 10.5 M MACs per view. fp32, not bf16: on the project's
        # 2-vCPU Xeon (avx512_bf16, no AMX) bf16 autocast made its training 1.4× slower. tta=1
        # (predict from the mean over the 9 one-pixel shifts): +0.024 % test accuracy over 28
        # fresh GPU seeds, 9× the inference cost (BENCHMARKS.md).
        kwargs=dict(stem=32, blocks=[(32, False), (64, True), (128, True), (128, False)], tta=1),
        recipe=dict(epochs=40, lr=0.3, augment=1.0, precision="fp32", ema=0.998),
    ),
    "compact": ModelSpec(
        "compact",
        CNN,
        "3-block, 3.5 M-MAC CNN, 20 epochs of augmentation: the bundled default, ~30k images/s",
        kwargs=dict(stem=32, blocks=[(32, True), (64, True), (128, False)]),
        recipe=dict(epochs=20, lr=0.3, augment=1.0, precision="bf16", ema=0.998),
    ),
    "ensemble": ModelSpec(
        "ensemble", Ensemble, "average of saved runs' probabilities (digitnet ensemble RUN…)", trainable=False
    ),
    "screened": ModelSpec(
        "screened",
        Screened,
        "a classifier run screened by an outlier-exposure run (digitnet screen): the bundled default",
        trainable=False,
    ),
    "reader": ModelSpec(
        "reader",
        NumberReader,
        "whole handwritten numbers: conv CTC over a text line, trained on composed MNIST",
        # An epoch is `epoch_size` freshly composed numbers (1-10 digits, every spacing); the
        # schedule and EMA are the digit models'.
        # The class defaults are the first reader's (checkpoints that never name `dilations`).
        kwargs=dict(channels=[32, 64, 128], hidden=192, dilations=[1, 2, 4, 8]),
        recipe=dict(
            epochs=24,
            batch_size=64,
            lr=0.003,
            optimizer="adamw",
            weight_decay=0.01,
            warmup=0.05,
            label_smoothing=0.0,
            augment=1.0,
            ema=0.999,
            epoch_size=20000,
        ),
        task="numbers",
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None


def network_kwargs(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every constructor argument of registry entry `name`: the class defaults, then the registry's
    kwargs, then `overrides`. A checkpoint stores this, so a later change to the registry or to a
    default cannot change an already trained model."""
    spec = get_spec(name)
    defaults = {
        k: p.default
        for k, p in inspect.signature(spec.factory).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **spec.kwargs, **(overrides or {})}


def saved_network_kwargs(name: str, saved: dict[str, Any]) -> dict[str, Any]:
    """The full constructor arguments of a network whose checkpoint stored `saved`. Checkpoints
    from before test-time augmentation (session 4) stored only overrides and never name `tta`:
    they meant one view, and were calibrated for it."""
    kwargs = network_kwargs(name, saved)
    if "tta" in kwargs and "tta" not in saved:
        kwargs["tta"] = 0
    return kwargs


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh, randomly initialised network for registry entry `name`."""
    return get_spec(name).factory(**network_kwargs(name, kwargs))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
