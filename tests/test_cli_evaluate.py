"""`digitnet evaluate` and `digitnet runs` through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from digitnet.cli import app
from test_evaluate import make_run

runner = CliRunner()


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIGITNET_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "digitnet", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "seed", model="seed-mlp", test_accuracy=0.93, val_accuracy=0.92, train_seconds=4.0)
    make_run(root / "cnn", model="cnn", test_accuracy=0.995, val_accuracy=0.994, train_seconds=30.0)
    (root / "empty").mkdir()
    return root


def test_runs_table_and_json(runs):
    result = runner.invoke(app, ["runs", str(runs)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    first = next(i for i, line in enumerate(lines) if "cnn" in line)
    second = next(i for i, line in enumerate(lines) if "seed-mlp" in line)
    assert first < second  # best test accuracy first
    assert "99.50%" in result.output and "93.00%" in result.output and "empty" not in result.output

    result = runner.invoke(app, ["runs", str(runs), "--json", "--sort", "train_seconds"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == ["seed", "cnn"]
    assert rows[1] | {"date": None, "path": None} == {
        "name": "cnn",
        "model": "cnn",
        "epochs": 2,
        "seed": 0,
        "val_accuracy": 0.994,
        "test_accuracy": 0.995,
        "train_seconds": 30.0,
        "date": None,
        "path": None,
    }


def test_runs_errors_are_one_line(tmp_path):
    result = cli("runs", str(tmp_path / "nowhere"))
    assert (
        result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such folder"
    )
    result = cli("runs", str(tmp_path), "--sort", "colour")
    assert (
        result.returncode == 2
        and "cannot sort by 'colour'" in result.stderr
        and "Traceback" not in result.stderr
    )
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0 and "no runs under" in result.output


@pytest.mark.slow  # a whole evaluation and report in a fresh process (4 s); test_report.py: in-process
def test_evaluate_on_sample_writes_report(runs):
    result = cli("evaluate", str(runs / "cnn"), "--dataset", "sample", "--offline")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "test accuracy" in out and "ECE" in out and "precision" in out and "SAMPLE" in out
    assert "seed-mlp run seed" in out  # the sibling seed-mlp run is the baseline
    assert f"report: {(runs / 'cnn' / 'report.html').resolve()}" in out.replace("\n", "")
    report = json.loads((runs / "cnn" / "report.json").read_text())
    assert report["data"]["is_sample"] and report["n"] == report["data"]["n_test"] > 0
    for name in ("confusion_matrix.png", "misclassified.png", "calibration.png", "curves.png", "report.html"):
        assert (runs / "cnn" / name).stat().st_size > 1000


def test_evaluate_missing_run_is_a_clear_error(tmp_path):
    result = cli("evaluate", str(tmp_path / "nope"), "--dataset", "sample")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    result = cli("evaluate", str(tmp_path), "--dataset", "fashion")
    assert result.returncode == 2 and "--dataset must be mnist or sample" in result.stderr
