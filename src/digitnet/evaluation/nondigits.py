"""A fixed probe set of images that hold no digit, for "knowing when it does not know".

`not_digits()` draws 40 images: 10 blank or near-blank pages (tones, uneven lighting, paper
noise) and 30 marks that are not digits (scribbles, blobs, hatching, rectangles, grids, speckle).
`evaluate` reports how many of them a model flags empty or unsure; the tests use the same set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

N_BLANK = 10


def not_digits(rng: np.random.Generator) -> list[Image.Image]:
    """40 images that hold no digit: blank/near-blank pages, scribbles, shapes, hatching, letters-ish."""
    out: list[Image.Image] = []
    for level in (255, 0, 128, 200):  # blank pages of several tones
        out.append(Image.new("L", (120, 120), level))
    grad = np.tile(np.linspace(200, 250, 160, dtype=np.float32), (120, 1))
    out.append(Image.fromarray(grad.astype(np.uint8)))  # uneven lighting, no ink
    for _ in range(5):  # paper noise only
        out.append(Image.fromarray(np.clip(rng.normal(225, 5, (150, 150)), 0, 255).astype(np.uint8)))
    for k in range(30):
        img = Image.new("L", (200, 200), 235)
        d = ImageDraw.Draw(img)
        kind = k % 6
        if kind == 0:  # random-walk scribble
            pts = [tuple(rng.integers(20, 180, 2)) for _ in range(int(rng.integers(6, 14)))]
            d.line(pts, fill=20, width=int(rng.integers(4, 10)))
        elif kind == 1:  # filled blob
            x0, y0 = rng.integers(20, 80, 2)
            d.ellipse(
                [int(x0), int(y0), int(x0 + rng.integers(60, 110)), int(y0 + rng.integers(60, 110))], fill=20
            )
        elif kind == 2:  # hatching
            for i in range(0, 200, int(rng.integers(12, 25))):
                d.line([(i, 20), (i + 60, 180)], fill=20, width=5)
        elif kind == 3:  # a rectangle outline
            d.rectangle(
                [40, 40, int(rng.integers(120, 180)), int(rng.integers(120, 180))], outline=20, width=8
            )
        elif kind == 4:  # a cross-hatched grid '#'-like mark of many strokes
            for i in range(4):
                d.line([(30, 40 + 35 * i), (170, 40 + 35 * i)], fill=20, width=6)
                d.line([(40 + 35 * i, 30), (40 + 35 * i, 170)], fill=20, width=6)
        else:  # speckle cloud
            for _ in range(int(rng.integers(30, 80))):
                x, y = rng.integers(10, 190, 2)
                r = int(rng.integers(2, 6))
                d.ellipse([int(x) - r, int(y) - r, int(x) + r, int(y) + r], fill=20)
        out.append(img)
    return out


def non_digit_report(predictor: Any, seed: int = 7) -> dict[str, Any]:
    """How many of the probe set the predictor reports empty (blank pages) or unsure (marks)."""
    preds = predictor.predict_images(not_digits(np.random.default_rng(seed)))
    blank, marks = preds[:N_BLANK], preds[N_BLANK:]
    return {
        "blank": {
            "n": len(blank),
            "empty": sum(p.empty for p in blank),
            "unsure": sum(p.unsure for p in blank),
        },
        "marks": {
            "n": len(marks),
            "unsure": sum(p.unsure for p in marks),
            "digits_given": [p.digit for p in marks if not p.unsure],
        },
    }
