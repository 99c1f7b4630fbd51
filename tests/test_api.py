"""DigitClassifier: scikit-learn conventions, input validation, save/load as a run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from digitnet.api import DigitClassifier, NotFittedError

FAST = dict(batch_size=32, bf16=False, threads=1)  # tiny data: small batches, fp32, one thread


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images where digit c is a bright band at rows 2c+2..2c+4: easy to learn, not trivial."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int64)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
    return x, y


@pytest.fixture(scope="module")
def data():
    return synthetic(400, 0), synthetic(200, 1)


@pytest.fixture(scope="module")
def fitted(data):
    (x, y), _ = data
    return DigitClassifier("mlp", epochs=2, val_size=0, **FAST).fit(x, y)


def test_fit_learns_and_predicts(fitted, data, tmp_path):
    _, (xt, yt) = data
    clf = fitted
    assert isinstance(clf, DigitClassifier)
    proba = clf.predict_proba(xt)
    assert proba.shape == (200, 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    # the one prediction path: the same numbers as digitnet.inference's Predictor on the saved run
    from digitnet.inference.predictor import Predictor

    saved = Predictor.load(clf.save(tmp_path / "run"), backend="torch").predict_proba(xt)
    np.testing.assert_allclose(saved, proba, rtol=1e-5, atol=1e-7)
    pred = clf.predict(xt)
    assert pred.dtype == np.int64 and (pred == proba.argmax(1)).all()
    assert clf.score(xt, yt) == pytest.approx((pred == yt).mean())
    assert clf.score(xt, yt) > 0.9  # the bands are learnable in 2 epochs
    assert clf.classes_.tolist() == list(range(10)) and clf.n_features_in_ == 784
    assert len(clf.history_) == 2 and clf.history_[0]["epoch"] == 1 and clf.train_seconds_ > 0
    assert clf.config_["model"] == "mlp" and clf.config_["epochs"] == 2 and clf.config_["batch_size"] == 32
    assert clf.temperature_ == 1.0 and clf.val_accuracy_ is None  # val_size=0: no calibration split
    assert not clf.model_.training


def test_notebook_float_arrays_give_the_same_answers(fitted, data):
    _, (xt, _) = data
    flat = xt.reshape(-1, 784) / 255.0  # the notebook's float64 (N, 784) arrays in [0, 1]
    np.testing.assert_allclose(fitted.predict_proba(flat), fitted.predict_proba(xt), atol=1e-6)
    np.testing.assert_allclose(
        fitted.predict_proba(torch.from_numpy(xt)), fitted.predict_proba(xt), atol=1e-6
    )


def test_same_seed_same_model(data):
    (x, y), (xt, _) = data
    a = DigitClassifier("seed-mlp", epochs=1, seed=3, **FAST).fit(x, y).predict_proba(xt)
    b = DigitClassifier("seed-mlp", epochs=1, seed=3, **FAST).fit(x, y).predict_proba(xt)
    c = DigitClassifier("seed-mlp", epochs=1, seed=4, **FAST).fit(x, y).predict_proba(xt)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros((4, 27, 27), np.uint8), "expected images shaped"),
        (np.zeros((4, 785)), "expected images shaped"),
        (np.zeros((28, 28), np.uint8), "expected images shaped"),
        (np.full((4, 784), 255.0), r"\[0, 1\]"),
        (np.zeros((4, 28, 28), np.int64), "dtype"),
        (np.full((4, 784), np.nan), "NaN"),
        (np.array([["a"] * 784] * 4), "numeric"),
    ],
)
def test_bad_images_raise_value_error(fitted, X, message):
    with pytest.raises(ValueError, match=message):
        fitted.predict(X)
    with pytest.raises(ValueError, match=message):
        DigitClassifier("seed-mlp", epochs=1).fit(X, np.zeros(len(X), np.int64))


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.zeros(3, np.int64), "4 images but y has 3"),
        (np.zeros((4, 1), np.int64), "1-D"),
        (np.array([0, 1, 2, 10]), "0-9"),
        (np.array([0, 1, 2, -1]), "0-9"),
        (np.array(["a", "b", "c", "d"]), "integer"),
        (np.array([0.0, 1.5, 2.0, 3.0]), "integer"),
    ],
)
def test_bad_labels_raise_value_error(fitted, y, message):
    x = np.zeros((4, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=message):
        DigitClassifier("seed-mlp", epochs=1).fit(x, y)
    with pytest.raises(ValueError, match=message):
        fitted.score(x, y)


def test_float_labels_that_are_whole_numbers_are_accepted(data):
    (x, y), _ = data
    clf = DigitClassifier("seed-mlp", epochs=1, **FAST).fit(x[:64], y[:64].astype(np.float64))
    assert clf.predict(x[:5]).shape == (5,)


def test_bad_parameters_raise_value_error():
    x, y = np.zeros((4, 28, 28), np.uint8), np.arange(4)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        DigitClassifier("seed-mlp", epochs=0).fit(x, y)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        DigitClassifier("resnet").fit(x, y)
    with pytest.raises(ValueError, match="unknown training option"):
        DigitClassifier("seed-mlp", colour="blue").fit(x, y)


def test_set_params_refuses_unknown_names_at_once():
    clf = DigitClassifier("seed-mlp", epochs=1)
    with pytest.raises(ValueError, match=r"invalid parameter.*'colour'"):
        clf.set_params(epochs=3, colour="blue")
    assert clf.epochs == 1 and "colour" not in clf.get_params()  # nothing changed
    assert clf.set_params(label_smoothing=0.0, bf16=False).config().precision == "fp32"


def test_defaults_are_trainconfigs():
    """DigitClassifier holds out TrainConfig's validation split (a fifth at most of small data)."""
    from digitnet.training.config import TrainConfig

    assert DigitClassifier().config() == TrainConfig.for_model("cnn")
    assert DigitClassifier().config().val_size == TrainConfig().val_size == 5000


