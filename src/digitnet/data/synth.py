"""Synthetic handwritten numbers composed from MNIST digits, and photos of them.

`compose` lays digits (uint8 (28, 28), light on dark) side by side at MNIST scale the way people
write numbers: unequal sizes, a wandering baseline, uneven gaps, and, by `spacing`, clear gaps
("spaced"), near-touching ("tight") or strokes crossing into the neighbour ("touching"). Optional
extras make it harder: a slant, a digit broken into two strokes, dots and a ruled line or
underline (ink that is not a digit), and glyphs that are not digits (`marks`, labelled `OTHER`).
`photo` renders a composite as a photo or scan: dark ink on paper-like, unevenly lit paper,
slightly rotated, blurred, JPEG-compressed.

Data discipline: the reader trains on numbers composed from MNIST *training* digits and is measured
on numbers composed from MNIST *test* digits (`digitnet bench read`). Pure NumPy and Pillow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SPACINGS = ("spaced", "tight", "touching")
# Gap between neighbouring digits' ink boxes at MNIST scale (a digit is ~20 px tall), in px;
# negative gaps overlap: the strokes of one digit cross into the next.
GAPS = {"spaced": (4, 14), "tight": (0, 2), "touching": (-7, -1)}
OTHER = 10  # the label of a glyph that is not a digit
HEIGHT = 28  # MNIST scale: the composite's height before baseline wander


@dataclass(frozen=True)
class Composite:
    image: np.ndarray  # (H, W) uint8, light ink on dark, MNIST scale
    labels: list[int]  # left to right: 0-9, or OTHER for a glyph that is not a digit
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x0, y0, x1, y1) per label


def _ink_box(a: np.ndarray) -> np.ndarray:
    """`a` cropped to its ink (a glyph's bounding box)."""
    rows, cols = np.flatnonzero(a.max(axis=1) > 0), np.flatnonzero(a.max(axis=0) > 0)
    if rows.size == 0:
        return a[:1, :1]
    return a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _scaled(a: np.ndarray, scale: float) -> np.ndarray:
    h, w = a.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR))


def _break_stroke(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A digit drawn in two strokes: a thin band across it erased (a 5 with its bar detached)."""
    a = a.copy()
    h, w = a.shape
    if rng.random() < 0.5 and h > 8:
        r = int(rng.integers(h // 4, 3 * h // 4))
        a[r : r + int(rng.integers(1, 3))] = 0
    elif w > 8:
        c = int(rng.integers(w // 4, 3 * w // 4))
        a[:, c : c + int(rng.integers(1, 3))] = 0
    return a


def compose(
    glyphs: list[np.ndarray],
    labels: list[int],
    rng: np.random.Generator,
    spacing: str = "spaced",
    *,
    hard: bool = True,
) -> Composite:
    """Digits (and mark glyphs) (28, 28) uint8 → one number, left to right; see the module docstring.

    `hard=False` leaves out slant, broken strokes, dots and lines (the benchmark's clean photos
    still get paper, blur and JPEG from `photo`)."""
    lo, hi = GAPS[spacing]
    pieces = []
    for g, label in zip(glyphs, labels, strict=True):
        piece = _scaled(_ink_box(g), float(rng.uniform(0.8, 1.2)))  # unequal sizes
        if hard and label != OTHER and rng.random() < 0.08:
            piece = _break_stroke(piece, rng)
        pieces.append(piece)
    wander = rng.normal(0, 1.2, len(pieces)).cumsum()  # the baseline drifts from digit to digit
    wander -= wander.mean()
    tilt = float(rng.uniform(-0.08, 0.08))  # and the whole line may slope
    margin = 6
    x, places = margin, []
    for i, piece in enumerate(pieces):
        h, w = piece.shape
        base = HEIGHT - 4 + wander[i] + tilt * x
        places.append((x, round(base - h)))
        gap = int(rng.integers(lo, hi + 1))
        if i + 1 < len(pieces):  # an overlap crosses strokes, it never hides a digit inside another
            gap = max(gap, -int(0.4 * min(w, pieces[i + 1].shape[1])))
            if OTHER in (labels[i], labels[i + 1]):
                gap = max(gap, 1)  # a mark sits beside the digits, never inside them
        x += w + gap
    top = min(y for _, y in places) - margin
    height = max(y + p.shape[0] for (_, y), p in zip(places, pieces, strict=True)) - top + margin
    width = max(px + p.shape[1] for (px, _), p in zip(places, pieces, strict=True)) + margin
    canvas = np.zeros((height, width), np.uint8)
    boxes = []
    for (px, py), piece in zip(places, pieces, strict=True):
        y0 = py - top
        region = canvas[y0 : y0 + piece.shape[0], px : px + piece.shape[1]]
        np.maximum(region, piece, out=region)  # overlapping strokes: the darker ink wins
        boxes.append((px, y0, px + piece.shape[1], y0 + piece.shape[0]))
    if hard:
        canvas = _clutter(canvas, rng)
        canvas, boxes = _slant(canvas, boxes, float(rng.uniform(-0.3, 0.3)) if rng.random() < 0.5 else 0.0)
    return Composite(canvas, list(labels), boxes)


def _clutter(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink that is not a digit: dots and specks, a ruled line or an underline (unlabelled)."""
    h, w = canvas.shape
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.25:  # dots and specks
        for _ in range(int(rng.integers(1, 5))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.6, 1.8)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(rng.integers(150, 256)))
    if rng.random() < 0.2:  # a ruled line across, or an underline below the digits
        y = float(rng.uniform(h - 6, h - 2)) if rng.random() < 0.6 else float(rng.uniform(2, h - 2))
        x0, x1 = rng.uniform(0, 0.2 * w), rng.uniform(0.8 * w, w)
        dy = rng.uniform(-1.5, 1.5)
        draw.line([(x0, y), (x1, y + dy)], fill=int(rng.integers(120, 256)), width=int(rng.integers(1, 3)))
    return np.asarray(img)


