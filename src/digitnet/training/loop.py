"""The training loop: plain code, read top to bottom.

One loop for every task (`task.Task`: digits, or whole numbers for the reader): seeded batches,
the learning-rate schedule, weight EMA, best-on-validation weights, a resumable state after every
epoch. The forward/backward run channels_last, under bf16 autocast when the config says so (or, for
"auto", where a timing probe finds it faster on this CPU: `recipe.resolve_bf16`). Under `torchrun`
the same loop runs as DistributedDataParallel, each rank taking its shard of every global batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

import digitnet.training.distributed as dist
from digitnet.checkpoint import load_checkpoint
from digitnet.errors import ConfigError
from digitnet.models import GROWN_BY, build_model, get_spec, network_kwargs
from digitnet.training.config import TrainConfig
from digitnet.training.digits import DigitTask
from digitnet.training.numbers import NumberTask
from digitnet.training.recipe import EMA, lr_at, make_optimizer, resolve_bf16
from digitnet.training.task import Task, TaskSetup


class Progress(Protocol):
    """What `fit` reports to while it runs (the CLI's Rich bar: `progress.EpochProgress`)."""

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, n: int, loss: float, acc: float, images_per_s: float) -> None: ...
    def end_epoch(self) -> None: ...


Callback = Callable[[dict[str, Any]], None]
EvalHook = Callable[[nn.Module, float, int], None]  # (model, train seconds so far, step)
State = dict[str, torch.Tensor]


@dataclass
class ResumeState:
    """Everything an interrupted run needs to continue bit for bit, saved after each epoch."""

    model: State
    optimizer: dict[str, Any]
    ema: State
    generator: torch.Tensor  # the one seeded stream: permutations and augmentation
    history: list[dict[str, float]]
    best_acc: float
    best_epoch: int
    best_state: State | None
    train_seconds: float
    epoch: int  # epochs finished
    bf16: bool  # the precision the run began in: a resumed run keeps it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # tensors, dicts and numbers only: torch.load(weights_only=True) reads it

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResumeState:
        return cls(**d)


@dataclass
class FitResult:
    model: nn.Module  # the best-on-validation weights (EMA weights when ema > 0), eval mode
    history: list[dict[str, float]]
    train_seconds: float  # the training loop only: evaluation and checkpointing excluded
    best_epoch: int
    val_accuracy: float | None
    bf16: bool = False  # the precision it trained in (a config's "auto" resolved)


@dataclass
class _Best:
    score: float = -1.0
    epoch: int = 0
    state: State | None = field(default=None, repr=False)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: no MPS device is available")
    return torch.device(name)


