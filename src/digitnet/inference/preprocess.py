"""Any image → the 28×28 float field an MNIST model expects, each step visible.

MNIST was made by size-normalising every digit into a 20×20 box (aspect ratio kept, anti-aliased)
and moving its centre of mass to the centre of a 28×28 field, light ink on black. A model fed a
raw photo of dark ink on white paper fails mostly because that step is skipped, so `preprocess`
replays it: grayscale → polarity → background suppression → crop → resize → paste → centre.

Decoding untrusted bytes (`decode_image`, bounded in bytes, pixels and memory) lives in
`inference.decode`; its names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from digitnet.errors import InputError
from digitnet.inference.decode import (
    ACCEPTED_FORMATS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_WORK_SIDE,
    decode_image,
    open_image,
)
from digitnet.inference.decode import to_8bit as _to_8bit

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_WORK_SIDE",
    "Preprocessed",
    "as_mnist",
    "decode_image",
    "open_image",
    "preprocess",
    "to_gray",
    "unit_pixels",
]

BOX, FIELD = 20, 28  # MNIST: digit fits a 20×20 box inside the 28×28 field
MNIST_COM = 14.0  # mean centre of mass of MNIST digits, (row, col) in pixel indices
MIN_CONTRAST = 0.15  # ink must differ from the background by this much (of full scale)
MIN_INK_PIXELS = 3  # fewer ink pixels than this is a blank image, not a digit
MIN_STROKE = 1.5  # px at MNIST scale; MNIST strokes are 2–4.5 px wide (1st–95th percentile)


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray  # (28, 28) float32 in [0, 1], MNIST polarity (light ink on dark)
    empty: bool  # no ink found: report it, do not classify it
    steps: tuple[tuple[str, np.ndarray], ...] = ()  # named intermediate images (2-D float32)


def to_gray(img: Image.Image | np.ndarray) -> np.ndarray:
    """Image or array → (H, W) float32 in [0, 1]; RGB(A) arrays use ITU-R 601 luma, alpha on white."""
    if isinstance(img, Image.Image):
        img = _to_8bit(img)
        return np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.float32) / 255.0
    a = np.asarray(img)
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.shape[0] > 4:  # (H, W, C)
        a = unit_pixels(a)
        gray = a[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if a.shape[2] == 4:
            alpha = a[..., 3]
            gray = gray * alpha + (1.0 - alpha)
        return gray.astype(np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"expected a 2-D grayscale or (H, W, 3|4) colour image, got shape {a.shape}")
    return unit_pixels(a)


def unit_pixels(a: np.ndarray) -> np.ndarray:
    """The one pixel check: uint8 0–255 → float32 /255; floats must be finite and in [0, 1]."""
    if a.dtype == np.uint8:
        return np.divide(a, np.float32(255.0), dtype=np.float32)
    if a.dtype.kind != "f":
        raise InputError(f"expected uint8 0-255 or float 0-1 pixels, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InputError("pixels contain NaN or infinity")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise InputError("float pixels must lie in [0, 1] (divide uint8 images by 255)")
    return a


def _hist(x: np.ndarray) -> np.ndarray:
    """256-bin histogram of values in [0, 1], rounded to the nearest level: x·255 + ½ truncated to
    uint8, counted by Pillow's C histogram (≈ 14× cheaper than bincount on int32; same bins)."""
    levels = (np.asarray(x, np.float32) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
    return np.asarray(Image.fromarray(np.ascontiguousarray(levels)).histogram(), dtype=np.int64)


def _quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile (0–1) of a 256-bin histogram, as a value in [0, 1]."""
    c = np.cumsum(hist)
    return float(np.searchsorted(c, q * c[-1])) / 255.0 if c[-1] else 0.0


def _otsu(hist: np.ndarray) -> float:
    """Otsu's threshold of a 256-bin histogram, as a value in [0, 1]."""
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * np.arange(256))
    total, mtot = w0[-1], m0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mtot * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return (int(np.argmax(between)) + 0.5) / 255.0


