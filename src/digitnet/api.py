"""`DigitClassifier`: digitnet with scikit-learn's conventions, for notebooks and scripts.

    clf = DigitClassifier("cnn", epochs=3).fit(x_train, y_train)
    clf.predict_proba(x_test)  # (N, 10), calibrated
    clf.score(x_test, y_test); clf.save("runs/mine"); DigitClassifier.load("runs/mine")

Training is `digitnet.training.fit` with `TrainConfig`'s defaults, a saved classifier is an ordinary
run folder (`training.runfolder.write_run`, loaded with `checkpoint.load_checkpoint`), and
predictions go through `inference.Predictor`: the CLI and this API share one path for each.
Bad input raises `ValueError` (what scikit-learn tooling expects; digitnet's `InputError` and
`ConfigError` are ValueErrors) with digitnet's one-line message.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import digitnet.training.runfolder as runfolder
from digitnet.checkpoint import load_checkpoint
from digitnet.errors import InputError
from digitnet.inference.batching import as_batch
from digitnet.inference.predictor import Predictor
from digitnet.inference.reader import NumberReading, Reader
from digitnet.models import count_parameters, network_kwargs
from digitnet.training.config import TrainConfig, field_names
from digitnet.training.loop import fit, split_sizes, stratified_split
from digitnet.training.progress import Reporter
from digitnet.training.run import calibrate

N_CLASSES = 10
_PARAMS = ("model", "epochs", "batch_size", "lr", "seed", "val_size", "verbose")


class NotFittedError(ValueError, AttributeError):
    """Raised when predicting with a classifier that has not been fitted (as scikit-learn's is)."""


@functools.lru_cache(maxsize=4)
def _reader(model: str) -> Reader:
    return Reader.load(model)


@functools.lru_cache(maxsize=1)
def _classifier() -> Predictor:
    """The bundled digit model: the second opinion a reader takes (`Reader.load`'s default)."""
    return Predictor.load("default")


def read_number(image: Any, *, model: str | Path = "default") -> NumberReading:
    """Read the whole handwritten number in `image`: a file path, the file's bytes, a PIL image,
    or an (H, W) / (H, W, 3|4) array. Returns a `NumberReading`: `.number` ("4127"), `.confidence`
    (probability the whole string is right), `.unsure`, `.digits` (digit, confidence, box in the
    image's pixels, and the 28×28 image of each) and `.marks` (glyphs that are not digits).

    `model`: the bundled reader ("default") or a `reader` run folder; loaded once per process."""
    return _reader(str(model)).read(image)


def _images(X: Any) -> torch.Tensor:
    """X → float32 tensor (N, 1, 28, 28) in [0, 1]; InputError (a ValueError) for anything
    `as_batch` refuses."""
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)  # lists, DataFrames, memmaps …
        if X.dtype.kind not in "uif":
            hint = " (for an image file: .predictor.predict_file(path))" if X.dtype.kind in "US" else ""
            raise InputError(f"X must hold numeric pixels (uint8 0-255 or float 0-1), got {X.dtype}{hint}")
    return as_batch(X)


def _labels(y: Any, n: int) -> np.ndarray:
    t = np.asarray(y)
    if t.ndim != 1:
        raise ValueError(f"y must be 1-D labels shaped ({n},), got shape {t.shape}")
    if len(t) != n:
        raise ValueError(f"X has {n} images but y has {len(t)} labels")
    if t.dtype.kind == "f" and np.all(np.isfinite(t)) and np.all(t == np.round(t)):
        t = t.astype(np.int64)  # labels stored as floats (0.0 … 9.0) are fine
    if t.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer digit labels 0-9, got dtype {t.dtype}")
    if len(t) and (t.min() < 0 or t.max() >= N_CLASSES):
        raise ValueError(f"y must hold digit labels 0-9, found {t.min()}..{t.max()}")
    return t.astype(np.int64)


