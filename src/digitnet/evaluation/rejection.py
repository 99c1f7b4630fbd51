"""Knowing when it is not a digit: how well a predictor tells digits from everything else.

`rejection_report` runs the predictor, exactly as `digitnet predict` does (photo → `preprocess`
→ model → `Prediction.status`), on three sets:
- images that hold no digit, of every kind in `data.nondigits` (the kinds a model was trained on,
  and the kinds held out of training, reported apart), plus blank and near-blank pages;
- the real-image suite: MNIST test digits as JPEG photos (`data.synth.digit_photo`);
- the MNIST test digits themselves (already in MNIST form).
The separation score is the calibrated confidence; AUROC and the false-positive rate at 95 % true
positives are for digits (MNIST test) against the held-out kinds. At the shipped operating point
an image is *flagged* when its status is anything but "digit".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from scipy.stats import rankdata

from digitnet.data import TestSplit
from digitnet.data.nondigits import HELD_OUT_KINDS, KINDS, images
from digitnet.data.synth import digit_photo
from digitnet.inference.predictor import Predictor
from digitnet.inference.preprocess import decode_image

REAL_SUITE = 500  # real-image suite photos
PER_KIND = 200  # images of each kind of non-digit


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann–Whitney U / (n_pos · n_neg))."""
    ranks = rankdata(np.concatenate([positive, negative]))  # ties get their average rank
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float = 0.95) -> float:
    """Share of negatives scoring at or above the score that keeps `tpr` of the positives."""
    threshold = np.quantile(positive, 1 - tpr)
    return float((negative >= threshold).mean())


def _blank_pages(rng: np.random.Generator) -> list[Image.Image]:
    pages = [Image.new("L", (120, 120), level) for level in (255, 0, 128, 200)]
    pages.append(
        Image.fromarray(np.tile(np.linspace(200, 250, 160), (120, 1)).astype(np.uint8))
    )  # uneven light
    pages += [
        Image.fromarray(np.clip(rng.normal(225, 5, (150, 150)), 0, 255).astype(np.uint8)) for _ in range(5)
    ]
    return pages


def rejection_report(
    predictor: Predictor,
    data: TestSplit,
    *,
    seed: int = 7,
    per_kind: int = PER_KIND,
    real_suite: int = REAL_SUITE,
) -> dict[str, Any]:
    """The figures described in the module docstring, as a JSON-able dict."""
    rng = np.random.default_rng(seed)
    drawn, which = images(KINDS, per_kind * len(KINDS), seed)
    nd_preds = predictor.predict_images(drawn)
    nd_conf = np.array([p.confidence for p in nd_preds])
    nd_flag = np.array([p.status != "digit" for p in nd_preds])
    kinds = {
        kind: {
            "n": int((which == k).sum()),
            "flagged": float(nd_flag[which == k].mean()),
            "not_a_digit": float(
                np.mean([nd_preds[i].status == "not_a_digit" for i in np.flatnonzero(which == k)])
            ),
            "held_out": kind in HELD_OUT_KINDS,
        }
        for k, kind in enumerate(KINDS)
    }
    held = np.isin(which, [KINDS.index(k) for k in HELD_OUT_KINDS])
    blank = predictor.predict_images(_blank_pages(rng))

    x_test, y_test = np.asarray(data.x_test), np.asarray(data.y_test)
    test_conf = predictor.predict_proba(x_test).max(axis=1)
    test_flag = np.array([predictor.status(float(c)) != "digit" for c in test_conf])

    idx = rng.choice(len(x_test), min(real_suite, len(x_test)), replace=False)
    photos = predictor.predict_images([decode_image(digit_photo(x_test[i], rng)) for i in idx])
    right = np.array([p.digit == int(y_test[i]) for p, i in zip(photos, idx, strict=True)])
    photo_flag = np.array([p.status != "digit" for p in photos])
    return {
        "score": "calibrated confidence (max softmax probability)",
        "thresholds": {"not_a_digit": predictor.not_digit_threshold, "unsure": predictor.unsure_threshold},
        "held_out_kinds": list(HELD_OUT_KINDS),
        "auroc": auroc(test_conf, nd_conf[held]),
        "fpr_at_95_tpr": fpr_at_tpr(test_conf, nd_conf[held]),
        "auroc_training_kinds": auroc(test_conf, nd_conf[~held]),
        "non_digits": {
            "n": len(nd_preds),
            "flagged_held_out": float(nd_flag[held].mean()),
            "flagged_training_kinds": float(nd_flag[~held].mean()),
            "by_kind": kinds,
        },
        "blank_pages": {"n": len(blank), "empty": sum(p.status == "empty" for p in blank)},
        "mnist_test": {"n": len(test_conf), "flagged": float(test_flag.mean())},
        "real_photos": {
            "n": len(photos),
            "accuracy": float(right.mean()),
            "flagged": float(photo_flag.mean()),
            "wrong_and_confident": float((~right & ~photo_flag).mean()),
        },
    }