def test_predict_before_fit_is_not_fitted_error():
    clf = DigitClassifier()
    for method in (clf.predict, clf.predict_proba):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            method(np.zeros((1, 28, 28), np.uint8))
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    with pytest.raises(NotFittedError):
        clf.save("/nonexistent/never-written")


def test_scikit_learn_protocol(fitted, data):
    from sklearn.base import clone, is_classifier
    from sklearn.exceptions import NotFittedError as SkNotFitted
    from sklearn.metrics import accuracy_score
    from sklearn.utils.validation import check_is_fitted

    clf = DigitClassifier("seed-mlp", epochs=2, lr=0.01, augment=0.5)
    assert clf.get_params() == {
        "model": "seed-mlp",
        "epochs": 2,
        "batch_size": None,
        "lr": 0.01,
        "seed": 0,
        "val_size": None,
        "verbose": False,
        "augment": 0.5,
    }
    assert is_classifier(clf)
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    assert repr(twin) == "DigitClassifier(model='seed-mlp', epochs=2, lr=0.01, augment=0.5)"
    assert clf.set_params(seed=7, augment=0.0) is clf and clf.seed == 7 and clf.config().augment == 0.0
    with pytest.raises(SkNotFitted):
        check_is_fitted(twin)
    check_is_fitted(fitted)
    _, (xt, yt) = data
    assert accuracy_score(yt, fitted.predict(xt)) == fitted.score(xt, yt)
    weights = np.where(yt == 0, 1.0, 0.0)
    assert fitted.score(xt, yt, sample_weight=weights) == pytest.approx(
        accuracy_score(yt, fitted.predict(xt), sample_weight=weights)
    )


def test_save_and_load_round_trip(fitted, data, tmp_path):
    _, (xt, _) = data
    run = fitted.save(tmp_path / "runs" / "api-mlp")
    assert {"model.pt", "metrics.json", "history.csv", "manifest.json"} <= {p.name for p in run.iterdir()}
    manifest = json.loads((run / "manifest.json").read_text())  # the same writer as `digitnet train`
    assert manifest["config"] == fitted.config_ and manifest["versions"]["torch"] == torch.__version__
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "mlp" and metrics["epochs"] == 2 and metrics["source"] == "DigitClassifier"
    back = DigitClassifier.load(run)
    # equal up to float32 rounding: thread partitioning may change the summation order
    np.testing.assert_allclose(back.predict_proba(xt), fitted.predict_proba(xt), rtol=1e-5, atol=1e-7)
    from digitnet.inference.predictor import Predictor

    np.testing.assert_allclose(
        Predictor.load(run, backend="torch").predict_proba(xt), fitted.predict_proba(xt), rtol=1e-5, atol=1e-7
    )
    assert back.model == "mlp" and back.epochs == 2 and back.batch_size == 32
    assert back.config_ == fitted.config_ and len(back.history_) == 2
    assert back.train_seconds_ == pytest.approx(fitted.train_seconds_, abs=1e-3)
    assert DigitClassifier.load(run / "model.pt").predict(xt[:3]).tolist() == fitted.predict(xt[:3]).tolist()
    # the saved folder is a run like any other: listed and evaluated by the CLI's code
    from digitnet.evaluation.runs import list_runs

    assert [r["name"] for r in list_runs(tmp_path / "runs")] == ["api-mlp"]


def test_load_missing_is_a_clear_error(tmp_path):
    from digitnet.errors import ModelError

    with pytest.raises(ModelError, match="no model at"):
        DigitClassifier.load(tmp_path)


def test_validation_split_calibrates(data):
    (x, y), (xt, _) = data
    clf = DigitClassifier("mlp", epochs=2, val_size=100, **FAST).fit(x, y)
    assert clf.val_accuracy_ is not None and 0 < clf.temperature_ != 1.0
    assert clf.predict_proba(xt).shape == (200, 10)


def test_top_level_import():
    import digitnet

    assert digitnet.DigitClassifier is DigitClassifier
