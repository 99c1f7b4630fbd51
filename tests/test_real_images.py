"""Digits as people photograph and draw them: large canvases, dark ink on light noisy paper,
thick strokes, JPEG (`data.synth.digit_photo`): preprocessing must turn them back into MNIST
digits the model can read, and the model must not call them anything but digits. (Images that
are not digits: test_rejection.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from digitnet.checkpoint import PRETRAINED_DIR
from digitnet.data.synth import digit_photo
from digitnet.inference.predictor import Predictor
from digitnet.inference.preprocess import decode_image

pytestmark = pytest.mark.slow
BUNDLED = PRETRAINED_DIR / "model.pt"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The bundled default model: what `digitnet predict` uses on a fresh install."""
    return Predictor.load("default")


def test_real_image_suite(mnist, predictor):
    rng = np.random.default_rng(2024)
    idx = rng.choice(len(mnist.x_test), 500, replace=False)
    images = [decode_image(digit_photo(mnist.x_test[i], rng)) for i in idx]
    preds = predictor.predict_images(images)
    digits = np.array([-1 if p.digit is None else p.digit for p in preds])
    acc = float((digits == mnist.y_test[idx]).mean())
    answered = np.array([p.status == "digit" for p in preds])
    print(
        f"\nreal-image suite: {acc:.1%} of 500 right; {answered.mean():.1%} answered (not unsure), "
        f"{(digits == mnist.y_test[idx])[answered].mean():.2%} of those right"
    )
    assert sum(p.empty for p in preds) == 0
    assert acc >= 0.97, f"only {acc:.1%} of 500 real-style images right"
    assert 1 - answered.mean() <= 0.02, f"{1 - answered.mean():.1%} of real digit photos flagged"
