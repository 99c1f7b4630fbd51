"""Images that hold no digit, by kind: what "not a digit" is trained and measured on.

Each kind draws dark ink on light paper at photo scale (`draw`): scribbles, filled blobs,
hatching, broken strokes, polygon outlines (triangles, squares, pentagons), letters and symbols
(DejaVu fonts) for training; grids, stars, zigzags, speckle clouds and letters/symbols in other
fonts (Liberation, Noto) are held out whole, so a detector is measured on kinds it never saw.
Training turns them into MNIST's form with the very `preprocess` a photo goes through. Shapes
that are digits by another name (a ring is a 0, one straight stroke a 1) are never drawn.
Pure NumPy and Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from digitnet.data.glyphs import HELD_OUT_FONTS, LETTERS, STANDALONE_SYMBOLS, TRAIN_FONTS, font_files, render

TRAIN_KINDS = ("scribble", "blob", "hatching", "broken", "polygon", "letter", "symbol")
HELD_OUT_KINDS = ("grid", "star", "zigzag", "speckle", "letter-other-font", "symbol-other-font")
KINDS = TRAIN_KINDS + HELD_OUT_KINDS
SIZE = 160  # drawing canvas, px


def _scribble(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    pts = [tuple(rng.uniform(20, SIZE - 20, 2)) for _ in range(int(rng.integers(7, 14)))]
    d.line(pts, fill=0, width=int(rng.integers(4, 10)), joint="curve")


def _blob(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    c, r = rng.uniform(50, SIZE - 50, 2), rng.uniform(20, 50)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 10))))
    radii = r * rng.uniform(0.6, 1.3, len(angles))
    d.polygon(
        [(c[0] + q * np.cos(a), c[1] + q * np.sin(a)) for a, q in zip(angles, radii, strict=True)], fill=0
    )


def _hatching(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    step, slope, w = rng.uniform(10, 22), rng.uniform(-1.5, 1.5), int(rng.integers(3, 7))
    for x in np.arange(-SIZE, SIZE, step):
        d.line([(x, 20), (x + slope * (SIZE - 40), SIZE - 20)], fill=0, width=w)


def _broken(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Several short curved fragments that do not join into anything."""
    for _ in range(int(rng.integers(3, 7))):
        x, y = rng.uniform(20, SIZE - 20, 2)
        pts = [(x, y)]
        for _ in range(3):
            x, y = x + rng.uniform(-18, 18), y + rng.uniform(-18, 18)
            pts.append((x, y))
        d.line(pts, fill=0, width=int(rng.integers(4, 8)), joint="curve")


def _grid(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    n, w = int(rng.integers(3, 6)), int(rng.integers(4, 8))
    for i in range(n):
        t = 25 + (SIZE - 50) * i / (n - 1)
        d.line([(20, t), (SIZE - 20, t + rng.uniform(-6, 6))], fill=0, width=w)
        d.line([(t, 20), (t + rng.uniform(-6, 6), SIZE - 20)], fill=0, width=w)


def _polygon(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """A triangle, square or pentagon outline: corners, never a smooth ring (that would be a 0)."""
    _outline(d, rng, star=False)


def _star(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    _outline(d, rng, star=True)


def _zigzag(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """A sawtooth line across the page, four to eight teeth."""
    teeth, y, amp = int(rng.integers(4, 9)), rng.uniform(50, SIZE - 50), rng.uniform(15, 40)
    xs = np.linspace(15, SIZE - 15, 2 * teeth + 1)
    d.line(
        [(x, y + (amp if i % 2 else -amp)) for i, x in enumerate(xs)], fill=0, width=int(rng.integers(4, 8))
    )


def _outline(d: ImageDraw.ImageDraw, rng: np.random.Generator, *, star: bool) -> None:
    c, r = np.array([SIZE / 2, SIZE / 2]) + rng.uniform(-15, 15, 2), rng.uniform(40, 65)
    corners = int(rng.choice([3, 4, 5]))
    pts = []
    for i in range(corners * (2 if star else 1)):
        a = rng.uniform(0, 0.3) + 2 * np.pi * i / (corners * (2 if star else 1))
        q = r * (0.45 if star and i % 2 else 1.0)
        pts.append((c[0] + q * np.cos(a), c[1] + q * np.sin(a)))
    d.line([*pts, pts[0]], fill=0, width=int(rng.integers(4, 9)), joint="curve")


def _speckle(d: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(25, 70))):
        x, y, r = *rng.uniform(15, SIZE - 15, 2), rng.uniform(1.5, 5)
        d.ellipse([x - r, y - r, x + r, y + r], fill=0)


_DRAWN = {
    "scribble": _scribble,
    "blob": _blob,
    "hatching": _hatching,
    "broken": _broken,
    "polygon": _polygon,
    "grid": _grid,
    "star": _star,
    "zigzag": _zigzag,
    "speckle": _speckle,
}
_GLYPHS = {
    "letter": (LETTERS, TRAIN_FONTS),
    "symbol": (STANDALONE_SYMBOLS, TRAIN_FONTS),
    "letter-other-font": (LETTERS, HELD_OUT_FONTS),
    "symbol-other-font": (STANDALONE_SYMBOLS, HELD_OUT_FONTS),
}


def draw(kind: str, rng: np.random.Generator) -> Image.Image:
    """One image of `kind`: dark ink (grey level 0-60) on light paper (190-245), SIZE × SIZE."""
    if kind in _GLYPHS:
        chars, fonts = _GLYPHS[kind]
        files = font_files(fonts)
        glyph = render(chars[int(rng.integers(len(chars)))], files[int(rng.integers(len(files)))], rng)
        ink = Image.fromarray(glyph).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    else:
        mask = Image.new("L", (SIZE, SIZE), 255)
        _DRAWN[kind](ImageDraw.Draw(mask), rng)
        ink = Image.fromarray(255 - np.asarray(mask))
    alpha = np.asarray(ink, np.float32) / 255.0
    paper, tone = rng.uniform(190, 245), rng.uniform(0, 60)
    page = paper * (1 - alpha) + tone * alpha + rng.normal(0, 2.0, alpha.shape)
    return Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))


def images(kinds: tuple[str, ...], n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """`n` images drawn evenly from `kinds` (photo scale, dark on light), and each one's kind
    index into `kinds`; seeded."""
    rng = np.random.default_rng(seed)
    which = np.arange(n) % len(kinds)
    return [draw(kinds[k], rng) for k in which], which
