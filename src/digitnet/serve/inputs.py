"""Request bodies → images → predictions: parsing, format policy, decoding, one model call.

Images are opened only as the formats we accept (PNG, JPEG, GIF, BMP, WebP), judged from the
bytes, never from a file name or a Content-Type. A file that is recognisably another image format
(TIFF, ICO, PSD, JPEG 2000, HEIF/AVIF, …) is a 415; bytes that are no image at all, truncated
data and pixel bombs are 422 (`InputError` from `digitnet.preprocess.decode_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from digitnet.errors import InputError
from digitnet.inference.predictor import Prediction, Predictor
from digitnet.inference.preprocess import MIN_CONTRAST, decode_image, preprocess
from digitnet.serve.responses import HTTPError
from digitnet.serve.schemas import PredictRequest, ReadRequest, decode_base64, pixels_to_array

SERVER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")

# Signatures of image formats Pillow (or a browser) knows but this service refuses, by magic bytes.
_OTHER_FORMATS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "BigTIFF"),
    (0, b"MM\x00+", "BigTIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"icns", "ICNS"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "PostScript"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"gimp xcf", "XCF"),
    (0, b"\x59\xa6\x6a\x95", "Sun raster"),
    (0, b"SIMPLE  =", "FITS"),
    (0, b"#?RADIANCE", "HDR"),
    (0, b"\x76\x2f\x31\x01", "OpenEXR"),
)
_FTYP_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}


def other_image_format(data: bytes) -> str | None:
    """The name of a recognisable image format we do not accept, or None."""
    for offset, magic, name in _OTHER_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[data[8:12]]
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG"
    return None


@dataclass(frozen=True)
class Item:
    """One image to classify: MNIST-form pixels (28, 28) float32, or encoded image bytes."""

    pixels: np.ndarray | None = None
    data: bytes | None = None
    preprocess: bool = True
    label: str = "image"  # names the item in error messages, e.g. "items[3]"


def item_from_request(req: PredictRequest | ReadRequest, label: str = "image") -> Item:
    try:
        if req.pixels is not None:  # a reading always finds its ink as a photo's is found
            return Item(pixels=pixels_to_array(req), preprocess=getattr(req, "preprocess", True), label=label)
        return Item(data=decode_base64(req.image_base64 or ""), label=label)
    except InputError as exc:
        raise InputError(f"{label}: {exc}" if label != "image" else str(exc)) from None


def decode_item(item: Item, max_bytes: int) -> Image.Image | np.ndarray:
    """Item → what the predictor takes: a PIL image, or the (28, 28) array. Raises 415 / 422."""
    if item.pixels is not None:
        return item.pixels
    data = item.data or b""
    other = other_image_format(data)
    if other is not None:
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"{item.label}: {other} images are not accepted; send {', '.join(SERVER_FORMATS)}",
        )
    try:
        return decode_image(data, formats=SERVER_FORMATS, max_bytes=max_bytes)
    except InputError as exc:
        message = str(exc)
        if message.startswith("image: "):  # decode_image labels raw bytes "image"; use ours
            message = message[len("image: ") :]
        raise InputError(f"{item.label}: {message}") from None


def predict_items(predictor: Predictor, items: list[Item], max_bytes: int) -> list[Prediction]:
    """Decode and preprocess every item, then run the model once for all of them; input order kept.

    Runs in a worker thread: decoding and inference are CPU-bound and must not block the event loop.
    """
    # Each image is reduced to its 28x28 field before the next is decoded: a batch of large,
    # highly compressible images never holds more than one full-size bitmap in memory.
    fields: list[np.ndarray] = []  # (28, 28) float32 in [0, 1] each
    empty: list[bool] = []
    for it in items:
        img = decode_item(it, max_bytes)
        if it.pixels is not None and not it.preprocess:  # MNIST-form pixels, fed as they are
            fields.append(it.pixels)
            empty.append(bool(it.pixels.max() < MIN_CONTRAST))  # no ink: empty, as for photos
        else:
            done = preprocess(img)
            fields.append(done.image)
            empty.append(done.empty)
    return predictor.predict_arrays(np.stack(fields), empty=empty)