def split_sizes(n_train: int, val_size: int) -> int:
    """The validation size actually held out of `n_train` images: at most a fifth of them (the
    4,000-image sample keeps 800; a 400-image array keeps 80)."""
    return min(val_size, n_train // 5)


def stratified_split(y: np.ndarray, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with `val_size` held out in the class proportions of `y`.

    The split uses its own fixed seed, not the training seed, so runs with different seeds are
    validated on the same images and stay comparable.
    """
    if val_size == 0:
        return np.arange(len(y)), np.empty(0, dtype=np.int64)
    if val_size >= len(y):
        raise ConfigError(f"val_size {val_size} must be smaller than the {len(y)} training images")
    rng = np.random.default_rng(seed)
    val = []
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / len(y) * val_size).astype(int)
    quota[np.argsort(-(counts / len(y) * val_size - quota))[: val_size - quota.sum()]] += 1
    for c, q in zip(classes, quota, strict=True):
        val.append(rng.permutation(np.flatnonzero(y == c))[:q])
    val_idx = np.sort(np.concatenate(val))
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def fit(
    cfg: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    progress: Progress | None = None,
    on_epoch: Callback | None = None,
    resume_state: ResumeState | None = None,
    checkpoint_fn: Callable[[ResumeState], None] | None = None,
    eval_hook: EvalHook | None = None,
    eval_every: int = 0,
) -> FitResult:
    """Train `cfg.model` on uint8 images `(N, 28, 28)` and int labels; return the best model.

    on_epoch: called with each epoch's history row. checkpoint_fn: called with the resumable state
    after each epoch. eval_hook(model, train_seconds, step) every `eval_every` steps and at each
    epoch end, outside the timed region (used by `digitnet bench train`). `cfg.threads` holds for
    the run only: the thread count is restored however the run ends.
    """
    prev_threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _fit(
            cfg,
            x_train,
            y_train,
            x_val,
            y_val,
            progress,
            on_epoch,
            resume_state,
            checkpoint_fn,
            eval_hook,
            eval_every,
        )
    finally:
        torch.set_num_threads(prev_threads)


@dataclass
class _Run:
    """The live state of one run: the task's data, the network and what updates it."""

    task: Task
    model: nn.Module
    ddp_model: nn.Module  # `model`, DDP-wrapped under torchrun
    opt: torch.optim.Optimizer
    ema: EMA | None
    gen: torch.Generator
    amp: torch.autocast
    bf16: bool
    rank: int
    world: int

    @property
    def eval_model(self) -> nn.Module:  # what validation, evaluation and the checkpoint see
        return self.ema.module if self.ema is not None else self.model


def _fit(
    cfg: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    progress: Progress | None,
    on_epoch: Callback | None,
    resume: ResumeState | None,
    checkpoint_fn: Callable[[ResumeState], None] | None,
    eval_hook: EvalHook | None,
    eval_every: int,
) -> FitResult:
    torch.manual_seed(cfg.seed)
    run = _start(cfg, x_train, y_train, x_val, y_val, resume)
    history = list(resume.history) if resume else []
    best = _Best(resume.best_acc, resume.best_epoch, resume.best_state) if resume else _Best()
    train_seconds = resume.train_seconds if resume else 0.0
    has_val = False

    for epoch in range(resume.epoch if resume else 0, cfg.epochs):
        row = _train_epoch(cfg, run, epoch, progress, eval_hook, eval_every, train_seconds)
        train_seconds += row["seconds"]
        scores = run.task.validate(run.eval_model)
        has_val = scores is not None
        if scores is not None:
            row["val_accuracy"], row["val_loss"] = scores
        history.append(row)
        score = row.get("val_accuracy", epoch)  # without validation the last epoch is the best
        if score >= best.score:  # ties go to the later, longer-annealed weights
            best = _Best(
                score, epoch + 1, {k: v.detach().clone() for k, v in run.eval_model.state_dict().items()}
            )
        if on_epoch is not None and run.rank == 0:
            on_epoch(row)
        if checkpoint_fn is not None and run.rank == 0:
            checkpoint_fn(
                ResumeState(
                    model=run.model.state_dict(),
                    optimizer=run.opt.state_dict(),
                    ema=run.ema.state_dict() if run.ema is not None else {},
                    generator=run.gen.get_state(),
                    history=history,
                    best_acc=best.score,
                    best_epoch=best.epoch,
                    best_state=best.state,
                    train_seconds=train_seconds,
                    epoch=epoch + 1,
                    bf16=run.bf16,
                )
            )
        if cfg.early_stopping and has_val and epoch + 1 - best.epoch >= cfg.early_stopping:
            break

    has_val = has_val or any("val_accuracy" in row for row in history)
    final = build_model(cfg.model, **cfg.model_kwargs)
    if best.state is not None:
        final.load_state_dict(best.state)
    final = final.float().cpu().eval()
    return FitResult(final, history, train_seconds, best.epoch, best.score if has_val else None, run.bf16)


def start_from(model: nn.Module, cfg: TrainConfig) -> None:
    """Load the weights a fine-tuning run starts from (`cfg.init`) into `model`: the same network,
    or one that `models.GROWN_BY` lets grow (a stride-4 reader starting a stride-2 one: the new
    layers keep their own start, which computes what the old network did); else a ConfigError."""
    start = load_checkpoint(cfg.init)
    wanted = json.loads(json.dumps(network_kwargs(cfg.model, cfg.model_kwargs)))
    saved = json.loads(json.dumps(start.model_kwargs))
    grown = GROWN_BY.get(cfg.model, set())
    differ = {k for k in wanted.keys() | saved.keys() if wanted.get(k) != saved.get(k)}
    if start.name != cfg.model or not differ <= grown:
        raise ConfigError(
            f"--set init={cfg.init}: a {start.name!r} network {start.model_kwargs} cannot start a "
            f"{cfg.model!r} run {wanted}"
        )
    _missing, unexpected = model.load_state_dict(start.model.state_dict(), strict=not differ)
    if unexpected:  # growing only adds layers: every saved weight has its place
        raise ConfigError(f"--set init={cfg.init}: weights with no place in the run's network: {unexpected}")


def make_task(setup: TaskSetup) -> Task:
    """The task `setup.cfg.model` learns (`models.ModelSpec.task`), over these images and labels."""
    kind = NumberTask if get_spec(setup.cfg.model).task == "numbers" else DigitTask
    return kind(setup)


def _start(
    cfg: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    resume: ResumeState | None,
) -> _Run:
    """The task's data, the network, optimizer, EMA and precision, from scratch or from `resume`.
    The order of the seeded steps is fixed: same seed, same weights."""
    rank, world = dist.rank(), dist.world_size()
    device = resolve_device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed)  # permutations + augmentation: one stream, seeded
    if world > 1 and cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    model = build_model(cfg.model, **cfg.model_kwargs).to(device)
    if cfg.init:
        start_from(model, cfg)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
    opt = make_optimizer(model, cfg)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    # After the network: a distillation teacher is built from its checkpoint, which draws on the
    # global random stream, and the student's initial weights must not depend on it.
    task = make_task(TaskSetup(cfg, x_train, y_train, x_val, y_val, device, gen, rank, world))
    if resume is not None:
        try:
            model.load_state_dict(resume.model)
        except RuntimeError:  # torch's message is a page of key names
            raise ConfigError(
                f"the interrupted run was saved by a {cfg.model!r} network other than the one this version "
                "of digitnet builds for it (a registry default changed since); resume it with the version "
                "that started it, or start it again"
            ) from None
        opt.load_state_dict(resume.optimizer)
        if ema is not None:
            ema.load_state_dict(resume.ema)
        gen.set_state(resume.generator)
    ddp_model = dist.wrap(model, device)
    if resume is not None:
        bf16 = resume.bf16  # an interrupted run continues in the precision it began in
    else:
        network = f"{cfg.model} {sorted(network_kwargs(cfg.model, cfg.model_kwargs).items())}"
        local_bs = cfg.batch_size // world
        bf16 = dist.broadcast_flag(
            resolve_bf16(cfg.precision, model, device, local_bs, network) if rank == 0 else False
        )
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type in ("cpu", "cuda"))
    return _Run(task, model, ddp_model, opt, ema, gen, amp, bf16, rank, world)


