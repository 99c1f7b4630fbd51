"""The real-image suite at a larger size, for models side by side: accuracy, share flagged and
share wrong-and-confident (answered as a digit, and wrong) on N photos of MNIST test digits
(`data.synth.digit_photo`, the generator `digitnet evaluate` uses for its 500), at each model's
shipped operating point and at thresholds that flag the same share of MNIST test digits for every
model (`--mnist-flagged`), which separates the model from its operating point.

    DIGITNET_DATA=../shared/mnist PYTHONPATH=src python scripts/wrong_and_confident.py \\
        --photos 3000 default /tmp/oldrun
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from digitnet.data import load_dataset
from digitnet.data.synth import digit_photo
from digitnet.evaluation.rejection import rejection_report
from digitnet.inference.decode import decode_image
from digitnet.inference.predictor import Predictor


def at_equal_flagging(predictor: Predictor, x, y, n: int, shares: list[float]) -> list[dict]:
    rng = np.random.default_rng(0)
    idx = rng.choice(len(x), n, replace=False)
    photos = predictor.predict_images([decode_image(digit_photo(x[i], rng)) for i in idx])
    conf = np.array([p.confidence for p in photos])
    wrong = np.array([p.digit != y[i] for p, i in zip(photos, idx, strict=True)])
    test_conf = predictor.predict_proba(x).max(axis=1)
    rows = []
    for share in shares:
        t = float(np.quantile(test_conf, share))  # flags `share` of the MNIST test digits
        rows.append(
            {
                "mnist_flagged": share,
                "photos_flagged": float(np.mean(conf < t)),
                "wrong_and_confident": int(np.sum(wrong & (conf >= t))),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["default"], help="run folders, model.pt files or 'default'")
    ap.add_argument("--photos", type=int, default=3000)
    ap.add_argument("--mnist-flagged", default="0.005,0.01,0.018", help="comma-separated shares")
    args = ap.parse_args()
    data = load_dataset("mnist")
    x, y = np.asarray(data.x_test), np.asarray(data.y_test)
    shares = [float(s) for s in args.mnist_flagged.split(",") if s]
    for model in args.models:
        predictor = Predictor.load(model)
        report = rejection_report(predictor, data, per_kind=1, real_suite=args.photos)
        equal = at_equal_flagging(predictor, x, y, args.photos, shares)
        print(json.dumps({"model": model, **report["real_photos"], "at_equal_mnist_flagging": equal}))


if __name__ == "__main__":
    main()
