"""Models built from trained runs, each written as a run folder of its own.

`digitnet ensemble RUN…`: the average of the members' probabilities (each member from one view: a
member trained with test-time augmentation runs without it). `digitnet screen CLASSIFIER
DETECTOR`: the classifier's digits, its confidence tempered by a detector trained with outlier
exposure (`models.Screened`), calibrated on the validation split like a trained run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import digitnet.training.runfolder as runfolder
from digitnet.checkpoint import load_checkpoint
from digitnet.data import Splits, TestSplit
from digitnet.errors import ConfigError
from digitnet.inference.batching import batched_logits
from digitnet.models import Ensemble, Screened, count_parameters, get_spec
from digitnet.training.loop import split_sizes, stratified_split
from digitnet.training.run import calibrate


def build_ensemble(runs: Sequence[str | Path], out: str | Path, data: TestSplit) -> dict[str, Any]:
    """Load each run, wrap them in `models.Ensemble`, score on the test set, write `out`."""
    if len(runs) < 2:
        raise ConfigError("an ensemble needs at least two runs")
    loaded = [load_checkpoint(r) for r in runs]
    if any(m.name == "ensemble" for m in loaded):
        raise ConfigError("ensembles of ensembles are not supported: list the member runs")
    # Members predict from one view: averaging over models already does what test-time
    # augmentation does, at a ninth of the cost (BENCHMARKS.md: 3-run ensembles of `best` made
    # 24.1 errors from one view and 24.2 with TTA, on average over 10 choices of 3 runs).
    members = [
        {
            "model": m.name,
            "kwargs": {**m.model_kwargs, **({"tta": 0} if "tta" in m.model_kwargs else {})},
            "temperature": m.temperature,
        }
        for m in loaded
    ]
    model = Ensemble(members)
    for sub, m in zip(model.members, loaded, strict=True):
        sub.load_state_dict(m.model.state_dict())
    model.eval()
    out = Path(out)
    if (out / "model.pt").exists():
        raise ConfigError(f"{out} already holds a run: choose another --out")
    started = runfolder.now_iso()
    y = np.asarray(data.y_test)
    member_logits = [batched_logits(sub, data.x_test) for sub in model.members]  # each member once: (N, 10)
    member_acc = [float((lg.argmax(1).numpy() == y).mean()) for lg in member_logits]
    pred = model.combine(member_logits).argmax(1).numpy()
    threshold = float(np.mean([m.unsure_threshold for m in loaded]))
    metrics: dict[str, Any] = {
        "model": "ensemble",
        "members": [str(r) for r in runs],
        "member_test_accuracy": member_acc,
        "test_accuracy": float((pred == y).mean()),
        "test_errors": int((pred != y).sum()),
        "val_accuracy": None,
        "train_seconds": sum(float(m.meta.get("train_seconds", 0) or 0) for m in loaded),
        "epochs": 0,
        "seed": None,
        "parameters": count_parameters(model),
        "temperature": 1.0,
        "unsure_threshold": threshold,
        "dataset": data.name,
        "finished": runfolder.now_iso(),
    }
    config = {"model": "ensemble", "members": members}
    runfolder.write_run(
        out,
        model,
        model_name="ensemble",
        model_kwargs={"members": members},
        config=config,
        temperature=1.0,
        unsure_threshold=threshold,
        metrics=metrics,
        history=[],
        data=data.summary(),
        started=started,
        checkpoint_meta={"test_accuracy": metrics["test_accuracy"], "members": metrics["members"]},
    )
    return metrics


def build_screened(
    classifier: str | Path, detector: str | Path, out: str | Path, data: Splits, val_size: int = 5000
) -> dict[str, Any]:
    """`models.Screened` over two runs: calibrated (temperature, unsure and not-a-digit thresholds)
    on the same validation split the runs were trained beside, scored on the test set, written to `out`."""
    runs = [load_checkpoint(r) for r in (classifier, detector)]
    for m in runs:
        spec = get_spec(m.name)
        if spec.task != "digits" or not spec.trainable:
            raise ConfigError(f"{m.path}: screening needs two trained digit models, not a {m.name!r}")
    parts = [{"model": m.name, "kwargs": m.model_kwargs, "temperature": m.temperature} for m in runs]
    model = Screened(parts[0], parts[1])
    model.classifier.load_state_dict(runs[0].model.state_dict())
    model.detector.load_state_dict(runs[1].model.state_dict())
    model.eval()
    out = Path(out)
    if (out / "model.pt").exists():
        raise ConfigError(f"{out} already holds a run: choose another --out")
    started = runfolder.now_iso()
    _, va = stratified_split(np.asarray(data.y_train), split_sizes(len(data.y_train), val_size))
    calibration = calibrate(model, data.x_train[va], data.y_train[va], rejects=True)
    y = np.asarray(data.y_test)
    pred = batched_logits(model, data.x_test).argmax(1).numpy()
    metrics: dict[str, Any] = {
        "model": "screened",
        "classifier": str(classifier),
        "detector": str(detector),
        "test_accuracy": float((pred == y).mean()),
        "test_errors": int((pred != y).sum()),
        "val_accuracy": None,
        "epochs": 0,
        "seed": None,
        "parameters": count_parameters(model),
        "temperature": calibration.temperature,
        "unsure_threshold": calibration.unsure_threshold,
        "not_digit_threshold": calibration.not_digit_threshold,
        "dataset": data.name,
        "finished": runfolder.now_iso(),
    }
    config = {"model": "screened", "classifier": parts[0], "detector": parts[1]}
    runfolder.write_run(
        out,
        model,
        model_name="screened",
        model_kwargs={"classifier": parts[0], "detector": parts[1], "power": model.power},
        config=config,
        temperature=calibration.temperature,
        unsure_threshold=calibration.unsure_threshold,
        not_digit_threshold=calibration.not_digit_threshold,
        metrics=metrics,
        history=[],
        data=data.summary(),
        started=started,
        checkpoint_meta={
            "test_accuracy": metrics["test_accuracy"],
            "classifier": str(classifier),
            "detector": str(detector),
        },
    )
    return metrics
