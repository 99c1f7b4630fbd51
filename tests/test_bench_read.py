"""`digitnet bench read`: the scoring, and a small run beside Tesseract, a baseline reader and both
backends (a test of the benchmark, not a figure to quote)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from digitnet.bench.read import ReadBenchConfig, run_read_bench, unsure_shares, wilson
from digitnet.checkpoint import PRETRAINED_DIR
from digitnet.data.synth import SPACINGS
from digitnet.inference.reader import SECOND_LOOKS


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "digitnet", *args], capture_output=True, text=True, timeout=300
    )


def test_unsure_shares_count_the_wrong_and_the_right_readings_apart():
    cases = [{"text": t} for t in ("12", "34", "56", "78", "90")]
    answers = ["12", "31", "56", "", "90"]  # two wrong
    shares = unsure_shares(cases, answers, [False, True, True, False, False])
    assert shares == {
        "unsure_among_wrong": 0.5,
        "unsure_among_right": pytest.approx(1 / 3),
        "right_among_sure": pytest.approx(2 / 3),  # "12" and "90" right, "" wrong
    }
    assert unsure_shares(cases[:1], ["12"], [True]) == {
        "unsure_among_wrong": None,
        "unsure_among_right": 1.0,
        "right_among_sure": None,
    }


def test_bench_read_scores_digitnet_beside_tesseract(mnist_dir):
    """`digitnet bench read --peer tesseract` reads the same photos with both and scores each; a
    small set (2 photos per length and spacing) so the test is quick, not a figure to quote."""
    if shutil.which("tesseract") is None:
        msg = "tesseract not on PATH (make system-deps installs Debian's tesseract-ocr)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    same = str(PRETRAINED_DIR / "reader.pt")  # as a baseline: the same reader, so the same answers
    done = cli(
        "bench",
        "read",
        "--per-cell",
        "2",
        "--max-length",
        "4",
        "--peer",
        "tesseract",
        "--baseline",
        same,
        "--backend",
        "all",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    ours, peer, base = (result["results"][k] for k in ("digitnet", "tesseract", "baseline"))
    assert ours["photos"] == peer["photos"] == base["photos"] == 2 * 4 * 3
    assert base["accuracy_by_length"] == ours["accuracy_by_length"] and base["version"] == ours["version"]
    on_torch = result["results"]["digitnet-torch"]  # --backend all: the same reader on both
    assert (ours["backend"], on_torch["backend"]) == ("onnx", "torch")
    assert on_torch["accuracy_by_length"] == ours["accuracy_by_length"]
    assert ours["lengths"] == [1, 2, 3, 4] and set(ours["accuracy_by_spacing"]) == set(SPACINGS)
    for s, (low, high) in ours["accuracy_by_spacing_95ci"].items():  # 8 photos a spacing: wide
        assert low <= ours["accuracy_by_spacing"][s] <= high and high - low > 0.2
    assert ours["accuracy"] >= 0.75 and ours["accuracy"] > peer["accuracy"], (ours, peer)
    assert ours["digit_error_rate"] < peer["digit_error_rate"]
    assert ours["six_digit_ms_p50"] is None and ours["ms_p50"] > 0 and peer["version"].startswith("tesseract")
    assert set(ours) >= {"unsure_among_wrong", "unsure_among_right"} and "unsure_among_wrong" not in peer
    for bad in (cli("bench", "read", "--peer", "abbyy"), cli("bench", "read", "--backend", "tpu")):
        assert (
            bad.returncode == 2
            and "Traceback" not in bad.stderr
            and len(bad.stderr.strip().splitlines()) == 1
        )


def test_bench_read_sets_the_reader_beside_itself_without_second_looks(mnist):
    """`--baseline-one-look`: the same reader on the same photos, reading with one look only, so a
    run shows what the second looks at unsure readings add."""
    result = run_read_bench(ReadBenchConfig(per_cell=1, max_length=3, baseline_one_look=True), mnist)
    ours, base = result["results"]["digitnet"], result["results"]["baseline"]
    assert ours["version"] == base["version"] and ours["photos"] == base["photos"] == 9
    assert ours["second_looks"] == [list(look) for look in SECOND_LOOKS] and base["second_looks"] == []


def test_the_interval_of_a_rate_is_wilsons():
    """Newcombe (1998), table I: 8 of 10 → 0.4902-0.9433, 0 of 10 → 0-0.2775; and it narrows as
    the photos grow: 97 % of 200 still holds 95 %, of 2,000 not."""
    assert wilson(8, 10) == [0.4902, 0.9433] and wilson(0, 10) == [0.0, 0.2775]
    assert wilson(194, 200)[0] < 0.95 < wilson(1940, 2000)[0]
