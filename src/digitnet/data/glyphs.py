"""Glyphs that are not digits, rendered from the system's fonts, in MNIST's form.

Letters, currency signs and punctuation drawn with Debian's DejaVu, Liberation and Noto fonts
(`fonts-dejavu-core`, `fonts-liberation`, `fonts-noto-core`), each as a (28, 28) uint8 image,
light on dark, its longest side about 20 px like an MNIST digit. The fonts are split in two
families so an evaluation can hold whole styles out: `TRAIN_FONTS` (DejaVu) for training and
`HELD_OUT_FONTS` (Liberation, Noto) for measuring. Handwriting fonts such as the `@fontsource`
packages are never used: they belong to an independent evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitnet.errors import DatasetError

FONT_ROOT = Path("/usr/share/fonts/truetype")
TRAIN_FONTS = ("dejavu/DejaVuSans*.ttf", "dejavu/DejaVuSerif*.ttf")
HELD_OUT_FONTS = ("liberation/Liberation*.ttf", "noto/NotoSans-*.ttf", "noto/NotoSerif-*.ttf")
# Letters that could pass for a digit (O/0, I/l/1, Z/2, S/5, B/8, G/6, q/9, …) are left out:
# nobody can tell them apart, so a detector must not be asked to.
LETTERS = "ACEFHKLMNPRUVWXYcefhkmnprtuvwxy"
# Symbols that are not a 1 by another name, alone or in a line ("/", "!", ")" and their kin are).
STANDALONE_SYMBOLS = "$€£¥%#&@+=*?<>"
DASHES = "-–—_"


def font_files(patterns: tuple[str, ...], root: Path = FONT_ROOT) -> list[Path]:
    """The font files matching `patterns` under `root`, sorted; never a fontsource font."""
    found = sorted(
        {p for pattern in patterns for p in root.glob(pattern) if "fontsource" not in str(p).lower()}
    )
    if not found:
        raise DatasetError(
            f"no fonts match {', '.join(patterns)} under {root}: install Debian's fonts-dejavu-core, "
            "fonts-liberation and fonts-noto-core (`make system-deps` does)"
        )
    return found


def render(
    char: str, font: Path, rng: np.random.Generator, size: int = 28, shrink: tuple[float, float] = (0.6, 1.0)
) -> np.ndarray:
    """One glyph (size, size) uint8, light on dark, slightly rotated; its longest side is 20 px
    (an MNIST digit's) times a factor drawn from `shrink`."""
    pt = int(rng.integers(36, 56))
    face = ImageFont.truetype(str(font), pt)
    canvas = Image.new("L", (pt * 2, pt * 2), 0)
    ImageDraw.Draw(canvas).text(
        (pt // 2, pt // 4), char, fill=255, font=face, stroke_width=int(rng.integers(0, 3)), stroke_fill=255
    )
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
    box = canvas.getbbox()
    out = Image.new("L", (size, size), 0)
    if box is None:
        return np.asarray(out)
    glyph = canvas.crop(box)
    scale = 20.0 / max(glyph.size) * float(rng.uniform(*shrink))
    glyph = glyph.resize(
        (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.Resampling.LANCZOS
    )
    out.paste(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
    return np.asarray(out)


def glyph_set(
    chars: str, patterns: tuple[str, ...], n: int, seed: int, shrink: tuple[float, float] = (0.6, 1.0)
) -> np.ndarray:
    """`n` glyphs (n, 28, 28) uint8 drawn from `chars` in the fonts matching `patterns`, seeded
    (`shrink`: as `render`'s)."""
    rng = np.random.default_rng(seed)
    fonts = font_files(patterns)
    out = np.empty((n, 28, 28), np.uint8)
    for i in range(n):
        char, font = chars[int(rng.integers(len(chars)))], fonts[int(rng.integers(len(fonts)))]
        out[i] = render(char, font, rng, shrink=shrink)
    return out
