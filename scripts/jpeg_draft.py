"""What decoding JPEGs at a smaller DCT scale (`decode.JPEG_DRAFT`) costs in answers and saves in
time, through the bundled model's `predict` path, on two sets of large JPEG photos of MNIST test
digits: the real-image suite's photos enlarged to 720-1800 px, and small digits (42-140 px) on
800-1600 px canvases; and on the hostile benchmark's 1200×900 photo of a 7 (`bench.payloads`).
Each set is read with every draft setting given.

    DIGITNET_DATA=../shared/mnist PYTHONPATH=src python scripts/jpeg_draft.py 1.0 0.9375
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image, ImageFilter

from digitnet.bench.payloads import photo_jpeg
from digitnet.data import load_dataset
from digitnet.data.synth import digit_photo
from digitnet.inference import decode
from digitnet.inference.predictor import Predictor


def _jpeg(img: Image.Image, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(60, 92)))
    return buf.getvalue()


def enlarged_suite(x: np.ndarray, rng: np.random.Generator) -> list[bytes]:
    out = []
    for digit in x:
        with Image.open(io.BytesIO(digit_photo(digit, rng))) as im:
            f = 1800 / max(im.size) * rng.uniform(0.4, 1.0)
            size = (round(im.width * f), round(im.height * f))
            out.append(_jpeg(im.resize(size, Image.Resampling.BICUBIC), rng))
    return out


def small_on_large(x: np.ndarray, rng: np.random.Generator) -> list[bytes]:
    out = []
    for digit in x:
        n = int(28 * rng.uniform(1.5, 5.0))
        big = Image.fromarray(digit).resize((n, n), Image.Resampling.BILINEAR)
        big = big.filter(ImageFilter.MaxFilter(3 if n < 80 else 5))
        w, h = (int(rng.integers(800, 1601)) for _ in range(2))
        page = np.full((h, w), rng.uniform(0.8, 0.95), np.float32)
        page += rng.normal(0, 0.02, (h, w)).astype(np.float32)
        y, x0 = int(rng.integers(0, h - n)), int(rng.integers(0, w - n))
        a = np.asarray(big, np.float32) / 255
        page[y : y + n, x0 : x0 + n] = page[y : y + n, x0 : x0 + n] * (1 - a) + 0.15 * a
        out.append(_jpeg(Image.fromarray((np.clip(page, 0, 1) * 255).astype(np.uint8)), rng))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drafts", nargs="+", type=float, help="JPEG_DRAFT values to compare")
    ap.add_argument("--photos", type=int, default=600)
    args = ap.parse_args()
    data, predictor = load_dataset("mnist"), Predictor.load("default")
    sets = (
        ("enlarged suite", enlarged_suite, 2024),
        ("small on large", small_on_large, 77),
        ("burst photo", None, 0),
    )
    for name, make, seed in sets:
        rng = np.random.default_rng(seed)
        if make is None:
            photos, truth = [photo_jpeg(i) for i in range(40)], np.full(40, 7)
        else:
            idx = rng.choice(len(data.x_test), args.photos, replace=False)
            photos, truth = make(data.x_test[idx], rng), data.y_test[idx]
        for draft in args.drafts:
            decode.JPEG_DRAFT = draft
            t = time.perf_counter()
            preds = [predictor.predict_images([decode.decode_image(p, gray=True)])[0] for p in photos]
            ms = (time.perf_counter() - t) / len(photos) * 1000
            digits = np.array([-1 if p.digit is None else p.digit for p in preds])
            sure = np.array([p.status == "digit" for p in preds])
            print(
                f"{name}, draft {draft:.4f}: {np.mean(digits == truth):.2%} right, {1 - sure.mean():.2%} "
                f"flagged, {int(np.sum(sure & (digits != truth)))} wrong and sure, {ms:.1f} ms/photo"
            )


if __name__ == "__main__":
    main()
