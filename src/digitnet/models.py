"""The model registry: every architecture digitnet can train (or combine), by name, with the
training recipe that suits it. The networks themselves are in `digitnet.networks`; `Screened` and
`Ensemble` here combine trained runs, so they build their parts through the registry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from digitnet.errors import ConfigError
from digitnet.networks import CNN, MLP, NumberReader, SeedMLP


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
        # A reader checkpoint from before `depth` loads with one convolution per block, and one
        # from before `upsample` with one frame per 4 columns (LATER_ARGS).
        kwargs=dict(channels=[48, 96, 192], hidden=256, dilations=[1, 2, 4, 8], depth=2),
        recipe=dict(
            epochs=30,
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


# Constructor arguments added after checkpoints without them had shipped, and what those
# checkpoints meant, by model ("*": any): one view before test-time augmentation (session 4; they
# were calibrated for it), one convolution per block before the reader's `depth`, one output frame
# per 4 strip columns before its `upsample`.
LATER_ARGS: dict[str, dict[str, Any]] = {"*": {"tta": 0}, "reader": {"depth": 1, "upsample": 1}}

# Constructor arguments that only add layers, by model: a checkpoint differing from a run in
# these alone may start it (`--set init=`), the added layers keeping their own start.
GROWN_BY: dict[str, set[str]] = {"reader": {"upsample"}}


def saved_network_kwargs(name: str, saved: dict[str, Any]) -> dict[str, Any]:
    """The full constructor arguments of a network whose checkpoint stored `saved`: the registry's
    for what it does not name (the oldest checkpoints stored only overrides), except `LATER_ARGS`."""
    kwargs = network_kwargs(name, saved)
    for key, meant in {**LATER_ARGS["*"], **LATER_ARGS.get(name, {})}.items():
        if key in kwargs and key not in saved:
            kwargs[key] = meant
    return kwargs


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a fresh, randomly initialised network for registry entry `name`."""
    return get_spec(name).factory(**network_kwargs(name, kwargs))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
