"""CTC decoding of a reader's per-frame logits: pure NumPy, shared by training and inference.

The reader's 12 classes per frame: the CTC blank (0), digits 0-9 (1-10) and "not a digit" (11);
label k is class k + 1. `best_path` reads the labels and each label's frames, `string_log_prob`
is the probability of a whole string (every alignment: the CTC forward pass), `align` the frames
of a given string (its most probable alignment), and `calibrated` does both of the first for one
line with the reader's temperature (`tempered`).
"""

from __future__ import annotations

import numpy as np

BLANK = 0  # CTC blank; label k (0-9 digits, 10 = not a digit) is class k + 1


def calibrated(
    logits: np.ndarray, temperature: float
) -> tuple[list[int], list[tuple[int, int]], np.ndarray, float]:
    """(labels, frame spans, log-probs (T, 12), log p(labels)) for one line's logits (12, T)."""
    lp = tempered(logits, temperature)
    labels, spans = best_path(lp)
    return labels, spans, lp, string_log_prob(lp, labels)


def tempered(logits: np.ndarray, temperature: float) -> np.ndarray:
    """One line's logits (12, T) → calibrated per-frame log-probabilities (T, 12), float64."""
    return log_softmax(logits.T.astype(np.float64) / temperature, axis=1)


def digit_posterior(log_probs: np.ndarray, span: tuple[int, int], label: int) -> np.ndarray:
    """The reader's belief over the ten digits (10,) for one label: the digit classes' probabilities,
    renormalised, at the frame of `span` where `label` is most probable."""
    t0, t1 = span
    t = t0 + int(np.argmax(log_probs[t0 : t1 + 1, label + 1]))
    p = np.exp(log_probs[t, 1:11])
    return p / p.sum()


def best_path(log_probs: np.ndarray) -> tuple[list[int], list[tuple[int, int]]]:
    """Greedy CTC decoding of (T, C) log-probabilities → labels (class - 1) and each label's frame
    span [first, last] (consecutive frames of the same class are one label; blanks separate)."""
    best = log_probs.argmax(axis=1)
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    prev = BLANK
    for t, c in enumerate(best):
        c = int(c)
        if c != BLANK and c == prev:
            spans[-1] = (spans[-1][0], t)
        elif c != BLANK:
            labels.append(c - 1)
            spans.append((t, t))
        prev = c
    return labels, spans


def string_log_prob(log_probs: np.ndarray, labels: list[int]) -> float:
    """log p(labels | x) under CTC: the forward algorithm over (T, C) log-probabilities, summing
    every alignment of the label sequence (label k is class k + 1)."""
    ext_arr, skip = _states(labels)
    s = len(ext_arr)
    t_max = log_probs.shape[0]
    alpha = np.full(s, -np.inf)
    alpha[0] = log_probs[0, BLANK]
    if s > 1:
        alpha[1] = log_probs[0, ext_arr[1]]
    for t in range(1, t_max):
        prev = alpha
        step = np.full(s, -np.inf)
        step[1:] = prev[:-1]
        jump = np.full(s, -np.inf)
        jump[2:] = np.where(skip[2:], prev[:-2], -np.inf)  # (an empty string has no jump: s = 1)
        alpha = np.logaddexp(np.logaddexp(prev, step), jump) + log_probs[t, ext_arr]
    end = alpha[-1] if s == 1 else np.logaddexp(alpha[-1], alpha[-2])
    return float(end)


def align(log_probs: np.ndarray, labels: list[int]) -> list[tuple[int, int]] | None:
    """Each label's frame span [first, last] in the most probable alignment of `labels` to (T, C)
    log-probabilities (Viterbi over the same states as `string_log_prob`); None when the frames
    are too few to hold the string (a repeated digit needs a blank between its two)."""
    ext, skip = _states(labels)
    s, t_max = len(ext), log_probs.shape[0]
    delta = np.full(s, -np.inf)
    delta[: min(2, s)] = log_probs[0, ext[: min(2, s)]]
    back = np.zeros((t_max, s), np.int64)  # the state each state came from at frame t
    for t in range(1, t_max):
        options = np.full((3, s), -np.inf)  # stay, step from s-1, jump from s-2
        options[0] = delta
        options[1, 1:] = delta[:-1]
        options[2, 2:] = np.where(skip[2:], delta[:-2], -np.inf)
        move = options.argmax(axis=0)
        back[t] = np.arange(s) - move
        delta = options[move, np.arange(s)] + log_probs[t, ext]
    ends = [s - 1] if s == 1 else [s - 1, s - 2]
    state = max(ends, key=lambda e: delta[e])
    if not np.isfinite(delta[state]):
        return None
    spans: dict[int, list[int]] = {}
    for t in range(t_max - 1, -1, -1):
        if state % 2:  # a label's state: label (state - 1) / 2
            spans.setdefault((state - 1) // 2, []).append(t)
        state = int(back[t, state])
    return [(min(spans[i]), max(spans[i])) for i in range(len(labels))]


def _states(labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """CTC's states for `labels`: the classes blank, l1, blank, l2, …, blank (2L + 1,), and where a
    transition may skip the blank before a state (between two different labels)."""
    ext = np.asarray([BLANK, *[c for k in labels for c in (k + 1, BLANK)]])
    skip = np.zeros(len(ext), bool)
    skip[2:] = (ext[2:] != BLANK) & (ext[2:] != ext[:-2])
    return ext, skip


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
