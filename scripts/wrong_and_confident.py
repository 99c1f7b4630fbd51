"""The real-image suite at a larger size, for models side by side: accuracy, share flagged and
share wrong-and-confident (answered as a digit, and wrong) on N photos of MNIST test digits
(`data.synth.digit_photo`, the generator `digitnet evaluate` uses for its 500).

    DIGITNET_DATA=../shared/mnist PYTHONPATH=src python scripts/wrong_and_confident.py \
        --photos 3000 default /tmp/oldrun
"""

from __future__ import annotations

import argparse
import json

from digitnet.data import load_dataset
from digitnet.evaluation.rejection import rejection_report
from digitnet.inference.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=["default"], help="run folders, model.pt files or 'default'")
    ap.add_argument("--photos", type=int, default=3000)
    args = ap.parse_args()
    data = load_dataset("mnist")
    for model in args.models:
        report = rejection_report(Predictor.load(model), data, per_kind=1, real_suite=args.photos)
        print(json.dumps({"model": model, **report["real_photos"]}))


if __name__ == "__main__":
    main()
