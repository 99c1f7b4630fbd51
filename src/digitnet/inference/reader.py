"""Reading a whole handwritten number: image → digit string, with a box and a confidence per digit.

One path, for every door (CLI `read`, `digitnet.read_number`, `DigitClassifier.read_number`, `POST
/v1/read`, the page): the same decoding and limits as single digits (`preprocess`), the ink found
the same way (`find_ink`, after `lines.even_light` has taken a gradient of light off the paper),
grown along faint strokes (`lines.whole_strokes`), cleaned of what is not writing
(`lines.clean_ink`: specks, dots, ruled lines, underlines), normalised to a 32-px strip
(`lines.normalize_line`), read by the `reader` network (CTC over the line, `networks.NumberReader`)
and decoded best-path. Glyphs the reader calls "not a digit" (a letter, a currency sign, a dash) are
reported as marks, never as digits. Boxes are in the input image's pixel coordinates.

`confidence` is the calibrated probability that the whole string is right: the CTC probability of
the decoded string (all its alignments) with the temperature fitted on validation numbers;
`unsure` when it falls under the threshold chosen there.
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
from scipy import ndimage
from torch import nn

from digitnet.checkpoint import PRETRAINED_DIR, checkpoint_version, load_checkpoint
from digitnet.data.synth import OTHER
from digitnet.errors import ConfigError, ModelError
from digitnet.inference.lines import (
    Geometry,
    best_path,
    clean_ink,
    even_light,
    log_softmax,
    normalize_line,
    string_log_prob,
    whole_strokes,
)
from digitnet.inference.preprocess import decode_image, find_ink, fit_field, work_gray
from digitnet.networks import READER_STRIDE

READ_MAX_SIDE = 1280  # larger photos are box-downscaled first: a 12-digit line still gets ~100 px a digit
DEFAULT_READER = "reader"  # pretrained/reader.pt: the bundled reader
Box = tuple[int, int, int, int]


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


def calibrated(
    logits: np.ndarray, temperature: float
) -> tuple[list[int], list[tuple[int, int]], np.ndarray, float]:
    """(labels, frame spans, log-probs (T, 12), log p(labels)) for one line's logits (12, T)."""
    lp = log_softmax(logits.T.astype(np.float64) / temperature, axis=1)  # (T, 12)
    labels, spans = best_path(lp)
    return labels, spans, lp, string_log_prob(lp, labels)


def decode_for_reading(source: str | Path | bytes | bytearray | memoryview) -> Image.Image:
    """Untrusted bytes or a file → an image, bounded like every decode but kept at the reading
    size (`READ_MAX_SIDE`): a row of digits needs more pixels than one digit does."""
    data = bytes(source) if isinstance(source, bytearray | memoryview) else source
    return decode_image(data, max_side=READ_MAX_SIDE)


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
    ) -> None:
        self._run_logits = run_logits  # (1, 1, 32, W) float32 → (1, 12, W/4)
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
        )

    @classmethod
    def load(cls, model: str | Path = "default", backend: str = "auto", threads: int | None = None) -> Reader:
        """`model`: "default" (the bundled reader), a `reader` run folder or its model.pt."""
        if backend not in ("auto", "torch"):
            raise ConfigError(f"the reader runs with backend 'torch' or 'auto', got {backend!r}")
        if threads is not None and threads < 1:
            raise ConfigError("threads must be >= 1")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        loaded = load_checkpoint(
            PRETRAINED_DIR / f"{DEFAULT_READER}.pt" if str(model) == "default" else model
        )
        if loaded.name != "reader":
            raise ModelError(
                f"{loaded.path}: a {loaded.name!r} model reads one digit, not numbers: "
                "give a `reader` run (digitnet train --model reader)"
            )
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
        if isinstance(img, str | Path | bytes | bytearray | memoryview):
            img = decode_for_reading(img)
        size = img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])
        if isinstance(img, Image.Image) and "original_size" in img.info:  # decoded smaller than it is
            ow, oh = img.info["original_size"]
            size = (ow, oh) if (ow >= oh) == (size[0] >= size[1]) else (oh, ow)  # EXIF may have turned it
        gray = work_gray(img, READ_MAX_SIDE)
        to_input = max(size) / max(gray.shape)  # input pixels per working pixel
        ink = find_ink(even_light(gray))
        if ink.blank:  # the levelling assumes paper at all four edges; a dark edge breaks that
            ink = find_ink(gray)
        if ink.blank:
            return EMPTY
        keep = clean_ink(whole_strokes(ink.image, ink.mask))
        line = normalize_line(ink.image, keep)
        if line is None:
            return EMPTY
        strip, geom = line
        logits = self._run_logits(strip[None, None])[0]  # (12, T)
        labels, spans, lp, log_p = calibrated(logits, self.temperature)
        boxes = _boxes(strip, geom, spans, to_input, size)
        digits, marks = [], []
        for label, (t0, t1), (box, crop) in zip(labels, spans, boxes, strict=True):
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
        return NumberReading(number, confidence, unsure, digits, marks, strip)


