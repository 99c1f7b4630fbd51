"""Data sources, verification and the MnistData contract (downloads are in test_download.py)."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

from digitnet.data import FILES, MnistData, load_dataset, load_for_demo, load_mnist, load_sample
from digitnet.data.idx import encode_idx
from digitnet.data.mnist import SHA256 as REAL_SHA256
from digitnet.errors import DatasetError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- real MNIST ----------------------------------------------------------------------------------


def test_real_mnist_sizes_checksums_and_class_counts(mnist, mnist_dir):
    assert mnist.name == "mnist" and not mnist.is_sample and mnist.origin == "data-dir"
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert mnist.x_train.dtype == np.uint8 and mnist.y_train.dtype == np.int64
    assert len(mnist.checksums) == 4
    assert all(status.startswith("verified sha256") for status in mnist.checksums.values())
    counts = mnist.class_counts()
    assert counts == {"train": TRAIN_COUNTS, "test": TEST_COUNTS}
    readme = mnist_dir / "README.md"
    if readme.is_file():  # the numbers above are the ones the data's own README states
        text = readme.read_text()
        train = re.search(r"train:\s*([\d ]+);", text)
        test = re.search(r"test:\s*([\d ]+)\.", text)
        assert train and test
        assert [int(v) for v in train.group(1).split()] == TRAIN_COUNTS
        assert [int(v) for v in test.group(1).split()] == TEST_COUNTS
    summary = mnist.summary()
    json.dumps(summary)
    assert summary["train"]["n"] == 60000 and summary["test"]["n"] == 10000


def test_real_mnist_through_env_var(mnist_dir, clean_data_env, monkeypatch):
    monkeypatch.setenv("DIGITNET_DATA", str(mnist_dir))
    (x_train, y_train), (x_test, y_test) = load_mnist()
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    data = load_dataset()
    assert data.origin == "env" and "(DIGITNET_DATA)" in data.source


def test_real_keras_npz_verifies_against_the_same_hashes(mnist, tmp_path):
    # A Keras mnist.npz holds the same arrays; re-encoded as IDX they must hash to MNIST's values.
    np.savez(
        tmp_path / "mnist.npz",
        x_train=mnist.x_train,
        y_train=mnist.y_train.astype(np.uint8),
        x_test=mnist.x_test,
        y_test=mnist.y_test.astype(np.uint8),
    )
    data = load_dataset(data_dir=tmp_path)
    assert data.name == "mnist" and "mnist.npz" in data.source
    assert all(v.startswith("verified") for v in data.checksums.values())
    assert np.array_equal(data.y_train, mnist.y_train)


# --- folders, npz, cache, keras ------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_gz_or_raw(tiny_mnist, clean_data_env, tmp_path, gz):
    folder = tiny_mnist.write(tmp_path / "d", gz=gz)
    data = load_dataset(data_dir=folder)
    assert data.name == "mnist" and data.origin == "data-dir" and str(folder) in data.source
    assert np.array_equal(data.x_test, tiny_mnist.arrays["t10k-images-idx3-ubyte"])
    assert set(data.checksums) == {f + (".gz" if gz else "") for f in FILES}


def test_torchvision_dot_spelling_is_found(tiny_mnist, clean_data_env, tmp_path):
    folder = tmp_path / "tv"
    folder.mkdir()
    for name, raw in tiny_mnist.raw.items():
        (folder / name.replace("-idx", ".idx")).write_bytes(raw)
    assert len(load_dataset(data_dir=folder).y_train) == 30


def test_keras_style_npz_folder(tiny_mnist, clean_data_env, tmp_path):
    a = tiny_mnist.arrays
    folder = tmp_path / "keras"
    folder.mkdir()
    np.savez_compressed(
        folder / "mnist.npz",
        x_train=a["train-images-idx3-ubyte"],
        y_train=a["train-labels-idx1-ubyte"],
        x_test=a["t10k-images-idx3-ubyte"],
        y_test=a["t10k-labels-idx1-ubyte"],
    )
    data = load_dataset(data_dir=folder)
    assert data.name == "mnist" and data.y_train.dtype == np.int64
    assert all(v.startswith("verified") for v in data.checksums.values())
    assert load_dataset(data_dir=folder / "mnist.npz").source.startswith("file ")


def test_npz_missing_arrays_and_not_a_zip(clean_data_env, tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="no y_train, x_test, y_test array"):
        load_dataset(data_dir=tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"not a readable \.npz file"):
        load_dataset(data_dir=tmp_path)


def test_cache_then_keras_are_used_in_order(tiny_mnist, clean_data_env, tmp_path):
    a = tiny_mnist.arrays
    keras = tmp_path / "home" / ".keras" / "datasets"
    keras.mkdir(parents=True)
    np.savez(
        keras / "mnist.npz",
        x_train=a["train-images-idx3-ubyte"],
        y_train=a["train-labels-idx1-ubyte"],
        x_test=a["t10k-images-idx3-ubyte"],
        y_test=a["t10k-labels-idx1-ubyte"],
    )
    assert load_dataset().origin == "keras"
    tiny_mnist.write(clean_data_env)
    data = load_dataset()
    assert data.origin == "cache" and data.source == f"cache {clean_data_env}"


def test_bad_keras_file_is_ignored_not_trusted(clean_data_env, tmp_path):
    keras = tmp_path / "home" / ".keras" / "datasets"
    keras.mkdir(parents=True)
    z = np.zeros((3, 28, 28), np.uint8)
    np.savez(
        keras / "mnist.npz", x_train=z, y_train=np.zeros(3, np.uint8), x_test=z, y_test=np.zeros(3, np.uint8)
    )
    with pytest.raises(DatasetError, match=r"ignored .*mnist\.npz: mnist\.npz:x_train is not MNIST"):
        load_dataset()


def test_explicit_folder_beats_env_beats_cache(tiny_mnist, clean_data_env, tmp_path, monkeypatch):
    tiny_mnist.write(clean_data_env)
    env_dir = tiny_mnist.write(tmp_path / "env")
    arg_dir = tiny_mnist.write(tmp_path / "arg")
    monkeypatch.setenv("DIGITNET_DATA", str(env_dir))
    assert load_dataset().origin == "env"
    assert load_dataset(data_dir=arg_dir).origin == "data-dir"
    monkeypatch.setenv("DIGITNET_DATA", str(tmp_path / "missing"))
    # A named folder that is wrong is an error, never a silent fall back to the cache.
    with pytest.raises(DatasetError, match=r"data folder .*missing \(from DIGITNET_DATA\) does not exist"):
        load_dataset()


def test_incomplete_and_empty_folders(tiny_mnist, clean_data_env, tmp_path):
    folder = tiny_mnist.write(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]$"):
        load_dataset(data_dir=folder)
    with pytest.raises(DatasetError, match="has neither the four MNIST IDX files"):
        load_dataset(data_dir=tmp_path / "home")


# --- verification and validation -----------------------------------------------------------------


def test_checksum_mismatch_names_the_file_and_the_fix(tiny_mnist, clean_data_env, tmp_path, monkeypatch):
    import digitnet.data.mnist

    monkeypatch.setattr(digitnet.data.mnist, "SHA256", REAL_SHA256)  # tiny files against MNIST's real hashes
    folder = tiny_mnist.write(tmp_path / "fashion")
    with pytest.raises(DatasetError) as info:
        load_dataset(data_dir=folder)
    msg = str(info.value)
    assert msg.startswith("train-images-idx3-ubyte.gz: sha256 ")
    assert "is not MNIST's ba891046e650…" in msg and "--no-verify" in msg and "replace it" in msg

    data = load_dataset(data_dir=folder, verify=False)
    assert data.name == "idx" and not data.is_sample
    assert set(data.checksums.values()) == {"not checked (--no-verify)"}


def _corrupt(tiny, folder, name, array):
    tiny.write(folder)
    (folder / f"{name}.gz").write_bytes(gzip.compress(encode_idx(array)))
    return folder


def test_label_out_of_range(tiny_mnist, clean_data_env, tmp_path):
    labels = tiny_mnist.arrays["train-labels-idx1-ubyte"].copy()
    labels[5] = 11
    folder = _corrupt(tiny_mnist, tmp_path / "d", "train-labels-idx1-ubyte", labels)
    with pytest.raises(
        DatasetError, match=r"^train-labels-idx1-ubyte\.gz: label 11 at index 5 is outside 0-9$"
    ):
        load_dataset(data_dir=folder, verify=False)
    with pytest.raises(DatasetError, match="sha256"):  # verified: caught even earlier
        load_dataset(data_dir=folder)


def test_count_mismatch(tiny_mnist, clean_data_env, tmp_path):
    folder = _corrupt(tiny_mnist, tmp_path / "d", "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(
        DatasetError,
        match=r"t10k-images-idx3-ubyte\.gz has 20 images but t10k-labels-idx1-ubyte\.gz has 19 labels",
    ):
        load_dataset(data_dir=folder, verify=False)


def test_wrong_image_size_and_shape(tiny_mnist, clean_data_env, tmp_path):
    folder = _corrupt(tiny_mnist, tmp_path / "a", "train-images-idx3-ubyte", np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(DatasetError, match="images are 32×32, expected 28×28"):
        load_dataset(data_dir=folder, verify=False)
    folder = _corrupt(tiny_mnist, tmp_path / "b", "train-images-idx3-ubyte", np.zeros((30, 784), np.float32))
    with pytest.raises(DatasetError, match=r"expected uint8 images \(N, 28, 28\), got float32 \(30, 784\)"):
        load_dataset(data_dir=folder, verify=False)


def test_truncated_file_in_folder(tiny_mnist, clean_data_env, tmp_path):
    folder = tiny_mnist.write(tmp_path / "d", gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:10000])
    with pytest.raises(
        DatasetError,
        match=r"^t10k-images-idx3-ubyte: file is 10,000 bytes, header promises 15,696 \(truncated\?\)$",
    ):
        load_dataset(data_dir=folder)


def test_mnistdata_contract():
    x, y = np.zeros((2, 28, 28), np.uint8), np.array([0, 9], np.int64)
    good = MnistData(x, y, x, y, name="idx", origin="data-dir", source="s")
    assert good.class_counts()["train"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    with pytest.raises(DatasetError, match="int64"):
        MnistData(x, y.astype(np.int32), x, y, name="idx", origin="data-dir", source="s")
    with pytest.raises(DatasetError, match="expected uint8 images"):
        MnistData(x.astype(np.float32), y, x, y, name="idx", origin="data-dir", source="s")
    with pytest.raises(DatasetError, match="unknown dataset name"):
        MnistData(x, y, x, y, name="fashion", origin="data-dir", source="s")
    with pytest.raises(DatasetError, match="unknown dataset 'emnist'"):
        load_dataset("emnist")


# --- the sample and the demo fallback ------------------------------------------------------------


def test_sample_is_stratified_deterministic_and_announced():
    a, b = load_sample(), load_dataset("sample")
    assert a.is_sample and a.name == "sample" and a.origin == "sample" and "SAMPLE" in a.source
    assert a.x_train.shape == (4000, 28, 28) and a.x_test.shape == (1000, 28, 28)
    assert a.class_counts() == {"train": [400] * 10, "test": [100] * 10}
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert a.x_train.max() == 255 and a.x_train.mean() > 10  # real digits, not blank frames
    assert list(a.y_train[:20]) != sorted(a.y_train[:20])  # shuffled, not class-sorted
    train_rows = {r.tobytes() for r in a.x_train}
    assert not any(r.tobytes() in train_rows for r in a.x_test)  # no digit in both splits


def test_load_for_demo_falls_back_loudly(clean_data_env, capsys):
    data = load_for_demo()
    assert data.is_sample
    err = capsys.readouterr().err
    assert "WARNING" in err and "SAMPLE" in err and "NOT MNIST results" in err and "MNIST not found" in err


def test_load_for_demo_prefers_real_data(tiny_mnist, clean_data_env, tmp_path, capsys):
    data = load_for_demo(tiny_mnist.write(tmp_path / "d"))
    assert data.name == "mnist" and "WARNING" not in capsys.readouterr().err
