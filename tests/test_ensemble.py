"""`digitnet ensemble`: the averaged model, its scores, and its run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from digitnet.checkpoint import load_checkpoint, save_checkpoint
from digitnet.errors import ConfigError
from digitnet.inference.batching import as_batch, batched_logits
from digitnet.inference.predictor import Predictor
from digitnet.models import build_model
from digitnet.networks import single_view
from digitnet.training.ensemble import build_ensemble

SMALL = {"stem": 8, "blocks": [[8, True], [16, True]]}


@dataclass
class Images:
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "toy"

    def summary(self) -> dict:
        return {"name": self.name, "test": len(self.y_test)}


def random_run(folder, seed: int, x: np.ndarray, *, tta: int = 0, temperature: float = 1.0):
    """A small CNN with random weights and data-driven BN statistics, saved as a run folder."""
    torch.manual_seed(seed)
    model = build_model("cnn", **SMALL, tta=tta).train()
    with torch.no_grad():
        model(as_batch(x))
    save_checkpoint(
        folder / "model.pt",
        model.eval(),
        model_name="cnn",
        model_kwargs={**SMALL, "tta": tta},
        temperature=temperature,
    )
    return folder


@pytest.fixture()
def members(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (200, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, 200)
    runs = [random_run(tmp_path / f"m{i}", i, x, tta=i % 2, temperature=0.5 + i) for i in range(3)]
    return runs, Images(x, y), tmp_path


def one_view_probs(run, x):
    """A member's calibrated probabilities without test-time augmentation."""
    loaded = load_checkpoint(run)
    with single_view(loaded.model):
        return torch.softmax(batched_logits(loaded.model, x) / loaded.temperature, 1).numpy()


def test_ensemble_scores_the_mean_of_calibrated_one_view_member_probabilities(members):
    runs, data, tmp = members
    metrics = build_ensemble(runs, tmp / "ens", data)
    probs = [one_view_probs(r, data.x_test) for r in runs]
    with_tta = Predictor.load(runs[1], backend="torch").predict_proba(data.x_test)  # member 1 has tta=1
    assert np.abs(with_tta - probs[1]).max() > 1e-3  # so one view really is a different function
    expected = np.mean(probs, 0).argmax(1)
    assert metrics["test_accuracy"] == pytest.approx(float((expected == data.y_test).mean()))
    assert metrics["member_test_accuracy"] == pytest.approx(
        [float((p.argmax(1) == data.y_test).mean()) for p in probs]
    )
    # the saved ensemble, loaded like any model, gives the same probabilities
    ens = Predictor.load(tmp / "ens", backend="torch").predict_proba(data.x_test)
    assert np.abs(ens - np.mean(probs, 0)).max() < 1e-4
    assert load_checkpoint(tmp / "ens").name == "ensemble"
    saved = json.loads((tmp / "ens" / "metrics.json").read_text())
    assert saved["members"] == [str(r) for r in runs] and saved["test_errors"] == round(
        (1 - saved["test_accuracy"]) * 200
    )


def test_ensemble_refuses_one_run_nesting_and_overwriting(members):
    runs, data, tmp = members
    with pytest.raises(ConfigError, match="at least two runs"):
        build_ensemble(runs[:1], tmp / "one", data)
    build_ensemble(runs[:2], tmp / "ens", data)
    with pytest.raises(ConfigError, match="ensembles of ensembles"):
        build_ensemble([runs[2], tmp / "ens"], tmp / "nested", data)
    with pytest.raises(ConfigError, match="already holds a run"):
        build_ensemble(runs[1:], tmp / "ens", data)


def test_an_ensemble_survives_digitclassifier_load_and_save(members):
    from digitnet import DigitClassifier

    runs, data, tmp = members
    build_ensemble(runs, tmp / "ens", data)
    clf = DigitClassifier.load(tmp / "ens")
    copy = clf.save(tmp / "copy")
    again = DigitClassifier.load(copy)
    assert np.array_equal(again.predict_proba(data.x_test), clf.predict_proba(data.x_test))
