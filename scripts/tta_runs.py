"""Test-time augmentation on saved runs: each run's test accuracy from one view, from the centre
and its 4 one-pixel shifts, and from all 9 shifts, then ensembles of every k of the runs with one
view and with 9 shifts per member (calibrated, as `digitnet ensemble` averages them).

    DIGITNET_DATA=../shared/mnist PYTHONPATH=src python scripts/tta_runs.py \
        runs/best-s0 … runs/best-s4 [--k 3 5]
"""

from __future__ import annotations

import argparse
import itertools
import os

import numpy as np
from sweep import PLUS, view_probs  # scripts/ is on sys.path when this file runs


def calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): what a run's temperature does to its (averaged) probabilities."""
    z = np.log(np.clip(probs, 1e-12, None)) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--k", type=int, nargs="*", default=[3])
    args = ap.parse_args()
    from digitnet.checkpoint import load_checkpoint
    from digitnet.data import load_dataset

    data = load_dataset("mnist", os.environ.get("DIGITNET_DATA") or None)
    y = np.asarray(data.y_test)
    one, nine = [], []
    for run in args.runs:
        loaded = load_checkpoint(run)
        views = view_probs(loaded.model, data.x_test, "cpu")  # (9, N, 10)
        acc = {
            name: float((p.argmax(1) == y).mean())
            for name, p in (("one view", views[4]), ("plus5", views[PLUS].mean(0)), ("tta9", views.mean(0)))
        }
        print(run, "  ".join(f"{k} {v:.2%}" for k, v in acc.items()), flush=True)
        one.append(calibrated(views[4], loaded.temperature))
        nine.append(calibrated(views.mean(0), loaded.temperature))
    for k in args.k:
        for name, probs in (("one view", one), ("tta9", nine)):
            errors = [
                int((np.mean([probs[i] for i in c], 0).argmax(1) != y).sum())
                for c in itertools.combinations(range(len(probs)), k)
            ]
            print(f"ensembles of {k}, members {name}: errors {errors}, mean {np.mean(errors):.1f}")


if __name__ == "__main__":
    main()
