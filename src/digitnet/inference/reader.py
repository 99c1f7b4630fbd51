"""Reading a whole handwritten number: image → digit string, with a box and a confidence per digit.

One path, for every door (CLI `read`, `digitnet.read_number`, `DigitClassifier.read_number`, `POST
/v1/read`, the page): `lines.find_line` decodes the image with the same limits as single digits,
finds its ink the same way (after `lines.even_light` has taken a gradient of light off the paper),
grows it along faint strokes, cleans it of what is not writing (specks, dots, ruled lines,
underlines) and normalises it to a 32-px strip; the `reader` network (`networks.NumberReader`,
on ONNX Runtime when a trusted export sits beside the checkpoint, else torch; the bundled
reader's export is int8, `quantize`) gives CTC logits over the line, decoded best-path (`ctc`),
and an unsure reading looked at again with the strip rescaled (`Reader.look_again`); `segment`
says which ink is which digit. Glyphs the reader calls "not a digit" (a letter, a currency sign,
a dash) are reported as marks, never as digits. Boxes are in the input image's pixel coordinates.

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
from digitnet.errors import ConfigError, DigitnetError, ModelError
from digitnet.inference.ctc import align, best_path, calibrated, digit_posterior, string_log_prob, tempered
from digitnet.inference.lines import Box, Line, find_line, rescaled
from digitnet.inference.predictor import Predictor, check_kind, choose_backend, onnx_runner
from digitnet.inference.preprocess import fit_field
from digitnet.inference.segment import boxes
from digitnet.networks import READER_STRIDE

DEFAULT_READER = "reader"  # pretrained/reader.pt (+ reader.onnx, its export): the bundled reader
# A reading the reader is unsure of gets a second look: the strip again 25 % wider, and with its
# ink 15 % smaller (wider, taller). Each string the looks read is scored by the sum of its log-
# probability in every look, and the best is kept. Chosen on 2,400 photos of numbers composed from
# the validation digits (seed 99), the reader alone: 89 -> 73 wrong; other looks (stretches of
# 0.8-1.5, shears, larger ink) did about as well or worse. As `read` reads, with the classifier's
# second opinion (weighed against the first look): 89 -> 78 (spaced 22 -> 21, tight 19 -> 16,
# touching 48 -> 41). Weighing it against every look instead: 70-74 wrong here, but on 2,400
# photos of test numbers 83-85 against 81 (spaced 97.75-97.9 % against 98.25 %): not kept.
SECOND_LOOKS = ((1.25, 1.0), (0.85, 0.85))


@dataclass(frozen=True)
class ReadDigit:
    digit: int
    confidence: float  # the reader's probability of it; where the classifier was asked, the two
    # beliefs multiplied and renormalised over the ten digits
    box: Box  # (x0, y0, x1, y1) in the input image's pixels
    ink: np.ndarray = field(repr=False, compare=False)  # its own ink, cropped from the reader's strip

    @property
    def image(self) -> np.ndarray:
        """(28, 28) float32: the digit in MNIST's field, as the classifier sees it; made on first use
        (0.3 ms a digit that `read` and `bench read` never ask for) and kept. Not a
        `functools.cached_property`: before Python 3.12 its lock is one for all instances, and the
        server's threads would wait on each other's digits."""
        made = self.__dict__.get("_image")
        if made is None:
            fitted = _field(self.ink)
            made = np.zeros((28, 28), np.float32) if fitted is None else fitted
            self.__dict__["_image"] = made  # frozen: through __dict__, as a cached_property does
        return made

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

    def images(self) -> list[np.ndarray]:
        """The 28 × 28 image of each digit, made now if not yet (the server makes them in the
        decoding thread, not on its event loop)."""
        return [d.image for d in self.digits]

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
        classifier: Predictor | None = None,
        second_looks: tuple[tuple[float, float], ...] = SECOND_LOOKS,
        precision: str = "float32",
    ) -> None:
        self._run_logits = run_logits  # (1, 1, 32, W) float32 → (1, 12, W/stride)
        self.second_looks = second_looks  # `lines.rescaled` (wider, taller) for unsure readings
        self.stride = stride  # strip columns per output frame
        self.classifier = classifier  # a digit model's second opinion on digits that stand apart
        self.name, self.version, self.backend, self.source = name, version, backend, source
        self.precision = precision  # "int8": an int8 export (`quantize`), else float32
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
        classifier: Predictor | None = None,
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
            classifier=classifier,
        )

    @classmethod
    def load(
        cls,
        model: str | Path = "default",
        backend: str = "auto",
        threads: int | None = None,
        classifier: str | Path | None = "default",
    ) -> Reader:
        """`model`: "default" (the bundled reader), a `reader` run folder, its model.pt, or an .onnx
        export of one. `backend` as `Predictor.load`'s (`predictor.choose_backend`): "auto" runs
        ONNX Runtime when a trusted export of this very checkpoint sits beside it (the bundled
        reader has one, in int8): less time than torch for a line (BENCHMARKS.md). `classifier`: the digit
        model whose second opinion `read_line` takes on digits that stand apart ("default": the
        bundled one; "none" or None: the reader alone), loaded with the same backend and threads."""
        if threads is not None and threads < 1:
            raise ConfigError("threads must be >= 1")
        model = PRETRAINED_DIR / f"{DEFAULT_READER}.pt" if str(model) == "default" else model
        chosen, onnx_file, verified = choose_backend(model, backend)
        if chosen == "onnx":
            run_logits, meta, source = onnx_runner(model, onnx_file, verified, threads, reads_numbers=True)
            reader = cls(
                run_logits=run_logits,
                name=meta["model"],
                version=meta["version"],
                temperature=meta["temperature"],
                unsure_threshold=meta["unsure_threshold"],
                backend="onnx",
                source=source,
                stride=meta["stride"],
                precision=meta["precision"],
            )
        else:
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
        if classifier is not None and str(classifier) != "none":
            try:
                reader.classifier = Predictor.load(classifier, backend=backend, threads=threads)
            except DigitnetError as exc:  # say which of the two models it is about
                raise type(exc)(f"classifier: {exc}") from None
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
        looked = (  # an unsure reading of at least one digit: look again
            bool(self.second_looks)
            and any(k != OTHER for k in labels)
            and math.exp(log_p) < self.unsure_threshold
        )
        if looked:
            labels, spans, log_p = self.look_again(line.strip, lp, labels, spans, log_p)
        found, one_to_one = boxes(line, spans, self.stride)
        conf = [
            float(np.exp(lp[t0 : t1 + 1, k + 1].max())) for k, (t0, t1) in zip(labels, spans, strict=True)
        ]
        fields: list[np.ndarray | None] = [None] * len(labels)  # made only where a model needs them
        if self.classifier is not None and one_to_one:  # digits that stand apart: a second opinion
            fields = [
                None if k == OTHER else _field(crop) for k, (_, crop) in zip(labels, found, strict=True)
            ]
            checked, conf = second_opinion(self.classifier, labels, spans, lp, fields, conf)
            if checked != labels:  # the whole string's probability is the reader's of the new one
                labels, log_p = checked, string_log_prob(lp, checked)
        digits, marks = [], []
        for label, (box, crop), image, c in zip(labels, found, fields, conf, strict=True):
            if label == OTHER:
                marks.append(box)
                continue
            digit = ReadDigit(label, c, box, crop)
            if image is not None:  # already made for the classifier: `image` need not make it again
                digit.__dict__["_image"] = image
            digits.append(digit)
        confidence = float(np.exp(log_p))
        number = "".join(str(d.digit) for d in digits)
        unsure = bool(digits) and (confidence < self.unsure_threshold or looked)  # looked: it was unsure
        return NumberReading(number, confidence, unsure, digits, marks, line.strip)

    def look_again(
        self, strip: np.ndarray, lp: np.ndarray, labels: list[int], spans: list[tuple[int, int]], log_p: float
    ) -> tuple[list[int], list[tuple[int, int]], float]:
        """An unsure reading (labels, spans, log p) of `strip`, whose log-probabilities are `lp`
        (T, 12), decided again with `second_looks`: of the strings the looks read that hold a
        digit, the one the looks together find most probable (the sum of its log-probability in
        each; on a tie, the first look's), with its frames and probability in the first look (its
        boxes stay where the ink is)."""
        looks = [lp] + [
            tempered(self.line_logits(rescaled(strip, w, h)), self.temperature) for w, h in self.second_looks
        ]  # (T_i, 12) each
        first = tuple(labels)
        read = {tuple(best_path(look)[0]) for look in looks}
        candidates = {c for c in read if any(k != OTHER for k in c)} | {first}
        if candidates == {first}:  # every look reads the same (or no digit): nothing to weigh
            return labels, spans, log_p
        each = {c: [string_log_prob(look, list(c)) for look in looks] for c in candidates}  # per look
        best = max(candidates, key=lambda c: (sum(each[c]), c == first))
        found = align(lp, list(best)) if best != first and math.isfinite(sum(each[best])) else None
        if found is None:  # the first look's reading, or a string its frames cannot hold
            return labels, spans, log_p
        return list(best), found, each[best][0]


def second_opinion(
    classifier: Predictor,
    labels: list[int],
    spans: list[tuple[int, int]],
    lp: np.ndarray,
    fields: list[np.ndarray | None],
    conf: list[float],
) -> tuple[list[int], list[float]]:
    """Each digit of a line whose digits stand apart, decided by the product of the reader's belief
    (`ctc.digit_posterior`) and the digit classifier's on its 28 × 28 field: the two routes' errors
    are not all the same (on 400 photos of spaced validation numbers, 15 read wrong become 12).
    The reader's belief is its first look's, also after second looks (`Reader.look_again`).
    Returns (labels, per-label confidences), a checked digit's confidence being the normalised
    product's."""
    at = [(i, f) for i, (k, f) in enumerate(zip(labels, fields, strict=True)) if k != OTHER and f is not None]
    if not at:
        return labels, conf
    probs = classifier.predict_proba(np.stack([f for _, f in at]))  # (n, 10), calibrated
    labels, conf = list(labels), list(conf)
    for (i, _), p in zip(at, probs, strict=True):
        q = digit_posterior(lp, spans[i], labels[i]) * p
        q /= q.sum()
        labels[i], conf[i] = int(q.argmax()), float(q.max())
    return labels, conf


def _field(crop: np.ndarray) -> np.ndarray | None:
    """A label's ink from the strip → MNIST's 28 × 28 field, or None when it holds no ink."""
    fitted = fit_field(crop, crop > 0.1) if crop.size and crop.max() > 0.1 else None
    return None if fitted is None else fitted[0]