def _units(strip: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """The strip's ink as pieces left to right: (component labels (32, W), the component ids of
    each piece). A piece is a connected stroke, with strokes that sit one above the other (a 5's
    detached bar, the parts of a 4) merged into one."""
    components, _n = ndimage.label(strip > 0.1, structure=np.ones((3, 3), bool))
    spans = [(f[1].start, f[1].stop, k) for k, f in enumerate(ndimage.find_objects(components), 1) if f]
    units: list[tuple[int, int, list[int]]] = []
    for x0, x1, k in sorted(spans):
        if units:
            u0, u1, ks = units[-1]
            if min(x1, u1) - max(x0, u0) > 0.5 * min(x1 - x0, u1 - u0):  # mostly above/below the last
                units[-1] = (u0, max(u1, x1), [*ks, k])
                continue
        units.append((x0, x1, [k]))
    return components, [ks for _, _, ks in units]


def label_masks(strip: np.ndarray, n_labels: int) -> list[np.ndarray]:
    """Which ink of the strip belongs to which of `n_labels` labels (left to right), one bool mask
    (32, W) each. The labels follow the ink's pieces in order: with one piece per label, each takes
    its own; digits that touch make fewer pieces than labels, so a wide piece is cut into as many
    digits as its width holds; a digit in several pieces makes more, so the narrowest pieces join
    their nearest neighbour. (CTC's frames say *which* digits, not exactly *where*.)

    Pieces are merged as column profiles (W,), each width kept up to date, and masks are built only
    for the pieces left: a page of hundreds of hairlines costs a few ms, not seconds."""
    if n_labels == 0:
        return []
    components, units = _units(strip)
    if not units:
        return [np.zeros(strip.shape, bool) for _ in range(n_labels)]
    by_id = np.zeros(int(components.max()) + 1, np.int64)  # component id → its piece
    for u, ks in enumerate(units):
        by_id[ks] = u
    piece = np.where(components > 0, by_id[components], -1)  # (32, W): which piece, -1 for paper
    occupied = np.zeros((len(units), strip.shape[1]), bool)  # (pieces, W): each piece's ink columns
    r, c = np.nonzero(piece >= 0)
    occupied[piece[r, c], c] = True
    cols = list(occupied)
    members = [[u] for u in range(len(units))]
    widths = [int(c.sum()) for c in cols]
    while len(cols) > n_labels:  # a broken digit: merge the narrowest piece into its neighbour
        i = int(np.argmin(widths))
        j = i - 1 if i == len(cols) - 1 or (i > 0 and widths[i - 1] < widths[i + 1]) else i + 1
        a, b = min(i, j), max(i, j)
        cols[a] |= cols[b]
        members[a] += members[b]
        widths[a] = int(cols[a].sum())
        del cols[b], members[b], widths[b]
    spread = np.array(widths, float)
    shares = np.ones(len(cols), int)  # touching digits: wide pieces hold more than one
    for _ in range(n_labels - len(cols)):
        shares[int(np.argmax(spread / shares))] += 1
    masks = []
    for c, group, share in zip(cols, members, shares, strict=True):
        unit = np.isin(piece, group)
        x = np.flatnonzero(c)
        edges = np.linspace(x[0], x[-1] + 1, share + 1)
        for k in range(share):
            band = np.zeros(strip.shape[1], bool)
            band[round(edges[k]) : round(edges[k + 1])] = True
            masks.append(unit & band[None, :])
    return masks


def _boxes(
    strip: np.ndarray, geom: Geometry, spans: list[tuple[int, int]], to_input: float, size: tuple[int, int]
) -> list[tuple[Box, np.ndarray]]:
    """Each label's box in input pixels and its ink, cropped from the strip (what it looked like)."""
    out = []
    for i, mask in enumerate(label_masks(strip, len(spans))):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:  # a label with no ink of its own: the columns of its frames
            a, b = spans[i]
            rows = np.arange(strip.shape[0])
            cols = np.arange(a * READER_STRIDE, (b + 1) * READER_STRIDE)
            mask = np.zeros_like(mask)
        r0, r1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        (ax, ay), (bx, by) = geom.to_input(x0, r0), geom.to_input(x1, r1)
        box = (
            max(0, int(ax * to_input)),
            max(0, int(ay * to_input)),
            min(size[0], math.ceil(bx * to_input)),
            min(size[1], math.ceil(by * to_input)),
        )
        # its own ink, with one pixel around it for the anti-aliased edges; a neighbour's is left out
        own = ndimage.binary_dilation(mask, np.ones((3, 3), bool))[r0:r1, x0:x1]
        out.append((box, strip[r0:r1, x0:x1] * own))
    return out