def _slant(
    canvas: np.ndarray, boxes: list[tuple[int, int, int, int]], shear: float
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Italic writing: x' = x + shear · (y - h/2); boxes follow their corners."""
    if not shear:
        return canvas, boxes
    h, _w = canvas.shape
    pad = int(np.ceil(abs(shear) * h / 2)) + 1
    wide = np.pad(canvas, ((0, 0), (pad, pad)))
    # PIL's affine maps output (x, y) to input (a x + b y + c, ...): the inverse shear.
    out = Image.fromarray(wide).transform(
        wide.shape[::-1],
        Image.Transform.AFFINE,
        (1, shear, -shear * h / 2, 0, 1, 0),
        Image.Resampling.BILINEAR,
    )
    moved = []
    for x0, y0, x1, y1 in boxes:
        xs = [x + pad - shear * (y - h / 2) for x in (x0, x1) for y in (y0, y1)]
        moved.append((int(min(xs)), y0, int(np.ceil(max(xs))), y1))
    return np.asarray(out), moved


def number(
    x: np.ndarray,
    y: np.ndarray,
    length: int,
    rng: np.random.Generator,
    spacing: str = "spaced",
    *,
    marks: list[np.ndarray] | None = None,
    mark_rate: float = 0.0,
    hard: bool = True,
) -> Composite:
    """A random `length`-digit number from MNIST images `x` (N, 28, 28) with labels `y`, and with
    probability `mark_rate` one glyph from `marks` (not a digit) beside or among the digits."""
    idx = rng.integers(0, len(x), length)
    glyphs, labels = [x[i] for i in idx], [int(y[i]) for i in idx]
    if marks and rng.random() < mark_rate:
        at = int(rng.integers(0, length + 1))
        glyphs.insert(at, marks[int(rng.integers(0, len(marks)))])
        labels.insert(at, OTHER)
    return compose(glyphs, labels, rng, spacing, hard=hard)


@dataclass(frozen=True)
class Photo:
    data: bytes  # the encoded file (PNG or JPEG)
    format: str
    text: str  # the digits it shows
    spacing: str


def photo(comp: Composite, rng: np.random.Generator, spacing: str = "spaced") -> Photo:
    """A composite as a phone photo or scan: dark ink on paper, 2–3.5× MNIST scale, uneven light,
    paper grain, a slight rotation, blur, and JPEG (or PNG) compression."""
    scale = float(rng.uniform(2.0, 3.5))
    ink = Image.fromarray(comp.image).resize(
        (round(comp.image.shape[1] * scale), round(comp.image.shape[0] * scale)), Image.Resampling.BICUBIC
    )
    border = int(rng.integers(12, 48))
    alpha = np.pad(np.asarray(ink, np.float32) / 255.0, border)  # (H, W) ink coverage
    h, w = alpha.shape
    paper = float(rng.uniform(175, 245))
    light = np.linspace(0, 1, w)[None, :] * rng.uniform(-25, 25) + np.linspace(0, 1, h)[
        :, None
    ] * rng.uniform(-15, 15)
    grain = rng.normal(0, rng.uniform(1.5, 6.0), (h, w))
    ink_tone = float(rng.uniform(5, 90))
    page = (paper + light + grain) * (1 - alpha) + ink_tone * alpha
    img = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
    angle = float(rng.uniform(-3, 3))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=int(paper))
    sigma = float(rng.uniform(0, 1.2))
    if sigma > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    buf = io.BytesIO()
    fmt = "JPEG" if rng.random() < 0.7 else "PNG"
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=int(rng.integers(55, 95)))
    else:
        img.save(buf, "PNG")
    text = "".join(str(v) for v in comp.labels if v != OTHER)
    return Photo(buf.getvalue(), fmt, text, spacing)


def digit_photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """One MNIST digit (28, 28) as a JPEG 'photo': scaled 1.5–5×, thickened, dark ink on light noisy
    paper, at a random place on a 100–400 px canvas (the real-image suite)."""
    n = int(28 * rng.uniform(1.5, 5.0))
    big = Image.fromarray(digit).resize((n, n), Image.Resampling.BILINEAR)
    big = big.filter(ImageFilter.MaxFilter(int(rng.choice([3, 5])) if n > 60 else 3))  # thicker strokes
    w, h = (int(rng.integers(max(100, n + 10), 401)) for _ in range(2))
    paper, ink = rng.uniform(0.8, 0.95), rng.uniform(0.05, 0.3)
    canvas = np.full((h, w), paper, np.float32) + rng.normal(0, rng.uniform(0.01, 0.04), (h, w)).astype(
        np.float32
    )
    y, x = int(rng.integers(0, h - n + 1)), int(rng.integers(0, w - n + 1))
    a = np.asarray(big, np.float32) / 255.0
    canvas[y : y + n, x : x + n] = canvas[y : y + n, x : x + n] * (1 - a) + ink * a
    buf = io.BytesIO()
    Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8)).save(
        buf, "JPEG", quality=int(rng.integers(40, 86))
    )
    return buf.getvalue()
