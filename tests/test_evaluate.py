"""digitnet.evaluate: metrics agree with scikit-learn; run evaluation, baseline row, run listing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from digitnet.data.nondigits import KINDS
from digitnet.errors import InputError, ModelError
from digitnet.evaluation.evaluate import (
    calibration,
    evaluate_probs,
    evaluate_run,
    worst_errors,
)
from digitnet.evaluation.runs import SEED_MLP_REFERENCE, list_runs, seed_mlp_baseline, sort_runs


def fake_predictions(n: int = 600, seed: int = 0, accuracy: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and softmax probabilities that are right about `accuracy` of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    logits = rng.normal(0, 1, (n, 10))
    right = rng.random(n) < accuracy
    target = np.where(right, y, rng.integers(0, 10, n))
    logits[np.arange(n), target] += rng.uniform(0.5, 5, n)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, y


def test_metrics_match_sklearn():
    probs, y = fake_predictions()
    pred = probs.argmax(1)
    r = evaluate_probs(probs, y)
    labels = list(range(10))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["error_count"] == int((pred != y).sum()) > 0
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    p, rc, f1, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    got = r["per_class"]
    np.testing.assert_allclose([c["precision"] for c in got], p)
    np.testing.assert_allclose([c["recall"] for c in got], rc)
    np.testing.assert_allclose([c["f1"] for c in got], f1)
    assert [c["support"] for c in got] == s.tolist()
    for avg in ("macro", "weighted"):
        p, rc, f1, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0
        )
        a = r[f"{avg}_avg"]
        assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((p, rc, f1))
        assert a["support"] == len(y)
    assert r["nll"] == pytest.approx(skm.log_loss(y, probs, labels=labels))
    onehot = np.eye(10)[y]
    assert r["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean())


def test_class_never_predicted_has_zero_precision_like_sklearn():
    y = np.array([0, 1, 2, 3, 3, 3])
    probs = np.full((6, 10), 0.01)
    probs[np.arange(6), [0, 1, 1, 3, 3, 1]] = 0.91  # class 2 never predicted
    r = evaluate_probs(probs, y)
    p, _, f1, _ = skm.precision_recall_fscore_support(
        y, probs.argmax(1), labels=list(range(10)), zero_division=0
    )
    np.testing.assert_allclose([c["precision"] for c in r["per_class"]], p)
    np.testing.assert_allclose([c["f1"] for c in r["per_class"]], f1)
    assert r["per_class"][2]["precision"] == 0.0 and r["per_class"][2]["support"] == 1


def test_ece_by_hand():
    # 4 examples: confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.55 (right)
    probs = np.zeros((4, 10))
    for i, c in enumerate([0.95, 0.95, 0.55, 0.55]):
        probs[i, 0], probs[i, 1:] = c, (1 - c) / 9
    y = np.array([0, 5, 0, 0])
    cal = calibration(probs, y, n_bins=10)
    # bin (0.9, 1]: acc 0.5, conf 0.95 ; bin (0.5, 0.6]: acc 1, conf 0.55
    assert cal["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    counts = [b["count"] for b in cal["bins"]]
    assert counts[9] == 2 and counts[5] == 2 and sum(counts) == 4
    assert cal["bins"][9]["accuracy"] == 0.5 and cal["bins"][0]["accuracy"] is None
    assert evaluate_probs(probs, y)["calibration"]["ece"] == pytest.approx(cal["ece"])


def test_perfectly_calibrated_has_small_ece():
    probs, y, conf = calibrated_predictions(20000, seed=1)
    assert calibration(probs, y)["ece"] < 0.02
    overconfident = np.where(np.random.default_rng(5).random(len(y)) < conf - 0.2, 0, 1)
    assert calibration(probs, overconfident)["ece"] > 0.15


def calibrated_predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicts class 0 with confidence c ~ U(0.3, 1) and is right exactly with probability c."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, n)
    probs = np.zeros((n, 10))
    probs[:, 0] = conf
    probs[:, 1:] = ((1 - conf) / 9)[:, None]
    return probs, np.where(rng.random(n) < conf, 0, 1), conf


def test_coverage_levels():
    from digitnet.inference.calibration import coverage_curve

    probs, y, conf = calibrated_predictions(2000, seed=2)
    rows = evaluate_probs(probs, y)["coverage"]
    assert rows == coverage_curve(probs, y)  # one definition, the inference module's
    assert rows[0]["coverage"] == 1.0 and rows[0]["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    accuracies = [r["accuracy"] for r in rows]
    assert accuracies[-1] > accuracies[0]  # confidence carries information
    last = rows[-1]
    assert (conf >= last["threshold"]).sum() >= last["coverage"] * len(y)


def test_worst_errors_are_the_most_confident_mistakes():
    probs, y = fake_predictions(300, seed=3)
    errs = worst_errors(probs, y, k=5)
    pred = probs.argmax(1)
    wrong_conf = np.sort(probs.max(1)[pred != y])[::-1]
    assert [e["confidence"] for e in errs] == pytest.approx(wrong_conf[:5].tolist())
    for e in errs:
        assert y[e["index"]] == e["true"] != e["pred"] == pred[e["index"]]


@pytest.mark.parametrize(
    ("probs", "y", "message"),
    [
        (np.ones((3, 9)) / 9, np.zeros(3, int), "shaped"),
        (np.ones((3, 10)) / 10, np.zeros(4, int), "labels"),
        (np.ones((3, 10)) / 10, np.array([0, 1, 10]), "0..9"),
        (np.ones((3, 10)) / 10, np.array([0.0, 1.0, 2.0]), "integers"),
        (np.full((3, 10), np.nan), np.zeros(3, int), "NaN"),
        (np.ones((0, 10)), np.zeros(0, int), "zero"),
    ],
)
def test_bad_input_is_an_input_error(probs, y, message):
    with pytest.raises(InputError, match=message):
        evaluate_probs(probs, y)


# --- run folders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeData:
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "synthetic"
    source: str = "test"
    is_sample: bool = True


def make_run(folder: Path, model: str = "seed-mlp", test_accuracy: float | None = None, **metrics) -> Path:
    """A run folder holding an untrained (seeded) model, metrics.json and a short history.csv."""
    import torch

    from digitnet.checkpoint import save_checkpoint
    from digitnet.models import build_model

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    save_checkpoint(
        folder / "model.pt",
        build_model(model),
        model_name=model,
        config={"model": model, "epochs": 2},
        temperature=1.5,
        unsure_threshold=0.3,
    )
    m = {"model": model, "epochs": 2, "seed": 0, "train_seconds": 1.0, **metrics}
    if test_accuracy is not None:
        m["test_accuracy"] = test_accuracy
    (folder / "metrics.json").write_text(json.dumps(m))
    (folder / "history.csv").write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"
        "1,2.0,0.3,1.9,0.35,0.001,0.5\n2,1.5,0.5,1.6,0.45,0.001,0.5\n"
    )
    return folder


def synthetic_data(n: int = 200, seed: int = 0) -> FakeData:
    rng = np.random.default_rng(seed)
    return FakeData(
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)
    )


def test_evaluate_run_uses_calibrated_probabilities(tmp_path):
    import torch

    from digitnet.checkpoint import load_checkpoint
    from digitnet.inference.batching import batched_logits

    run = make_run(tmp_path / "runs" / "a", test_accuracy=0.5)
    data = synthetic_data()
    r = evaluate_run(run, data, per_kind=4)
    loaded = load_checkpoint(run)
    probs = torch.softmax(batched_logits(loaded.model, data.x_test).double() / 1.5, 1).numpy()
    assert r["accuracy"] == pytest.approx((probs.argmax(1) == data.y_test).mean())
    assert r["nll"] == pytest.approx(skm.log_loss(data.y_test, probs, labels=list(range(10))))
    assert r["model"] == "seed-mlp" and r["temperature"] == 1.5 and r["run"] == "a"
    assert r["train_metrics"]["test_accuracy"] == 0.5 and r["config"]["epochs"] == 2
    assert r["data"] == {"name": "synthetic", "source": "test", "is_sample": True, "n_test": 200}
    assert r["unsure"]["flagged"] == int((probs.max(1) < 0.3).sum())
    assert len(r["worst_errors"]) == min(24, r["error_count"])
    rj = r["rejection"]  # non-digits of every kind, run through the same predictor
    assert rj["blank_pages"] == {"n": 10, "empty": 10} and rj["non_digits"]["n"] == 4 * len(KINDS)
    assert set(rj["held_out_kinds"]) < set(rj["non_digits"]["by_kind"]) and 0 <= rj["auroc"] <= 1
    assert rj["mnist_test"]["n"] == 200 and rj["real_photos"]["n"] == 200
    json.dumps(r)  # JSON-able all the way down


def test_comparison_row_uses_best_sibling_seed_mlp_run_else_reference(tmp_path):
    runs = tmp_path / "runs"
    cnn = make_run(runs / "cnn-1", model="cnn", test_accuracy=0.99)
    ref = seed_mlp_baseline(cnn, 0.99)
    assert ref["kind"] == "reference" and ref["baseline_accuracy"] == SEED_MLP_REFERENCE
    assert "notebook" in ref["source"]
    assert ref["error_reduction"] == pytest.approx(1 - 0.01 / (1 - SEED_MLP_REFERENCE))
    make_run(runs / "seed-a", test_accuracy=0.921)
    make_run(runs / "seed-b", test_accuracy=0.934)
    row = seed_mlp_baseline(cnn, 0.99)
    assert row["kind"] == "run" and row["baseline_accuracy"] == 0.934 and "seed-b" in row["source"]
    assert row["delta"] == pytest.approx(0.99 - 0.934)
    # a seed-mlp run is not its own baseline
    assert seed_mlp_baseline(runs / "seed-b", 0.934)["baseline_accuracy"] == 0.921


def test_list_and_sort_runs(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "b", model="cnn", test_accuracy=0.99, val_accuracy=0.98, train_seconds=30.0)
    make_run(runs / "a", test_accuracy=0.92, train_seconds=5.0)
    make_run(runs / "group" / "c", model="mlp", test_accuracy=0.985, train_seconds=10.0)
    (runs / "not-a-run").mkdir()
    (runs / "not-a-run" / "notes.txt").write_text("x")
    (runs / "interrupted").mkdir()
    (runs / "interrupted" / "manifest.json").write_text(
        json.dumps(
            {"config": {"model": "best", "epochs": 15, "seed": 1}, "started": "2024-01-01T00:00:00+00:00"}
        )
    )
    rows = list_runs(runs)
    assert [r["name"] for r in rows] == ["a", "b", "group/c", "interrupted"]
    by = {r["name"]: r for r in rows}
    assert by["b"]["model"] == "cnn" and by["b"]["val_accuracy"] == 0.98 and by["b"]["epochs"] == 2
    assert by["interrupted"]["model"] == "best" and by["interrupted"]["seed"] == 1
    assert by["interrupted"]["test_accuracy"] is None and by["interrupted"]["date"].startswith("2024")
    assert [r["name"] for r in sort_runs(rows, "test_accuracy")] == ["b", "group/c", "a", "interrupted"]
    assert [r["name"] for r in sort_runs(rows, "train_seconds")] == ["a", "group/c", "b", "interrupted"]
    assert sort_runs(rows, "date")[-1]["name"] == "interrupted"  # oldest last
    with pytest.raises(InputError, match="sort"):
        sort_runs(rows, "colour")
    with pytest.raises(InputError, match="no such folder"):
        list_runs(tmp_path / "missing")


@pytest.mark.parametrize("text", ["{not json", "[1, 2, 3]", ""])
def test_a_garbage_metrics_json_is_an_error_not_a_report(tmp_path, text):
    """Issue 15: `evaluate` on a run whose metrics.json is garbage used to exit 0 with {} in it."""
    run = make_run(tmp_path / "run", model="seed-mlp")
    (run / "metrics.json").write_text(text)
    with pytest.raises(ModelError, match=r"metrics\.json"):
        evaluate_run(run, synthetic_data(20))
    assert not (run / "report.json").exists()
