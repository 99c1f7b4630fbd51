"""int8 exports of a reader: the same graph with its convolutions on 8-bit integers.

A reader's time on a line is its convolutions (a 6-digit strip: 130 M multiply-adds, ~4-7 ms in
float32 on one core), and an unsure reading runs them three times (`Reader.look_again`). Static
quantization (ONNX Runtime's `quantize_static`) stores each conv's weights as int8, one scale per
output channel, and quantizes the activations between them to uint8 with ranges measured on
calibration strips, so ONNX Runtime runs integer convolutions. On an Intel Xeon (AVX-512 VNNI),
one thread: a 200-px strip 7.5 → 2.5 ms; on 2,400 photos of validation numbers read as `read`
reads, 78 wrong in float32 against 75 in int8 (BENCHMARKS.md, "int8").

Choices, all measured on those validation photos:
- QDQ format (QuantizeLinear/DequantizeLinear pairs ONNX Runtime fuses into integer kernels): the
  same answers and speed as the QOperator format, and a graph the `onnx` checker reads;
- `reduce_range`: 7-bit weights. CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) multiply uint8 by
  int8 pairs into int16, which 8-bit weights can overflow; 7-bit cannot. It cost nothing here (75
  wrong against 77 at 8 bits);
- MinMax ranges: the percentile calibrator of ONNX Runtime 1.32 fails on strips of different widths.

The calibration strips are the caller's (`training.numbers.int8_calibration`: photos of numbers
composed from the run's own training digits, read the whole way by `lines.find_line`), so the
export depends on nothing but the checkpoint and MNIST: the same bytes from the same inputs on the
same kind of CPU (the ranges are float32 results of a float32 network).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from digitnet.errors import ConfigError, ModelError
from digitnet.utils import first_line

PRECISION_KEY = "digitnet.precision"  # "int8" in a quantized export's metadata; absent: float32


class _Strips(CalibrationDataReader):
    """The calibration strips, one (1, 1, 32, W) input at a time."""

    def __init__(self, input_name: str, strips: Sequence[np.ndarray]) -> None:
        self._name, self._left = input_name, iter(strips)

    def get_next(self) -> dict[str, np.ndarray] | None:
        strip = next(self._left, None)
        return None if strip is None else {self._name: np.asarray(strip, np.float32)[None, None]}


def quantize_reader(data: bytes, strips: Sequence[np.ndarray], input_name: str) -> bytes:
    """A reader's float32 ONNX export (serialized, with digitnet's metadata) → its int8 export,
    the metadata kept and `digitnet.precision` = "int8" added. `strips`: (32, W) float32 strips
    as `lines.normalize_line` makes them, the ranges' evidence."""
    if not strips:
        raise ConfigError("int8 export: no calibration strips")
    with tempfile.TemporaryDirectory(prefix="digitnet-int8-") as tmp:
        src, dst = Path(tmp) / "float32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        root = logging.getLogger()
        level = root.level
        try:  # ONNX Runtime logs advice ("consider pre-processing") on the root logger: the export
            root.setLevel(logging.ERROR)  # folds BatchNorm already, so there is nothing to pre-process
            quantize_static(
                str(src),
                str(dst),
                _Strips(input_name, strips),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:
            raise ModelError(f"int8 export failed: {first_line(exc)}") from None
        finally:
            root.setLevel(level)
        proto = onnx.load_model_from_string(dst.read_bytes())
    props = {p.key: p.value for p in proto.metadata_props if p.key.startswith("digitnet.")}
    props[PRECISION_KEY] = "int8"
    del proto.metadata_props[:]  # digitnet's keys only, in a fixed order: the same bytes each time
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())
