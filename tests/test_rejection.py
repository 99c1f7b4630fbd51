"""Knowing when it is not a digit: the bundled model's operating point on real data and on kinds
of non-digit it never saw, and the status of a letter, a scribble and a blank page through every
door (Python, CLI, REST; the page is in test_web.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from digitnet.data.glyphs import HELD_OUT_FONTS, font_files, render
from digitnet.data.nondigits import HELD_OUT_KINDS, images
from digitnet.evaluation.rejection import auroc, fpr_at_tpr, rejection_report
from digitnet.inference.predictor import Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load("default")


def letter() -> Image.Image:
    """A "K" in a font no model trained on, dark on paper."""
    glyph = render("K", font_files(HELD_OUT_FONTS)[0], np.random.default_rng(0))
    return Image.fromarray(255 - glyph).resize((160, 160), Image.Resampling.BICUBIC)


def scribble() -> Image.Image:
    """A tangle of ten strokes crossing each other."""
    img = Image.new("L", (200, 200), 235)
    pts = [
        (40, 40),
        (160, 60),
        (50, 100),
        (170, 120),
        (40, 160),
        (150, 30),
        (100, 180),
        (60, 70),
        (160, 160),
        (30, 120),
    ]
    ImageDraw.Draw(img).line(pts, fill=20, width=8)
    return img


def blank() -> Image.Image:
    return Image.new("L", (200, 200), 240)


def test_scores_order_and_rates():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert fpr_at_tpr(np.arange(100.0), np.array([1.0, 50.0, 99.0])) == pytest.approx(2 / 3)


@pytest.mark.slow
def test_the_shipped_operating_point_meets_its_floors(predictor, mnist):
    """At the bundled model's thresholds (chosen on validation digits): ≥ 95 % of the held-out kinds
    of non-digit flagged and AUROC ≥ 0.99 against them; ≤ 0.5 % of MNIST test digits and ≤ 2 % of
    real digit photos flagged; the real photos still ≥ 97 % right."""
    r = rejection_report(predictor, mnist, per_kind=100)
    print(json.dumps({k: r[k] for k in ("auroc", "fpr_at_95_tpr", "mnist_test", "real_photos")}, indent=1))
    assert set(r["held_out_kinds"]) == set(HELD_OUT_KINDS)
    assert r["auroc"] >= 0.99 and r["non_digits"]["flagged_held_out"] >= 0.95, r["non_digits"]
    assert r["mnist_test"]["flagged"] <= 0.005
    assert r["real_photos"]["flagged"] <= 0.02 and r["real_photos"]["accuracy"] >= 0.97
    assert r["blank_pages"]["empty"] == r["blank_pages"]["n"]


def test_a_letter_a_scribble_and_a_blank_page_in_python(predictor):
    from digitnet import DigitClassifier

    got = [p.status for p in predictor.predict_images([letter(), scribble(), blank()])]
    assert got == ["not_a_digit", "not_a_digit", "empty"]
    clf = DigitClassifier.load("default")
    fields = np.stack([predictor.predict_images([img])[0].image for img in (letter(), scribble())])
    assert clf.predict_status(fields).tolist() == ["not_a_digit", "not_a_digit"]
    assert clf.not_digit_threshold_ == predictor.not_digit_threshold > 0


def test_held_out_kinds_are_flagged_more_than_digits(predictor, mnist):
    drawn, _ = images(HELD_OUT_KINDS, 50, 3)
    flagged = np.mean([p.status != "digit" for p in predictor.predict_images(drawn)])
    digits = np.mean(
        [predictor.status(float(c)) != "digit" for c in predictor.predict_proba(mnist.x_test[:2000]).max(1)]
    )
    assert flagged >= 0.9 and digits <= 0.01, (flagged, digits)


def test_status_through_the_cli_and_rest(tmp_path):
    from digitnet.serve import create_app

    names = {"letter.png": letter(), "scribble.png": scribble(), "blank.png": blank()}
    for name, img in names.items():
        img.save(tmp_path / name)
    res = subprocess.run(
        [sys.executable, "-m", "digitnet", "predict", "--json", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    statuses = {os.path.basename(r["file"]): r["status"] for r in json.loads(res.stdout)}
    assert statuses == {"letter.png": "not_a_digit", "scribble.png": "not_a_digit", "blank.png": "empty"}
    table = subprocess.run(
        [sys.executable, "-m", "digitnet", "predict", str(tmp_path / "letter.png")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "not a digit" in table.stdout
    with TestClient(create_app("default")) as client:
        for name, img in names.items():
            buf = io.BytesIO()
            img.save(buf, "PNG")
            body = client.post("/v1/predict", files={"file": (name, buf.getvalue(), "image/png")}).json()
            assert body["status"] == statuses[name] and body["unsure"] is True, (name, body)
        metrics = client.get("/metrics").text
        assert 'digitnet_predictions_by_status_total{status="not_a_digit"} 2' in metrics
