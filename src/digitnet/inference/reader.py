"""Reading a whole handwritten number: image → digit string, with a box and a confidence per digit.

One path, for every door (CLI `read`, `digitnet.read_number`, `DigitClassifier.read_number`, `POST
/v1/read`, the page): `lines.find_line` decodes the image with the same limits as single digits,
finds its ink the same way (after `lines.even_light` has taken a gradient of light off the paper),
grows it along faint strokes, cleans it of what is not writing (specks, dots, ruled lines,
underlines) and normalises it to a 32-px strip; the `reader` network (`networks.NumberReader`,
on ONNX Runtime when a trusted export sits beside the checkpoint, else torch) gives CTC logits
over the line, decoded best-path (`ctc`); `segment` says which ink is which digit. Glyphs the
reader calls "not a digit" (a letter, a currency sign, a dash) are reported as marks, never as
digits. Boxes are in the input image's pixel coordinates.

`confidence` is the calibrated probability that the whole string is right: the CTC probability of
the decoded string (all its alignments) with the temperature fitted on photos of validation
numbers read the whole way (`training.numbers.calibrate_reader`); `unsure` when it falls under
the threshold chosen there.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from digitnet.checkpoint import PRETRAINED_DIR, checkpoint_version, load_checkpoint
from digitnet.data.synth import OTHER
from digitnet.errors import ConfigError, ModelError
from digitnet.inference.ctc import calibrated
from digitnet.inference.lines import Box, Line, find_line
from digitnet.inference.predictor import check_kind, choose_backend, onnx_runner
from digitnet.inference.preprocess import fit_field
from digitnet.inference.segment import boxes
from digitnet.networks import READER_STRIDE

DEFAULT_READER = "reader"  # pretrained/reader.pt (+ reader.onnx, its export): the bundled reader
_ONE_DIGIT = (
    "a {name!r} model reads one digit, not numbers: give a `reader` run (digitnet train --model reader)"
)


@dataclass(frozen=True)
class ReadDigit:
    digit: int
    confidence: float  # the reader's probability of this digit at its frames
    box: Box  # (x0, y0, x1, y1) in the input image's pixels
    image: np.ndarray = field(repr=False)  # (28, 28) float32: the digit as the model saw it

    def to_dict(self) -> dict[str, Any]:
        return {"digit": self.digit, "confidence": round(self.confidence, 6), "box": list(self.box)}


@dataclass(frozen=True)
class NumberReading:
    number: str  # the digits, left to right ("" when the image holds none)
    confidence: float  # calibrated probability that `number` is exactly right
    unsure: bool
    digits: list[ReadDigit]
    marks: list[Box]  # ink the reader saw as glyphs that are not digits
    strip: np.ndarray = field(repr=False)  # (32, W) float32: the line as the reader saw it

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "confidence": round(self.confidence, 6),
            "unsure": self.unsure,
            "digits": [d.to_dict() for d in self.digits],
            "marks": [list(b) for b in self.marks],
        }


EMPTY = NumberReading("", 1.0, False, [], [], np.zeros((32, 0), np.float32))


class Reader:
    """Reads numbers with a `reader` run folder, model file, or the bundled one ("default")."""

    def __init__(
        self,
        *,
        run_logits: Callable[[np.ndarray], np.ndarray],
        name: str,
        version: str,
        temperature: float,
        unsure_threshold: float,
        backend: str,
        source: str = "",
        stride: int = READER_STRIDE,
    ) -> None:
        self._run_logits = run_logits  # (1, 1, 32, W) float32 → (1, 12, W/stride)
        self.stride = stride  # strip columns per output frame
        self.name, self.version, self.backend, self.source = name, version, backend, source
        self.temperature, self.unsure_threshold = float(temperature), float(unsure_threshold)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ModelError(f"reader {name!r}: temperature must be a positive number, got {temperature}")

    @classmethod
    def from_module(
        cls,
        net: nn.Module,
        *,
        temperature: float = 1.0,
        unsure_threshold: float = 0.0,
        name: str = "reader",
        version: str = "in-memory",
    ) -> Reader:
        # channels_last: oneDNN's convolutions run faster on it (a 6-digit strip, 1 thread, Zen 5,
        # 5 interleaved runs: 8.1 ± 0.5 → 5.9 ± 0.5 ms); the logits agree to 4e-6. On a copy:
        # `to` works in place, and the caller's module (a run about to be saved) must not change.
        net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]

        def run_logits(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                xb = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
                return net(xb).float().numpy()

        return cls(
            run_logits=run_logits,
            name=name,
            version=version,
            temperature=temperature,
            unsure_threshold=unsure_threshold,
            backend="torch",
            stride=int(getattr(net, "stride", READER_STRIDE)),
        )

    @classmethod
    def load(cls, model: str | Path = "default", backend: str = "auto", threads: int | None = None) -> Reader:
        """`model`: "default" (the bundled reader), a `reader` run folder, its model.pt, or an .onnx
        export of one. `backend` as `Predictor.load`'s (`predictor.choose_backend`): "auto" runs
        ONNX Runtime when a trusted export of this very checkpoint sits beside it (the bundled
        reader has one): half the time of torch for a line (BENCHMARKS.md)."""
        if threads is not None and threads < 1:
            raise ConfigError("threads must be >= 1")
        model = PRETRAINED_DIR / f"{DEFAULT_READER}.pt" if str(model) == "default" else model
        backend, onnx_file, verified = choose_backend(model, backend)
        if backend == "onnx":
            run_logits, meta, source = onnx_runner(model, onnx_file, verified, threads, reads_numbers=True)
            return cls(
                run_logits=run_logits,
                name=meta["model"],
                version=meta["version"],
                temperature=meta["temperature"],
                unsure_threshold=meta["unsure_threshold"],
                backend="onnx",
                source=source,
                stride=meta["stride"],
            )
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        loaded = load_checkpoint(model)
        check_kind(loaded.name, str(loaded.path), reads_numbers=True)
        reader = cls.from_module(
            loaded.model,
            temperature=loaded.temperature,
            unsure_threshold=loaded.unsure_threshold,
            name=loaded.name,
            version=checkpoint_version(loaded),
        )
        reader.source = str(loaded.path)
        return reader

    def read(self, img: Image.Image | np.ndarray | str | Path | bytes) -> NumberReading:
        """One image: a file path or its bytes (decoded by `decode_for_reading`), a PIL image, or
        an (H, W) / (H, W, 3|4) array, any size within the decode limits."""
        line = find_line(img)
        return EMPTY if line is None else self.read_line(line)

    def line_logits(self, strip: np.ndarray) -> np.ndarray:
        """The network's logits (12, T) for one strip (32, W)."""
        return self._run_logits(strip[None, None])[0]

    def read_line(self, line: Line) -> NumberReading:
        """A line found by `find_line` → the number it holds."""
        labels, spans, lp, log_p = calibrated(self.line_logits(line.strip), self.temperature)
        digits, marks = [], []
        for label, (t0, t1), (box, crop) in zip(labels, spans, boxes(line, spans, self.stride), strict=True):
            if label == OTHER:
                marks.append(box)
                continue
            conf = float(np.exp(lp[t0 : t1 + 1, label + 1].max()))
            fitted = fit_field(crop, crop > 0.1) if crop.size and crop.max() > 0.1 else None
            digits.append(
                ReadDigit(label, conf, box, fitted[0] if fitted else np.zeros((28, 28), np.float32))
            )
        confidence = float(np.exp(log_p))
        number = "".join(str(d.digit) for d in digits)
        unsure = bool(digits) and confidence < self.unsure_threshold
        return NumberReading(number, confidence, unsure, digits, marks, line.strip)
