"""The pieces of a training recipe that the loop in `loop.py` composes: batch augmentation,
the learning-rate schedule, the optimizer, the weight EMA, distillation, and the choice of precision."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from digitnet.checkpoint import load_checkpoint
from digitnet.data import cache_dir
from digitnet.networks import single_view
from digitnet.training.config import Precision, TrainConfig
from digitnet.utils import atomic_write_json, cpu_name


def random_affine(
    x: torch.Tensor, strength: float, gen: torch.Generator, elastic: float = 0.0
) -> torch.Tensor:
    """Random rotation ±10°, scale ±10 %, shear ±0.15 and shift ±2 px per image (× strength),
    plus, when `elastic` > 0, a smooth random displacement field of up to about `elastic` px
    (Simard et al. 2003's elastic distortion, here a 4×4 grid of random offsets upsampled bicubically).

    x: (B, 1, 28, 28) float. One `affine_grid` + `grid_sample` for the whole batch.
    """
    b, h = x.shape[0], x.shape[-1]

    def u(scale: float) -> torch.Tensor:  # (B,) uniform in [-scale, scale]
        return (torch.rand(b, generator=gen) * 2 - 1) * scale * strength

    angle, scale, shear = u(math.radians(10)), 1 + u(0.10), u(0.15)
    tx, ty = u(2.0 / 14), u(2.0 / 14)  # affine_grid coordinates span [-1, 1] over 28 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear * cos, tx], 1),
            torch.stack([sin, cos + shear * sin, ty], 1),
        ],
        1,
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    if elastic:  # (B, 2, 4, 4) offsets in px → (B, H, W, 2) in grid units (2 / H per px)
        coarse = (torch.rand(b, 2, 4, 4, generator=gen) * 2 - 1) * (elastic * 2 / h)
        field = F.interpolate(coarse, size=(h, h), mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1).to(device=x.device, dtype=x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class EMA:
    """Exponential moving average of the weights and float buffers (BN statistics).

    The decay ramps up as min(decay, (1 + t) / (10 + t)) so a short run is not dominated by the
    random initial weights. Evaluating the average is a free boost for short, noisy schedules.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)

    def _tensors(self, m: nn.Module) -> list[torch.Tensor]:
        return [*m.parameters(), *(b for b in m.buffers() if b.is_floating_point())]

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        d = min(self.decay, (1 + t) / (10 + t))
        torch._foreach_lerp_(self._tensors(self.module), self._tensors(model), 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Peak-relative learning rate at `step` of `total`."""
    if cfg.schedule == "constant":
        return 1.0
    warm = int(cfg.warmup * total)
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return 1.0 - t if cfg.schedule == "onecycle" else 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BN parameters and biases: they are scale-free or tiny.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


DISTILL_T = 2.0  # softening temperature for knowledge distillation (Hinton et al. 2015)


class Teacher:
    """A trained run (or ensemble) whose softened predictions a student learns from.

    The teacher sees exactly the augmented batch the student sees, so its targets follow the
    augmentation; it runs without gradients under the same autocast as the student, and from one
    view even when it predicts with test-time augmentation (`best`).
    """

    def __init__(self, spec: str, device: torch.device, weight: float) -> None:
        loaded = load_checkpoint(spec)
        self.model = (
            loaded.model.to(device)
            .to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
            .requires_grad_(False)
            .eval()
        )
        self.weight = weight

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor, hard_loss: torch.Tensor) -> torch.Tensor:
        """(1 - w) · hard-label loss + w · T² · KL(teacher_T ‖ student_T); logits (B, 10) float32."""
        with torch.no_grad(), single_view(self.model):  # one view: TTA would cost 9× on every step
            target = F.log_softmax(self.model(x).float() / DISTILL_T, 1)  # (B, 10)
        soft = F.kl_div(
            F.log_softmax(student_logits / DISTILL_T, 1), target, log_target=True, reduction="batchmean"
        )
        return (1 - self.weight) * hard_loss + self.weight * DISTILL_T**2 * soft


BF16_MIN_SPEEDUP = 1.15  # "auto" takes bf16 only when a step is at least this much faster


def resolve_bf16(
    setting: Precision, model: nn.Module, device: torch.device, batch_size: int, network: str = ""
) -> bool:
    """Whether a run trains under bf16 autocast. "bf16"/"fp32" are obeyed; "auto" means bf16 AMP
    on CUDA, and on a CPU a timing probe: a few training steps of `model` in fp32 and in bf16.

    Whether bf16 pays on a CPU depends on the chip and the network: `cnn` trained 1.6× faster in bf16
    on a Zen 4 EPYC and 1.4× slower on a Xeon without AMX (BENCHMARKS.md). The answer is cached per
    CPU, torch version, thread count, network and batch, so reruns on one machine train in the same
    precision and a seed still gives the same weights.
    """
    if setting != "auto":
        return setting == "bf16"
    if device.type != "cpu":
        return device.type == "cuda"
    path = cache_dir().parent / "precision.json"
    key = (
        f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
        f"{network or type(model).__name__} | batch {batch_size}"
    )
    try:
        table = json.loads(path.read_text())
        if isinstance(table.get(key), bool):
            return table[key]
    except (OSError, ValueError, AttributeError):
        table = {}
    with torch.random.fork_rng(devices=[]):  # the copy's dropout must not move the run's random stream
        fp32, bf16 = (_step_seconds(model, batch_size, bf16=b) for b in (False, True))
    table[key] = bf16 * BF16_MIN_SPEEDUP <= fp32
    with contextlib.suppress(OSError):  # a read-only cache only costs the probe next time
        atomic_write_json(path, table)
    return table[key]


def _step_seconds(model: nn.Module, batch_size: int, bf16: bool, steps: int = 5) -> float:
    """Median seconds of a forward/backward/SGD step on random data, on a copy of `model` (the
    run's weights and random streams are left untouched)."""
    m = copy.deepcopy(model).train()
    opt = torch.optim.SGD(m.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    size = getattr(model, "input_size", (1, 28, 28))  # (C, H, W): a digit unless the model says
    x = torch.rand(batch_size, *size, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = m(x)  # (B, classes) or (B, classes, frames): cross-entropy takes either
    y = torch.randint(0, out.shape[1], (batch_size, *out.shape[2:]), generator=gen)
    times = []
    for i in range(steps + 2):  # two warm-up steps: oneDNN picks and caches its kernels
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)
