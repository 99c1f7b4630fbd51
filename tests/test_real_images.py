"""Digits as people photograph and draw them: large canvases, dark ink on light noisy paper,
thick strokes, JPEG: preprocessing must turn them back into MNIST digits the model can read.
Also images that are not digits at all, which should come back `unsure` (or `empty`)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from digitnet.checkpoint import PRETRAINED_DIR
from digitnet.evaluation.nondigits import not_digits
from digitnet.inference.predictor import Predictor
from digitnet.inference.preprocess import decode_image

pytestmark = pytest.mark.slow
BUNDLED = PRETRAINED_DIR / "model.pt"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The bundled default model: what `digitnet predict` uses on a fresh install."""
    return Predictor.load("default")


def photo_of(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """One MNIST digit as a JPEG 'photo': scaled 1.5–5×, thickened, dark ink on light noisy paper,
    at a random place on a 100–400 px canvas."""
    n = int(28 * rng.uniform(1.5, 5.0))
    big = Image.fromarray(digit).resize((n, n), Image.Resampling.BILINEAR)
    big = big.filter(ImageFilter.MaxFilter(int(rng.choice([3, 5])) if n > 60 else 3))  # thicker strokes
    w, h = (int(rng.integers(max(100, n + 10), 401)) for _ in range(2))
    paper, ink = rng.uniform(0.8, 0.95), rng.uniform(0.05, 0.3)
    canvas = np.full((h, w), paper, np.float32) + rng.normal(0, rng.uniform(0.01, 0.04), (h, w)).astype(
        np.float32
    )
    y, x = int(rng.integers(0, h - n + 1)), int(rng.integers(0, w - n + 1))
    a = np.asarray(big, np.float32) / 255.0
    canvas[y : y + n, x : x + n] = canvas[y : y + n, x : x + n] * (1 - a) + ink * a
    buf = io.BytesIO()
    Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8)).save(
        buf, "JPEG", quality=int(rng.integers(40, 86))
    )
    return buf.getvalue()


def test_real_image_suite(mnist, predictor):
    rng = np.random.default_rng(2024)
    idx = rng.choice(len(mnist.x_test), 500, replace=False)
    images = [decode_image(photo_of(mnist.x_test[i], rng)) for i in idx]
    preds = predictor.predict_images(images)
    digits = np.array([-1 if p.digit is None else p.digit for p in preds])
    acc = float((digits == mnist.y_test[idx]).mean())
    answered = np.array([not p.unsure for p in preds])
    print(
        f"\nreal-image suite: {acc:.1%} of 500 right; {answered.mean():.1%} answered (not unsure), "
        f"{(digits == mnist.y_test[idx])[answered].mean():.2%} of those right"
    )
    assert sum(p.empty for p in preds) == 0
    assert acc >= 0.97, f"only {acc:.1%} of 500 real-style images right"


def test_non_digits_flagged(predictor, mnist):
    """Blank pages are always reported empty. Scribbles are the known weak spot of a confident
    softmax model (1/30 flagged by the bundled model, see BENCHMARKS.md): the flag must at least
    fire more often on them than on real test digits."""
    images = not_digits(np.random.default_rng(7))
    preds = predictor.predict_images(images)
    blank, marks = preds[:10], preds[10:]
    flagged_marks = sum(p.unsure for p in marks)
    digits_unsure = float((predictor.predict_proba(mnist.x_test).max(1) < predictor.unsure_threshold).mean())
    print(
        f"\nnon-digits flagged: blank/near-blank {sum(p.unsure for p in blank)}/10 "
        f"(empty {sum(p.empty for p in blank)}), scribbles/shapes {flagged_marks}/30, "
        f"real test digits {digits_unsure:.2%}"
    )
    assert all(p.empty and p.unsure for p in blank)
    assert flagged_marks / len(marks) > digits_unsure, (flagged_marks, digits_unsure)