class DigitClassifier:
    """A digit classifier with `fit`, `predict`, `predict_proba`, `score`, `save` and `load`.

    model: a registry name (`digitnet models`). epochs, batch_size, lr, val_size: None = the
    model's recipe on `TrainConfig`'s defaults (val_size: 5,000 images held out of `fit`'s data,
    stratified, at most a fifth of it, for best-epoch selection and calibration; 0 = train on
    everything, temperature 1, nothing flagged unsure). Any other TrainConfig field
    (augment=…, label_smoothing=…, threads=…) may be passed as a keyword.

    After `fit` (or `load`): model_ (torch module, eval mode), classes_, history_ (one dict per
    epoch), temperature_, unsure_threshold_, not_digit_threshold_ (0 unless trained with
    outlier_exposure), config_ (the TrainConfig as a dict), network_kwargs_
    (the network's full constructor arguments, saved with it), train_seconds_, best_epoch_,
    val_accuracy_, n_features_in_.
    """

    _estimator_type = "classifier"

    def __init__(
        self,
        model: str = "cnn",
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int = 0,
        val_size: int | None = None,
        verbose: bool = False,
        **overrides: Any,
    ) -> None:
        # scikit-learn convention: store the parameters untouched; `fit` validates them.
        self.model, self.epochs, self.batch_size, self.lr = model, epochs, batch_size, lr
        self.seed, self.val_size, self.verbose = seed, val_size, verbose
        self._overrides = dict(overrides)

    # -- scikit-learn parameter protocol (clone, GridSearchCV) ---------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _PARAMS}, **self._overrides}

    def set_params(self, **params: Any) -> DigitClassifier:
        """Set parameters by name; an unknown name is refused at once, before anything changes."""
        known = set(_PARAMS) | set(field_names()) | {"bf16"}  # bf16: the pre-`precision` spelling
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"invalid parameter(s) {', '.join(map(repr, unknown))} for DigitClassifier; "
                f"valid: {', '.join(sorted(known))}"
            )
        for key, value in params.items():
            if key in _PARAMS:
                setattr(self, key, value)
            else:
                self._overrides[key] = value
        return self

    def __repr__(self) -> str:
        defaults = {
            k: p.default
            for k, p in inspect.signature(type(self)).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        shown = [f"{k}={v!r}" for k, v in self.get_params().items() if k not in defaults or defaults[k] != v]
        return f"DigitClassifier({', '.join(shown)})"

    def config(self) -> TrainConfig:
        """The `TrainConfig` these parameters give (recipe defaults filled in); ConfigError if invalid."""
        return TrainConfig.for_model(
            self.model,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
            val_size=self.val_size,
            **self._overrides,
        )

    # -- training -------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> DigitClassifier:
        """Train on images X (uint8 (N, 28, 28) 0–255 or float (N, 784) 0–1) and labels y; return self."""
        cfg = self.config()
        xb = _images(X)  # (N, 1, 28, 28) float in [0, 1]
        y = _labels(y, len(xb))
        if len(xb) < 2:
            raise ValueError(f"fit needs at least 2 images, got {len(xb)}")
        # uint8 once, here: the trainer keeps its data as uint8 anyway, and indexing it is cheap.
        x = (xb * 255).round_().to(torch.uint8).squeeze(1).numpy()  # (N, 28, 28)
        del xb
        tr, va = stratified_split(y, split_sizes(len(y), cfg.val_size))
        reporter = Reporter() if self.verbose else None
        result = fit(
            cfg,
            x[tr],
            y[tr],
            x[va],
            y[va],
            progress=reporter.bar if reporter else None,
            on_epoch=(lambda row: reporter.epoch(row, cfg.epochs)) if reporter else None,
        )
        calibration = calibrate(result.model, x[va], y[va], rejects=cfg.outlier_exposure > 0)
        self.temperature_, self.unsure_threshold_ = calibration.temperature, calibration.unsure_threshold
        self.not_digit_threshold_ = calibration.not_digit_threshold
        self.model_ = result.model
        self.history_ = list(result.history)
        self.train_seconds_ = float(result.train_seconds)
        self.best_epoch_ = int(result.best_epoch)
        self.val_accuracy_ = result.val_accuracy
        self.config_ = cfg.to_dict()
        self.network_kwargs_ = network_kwargs(
            cfg.model, cfg.model_kwargs
        )  # the network's full constructor call
        self.classes_ = np.arange(N_CLASSES)
        self.n_features_in_ = 28 * 28
        return self

    def __sklearn_tags__(self) -> Any:
        # scikit-learn is optional (digitnet does not need it); only scikit-learn calls this.
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier",
            target_tags=TargetTags(required=True),
            classifier_tags=ClassifierTags(),
            input_tags=InputTags(two_d_array=True, three_d_array=True),
        )

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(
                "This DigitClassifier instance is not fitted yet: call fit(X, y) or "
                "DigitClassifier.load(path) before using it."
            )

    # -- prediction -----------------------------------------------------------------------------
    def predictor(self) -> Predictor:
        """A `digitnet.inference.Predictor` over the fitted model: the one path every prediction takes."""
        self._check_fitted()
        if self.config_["model"] == "reader":
            raise ValueError("a reader reads whole numbers, not one 28×28 digit: use read_number(image)")
        return Predictor.from_module(
            self.model_,
            name=self.config_["model"],
            version="in-memory",
            temperature=self.temperature_,
            unsure_threshold=self.unsure_threshold_,
            not_digit_threshold=self.not_digit_threshold_,
        )

    def predict_status(self, X: Any) -> np.ndarray:
        """What each image is (N,) str: "digit", "unsure", or "not_a_digit" (for a model trained
        with outlier exposure); images are taken as they are (no `empty`: see `Predictor`)."""
        return np.array([p.status for p in self.predictor().predict_arrays(_images(X)[:, 0].numpy())])

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities (N, 10) float32 = softmax(logits / temperature_)."""
        predictor = self.predictor()
        return predictor.predict_proba(_images(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted digits (N,) int64."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy on (X, y), optionally weighted per sample."""
        pred = self.predict(X)
        correct = (pred == _labels(y, len(pred))).astype(np.float64)
        if sample_weight is None:
            return float(correct.mean())
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != correct.shape:
            raise ValueError(f"sample_weight must be shaped {correct.shape}, got {w.shape}")
        return float((correct * w).sum() / w.sum())

    def read_number(self, image: Any) -> NumberReading:
        """Read a whole number (see `digitnet.read_number`): with this classifier's own network
        when it is a `reader`, else with the bundled reader."""
        if getattr(self, "config_", {}).get("model") != "reader":
            return read_number(image)
        # One Reader per fitted network: building it copies the network (≈ 8 ms, as long as a read).
        cached = getattr(self, "_reader", None)  # (the network it was built from, the Reader)
        if cached is None or cached[0] is not self.model_:
            reader = Reader.from_module(
                self.model_,
                temperature=self.temperature_,
                unsure_threshold=self.unsure_threshold_,
                classifier=_classifier(),  # the second opinion every door takes
            )
            self._reader = cached = (self.model_, reader)
        return cached[1].read(image)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a run folder (model.pt, metrics.json, history.csv, manifest.json) that the CLI can
        evaluate, with the same writer as `digitnet train`; return it."""
        self._check_fitted()
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} exists and is not a folder; save() writes a run folder")
        finished = runfolder.now_iso()
        metrics = {
            "model": self.config_["model"],
            "seed": self.config_.get("seed"),
            "epochs": len(self.history_),
            "best_epoch": self.best_epoch_,
            "val_accuracy": self.val_accuracy_,
            "train_seconds": round(self.train_seconds_, 3),
            "parameters": count_parameters(self.model_),
            "temperature": self.temperature_,
            "unsure_threshold": self.unsure_threshold_,
            "not_digit_threshold": self.not_digit_threshold_,
            "finished": finished,
            "source": "DigitClassifier",
        }
        data = {"source": "arrays passed to DigitClassifier.fit"}
        runfolder.write_run(
            out,
            self.model_,
            model_name=self.config_["model"],
            model_kwargs=self.network_kwargs_,
            config=self.config_,
            temperature=self.temperature_,
            unsure_threshold=self.unsure_threshold_,
            not_digit_threshold=self.not_digit_threshold_,
            metrics=metrics,
            history=self.history_,
            data=data,
            started=finished,
            checkpoint_meta={
                "val_accuracy": self.val_accuracy_,
                "finished": finished,
                "source": "DigitClassifier",
            },
        )
        return out

    @classmethod
    def load(cls, path: str | Path) -> DigitClassifier:
        """A fitted classifier from a run folder (`digitnet train` or `save`), a model.pt, or 'default'."""
        loaded = load_checkpoint(path)
        cfg = dict(loaded.config)
        clf = cls(
            model=loaded.name,
            epochs=cfg.get("epochs"),
            batch_size=cfg.get("batch_size"),
            lr=cfg.get("lr"),
            seed=cfg.get("seed", 0),
            val_size=cfg.get("val_size"),
        )
        run = loaded.path.parent if loaded.path is not None else None
        metrics: dict[str, Any] = {}
        if run is not None and (run / "metrics.json").is_file():
            with contextlib.suppress(ValueError, OSError):
                metrics = json.loads((run / "metrics.json").read_text())
        clf.model_ = loaded.model
        clf.temperature_, clf.unsure_threshold_ = loaded.temperature, loaded.unsure_threshold
        clf.not_digit_threshold_ = loaded.not_digit_threshold
        clf.history_ = runfolder.read_history(run / "history.csv") if run is not None else []
        clf.train_seconds_ = float(metrics.get("train_seconds") or 0.0)
        clf.best_epoch_ = int(metrics.get("best_epoch") or len(clf.history_))
        clf.val_accuracy_ = metrics.get("val_accuracy", loaded.meta.get("val_accuracy"))
        clf.config_ = {**cfg, "model": loaded.name}
        clf.network_kwargs_ = loaded.model_kwargs
        clf.classes_ = np.arange(N_CLASSES)
        clf.n_features_in_ = 28 * 28
        return clf
