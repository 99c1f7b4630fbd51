"""A trained reader's int8 ONNX export, calibrated on the digits it trained on.

`inference.quantize` needs strips to measure the activations' ranges on. They are photos of
numbers composed from the run's own *training* digits: MNIST's training set less the validation
digits its config held out (the same `loop.stratified_split` as `train`), so the validation photos
on which an int8 export is judged stay unseen. Seeded, so the same checkpoint and data give the
same strips, and so the same export on the same kind of CPU and the same versions of torch, onnx
and ONNX Runtime (the ranges are float32 results of the float32 network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from digitnet.checkpoint import load_checkpoint
from digitnet.data import Splits
from digitnet.data.synth import SPACINGS, number, photo
from digitnet.errors import ConfigError
from digitnet.inference.export import OPSET, check_int8, export_onnx
from digitnet.inference.lines import find_line
from digitnet.training.config import TrainConfig
from digitnet.training.loop import split_sizes, stratified_split

INT8_PHOTOS = 240  # 10 photos a (length 1-8, spacing) cell


def int8_calibration(x_train: np.ndarray, y_train: np.ndarray, n: int = INT8_PHOTOS) -> list[np.ndarray]:
    """The (32, W) float32 strips of `n` photos of numbers composed from these digits, 1-8 digits
    and the three spacings in turn, found and normalised by `lines.find_line` as a user's photo is
    (a photo in which it finds no line gives none). Seeded: the same strips every time."""
    rng = np.random.default_rng(8)
    xt, yt = np.asarray(x_train, np.uint8).reshape(-1, 28, 28), np.asarray(y_train)
    strips = []
    for i in range(n if len(xt) else 0):
        spacing, length = SPACINGS[i % 3], i // 3 % 8 + 1
        line = find_line(photo(number(xt, yt, length, rng, spacing, hard=False), rng, spacing).data)
        if line is not None:
            strips.append(line.strip)
    return strips


def int8_export(
    model: str | Path, data: Splits, out: str | Path | None = None, *, opset: int = OPSET
) -> Path:
    """`export.export_onnx` of a reader in int8, its ranges measured on `int8_calibration` of the
    training digits the run trained on. `data`: the dataset the run was trained on."""
    loaded = load_checkpoint(model)
    check_int8(loaded.name)  # before composing the strips
    trained_on = loaded.meta.get("dataset")
    if trained_on is not None and trained_on != data.name:
        raise ConfigError(f"the reader was trained on {trained_on!r}, not {data.name!r}: give its dataset")
    val_size = split_sizes(len(data.y_train), int(loaded.config.get("val_size", TrainConfig().val_size)))
    train, _ = stratified_split(np.asarray(data.y_train), val_size)
    strips = int8_calibration(data.x_train[train], data.y_train[train])
    return export_onnx(model, out, opset=opset, int8_strips=strips)
