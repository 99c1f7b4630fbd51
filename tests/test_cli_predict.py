"""`digitnet predict` / `bench predict` end to end, in a subprocess like a user runs them."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw


def digitnet(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300"}  # wide table: whole paths on one line
    return subprocess.run(
        [sys.executable, "-m", "digitnet", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def seven(size: int = 120) -> Image.Image:
    img = Image.new("L", (size, size), 245)
    s = size / 120
    ImageDraw.Draw(img).line(
        [(25 * s, 25 * s), (95 * s, 25 * s), (50 * s, 105 * s)], fill=15, width=round(10 * s)
    )
    return img


def huge_png_header() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    from digitnet.checkpoint import save_checkpoint
    from digitnet.models import build_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(
        folder / "model.pt",
        build_model("cnn").eval(),
        model_name="cnn",
        temperature=1.0,
        unsure_threshold=0.99,
    )
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    seven().save(d / "a.png")
    seven(300).convert("RGB").save(d / "b.jpg", quality=70)
    Image.new("L", (50, 50), 255).save(d / "blank.png")
    (d / "notes.txt").write_text("not an image")  # folders list image suffixes only
    return d


SCHEMA = {
    "file": str,
    "digit": int,
    "confidence": float,
    "probabilities": list,
    "unsure": bool,
    "status": str,
}


def test_predict_json_schema_folder(run, images):
    res = digitnet("predict", "--model", str(run), "--json", str(images))
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.jpg", "blank.png"]
    for r in rows[:2]:
        assert set(r) == set(SCHEMA) and all(isinstance(r[k], t) for k, t in SCHEMA.items())
        assert 0 <= r["digit"] <= 9 and len(r["probabilities"]) == 10
        assert abs(sum(r["probabilities"]) - 1) < 1e-4 and r["confidence"] == max(r["probabilities"])
        assert r["unsure"] == (r["confidence"] < 0.99) == (r["status"] == "unsure")
    assert rows[0]["digit"] == rows[1]["digit"]  # same drawing at another size, as JPEG
    blank = rows[2]
    assert blank["digit"] is None and blank["unsure"] is True and blank["empty"] is True
    assert blank["status"] == "empty"


def test_unreadable_files_reported_others_predicted(run, images, tmp_path):
    (tmp_path / "huge.png").write_bytes(huge_png_header())
    (tmp_path / "text.png").write_text("hello")
    buf = io.BytesIO()
    seven().save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:200])
    (tmp_path / "really_png.jpg").write_bytes(buf.getvalue())  # wrong extension: still read
    args = [str(tmp_path / n) for n in ("huge.png", "text.png", "cut.png", "missing.png", "really_png.jpg")]
    res = digitnet(
        "predict", "--model", str(run), "--json", str(images / "a.png"), *args, str(tmp_path / "zz*.png")
    )
    assert res.returncode == 2
    rows = json.loads(res.stdout)  # every file in order: its prediction, or {"file", "error"}
    names = ["a.png", "huge.png", "text.png", "cut.png", "missing.png", "really_png.jpg"]
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == names
    assert [set(r) == {"file", "error"} for r in rows] == [False, True, True, True, True, False]
    assert rows[1]["error"].endswith(
        "huge.png: 900,000,000 pixels is over the 40,000,000-pixel limit (decompression-bomb guard)"
    )
    err = res.stderr.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("error: ") for line in err)
    joined = "\n".join(err)
    for expected in (
        "huge.png: 900,000,000 pixels is over the",
        "text.png: not a recognised image",
        "cut.png: cannot decode PNG data",
        "missing.png: no such file",
        "zz*.png: no files match",
        "5 of 7 inputs could not be read; 2 predicted",
    ):
        assert expected in joined, joined


def test_predict_table(run, images):
    res = digitnet("predict", "--model", str(run), "--top-k", "2", str(images / "*.png"))
    assert res.returncode == 0, res.stderr
    assert "a.png" in res.stdout and "blank.png" in res.stdout and "empty" in res.stdout
    assert "top 2" in res.stdout


def test_bad_options(run, images):
    res = digitnet("predict", "--model", str(run), "--top-k", "11", str(images))
    assert res.returncode == 2 and res.stderr.strip() == "error: --top-k must be between 1 and 10"
    res = digitnet("predict", "--model", str(run / "nope"), str(images))
    assert res.returncode == 2 and res.stderr.startswith("error: no model at")


def test_no_preprocess(run, tmp_path):
    a = np.zeros((28, 28), np.uint8)
    a[4:24, 12:16] = 255
    Image.fromarray(a).save(tmp_path / "one.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "black.png")
    res = digitnet("predict", "--model", str(run), "--json", "--no-preprocess", str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in json.loads(res.stdout)}
    assert rows["black.png"]["empty"] is True and rows["one.png"]["digit"] is not None


def test_bench_predict_json(run):
    res = digitnet(
        "bench",
        "predict",
        "--model",
        str(run),
        "--backend",
        "torch",
        "--json",
        "--n",
        "20",
        "--batch-size",
        "64",
        "--repeats",
        "2",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    (row,) = out["results"]
    for key in ("images_per_s", "latency_p50_ms", "latency_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "load_s"):
        assert isinstance(row[key], float) and row[key] > 0, key
    assert row["backend"] == "torch" and row["batch_size"] == 64
    assert row["latency_p99_ms"] >= row["latency_p50_ms"] and row["e2e_p50_ms"] >= row["latency_p50_ms"]
    assert out["environment"]["cpu_count"] >= 1


EVIL = """
import pickle, sys
class Evil:
    def __reduce__(self):
        return (print, ("PWNED",))
open(sys.argv[1], "wb").write(pickle.dumps({"format": "digitnet-checkpoint/1", "state_dict": Evil()}))
"""


def test_a_pickle_with_code_is_refused_in_one_line_without_unsafe_advice(tmp_path):
    """Issue 15: the refusal quoted PyTorch's advice to rerun with weights_only=False, after a torch
    warning; now it is one line of ours, and the file's code never runs."""
    import warnings

    from digitnet.checkpoint import read_checkpoint
    from digitnet.errors import ModelError

    evil = tmp_path / "evil.pt"
    subprocess.run([sys.executable, "-c", EVIL, str(evil)], check=True, timeout=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's protocol warning would raise here
        with pytest.raises(ModelError) as err:
            read_checkpoint(evil)
    message = str(err.value)
    assert "weights_only" not in message and "\n" not in message and "never runs code" in message
    r = digitnet("predict", "--model", str(evil), str(evil))
    assert r.returncode == 2 and "PWNED" not in r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "weights_only" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["predict"],
        ["read"],
        ["nosuchcmd"],
        ["predict", "--bogus", "x.png"],
        ["predict", "--top-k", "abc", "x.png"],
        ["serve", "--port", "abc"],
        ["predict", "--model"],
    ],
    ids=lambda a: " ".join(a) or "no-arguments",
)
def test_usage_errors_are_click_messages_with_exit_2_not_tracebacks(args):
    """Typer ≥ 0.29 raises its vendored Click's exceptions, which `click`'s classes do not catch:
    every one of these printed a traceback and exited 1."""
    res = digitnet(*args, timeout=60)
    assert res.returncode == 2, (res.returncode, res.stderr[-500:])
    assert "Traceback" not in res.stderr and ("Error:" in res.stderr or "Usage:" in res.stdout + res.stderr)
