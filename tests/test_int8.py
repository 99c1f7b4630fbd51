"""A reader's int8 export (`inference.quantize`, `digitnet export --int8`): calibrated on numbers
composed from the run's training digits, the same bytes every time, refused for digit models; and
the bundled int8 reader reads real photos as its float32 checkpoint does."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from digitnet.checkpoint import PRETRAINED_DIR
from digitnet.data.synth import SPACINGS, number, photo
from digitnet.errors import ConfigError
from digitnet.inference.export import export_onnx, read_metadata, verify_onnx
from digitnet.inference.lines import find_line
from digitnet.inference.reader import Reader
from digitnet.training.numbers import int8_calibration
from digitnet.training.run import int8_export
from test_reader_model import reader_run


@pytest.mark.slow  # two exports, each composing 240 photos and calibrating on them: ~25 s
def test_a_reader_exports_to_int8_from_the_cli_and_python_alike(tmp_path, mnist, mnist_dir):
    run = reader_run(tmp_path / "run")
    cmd = [sys.executable, "-m", "digitnet", "export", str(run), "--int8", "--data-dir", str(mnist_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    path = run / "model.onnx"
    data, problem = verify_onnx(path)
    assert problem is None, problem
    assert read_metadata(data)["precision"] == "int8"
    again = int8_export(run, mnist, tmp_path / "again.onnx")  # the Python door, the same strips
    assert again.read_bytes() == data  # same checkpoint, same digits: the same bytes
    fast, plain = Reader.load(run), Reader.load(run, backend="torch")
    assert (fast.backend, fast.precision, plain.precision) == ("onnx", "int8", "float32")
    strip = find_line(
        photo(
            number(mnist.x_test, mnist.y_test, 5, np.random.default_rng(0), "tight", hard=False),
            np.random.default_rng(1),
            "tight",
        ).data
    ).strip
    a, b = fast.line_logits(strip), plain.line_logits(strip)  # (12, T) each
    assert a.shape == b.shape and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_int8_is_refused_for_a_digit_model_and_without_strips(tmp_path):
    with pytest.raises(ConfigError, match=r"int8 export is for readers; .* reads one digit"):
        export_onnx("default", tmp_path / "x.onnx", int8_strips=[np.zeros((32, 40), np.float32)])
    with pytest.raises(ConfigError, match="no calibration strips"):
        export_onnx(reader_run(tmp_path / "run"), tmp_path / "y.onnx", int8_strips=[])
    assert not list(tmp_path.glob("*.onnx"))  # nothing half-written


def test_calibration_strips_come_from_the_digits_given_every_length_and_spacing(mnist):
    x, y = mnist.x_train[:2000], mnist.y_train[:2000]
    strips = int8_calibration(x, y, n=48)
    assert len(strips) >= 45 and all(s.shape[0] == 32 and s.dtype == np.float32 for s in strips)
    assert len({s.shape[1] for s in strips}) > 10  # 1-8 digits: many widths
    assert all(np.array_equal(a, b) for a, b in zip(strips, int8_calibration(x, y, n=48), strict=True))


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
