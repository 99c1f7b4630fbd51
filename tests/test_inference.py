"""Predictor (torch backend), calibration helpers, and the bundled model's accuracy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitnet.checkpoint import PRETRAINED_DIR
from digitnet.errors import ConfigError, InputError, ModelError
from digitnet.inference.calibration import choose_unsure_threshold, coverage_curve, fit_temperature, softmax
from digitnet.inference.predictor import Prediction, Predictor

BUNDLED = PRETRAINED_DIR / "model.pt"


def make_run(folder, *, temperature: float = 1.5, threshold: float = 0.6, seed: int = 0):
    """A random-init cnn checkpoint (fast): enough to test the plumbing, not the accuracy."""
    import torch

    from digitnet.checkpoint import save_checkpoint
    from digitnet.models import build_model

    torch.manual_seed(seed)
    model = build_model("cnn").eval()
    save_checkpoint(
        folder / "model.pt",
        model,
        model_name="cnn",
        temperature=temperature,
        unsure_threshold=threshold,
        meta={"note": "test"},
    )
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def predictor(run):
    return Predictor.load(run, backend="torch")


# -- calibration --------------------------------------------------------------------------------


def test_fit_temperature_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20000, 10))
    true_t = 2.5
    p = softmax(logits, true_t).astype(np.float64)
    y = np.array([rng.choice(10, p=row / row.sum()) for row in p])
    t = fit_temperature(logits, y)
    assert abs(t - true_t) / true_t < 0.05, t
    # Overconfident logits (×3) are cooled by about 3×.
    assert abs(fit_temperature(3 * logits, y) / (3 * true_t) - 1) < 0.05


def test_fit_temperature_lowers_nll():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 2000)
    logits = rng.normal(0, 1, (2000, 10))
    logits[np.arange(2000), y] += 2.0
    logits *= 5  # overconfident
    t = fit_temperature(logits, y)

    def nll(temp: float) -> float:
        return float(-np.log(softmax(logits, temp)[np.arange(2000), y] + 1e-12).mean())

    assert t > 1 and nll(t) < nll(1.0) and nll(t) <= min(nll(t * 1.1), nll(t / 1.1)) + 1e-9


def test_calibration_input_validation():
    with pytest.raises(InputError):
        fit_temperature(np.zeros((3, 10)), np.zeros(4))
    with pytest.raises(InputError, match="labels"):
        fit_temperature(np.zeros((3, 10)), np.array([0, 1, 10]))
    with pytest.raises(ConfigError):
        choose_unsure_threshold(np.full((2, 10), 0.1), np.zeros(2), target_accuracy=0)


def test_choose_unsure_threshold():
    # Ten predictions, confidence 0.99 … 0.90; the two least confident are wrong.
    conf = np.linspace(0.99, 0.90, 10)
    probs = np.zeros((10, 10))
    probs[:, 0] = conf
    probs[:, 1] = 1 - conf
    y = np.array([0] * 8 + [1] * 2)
    assert choose_unsure_threshold(probs, y, 1.0) == pytest.approx(conf[7])  # answer the 8 right ones
    assert choose_unsure_threshold(probs, y, 0.85) == pytest.approx(conf[8])  # 8/9 ≥ 0.85
    assert choose_unsure_threshold(probs, y, target_coverage=0.5) == pytest.approx(conf[4])
    # The floor: below a majority vote is always unsure.
    assert choose_unsure_threshold(probs * 0.5, y, target_coverage=1.0, min_threshold=0.5) == 0.5


def test_coverage_curve():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, 1000)
    probs = softmax(rng.normal(0, 1, (1000, 10)) + 4 * np.eye(10)[y] * (rng.random((1000, 1)) < 0.9))
    rows = coverage_curve(probs, y)
    assert rows[0]["coverage"] == 1.0
    assert rows[0]["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert [r["coverage"] for r in rows] == sorted((r["coverage"] for r in rows), reverse=True)
    # Answering only the most confident predictions is more accurate; thresholds rise with it.
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert rows[-1]["threshold"] >= rows[0]["threshold"]
    json.dumps(rows)


# -- Predictor ----------------------------------------------------------------------------------


def test_predict_proba_is_calibrated_softmax(run, predictor):
    from digitnet.checkpoint import load_checkpoint
    from digitnet.inference.batching import batched_logits

    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    p = predictor.predict_proba(x)
    assert p.shape == (7, 10) and p.dtype == np.float32
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    logits = batched_logits(load_checkpoint(run).model, x).numpy()
    assert np.allclose(p, softmax(logits, 1.5), atol=1e-5)
    assert np.array_equal(predictor.predict(x), logits.argmax(1))
    assert predictor.temperature == 1.5 and predictor.unsure_threshold == 0.6
    assert predictor.name == "cnn" and predictor.backend == "torch" and len(predictor.version) == 12


def test_predict_accepts_as_batch_forms(predictor):
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    ref = predictor.predict_proba(x)
    import torch

    for form in (
        x.reshape(3, 784),
        x[:, None],
        x / 255.0,
        (x / 255.0).astype(np.float32),
        torch.from_numpy(x),
        torch.from_numpy(x / 255.0).float(),
        (x / 255.0).tolist(),
    ):
        assert np.allclose(predictor.predict_proba(form), ref, atol=1e-5)
    assert np.allclose(predictor.predict_proba(torch.from_numpy(x / 255.0).bfloat16()), ref, atol=0.05)
    for bad, why in [
        (np.zeros((2, 27, 27)), "shaped"),
        (x.astype(np.int64), "uint8 0-255 or float"),
        (np.full((1, 28, 28), np.nan), "NaN"),
        (np.full((1, 28, 28), 2.0), r"\[0, 1\]"),
    ]:
        with pytest.raises(InputError, match=why):
            predictor.predict_proba(bad)
    assert predictor.predict_proba(np.zeros((0, 28, 28), np.uint8)).shape == (0, 10)


def test_predict_arrays_and_to_dict(predictor):
    x = np.random.default_rng(3).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    preds = predictor.predict_arrays(x)
    probs = predictor.predict_proba(x)
    for pred, p in zip(preds, probs, strict=True):
        assert isinstance(pred, Prediction) and pred.digit == int(p.argmax())
        assert pred.confidence == pytest.approx(float(p.max()))
        assert pred.unsure == (pred.confidence < 0.6) and not pred.empty
        assert pred.image.shape == (28, 28) and pred.image.dtype == np.float32
        d = json.loads(json.dumps(pred.to_dict()))
        assert (
            set(d) == {"digit", "confidence", "probabilities", "unsure", "empty", "status"}
            and len(d["probabilities"]) == 10
        )
        assert d["status"] == ("unsure" if pred.unsure else "digit")  # a model never shown non-digits


def seven(size=150):
    img = Image.new("L", (size, size), 240)
    k = size / 150  # the same drawing at any size
    ImageDraw.Draw(img).line(
        [(30 * k, 30 * k), (110 * k, 30 * k), (60 * k, 130 * k)], fill=10, width=max(2, round(12 * k))
    )
    return img


def test_predict_images_batches_and_reports_empty():
    predictor = Predictor.load("default", backend="torch")  # trained: its answer on a 7 means something
    blank = Image.new("L", (64, 64), 255)
    preds = predictor.predict_images([seven(), blank, np.asarray(seven(90))])
    assert [p.empty for p in preds] == [False, True, False]
    assert preds[1].digit is None and preds[1].unsure and preds[1].probabilities == [0.0] * 10
    assert preds[1].to_dict()["empty"] is True
    assert preds[0].digit == preds[2].digit == 7  # same drawing, different size
    assert predictor.predict_images([]) == []
    raw = predictor.predict_images([np.zeros((28, 28), np.uint8)], preprocess=False)[0]
    assert raw.empty and raw.digit is None


def test_predict_file(predictor, tmp_path):
    path = tmp_path / "seven.webp"
    seven().save(path, "PNG")  # the content, not the name, decides
    pred = predictor.predict_file(path)
    assert pred.digit == predictor.predict_images([seven()])[0].digit
    with pytest.raises(InputError, match="no such file"):
        predictor.predict_file(tmp_path / "missing.png")


def test_load_errors(tmp_path, run):
    with pytest.raises(ModelError, match="no model at"):
        Predictor.load(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="backend"):
        Predictor.load(run, backend="tensorflow")
    with pytest.raises(ConfigError, match="threads"):
        Predictor.load(run, threads=0)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable digitnet checkpoint"):
        Predictor.load(bad)
    # "auto" without an exported model.onnx beside the checkpoint runs torch.
    assert Predictor.load(make_run(tmp_path / "fresh")).backend == "torch"


def test_temperature_must_be_positive(tmp_path):
    with pytest.raises(ModelError, match="temperature"):
        Predictor.load(make_run(tmp_path, temperature=-1.0), backend="torch")


def test_bundled_model_loads_and_scores(mnist):
    predictor = Predictor.load("default")
    assert predictor.name and predictor.version and 0 < predictor.temperature < 10
    assert 0.5 <= predictor.unsure_threshold < 1 and math.isfinite(predictor.unsure_threshold)
    acc = float((predictor.predict(mnist.x_test) == mnist.y_test).mean())
    assert acc >= 0.995, f"bundled model test accuracy {acc:.4f}"
    assert BUNDLED.stat().st_size < 2 * 1024 * 1024
    assert (PRETRAINED_DIR / "MODEL_CARD.md").is_file()
