"""int8 exports of a reader: the same graph with its convolutions on 8-bit integers.

A reader's time on a line is its convolutions (a 6-digit strip: 130 M multiply-adds, 7 ms in
float32 on one core), and an unsure reading runs them three times (`Reader.look_again`). Static
quantization (ONNX Runtime's `quantize_static`) stores each conv's weights as int8, one scale per
output channel, and quantizes the activations between them to uint8 with ranges measured on
calibration strips, so ONNX Runtime runs integer convolutions. On an Intel Xeon (AVX-512 VNNI),
one thread: a 200-px strip 6.9-7.5 → 2.5 ms; on 2,400 photos of validation numbers read as
`read` reads, 78 wrong in float32 against 74 in int8 (BENCHMARKS.md, "An int8 reader").

Choices, all measured on those validation photos:
- QDQ format (QuantizeLinear/DequantizeLinear pairs ONNX Runtime fuses into integer kernels): the
  same answers and speed as the QOperator format, and a graph the `onnx` checker reads;
- `reduce_range`: 7-bit weights. CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) multiply uint8 by
  int8 pairs into int16, which 8-bit weights can overflow; 7-bit cannot. It cost nothing here;
- MinMax ranges: the percentile calibrator of ONNX Runtime 1.32 fails on strips of different widths;
- ONNX Runtime's pre-processing first (shape inference; the export has folded BatchNorm already,
  so the graph is the same), which it asks for before quantizing;
- the last convolution (256 → 12 per frame, 1 % of the work) left in float32: its output is the
  logits, which uint8 would step by ~0.12 and clip, under a temperature fitted in float32. The
  same 74 wrong and the same time as quantizing it too.

The calibration strips are the caller's (`training.int8.int8_calibration`), so the result
depends on nothing but the float32 graph and the strips.
"""

from __future__ import annotations

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
from onnxruntime.quantization.shape_inference import quant_pre_process

from digitnet.errors import ModelError
from digitnet.utils import first_line


class _Strips(CalibrationDataReader):
    """The calibration strips, one (1, 1, 32, W) input at a time."""

    def __init__(self, input_name: str, strips: Sequence[np.ndarray]) -> None:
        self._name, self._left = input_name, iter(strips)

    def get_next(self) -> dict[str, np.ndarray] | None:
        strip = next(self._left, None)
        return None if strip is None else {self._name: np.asarray(strip, np.float32)[None, None]}


def quantize_reader(graph: bytes, strips: Sequence[np.ndarray], input_name: str) -> bytes:
    """A reader's float32 ONNX graph (serialized) → its int8 graph (serialized). `strips`: (32, W)
    float32 strips as `lines.normalize_line` makes them, the evidence for the activation ranges.
    Raises ModelError with ONNX Runtime's reason when it cannot."""
    with tempfile.TemporaryDirectory(prefix="digitnet-int8-") as tmp:
        src, ready, dst = (Path(tmp) / name for name in ("float32.onnx", "ready.onnx", "int8.onnx"))
        try:
            src.write_bytes(graph)
            quant_pre_process(str(src), str(ready))
            convs = [n.name for n in onnx.load(str(ready)).graph.node if n.op_type == "Conv"]
            quantize_static(
                str(ready),
                str(dst),
                _Strips(input_name, strips),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=convs[-1:],  # the head, whose output is the logits (nodes in graph order)
            )
            return dst.read_bytes()
        except Exception as exc:  # ONNX Runtime's and the file system's errors, in one line
            raise ModelError(f"int8 export failed: {first_line(exc)}") from None
