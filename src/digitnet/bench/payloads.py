"""What the hostile-load benchmark sends: photos of a handwritten digit, a PNG that is tiny on the
wire and huge decoded, and the mix of good requests (`bench.hostile`)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from digitnet.bench.serve import _multipart, _request


def photo_jpeg(seed: int = 0, size: tuple[int, int] = (1200, 900)) -> bytes:
    """A phone-like photo of a handwritten 7: dark ink on uneven grey paper, noise, JPEG q=90."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paper = 200 + 25 * (xx / w) - 15 * (yy / h) + rng.normal(0, 4, (h, w))
    img = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8), "L")
    d = ImageDraw.Draw(img)
    cx, cy, s = w * (0.45 + 0.1 * rng.random()), h * 0.5, h / 2.4
    d.line(
        [(cx - s * 0.4, cy - s * 0.45), (cx + s * 0.4, cy - s * 0.45), (cx - s * 0.05, cy + s * 0.5)],
        fill=35,
        width=int(h / 28),
        joint="curve",
    )
    img = img.filter(ImageFilter.GaussianBlur(1.2)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def big_rgba_png(side: int = 6300) -> bytes:
    img = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    s = side / 28
    ImageDraw.Draw(img).line(
        [(6 * s, 6 * s), (21 * s, 6 * s), (12 * s, 23 * s)], fill=(20, 20, 20, 255), width=int(2.5 * s)
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _pixels_request(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    a = np.zeros((28, 28), np.uint8)
    c = int(rng.integers(10, 18))
    a[4:24, c : c + 3] = 255
    a[4:7, 8:20] = 255
    return json.dumps({"pixels": a.ravel().tolist()}).encode()


PHOTO_SIZES = ((1200, 900), (3024, 4032))  # a resized upload, and a 12 MP phone camera's portrait


def good_mix(host: str) -> list[tuple[str, bytes]]:
    photos = [photo_jpeg(i, PHOTO_SIZES[i % 2]) for i in range(4)]
    out = []
    for i, p in enumerate(photos):
        body, ctype = _multipart(p, filename="photo.jpg")
        out.append(("photo", _request("/v1/predict", body, ctype, host)))
        b64 = json.dumps({"image_base64": base64.b64encode(p).decode()}).encode()
        out.append(("base64", _request("/v1/predict", b64, "application/json", host)))
        out.append(("pixels", _request("/v1/predict", _pixels_request(i), "application/json", host)))
    return out
