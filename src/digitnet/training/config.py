"""`TrainConfig`: everything that decides a training run, and the only place its defaults live.

The defaults are the recipe of the default model (`cnn`); a registry entry's `recipe` holds only
its overrides on them (`models.MODELS`), and `TrainConfig.for_model(name, **overrides)` applies
both. The config travels inside the checkpoint, the resume state and the manifest.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from digitnet.errors import ConfigError
from digitnet.models import get_spec

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
DEVICES = ("cpu", "cuda", "mps", "auto")
Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; it travels inside the checkpoint."""

    model: str = "cnn"
    epochs: int = 8
    batch_size: int = 512
    lr: float = 0.4  # peak learning rate
    optimizer: str = "sgd"  # sgd = SGD with Nesterov momentum 0.9
    schedule: str = "onecycle"  # linear warm-up for `warmup` of the steps, then linear decay to 0
    warmup: float = 0.15
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: float = 0.8  # strength of random affine augmentation, 0 = off, 1 = the default ranges
    elastic: float = 0.0  # elastic distortion on top of the affine, in px (needs augment > 0), 0 = off
    ema: float = 0.99  # decay of an exponential moving average of the weights, 0 = off
    precision: Precision = "auto"  # bf16 autocast or fp32; auto: bf16 AMP on CUDA, on a CPU where faster
    seed: int = 0
    val_size: int = 5000  # held out from the training set, stratified (at most a fifth of it); 0 = none
    epoch_size: int = 0  # examples per epoch, 0 = the training set (the reader: numbers composed per epoch)
    early_stopping: int = 0  # stop after this many epochs without a better val accuracy, 0 = off
    threads: int = 0  # torch intra-op threads for the run, 0 = leave torch's default
    device: str = "cpu"  # cpu | cuda | mps | auto
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    outlier_exposure: float = 0.0  # weight of the loss that pushes images that are not digits (drawn by
    # data.nondigits, a quarter of each batch) towards a uniform prediction; 0 = off
    teacher: str = ""  # run folder / model.pt / 'default' to distil from, "" = plain training
    init: str = ""  # run folder / model.pt / 'default' whose weights the run starts from (fine-tuning)
    distill: float = 0.7  # weight of the teacher's soft targets against the labels (with a teacher)

    def __post_init__(self) -> None:
        if not get_spec(self.model).trainable:
            raise ConfigError(
                f"{self.model!r} is built from trained runs (digitnet ensemble, digitnet screen), not trained"
            )
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (0 <= self.warmup < 1, "warmup must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.augment <= 3, "augment must be in [0, 3]"),
            (0 <= self.elastic <= 8, "elastic must be in [0, 8] px"),
            (0 <= self.ema < 1, "ema must be in [0, 1)"),
            (0 <= self.distill <= 1, "distill must be in [0, 1]"),
            (0 <= self.outlier_exposure <= 10, "outlier_exposure must be in [0, 10]"),
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.epoch_size >= 0, "epoch_size must be >= 0"),
            (self.early_stopping >= 0, "early_stopping must be >= 0"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.device in DEVICES, "device must be cpu, cuda, mps or auto"),
            (self.precision in PRECISIONS, "precision must be 'auto', 'bf16' or 'fp32'"),
            (isinstance(self.model_kwargs, dict), "model_kwargs must be a dict"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def for_model(cls, name: str, **overrides: Any) -> TrainConfig:
        """The registry's recipe for `name` on these defaults, with `overrides` (None values ignored)
        on top. Unknown names are refused."""
        given = _known(_legacy({k: v for k, v in overrides.items() if v is not None}))
        return cls(**{**get_spec(name).recipe, **given, "model": name})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config saved by any digitnet version (unknown keys from newer ones are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in _legacy(d).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(TrainConfig))


def _known(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(field_names()))
    if unknown:
        raise ConfigError(
            f"unknown training option(s): {', '.join(unknown)}; known: {', '.join(field_names())}"
        )
    return options


def _legacy(d: dict[str, Any]) -> dict[str, Any]:
    """Configs before `precision` said `bf16`: True / False / "auto". Translated, never kept."""
    if "bf16" not in d:
        return dict(d)
    d = dict(d)
    value = d.pop("bf16")
    translated = (
        {True: "bf16", False: "fp32", "auto": "auto"}.get(value) if isinstance(value, bool | str) else None
    )
    if translated is None:
        raise ConfigError(f"bf16 must be true, false or 'auto', got {value!r}")
    d.setdefault("precision", translated)
    return d


def parse_setting(text: str) -> tuple[str, Any]:
    """`"key=value"` (the CLI's `--set`) → (key, value typed as the field is): numbers, strings,
    and JSON for `model_kwargs`. Refuses unknown keys and values of the wrong type."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    _known({key: None})
    kind = typing.get_type_hints(TrainConfig)[key]
    try:
        if kind is int:
            return key, int(raw)
        if kind is float:
            return key, float(raw)
        if key == "model_kwargs":
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return key, value
    except ValueError as exc:
        raise ConfigError(
            f"--set {key}: cannot read {raw!r} as {getattr(kind, '__name__', 'JSON')} ({exc})"
        ) from None
    return key, raw.strip()
