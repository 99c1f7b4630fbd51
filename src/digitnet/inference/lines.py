"""A number's text line, from ink to the reader's input and back: the geometry of reading.

`even_light` takes a gradient of light off the paper before the ink is looked for (`flat_paper`
where the border does not show it); `whole_strokes`
grows the ink mask along faint parts of strokes; `clean_ink` removes what is ink but not writing
(specks, dots, ruled lines, underlines) from an ink mask; `normalize_line` crops what is left and
scales it to the reader's strip, 32 px tall with the text 28 px high, remembering how to map strip
columns back to the input image (`Geometry`); `rescaled` gives the reader a second look at a strip.
`find_line` is the whole way from an image to the strip, the one every door reads through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from digitnet.inference.preprocess import decode_image, find_ink, work_gray
from digitnet.networks import READER_STRIDE

STRIP_H, TEXT_H, PAD_X = 32, 28, 8  # strip height, text height inside it, blank columns each side
MAX_STRIP_W = 2048  # a 12-digit number at 28 px is ~450 px; wider lines are scaled down to fit
MIN_TEXT_H = 4  # working pixels: writing lower than this holds no digit a person could read
# Of `find_ink`'s ink scale: a stroke's faint parts, kept where they touch sure ink. MNIST's writers
# often draw part of a digit faintly (a 9's loop, a 7's bar, a 5's top); at 0.3 those parts were
# cut and the rest read as another digit. 0.08, chosen on 2,400 photos of validation numbers:
# 24 -> 20 spaced numbers wrong, tight and touching unchanged (22, 53).
WEAK_INK = 0.08
READ_MAX_SIDE = 1280  # larger photos are box-downscaled first: a 12-digit line still gets ~100 px a digit
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in the input image's pixels


@dataclass(frozen=True)
class Geometry:
    """Strip column c ↔ input x = x0 + (c - PAD_X) / scale; strip row r ↔ y0 + (r - top) / scale."""

    x0: int
    y0: int
    scale: float
    top: int
    width: int  # strip width in columns (a multiple of READER_STRIDE)

    def to_input(self, c: float, r: float) -> tuple[float, float]:
        return self.x0 + (c - PAD_X) / self.scale, self.y0 + (r - self.top) / self.scale


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = Image.fromarray(a.astype(np.float32, copy=False), "F").resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def even_light(gray: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] → the same with an even slope of light across the paper taken off.

    A line of digits is wide, so light falling off across a photo changes the paper by more than
    the ink's contrast over its width; `find_ink` measures the paper's noise as the spread about
    one paper level, and a gradient inflates that spread until faint ink counts as noise (whole
    numbers came back blank, 7s lost their bars). The slope is measured from the medians of the
    four border strips (paper, as `find_ink` assumes) and the centre keeps its level."""
    h, w = gray.shape
    b = max(1, min(h, w) // 20)
    if min(h, w) < 8 * b:
        return gray
    left, right = np.median(gray[:, :b]), np.median(gray[:, -b:])
    top, bottom = np.median(gray[:b]), np.median(gray[-b:])
    gx, gy = (right - left) / (w - b), (bottom - top) / (h - b)  # paper level per pixel
    plane = gx * (np.arange(w, dtype=np.float32) - (w - 1) / 2)[None, :]
    plane = plane + gy * (np.arange(h, dtype=np.float32) - (h - 1) / 2)[:, None]  # (H, W)
    return np.clip(gray - plane, 0.0, 1.0).astype(np.float32, copy=False)


def flat_paper(gray: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] → the same with the paper's own light taken off, wherever it varies: the
    paper's level is a median filter over a window half the short side wide (ink is a minority
    in it), at 16 px on the short side, and it is subtracted. `find_line`'s second try, where
    `even_light`'s border misled it: a shadow along one edge, or a flat fill (what a rotation
    leaves) round paper lit unevenly inside, where `even_light` sees no slope and `find_ink`
    measured the paper's noise about the wrong level (a 5-digit number read as blank paper, 1
    photo in 800 of `bench read`). Not the first try: 1–16 ms a photo, where `even_light` is ~0."""
    h, w = gray.shape
    f = max(1, min(h, w) // 16)
    small = _resize(gray, (max(1, w // f), max(1, h // f)))  # (h/f, w/f): the light, not the ink
    level = ndimage.median_filter(small, size=max(3, min(small.shape) // 2 | 1), mode="nearest")
    paper = _resize(level, (w, h))  # (H, W)
    return np.clip(gray - paper + float(np.median(level)), 0.0, 1.0).astype(np.float32, copy=False)


def whole_strokes(image: np.ndarray, mask: np.ndarray, low: float = WEAK_INK) -> np.ndarray:
    """`find_ink`'s mask (H, W) grown along the strokes it touches: every pixel of `image` above
    `low` that is connected to the mask (hysteresis, as in Canny's edges). One threshold splits a
    line's ink badly when its strokes differ in weight (a thick 4 beside thin, blurred digits: the
    thin ones kept only fragments); faint ink that touches no sure ink stays out (specks, grain)."""
    weak = image > low
    box = _bbox(weak)
    if box is None:
        return mask
    y0, y1, x0, x1 = box  # nothing above `low` lies outside: label the box alone
    pieces, _n = ndimage.label(weak[y0:y1, x0:x1], structure=np.ones((3, 3), bool))
    sure = np.unique(pieces[mask[y0:y1, x0:x1] & weak[y0:y1, x0:x1]])
    out = mask.copy()
    out[y0:y1, x0:x1] |= np.isin(pieces, sure[sure > 0])
    return out


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1): the box of `mask`'s set pixels, or None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def long_runs(mask: np.ndarray, length: int) -> np.ndarray:
    """The pixels of `mask` (H, W) that lie in a horizontal run of at least `length` set pixels
    (a binary opening by a 1 × length line, in O(H·W) whatever the length)."""
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)  # +1 run start, -1 run end
    starts, ends = np.argwhere(edges == 1), np.argwhere(edges == -1)  # both in row-major order
    out = np.zeros_like(mask)
    for (row, x0), x1 in zip(
        starts[(ends[:, 1] - starts[:, 1]) >= length],
        ends[(ends[:, 1] - starts[:, 1]) >= length, 1],
        strict=True,
    ):
        out[row, x0:x1] = True
    return out


def _vertical_opening(mask: np.ndarray, length: int) -> np.ndarray:
    """Pixels in a vertical run of at least `length` (strokes that go up and down, not lines)."""
    h = mask.shape[0]
    if h < length:
        return np.zeros_like(mask)
    core = np.ones((h - length + 1, mask.shape[1]), bool)
    for k in range(length):  # erosion: every pixel of the window set
        core &= mask[k : h - length + 1 + k]
    out = np.zeros_like(mask)
    for k in range(length):  # dilation back: the window's pixels
        out[k : h - length + 1 + k] |= core
    return out


def clean_ink(mask: np.ndarray) -> np.ndarray:
    """`mask` (H, W) bool without specks and dots (components much smaller than the writing) and
    without long thin horizontal strokes (ruled lines, underlines), also where they cross a digit.
    The work is done in the box of the ink (the page around it is empty: the same answer, in a
    third of the time on a photo)."""
    box = _bbox(mask)
    if box is None:
        return mask
    y0, y1, x0, x1 = box
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = _clean(mask[y0:y1, x0:x1], mask.shape)
    return out


def _clean(mask: np.ndarray, page: tuple[int, ...]) -> np.ndarray:
    """`clean_ink` on the ink's box (h, w) of a page of shape `page` (H, W)."""
    # Ruled lines: a horizontal run longer than the text is tall, where the stroke is thin.
    run = max(8, int(1.5 * mask.shape[0]), page[1] // 3)
    if page[1] > run and mask.shape[1] >= run:  # (a run as long as the page is wide is no line)
        long = long_runs(mask, run)
        if long.any():
            mask = mask & ~(long & ~_vertical_opening(mask, 5))  # keep where a digit's stroke crosses
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    boxes = ndimage.find_objects(labels)
    sizes = np.array([max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes])
    tall = np.array([b[0].stop - b[0].start for b in boxes])
    text_h = float(np.max(tall))  # the tallest component is writing
    keep = sizes >= 0.25 * text_h  # a dot is small both ways; a 5's bar is not
    # A dot alone on a page (nothing else to compare it with): small against the page, round, filled.
    wide = np.array([b[1].stop - b[1].start for b in boxes])
    area = ndimage.sum_labels(mask, labels, np.arange(1, n + 1))
    round_ = np.maximum(tall, wide) < 2 * np.minimum(tall, wide)
    keep &= ~((sizes < 0.1 * min(page)) & round_ & (area > 0.5 * tall * wide))
    return np.isin(labels, np.flatnonzero(keep) + 1)


def normalize_line(ink: np.ndarray, keep: np.ndarray | None = None) -> tuple[np.ndarray, Geometry] | None:
    """Ink (H, W) float in [0, 1] (light on dark) → the reader's strip (32, W') float32 and its
    Geometry; None when there is no ink. `keep` (a `clean_ink` mask) says which ink is writing:
    the crop is its box and everything else (a removed line, a dot) is blanked, edges kept."""
    box = ink > 0.1 if keep is None else keep
    rows, cols = np.flatnonzero(box.any(axis=1)), np.flatnonzero(box.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if y1 - y0 < MIN_TEXT_H:  # a hairline stretched to 32 px would read as a row of 0s or 1s
        return None
    crop = ink[y0:y1, x0:x1]
    if keep is not None:  # one pixel around the writing keeps its anti-aliased edges
        crop = crop * ndimage.binary_dilation(keep[y0:y1, x0:x1], np.ones((3, 3), bool))
    scale = TEXT_H / (y1 - y0)
    if (x1 - x0) * scale > MAX_STRIP_W - 2 * PAD_X:
        scale = (MAX_STRIP_W - 2 * PAD_X) / (x1 - x0)
    h, w = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    small = _resize(crop, (w, h))
    peak = float(small.max())
    if 0.0 < peak < 1.0:  # thin strokes fade when shrunk; keep the ink at full strength
        small = small / peak
    width = -(-(w + 2 * PAD_X) // READER_STRIDE) * READER_STRIDE
    strip = np.zeros((STRIP_H, width), np.float32)
    top = (STRIP_H - h) // 2
    strip[top : top + h, PAD_X : PAD_X + w] = small
    return strip, Geometry(x0, y0, scale, top, width)


def rescaled(strip: np.ndarray, wider: float, taller: float) -> np.ndarray:
    """The reader's strip (32, W) seen again with its ink `wider` times as wide and `taller` times
    as tall, centred in 32 rows (cropped when taller), the width rounded to READER_STRIDE."""
    w = max(READER_STRIDE, round(strip.shape[1] * wider / READER_STRIDE) * READER_STRIDE)
    h = max(1, round(STRIP_H * taller))
    resized = _resize(strip, (w, h))  # (h, w)
    if h >= STRIP_H:
        top = (h - STRIP_H) // 2
        return resized[top : top + STRIP_H]
    out = np.zeros((STRIP_H, w), np.float32)
    out[(STRIP_H - h) // 2 : (STRIP_H - h) // 2 + h] = resized
    return out


@dataclass(frozen=True)
class Line:
    """An image's line of writing, as the reader takes it, and the way back to the image."""

    strip: np.ndarray  # (32, W) float32 in [0, 1], light on dark; W a multiple of READER_STRIDE
    geom: Geometry  # strip ↔ the working image
    to_input: float  # input pixels per working pixel
    size: tuple[int, int]  # the input image's (width, height)

    def box(self, c0: int, r0: int, c1: int, r1: int) -> Box:
        """Strip columns [c0, c1) × rows [r0, r1) → their box in the input image's pixels."""
        (ax, ay), (bx, by) = self.geom.to_input(c0, r0), self.geom.to_input(c1, r1)
        return (
            max(0, int(ax * self.to_input)),
            max(0, int(ay * self.to_input)),
            min(self.size[0], math.ceil(bx * self.to_input)),
            min(self.size[1], math.ceil(by * self.to_input)),
        )


def decode_for_reading(source: str | Path | bytes | bytearray | memoryview) -> Image.Image:
    """Untrusted bytes or a file → an image, bounded like every decode but kept at the reading
    size (`READ_MAX_SIDE`): a row of digits needs more pixels than one digit does."""
    data = bytes(source) if isinstance(source, bytearray | memoryview) else source
    return decode_image(data, max_side=READ_MAX_SIDE)


def find_line(img: Image.Image | np.ndarray | str | Path | bytes) -> Line | None:
    """An image (a path or its bytes, decoded by `decode_for_reading`; a PIL image; an (H, W) /
    (H, W, 3|4) array) → its line of writing, or None when it holds none: the ink found as for one
    digit (after `even_light`), grown along faint strokes, cleaned of what is not writing, and
    normalised to the reader's strip."""
    if isinstance(img, str | Path | bytes | bytearray | memoryview):
        img = decode_for_reading(img)
    size = img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])
    if isinstance(img, Image.Image) and "original_size" in img.info:  # decoded smaller than it is
        ow, oh = img.info["original_size"]
        size = (ow, oh) if (ow >= oh) == (size[0] >= size[1]) else (oh, ow)  # EXIF may have turned it
    gray = work_gray(img, READ_MAX_SIDE)
    ink = find_ink(even_light(gray))
    if ink.blank:  # even_light trusts the border to show the paper's light; where it lies (a
        # shadow along one edge, a flat fill round a rotated photo), level the paper everywhere
        ink = find_ink(flat_paper(gray))
    if ink.blank:
        return None
    found = normalize_line(ink.image, clean_ink(whole_strokes(ink.image, ink.mask)))
    if found is None:
        return None
    strip, geom = found
    return Line(strip, geom, max(size) / max(gray.shape), size)
