"""Calibration: probabilities people can trust, chosen on the validation split.

`softmax(logits / T)` with the temperature `T` that minimises validation NLL (`fit_temperature`);
an answer whose calibrated confidence is under `choose_unsure_threshold`'s value is flagged unsure.
`coverage_curve` is the accuracy-at-coverage table the evaluation report shows. Pure NumPy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from digitnet.errors import ConfigError, InputError

COVERAGE_LEVELS = (1.0, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, float32 (N, 10)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _checked(scores: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(y).astype(np.int64).ravel()
    if s.ndim != 2 or s.shape[0] != t.shape[0] or s.shape[0] == 0:
        raise InputError(
            f"{what} must be shaped (N, classes) with N matching {t.shape[0]} labels, got {s.shape}"
        )
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise InputError(f"labels must lie in [0, {s.shape[1] - 1}]")
    return s, t


def fit_temperature(logits_val: Any, y_val: Any, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T minimising the validation NLL of softmax(logits / T) (golden-section on log T)."""
    z, y = _checked(logits_val, y_val, "logits")
    z = z - z.max(axis=1, keepdims=True)
    picked = z[np.arange(len(y)), y]

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - picked / math.exp(log_t)))

    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):  # NLL is convex in 1/T; the bracket shrinks to ~1e-12 of its width
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


def choose_unsure_threshold(
    probs_val: Any,
    y_val: Any,
    target_accuracy: float = 0.999,
    *,
    target_coverage: float | None = None,
    min_threshold: float = 0.5,
) -> float:
    """The lowest calibrated confidence still answered, chosen on validation.

    With `target_coverage` (e.g. 0.98): answer that fraction, the most confident first. Otherwise
    answer as many as possible while the answered ones stay at least `target_accuracy` correct.
    Never below `min_threshold`: a prediction that is not even a majority vote is always unsure.
    """
    p, y = _checked(probs_val, y_val, "probabilities")
    if not 0 < target_accuracy <= 1:
        raise ConfigError("target_accuracy must be in (0, 1]")
    conf = p.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    conf_sorted = conf[order]
    if target_coverage is not None:
        if not 0 < target_coverage <= 1:
            raise ConfigError("target_coverage must be in (0, 1]")
        k = max(1, math.ceil(target_coverage * len(y)))
    else:
        correct = (p.argmax(axis=1) == y)[order]
        acc_at = np.cumsum(correct) / np.arange(1, len(y) + 1)  # accuracy of the top-k answered
        ok = np.flatnonzero(acc_at >= target_accuracy)
        k = int(ok[-1]) + 1 if ok.size else 1
    return float(max(min_threshold, conf_sorted[k - 1]))


def coverage_curve(probs: Any, y: Any, levels: tuple[float, ...] = COVERAGE_LEVELS) -> list[dict[str, float]]:
    """Accuracy on the most confident `coverage` fraction; `threshold` = lowest confidence answered."""
    p, t = _checked(probs, y, "probabilities")
    conf = p.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    correct = (p.argmax(axis=1) == t)[order]
    rows = []
    for level in levels:
        k = max(1, math.ceil(level * len(t)))
        rows.append(
            {
                "coverage": float(k / len(t)),
                "accuracy": float(correct[:k].mean()),
                "threshold": float(conf[order[k - 1]]),
            }
        )
    return rows