def _despeckle(mask: np.ndarray) -> np.ndarray:
    """Drop mask pixels with fewer than 2 of 8 neighbours set: lone specks and pairs go, while a
    1-px line (2 neighbours per pixel) stays."""
    p = np.pad(mask, 1).astype(np.uint8)
    h, w = mask.shape
    n = sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3) if (i, j) != (1, 1))
    return mask & (n >= 2)


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask in pixels: 2 × area / boundary length (a stroke of width
    w and length L has area wL and about 2L boundary pixels)."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return 2.0 * float(mask.sum()) / max(int((mask & ~inner).sum()), 1)


def _dilate3(a: np.ndarray) -> np.ndarray:
    """3×3 grey-level dilation (max filter) with a 1-px margin added: (h, w) → (h + 2, w + 2)."""
    p = np.pad(a, 2)
    h, w = a.shape[0] + 2, a.shape[1] + 2
    return np.max([p[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize of a float (H, W) array to (w, h), clipped back to [0, 1]."""
    out = Image.fromarray(a, "F").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


@dataclass(frozen=True)
class Ink:
    """The ink of an image, separated from its paper: MNIST polarity (light ink on dark)."""

    polarity: np.ndarray  # (H, W) float32: paper ≈ 0, ink > 0, before suppression
    image: np.ndarray  # (H, W) float32 in [0, 1]: paper 0, ink up to 1, anti-aliased edges kept
    mask: np.ndarray  # (H, W) bool: the ink pixels (Otsu above the noise floor, despeckled)
    blank: bool = False  # no ink that stands out from the paper: `image` and `mask` are all zero


def work_gray(img: Image.Image | np.ndarray, max_side: int = MAX_WORK_SIDE) -> np.ndarray:
    """Grayscale (H, W) float32 in [0, 1], box-downscaled so its longest side is at most `max_side`."""
    if isinstance(img, Image.Image) and max(img.size) > max_side:
        img = _to_8bit(img).copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BOX)
    gray = to_gray(img)  # (H, W)
    if max(gray.shape) > max_side:
        scale = max_side / max(gray.shape)
        gray = _resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))))
    return gray


def find_ink(gray: np.ndarray) -> Ink:
    """Polarity, then background suppression; `blank` when no ink stands out from the paper."""
    # Polarity: the background is the border's median.
    h, w = gray.shape
    b = max(1, min(h, w) // 20)
    border = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])
    bg = _quantile(_hist(border), 0.5)
    d = bg - gray  # (H, W) signed: > 0 where darker than the paper
    # Paper noise is symmetric about the background and ink is a minority, so the MAD of |d|
    # measures the noise; ink is whichever side holds more mass beyond that noise.
    noise = 5.0 * 1.4826 * _quantile(_hist(np.abs(d)), 0.5)
    darker = float(np.maximum(d - noise, 0.0).sum())
    lighter = float(np.maximum(-d - noise, 0.0).sum())
    if lighter > darker:
        d = -d
    x = np.maximum(d, 0.0)  # (H, W): ink > 0, paper ≈ 0, MNIST polarity
    blank = Ink(x, np.zeros_like(x), np.zeros(x.shape, bool), blank=True)
    if x.size < 2 or float(x.max()) < MIN_CONTRAST:
        return blank
    # Background suppression: Otsu splits ink from paper; the noise level sets the floor.
    hist = _hist(x)
    t = _otsu(hist)
    hard = max(t, noise)
    mask = x > hard
    if min(h, w) > 64:  # isolated speckles (noise, JPEG ringing) are not ink; 1-px pen lines are
        mask = _despeckle(mask)
    if int(mask.sum()) < MIN_INK_PIXELS:
        return blank
    cut = min(int(hard * 255.0 + 0.5) + 1, 255)
    ink_hist, paper_hist = hist.copy(), hist.copy()
    ink_hist[:cut], paper_hist[cut:] = 0, 0
    ink_median = _quantile(ink_hist, 0.5)
    levels = np.arange(256) / 255.0
    n_paper = max(int(paper_hist.sum()), 1)
    paper_mean = float(paper_hist @ levels) / n_paper
    paper_std = float(np.sqrt(max(float(paper_hist @ levels**2) / n_paper - paper_mean**2, 0.0)))
    # Ink must stand out from the paper's own variation, or this is noise / a blank page.
    if ink_median < MIN_CONTRAST or ink_median < paper_mean + 4.0 * paper_std:
        return blank
    lo = min(noise, 0.5 * t)  # below: paper; above: ink, anti-aliased edges kept as partial values
    hi = max(_quantile(ink_hist, 0.9), lo + 1e-3)
    image = np.minimum(np.maximum((x - lo) * (1.0 / (hi - lo)), 0.0), 1.0)
    return Ink(x, image, mask)


def fit_field(crop: np.ndarray, crop_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """One digit's ink, cropped to its box → MNIST's (28, 28) field: the longest side to 20 px
    (aspect kept, anti-aliased), the centre of mass at (14, 14). Returns (field, resized), or
    None when nothing is left."""
    ch, cw = crop.shape
    thin = _stroke_width(crop_mask) * BOX / max(ch, cw) < MIN_STROKE
    box = BOX - 2 if thin else BOX  # a thin pen line is drawn 2 px bolder below, back to 20 px
    scale = box / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    small = crop if (nh, nw) == (ch, cw) else _resize(crop, (nw, nh))
    peak = float(small.max())
    if 0.0 < peak < 1.0:  # thin strokes fade when shrunk; MNIST's ink always peaks at full white
        small = small * (1.0 / peak)
    if thin:
        small = _dilate3(small)
        nh, nw = small.shape
    field = np.zeros((FIELD, FIELD), np.float32)
    top, left = (FIELD - nh) // 2, (FIELD - nw) // 2
    field[top : top + nh, left : left + nw] = small
    # Shift the centre of mass to MNIST's (14, 14), keeping the digit inside the field.
    mass = float(small.sum())
    if mass <= 0.0:
        return None
    r = np.arange(FIELD, dtype=np.float32)
    cy, cx = float(field.sum(axis=1) @ r) / mass, float(field.sum(axis=0) @ r) / mass
    dy = min(max(round(MNIST_COM - cy), -top), FIELD - nh - top)
    dx = min(max(round(MNIST_COM - cx), -left), FIELD - nw - left)
    out = np.zeros_like(field)
    out[top + dy : top + dy + nh, left + dx : left + dx + nw] = small
    return out, small


def preprocess(img: Image.Image | np.ndarray, *, keep_steps: bool = False) -> Preprocessed:
    """Replay MNIST's normalisation on any image of one digit; see the module docstring."""
    steps: list[tuple[str, np.ndarray]] = []

    def keep(name: str, a: np.ndarray) -> None:
        if keep_steps:
            steps.append((name, a.astype(np.float32, copy=True)))

    gray = work_gray(img)
    keep("grayscale", gray)
    ink = find_ink(gray)
    keep("polarity", ink.polarity)
    if ink.blank:
        return Preprocessed(np.zeros((FIELD, FIELD), np.float32), True, tuple(steps))
    keep("suppressed", ink.image)
    rows, cols = np.flatnonzero(ink.mask.any(axis=1)), np.flatnonzero(ink.mask.any(axis=0))
    crop = ink.image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # the ink's bounding box
    keep("cropped", crop)
    fitted = fit_field(crop, ink.mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    if fitted is None:
        return Preprocessed(np.zeros((FIELD, FIELD), np.float32), True, tuple(steps))
    out, small = fitted
    keep("resized", small)
    keep("centred", out)
    return Preprocessed(out, False, tuple(steps))


def as_mnist(img_or_array: Image.Image | np.ndarray | Any) -> np.ndarray:
    """No preprocessing (`--no-preprocess`): grayscale, resize to 28×28 if needed, float32 [0, 1]."""
    gray = to_gray(img_or_array)
    if gray.shape != (FIELD, FIELD):
        gray = _resize(gray, (FIELD, FIELD))
    return np.ascontiguousarray(gray, dtype=np.float32)
