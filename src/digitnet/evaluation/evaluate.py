"""Metrics dicts: from probabilities and labels, and from a run folder plus its test set.

Everything here returns plain JSON-able dicts (floats, ints, lists); `digitnet.report` turns them
into PNG/HTML. The formulas follow scikit-learn's conventions (confusion matrix rows = true class,
columns = predicted; a class never predicted has precision 0), and the tests check them against
scikit-learn on the same predictions; scikit-learn itself is not a runtime dependency.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from digitnet.checkpoint import read_checkpoint
from digitnet.data import TestSplit
from digitnet.errors import InputError, ModelError
from digitnet.evaluation.rejection import PER_KIND, rejection_report
from digitnet.evaluation.runs import read_json, seed_mlp_baseline
from digitnet.inference.calibration import coverage_curve
from digitnet.inference.predictor import Predictor

N_CLASSES = 10
ECE_BINS = 15
WORST_ERRORS = 24


def _check(probs: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y)
    if p.ndim != 2 or p.shape[1] != N_CLASSES:
        raise InputError(f"probabilities must be shaped (N, {N_CLASSES}), got {p.shape}")
    if t.ndim != 1 or len(t) != len(p):
        raise InputError(f"labels must be shaped ({len(p)},), got {t.shape}")
    if len(p) == 0:
        raise InputError("cannot evaluate on zero examples")
    if not np.isfinite(p).all():
        raise InputError("probabilities contain NaN or infinity")
    if not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= N_CLASSES:
        raise InputError(f"labels must be integers in 0..{N_CLASSES - 1}")
    return p, t.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any) -> np.ndarray:
    """(10, 10) int64 counts; row = true class, column = predicted class."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(t * N_CLASSES + p, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # scikit-learn's zero_division=0: an undefined ratio (0/0) counts as 0.
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def per_class_metrics(cm: np.ndarray) -> dict[str, Any]:
    """Precision/recall/F1/support per class plus macro and support-weighted averages."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # (10,) true count per class
    predicted = cm.sum(axis=0).astype(np.float64)  # (10,) predicted count per class
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    rows = [
        {
            "label": k,
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k in range(N_CLASSES)
    ]
    w = support / max(1.0, support.sum())

    def avg(weights: np.ndarray) -> dict[str, float]:
        return {
            "precision": float(precision @ weights),
            "recall": float(recall @ weights),
            "f1": float(f1 @ weights),
            "support": int(support.sum()),
        }

    return {"per_class": rows, "macro_avg": avg(np.full(N_CLASSES, 1 / N_CLASSES)), "weighted_avg": avg(w)}


def calibration(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, and the reliability diagram.

    A prediction with confidence c falls in bin i when edges[i] < c <= edges[i+1] (c = 0 in bin 0).
    ECE = sum over bins of (count / N) * |accuracy - mean confidence|.
    """
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for i in range(n_bins):
        mask = idx == i
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else None
        mean_conf = float(conf[mask].mean()) if count else None
        if acc is not None and mean_conf is not None:
            ece += count / len(y) * abs(acc - mean_conf)
        bins.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": count,
                "accuracy": acc,
                "confidence": mean_conf,
            }
        )
    return {"ece": float(ece), "n_bins": n_bins, "bins": bins, "mean_confidence": float(conf.mean())}


def evaluate_probs(probs: Any, y: Any) -> dict[str, Any]:
    """Every metric digitnet reports, from probabilities (N, 10) and true labels (N,)."""
    p, t = _check(probs, y)
    pred = p.argmax(axis=1)
    cm = confusion_matrix(t, pred)
    n = len(t)
    correct = int(np.trace(cm))
    # Renormalise rows (as scikit-learn's log_loss does) and clip so one zero cannot give infinity.
    p_norm = p / np.clip(p.sum(axis=1, keepdims=True), 1e-300, None)
    p_true = np.clip(p_norm[np.arange(n), t], np.finfo(np.float64).eps, 1.0)
    onehot = np.eye(N_CLASSES)[t]
    return {
        "n": n,
        "accuracy": correct / n,
        "error_count": n - correct,
        **per_class_metrics(cm),
        "confusion_matrix": cm.tolist(),
        "nll": float(-np.log(p_true).mean()),
        "brier": float(((p_norm - onehot) ** 2).sum(axis=1).mean()),
        "calibration": calibration(p_norm, t),
        "coverage": coverage_curve(p_norm, t),  # the inference module's definition, not a second one
    }


def worst_errors(probs: np.ndarray, y: np.ndarray, k: int = WORST_ERRORS) -> list[dict[str, Any]]:
    """The k misclassified examples the model was most sure of, most confident first."""
    p, t = _check(probs, y)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != t)
    conf = p[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:k]
    return [
        {
            "index": int(i),
            "true": int(t[i]),
            "pred": int(pred[i]),
            "confidence": float(p[i, pred[i]]),
            "p_true": float(p[i, t[i]]),
        }
        for i in order
    ]


def run_probabilities(run: str | Path, x: np.ndarray) -> tuple[np.ndarray, Predictor]:
    """Calibrated probabilities (N, 10) of the run's checkpoint (torch backend) on images x, and the
    Predictor that produced them (its name, temperature and unsure_threshold)."""
    predictor = Predictor.load(run, backend="torch")
    return predictor.predict_proba(x), predictor


def evaluate_run(
    run: str | Path, data: TestSplit, *, top_errors: int = WORST_ERRORS, per_kind: int = PER_KIND
) -> dict[str, Any]:
    """Evaluate run folder `run` on `data.x_test`/`data.y_test`; `per_kind` images of each kind of
    non-digit for the rejection figures (`rejection.rejection_report`)."""
    run = Path(run)
    if not run.is_dir():
        raise ModelError(f"{run}: not a run folder")
    train_metrics = read_json(run / "metrics.json", strict=True)  # garbage is an error, before the work
    probs, predictor = run_probabilities(run, data.x_test)
    ckpt, _ = read_checkpoint(run)
    y = np.asarray(data.y_test, dtype=np.int64)
    result = evaluate_probs(probs, y)
    conf = probs.max(axis=1)
    flagged = conf < predictor.unsure_threshold
    answered = ~flagged
    result.update(
        {
            "format": "digitnet-report/1",
            "run": run.name,
            "run_path": str(run.resolve()),
            "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": predictor.name,
            "config": ckpt.get("config", {}),
            "temperature": predictor.temperature,
            "train_metrics": train_metrics,
            "data": {
                "name": data.name,
                "source": str(getattr(data, "source", "")),
                "is_sample": bool(getattr(data, "is_sample", False)),
                "n_test": len(y),
            },
            "unsure": {
                "threshold": predictor.unsure_threshold,
                "flagged": int(flagged.sum()),
                "flagged_fraction": float(flagged.mean()),
                "accuracy_answered": float((probs.argmax(1) == y)[answered].mean())
                if answered.any()
                else None,
            },
            "worst_errors": worst_errors(probs, y, top_errors),
        }
    )
    x_test = np.asarray(data.x_test)
    for err in result["worst_errors"]:
        # The image travels with the dict (784 raw bytes, base64) so a report needs nothing else.
        err["pixels"] = base64.b64encode(
            np.ascontiguousarray(x_test[err["index"]], dtype=np.uint8).tobytes()
        ).decode()
    result["comparison"] = seed_mlp_baseline(run, result["accuracy"])
    result["rejection"] = rejection_report(predictor, data, per_kind=per_kind)
    return result