def _train_epoch(
    cfg: TrainConfig,
    run: _Run,
    epoch: int,
    progress: Progress | None,
    eval_hook: EvalHook | None,
    eval_every: int,
    seconds_before: float,
) -> dict[str, float]:
    """One epoch of the task's batches; returns the epoch's history row (without validation)."""
    steps, world, rank = run.task.steps_per_epoch, run.world, run.rank
    if progress is not None and rank == 0:
        progress.start_epoch(epoch + 1, cfg.epochs, steps)
    run.model.train()
    t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
    for i, batch in enumerate(run.task.batches(epoch)):
        step = epoch * steps + i
        for g in run.opt.param_groups:
            g["lr"] = cfg.lr * lr_at(step, cfg.epochs * steps, cfg)
        with run.amp:
            output = run.ddp_model(batch.x)
            loss = run.task.loss(output, batch)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        if run.ema is not None:
            run.ema.update(run.model, step + 1)
        seen += batch.n
        loss_sum += loss.item() * batch.n
        correct += run.task.n_correct(output, batch)
        if progress is not None and rank == 0:
            progress.step(1, loss_sum / seen, correct / seen, seen * world / (time.perf_counter() - t0))
        if eval_hook is not None and eval_every and (i + 1) % eval_every == 0 and i + 1 < steps:
            paused = time.perf_counter()
            eval_hook(run.eval_model, seconds_before + paused - t0, step + 1)
            t0 += time.perf_counter() - paused  # evaluation is not training time
    epoch_seconds = time.perf_counter() - t0
    if progress is not None and rank == 0:
        progress.end_epoch()
    if eval_hook is not None:
        eval_hook(run.eval_model, seconds_before + epoch_seconds, (epoch + 1) * steps)
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(1, seen),
        "train_accuracy": correct / max(1, seen),
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": epoch_seconds,
        "images_per_s": seen * world / max(epoch_seconds, 1e-9),
    }
