"""A reader's int8 export (`inference.quantize`, `training.int8`, `digitnet export --int8`):
calibrated on numbers composed from the run's training digits, the same bytes every time, refused
for digit models before any work; and the bundled int8 reader reads real photos as its float32
checkpoint does."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

import digitnet.training.int8 as int8
from digitnet.checkpoint import PRETRAINED_DIR
from digitnet.data.synth import SPACINGS, number, photo
from digitnet.errors import ConfigError, ModelError
from digitnet.inference.export import export_onnx, read_metadata, verify_onnx
from digitnet.inference.lines import find_line
from digitnet.inference.reader import Reader
from digitnet.training.loop import split_sizes, stratified_split
from test_reader_model import reader_run


@pytest.mark.slow  # two exports, each composing 240 photos and calibrating on them: ~12 s
def test_a_reader_exports_to_int8_from_the_cli_and_python_alike(tmp_path, mnist, mnist_dir):
    run = reader_run(tmp_path / "run")
    cmd = [sys.executable, "-m", "digitnet", "export", str(run), "--int8", "--data-dir", str(mnist_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stderr == "", res.stderr  # no advice from ONNX Runtime either
    path = run / "model.onnx"
    data, problem = verify_onnx(path)
    assert problem is None, problem
    assert read_metadata(data)["precision"] == "int8"
    handlers = list(logging.getLogger().handlers)
    again = int8.int8_export(run, mnist, tmp_path / "again.onnx")  # the Python door, the same strips
    assert again.read_bytes() == data  # same checkpoint, same digits: the same bytes
    assert logging.getLogger().handlers == handlers  # the quantizer left the process's logging as it was
    fast, plain = Reader.load(run), Reader.load(run, backend="torch")
    assert (fast.backend, fast.precision, plain.precision) == ("onnx", "int8", "float32")
    rng = np.random.default_rng(0)
    strip = find_line(
        photo(number(mnist.x_test, mnist.y_test, 5, rng, "tight", hard=False), rng, "tight").data
    )
    a, b = fast.line_logits(strip.strip), plain.line_logits(strip.strip)  # (12, T) each
    assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_int8_is_refused_for_a_digit_model_before_any_data_is_loaded(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "digitnet",
            "export",
            "default",
            "--int8",
            "--data-dir",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.startswith("error: int8 export is for readers"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="no calibration strips"):
        export_onnx(reader_run(tmp_path / "run"), tmp_path / "y.onnx", int8_strips=[])


def test_a_failed_quantization_is_one_line_and_writes_nothing(tmp_path):
    run = reader_run(tmp_path / "run")
    with pytest.raises(ModelError, match=r"int8 export failed: \S") as err:
        export_onnx(run, run / "model.onnx", int8_strips=[np.zeros(32, np.float32)])  # not a strip
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in run.iterdir()) == ["model.pt"]  # no export, no record, no temp file


def test_calibration_comes_from_the_training_digits_not_the_validation_digits(mnist, monkeypatch, tmp_path):
    seen = {}

    def spy(x, y, n=int8.INT8_PHOTOS):
        seen["x"] = x
        raise ConfigError("stop here")  # the strips themselves are the next test's

    monkeypatch.setattr(int8, "int8_calibration", spy)
    with pytest.raises(ConfigError, match="stop here"):
        int8.int8_export(PRETRAINED_DIR / "reader.pt", mnist, tmp_path / "x.onnx")
    train, _ = stratified_split(np.asarray(mnist.y_train), split_sizes(len(mnist.y_train), 5000))
    assert len(seen["x"]) == len(train) == 55_000 and np.array_equal(seen["x"], mnist.x_train[train])


def test_calibration_strips_are_many_widths_and_the_same_each_time(mnist):
    x, y = mnist.x_train[:2000], mnist.y_train[:2000]
    strips = int8.int8_calibration(x, y, n=48)
    assert len(strips) >= 45 and all(s.shape[0] == 32 and s.dtype == np.float32 for s in strips)
    assert len({s.shape[1] for s in strips}) > 10  # 1-8 digits, three spacings: many widths
    assert all(np.array_equal(a, b) for a, b in zip(strips, int8.int8_calibration(x, y, n=48), strict=True))


def test_the_bundled_int8_reader_reads_real_photos_as_its_float32_checkpoint_does(mnist):
    """90 photos of numbers from MNIST test digits, every spacing: the int8 export and the float32
    checkpoint give the same numbers on nearly all, and int8 is no less often right."""
    fast, plain = Reader.load("default"), Reader.load("default", backend="torch")
    assert fast.precision == "int8" and verify_onnx(PRETRAINED_DIR / "reader.onnx")[1] is None
    rng = np.random.default_rng(5)
    same = right_int8 = right_fp32 = 0
    for i in range(90):
        spacing = SPACINGS[i % 3]
        shot = photo(number(mnist.x_test, mnist.y_test, 1 + i % 8, rng, spacing, hard=False), rng, spacing)
        a, b = fast.read(shot.data).number, plain.read(shot.data).number
        same += a == b
        right_int8, right_fp32 = right_int8 + (a == shot.text), right_fp32 + (b == shot.text)
    assert same >= 86 and right_int8 >= right_fp32 - 1 and right_int8 >= 84, (same, right_int8, right_fp32)
