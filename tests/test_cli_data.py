"""`digitnet data info` / `data show`: the real entry point for exit codes, CliRunner for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from digitnet.cli.data import register
from digitnet.errors import InputError


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root (a group, so `data` is a sub-command)."""

    register(app)
    return app


def _env_without_data(tmp_path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DIGITNET_DATA", "KERAS_HOME", "DIGITNET_MIRRORS")
    }
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"), DIGITNET_OFFLINE="1")
    return env


def test_info_without_data_exits_2_with_the_three_ways(tmp_path):
    (tmp_path / "home").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "digitnet", "data", "info"],
        env=_env_without_data(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    err = " ".join(proc.stderr.split())  # undo terminal wrapping
    assert err.startswith("error: MNIST not found")
    for way in (
        "(1) --data-dir DIR or DIGITNET_DATA=DIR",
        "(2) put those files in",
        "(3) allow the download",
    ):
        assert way in err
    assert "offline, so no download was tried" in err and "--dataset sample" in err


def test_info_json_on_real_data(mnist_dir, tmp_path):
    env = _env_without_data(tmp_path)
    env["DIGITNET_DATA"] = str(mnist_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "digitnet", "data", "info", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["origin"] == "env" and summary["dataset"] == "mnist"
    assert summary["train"]["n"] == 60000 and summary["test"]["n"] == 10000
    assert summary["train"]["class_counts"][1] == 6742
    assert all(v.startswith("verified sha256") for v in summary["checksums"].values())


def test_info_table_for_a_folder(tiny_mnist, clean_data_env, tmp_path):
    folder = tiny_mnist.write(tmp_path / "d")
    result = CliRunner().invoke(_app(), ["data", "info", "--data-dir", str(folder)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"source:  folder {folder} (--data-dir)" in out
    assert "train: 30 images   test: 20 images" in out
    assert "verified sha256" in out and "t10k-labels-idx1-ubyte.gz" in out
    assert "total" in out


def test_info_no_verify_and_sample(tiny_mnist, clean_data_env, tmp_path):
    folder = tiny_mnist.write(tmp_path / "d")
    result = CliRunner().invoke(_app(), ["data", "info", "--data-dir", str(folder), "--no-verify", "--json"])
    summary = json.loads(result.output)
    assert summary["dataset"] == "idx" and set(summary["checksums"].values()) == {"not checked (--no-verify)"}

    result = CliRunner().invoke(_app(), ["data", "info", "--dataset", "sample"])
    assert result.exit_code == 0 and "SAMPLE, not the full MNIST" in result.output
    assert "4,000" in result.output


def test_offline_flag_overrides_environment(tiny_mnist, clean_data_env, monkeypatch):
    monkeypatch.setenv("DIGITNET_OFFLINE", "0")
    monkeypatch.setenv("DIGITNET_MIRRORS", "http://127.0.0.1:9/")  # would fail if tried
    result = CliRunner().invoke(_app(), ["data", "info", "--offline"])
    assert "offline, so no download was tried" in str(result.exception)


def test_show_writes_a_labelled_png(tiny_mnist, clean_data_env, tmp_path):
    folder = tiny_mnist.write(tmp_path / "d")
    out = tmp_path / "figs" / "grid.png"
    args = [
        "data",
        "show",
        "--data-dir",
        str(folder),
        "--out",
        str(out),
        "--n",
        "12",
        "--split",
        "test",
        "--seed",
        "3",
    ]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "12 test digits" in result.output
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    pixels = np.asarray(img.convert("L"))
    assert pixels.min() < 50 and pixels.max() > 200  # digits drawn, not a blank canvas
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temp file left
    first = out.read_bytes()
    CliRunner().invoke(_app(), args)
    assert out.read_bytes() == first  # same seed, same grid


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "0"], "--n must be 1 to 400"),
        (["--split", "val"], "--split must be train or test"),
        (["--out", "grid.txt"], "--out must end in .png"),
    ],
)
def test_show_rejects_bad_options(clean_data_env, tmp_path, extra, message):
    result = CliRunner().invoke(_app(), ["data", "show", "--dataset", "sample", *extra])
    assert isinstance(result.exception, InputError) and message in str(result.exception)
