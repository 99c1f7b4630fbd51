"""Shared fixtures. Real MNIST comes only through the project's normal path: DIGITNET_DATA."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder named by DIGITNET_DATA holding real MNIST.

    On a developer machine without it the test is skipped with the reason; in CI (CI=true) a
    missing folder is a failure, so real-data tests can never be skipped silently there.
    """
    value = os.environ.get("DIGITNET_DATA", "")
    path = Path(value) if value else None
    if path is None or not path.is_dir():
        msg = "real MNIST needed: set DIGITNET_DATA to a folder with the four IDX files"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """The real dataset, loaded and verified once per session."""
    from digitnet.data import load_dataset

    return load_dataset("mnist", data_dir=mnist_dir, offline=True)


# --- data-layer fixtures (tests/test_idx.py, test_data.py, test_download.py, test_cli_data.py) ---


class TinyMnist:
    """Four tiny MNIST-shaped IDX files (30 train / 20 test, 28×28), in memory.

    `arrays`/`raw`/`gz` are keyed by the canonical MNIST file name (`train-images-idx3-ubyte`, …).
    """

    def __init__(self) -> None:
        import gzip

        import numpy as np

        from digitnet.data import FILES
        from digitnet.data.idx import encode_idx

        rng = np.random.default_rng(1234)
        x_tr = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
        x_te = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
        y_tr = np.arange(30, dtype=np.uint8) % 10
        y_te = np.arange(20, dtype=np.uint8)[::-1] % 10
        self.arrays = dict(zip(FILES, (x_tr, y_tr, x_te, y_te), strict=True))
        self.raw = {name: encode_idx(a) for name, a in self.arrays.items()}
        self.gz = {name: gzip.compress(b, mtime=0) for name, b in self.raw.items()}

    @property
    def sha256(self) -> dict[str, str]:
        import hashlib

        return {name: hashlib.sha256(b).hexdigest() for name, b in self.raw.items()}

    def write(self, folder: Path, *, gz: bool = True) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.raw:
            if gz:
                (folder / f"{name}.gz").write_bytes(self.gz[name])
            else:
                (folder / name).write_bytes(self.raw[name])
        return folder


@pytest.fixture
def tiny_mnist(monkeypatch) -> TinyMnist:
    """A tiny IDX set that digitnet.data accepts as MNIST: its SHA-256 table is patched to match."""
    import digitnet.data.mnist

    tiny = TinyMnist()
    monkeypatch.setattr(digitnet.data.mnist, "SHA256", tiny.sha256)
    return tiny


@pytest.fixture
def clean_data_env(tmp_path, monkeypatch) -> Path:
    """No data anywhere: temp HOME and XDG_CACHE_HOME, DIGITNET_DATA unset, offline, short timeouts.

    Returns the cache folder digitnet.data will use (`$XDG_CACHE_HOME/digitnet/mnist`).
    """
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for name in ("DIGITNET_DATA", "KERAS_HOME", "DIGITNET_MIRRORS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIGITNET_OFFLINE", "1")
    monkeypatch.setenv("DIGITNET_TIMEOUT", "2")
    monkeypatch.setenv("DIGITNET_RETRIES", "1")
    return tmp_path / "xdg-cache" / "digitnet" / "mnist"


# --- service fixtures (tests/test_serve.py, test_serve_hostile.py, test_schema_fuzz.py) ---------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained CNN saved the way training saves it."""
    import torch

    from digitnet.checkpoint import save_checkpoint
    from digitnet.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "model.pt"
    save_checkpoint(path, build_model("cnn").eval(), model_name="cnn", temperature=1.0, unsure_threshold=0.5)
    return path


@pytest.fixture(scope="module")
def predictor(ckpt):
    import torch

    from digitnet.inference.predictor import Predictor

    threads = torch.get_num_threads()
    yield Predictor.load(ckpt, threads=1)  # as the server loads it: one torch thread, process-wide
    torch.set_num_threads(threads)  # this module changed it on purpose; later modules get it back


@pytest.fixture(scope="module")
def client(predictor):
    from fastapi.testclient import TestClient

    from digitnet.serve import create_app

    with TestClient(create_app(predictor=predictor)) as c:
        yield c


# --- bad image files: every door that takes an image must refuse each the same way ---------


def png_bomb_header(width: int = 30000, height: int = 30000) -> bytes:
    """A ~70-byte PNG whose IHDR claims width×height pixels (the data is a stub)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def bad_image_files() -> dict[str, bytes]:
    """File name → bytes that are no usable image: text, a truncated PNG, an empty file, a
    30000×30000 pixel bomb (70 bytes), a PNG cut off inside its pixel data."""
    buf = io.BytesIO()
    Image.new("L", (64, 64), 200).save(buf, "PNG")
    png = buf.getvalue()
    return {
        "text.png": b"hello, this is text, not an image",
        "header-only.png": png[:40],
        "empty.png": b"",
        "bomb.png": png_bomb_header(30000, 30000),
        "cut.png": png[: len(png) - 20],
    }
