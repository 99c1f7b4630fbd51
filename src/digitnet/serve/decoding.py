"""Decode an uploaded image under the process's memory budget: any route that takes images uses this.

The images come back as luma ("L") when that is cheaper to decode (JPEG), since every caller
grayscales them anyway; pass `then` to work on them in the decoding thread.

`decode_upload` is three steps: read the header in a worker thread (`inference.decode.open_image`:
format, pixel cap, and the memory the decode will hold), wait on the event loop until that much of
the budget (`Limits.max_decode_bytes`, a `Limiter` of bytes) is free, then decode and reduce to the
working size in a worker thread, and give the budget back. Images are therefore admitted by the
decoded pixels in flight, not by request count: eight 6300×6300 RGBA PNGs (170 KB each, 192 MB each
once decoded) take turns instead of holding 6 GB at once, while small photos pass straight through.

Refusals: 415 for an image format the service does not take, 422 for bytes that are no image (or a
pixel bomb), 413 for an image whose decode alone exceeds the whole budget, 503 + Retry-After when
the budget stays full past the request's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image
from starlette.concurrency import run_in_threadpool

from digitnet.errors import InputError
from digitnet.inference.decode import MAX_WORK_SIDE, PendingImage, open_image
from digitnet.serve.admission import Limiter, Overloaded, TooLarge
from digitnet.serve.responses import HTTPError

SERVER_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
INLINE_OPEN_BYTES = 256 * 1024  # headers of files up to this size are read on the event loop
T = TypeVar("T")

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


def _relabel(exc: InputError, label: str) -> InputError:
    message = str(exc)
    if message.startswith("image: "):  # decode_image labels raw bytes "image"; use ours
        message = message[len("image: ") :]
    return InputError(f"{label}: {message}")


def _open(data: bytes, label: str, max_bytes: int, max_side: int | None) -> PendingImage:
    other = other_image_format(data)
    if other is not None:
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"{label}: {other} images are not accepted; send {', '.join(SERVER_FORMATS)}",
        )
    try:
        return open_image(data, formats=SERVER_FORMATS, max_bytes=max_bytes, max_side=max_side, gray=True)
    except InputError as exc:
        raise _relabel(exc, label) from None


def _decode(pending: PendingImage, label: str, then: Callable[[Image.Image], T]) -> T:
    try:
        image = pending.decode()
    except InputError as exc:
        raise _relabel(exc, label) from None
    return then(image)


def busy(retry_after_s: int) -> HTTPError:
    """503 + Retry-After: the memory budget (or the decoding threads) stayed full past the deadline."""
    return HTTPError(
        503,
        "overloaded",
        "the server is busy decoding images; retry shortly",
        {"Retry-After": str(retry_after_s)},
    )


async def run_charged(
    budget: Limiter, cost: int, timeout_s: float, retry_after_s: int, fn: Callable[..., T], *args: Any
) -> T:
    """`fn(*args)` in a worker thread while `cost` bytes of `budget` are held for it (capped at
    the whole budget): for work whose memory is not an image's, such as parsing a large JSON body."""
    cost = min(cost, budget.capacity)
    try:
        await budget.acquire(cost, timeout_s)
    except Overloaded:
        raise busy(retry_after_s) from None
    try:
        return await run_in_threadpool(fn, *args)
    finally:
        budget.release(cost)


async def decode_upload(
    data: bytes,
    then: Callable[[Image.Image], T],
    *,
    budget: Limiter,
    deadline: float,
    max_bytes: int,
    label: str = "image",
    max_side: int | None = MAX_WORK_SIDE,
    retry_after_s: int = 1,
    threads: Limiter | None = None,
) -> T:
    """Encoded image bytes → `then(image)`, where image is 8-bit and at most `max_side` on its longest
    side, decoded within `budget` (bytes of decoded pixels), waiting for room until `deadline`
    (`time.monotonic()`). `then` (e.g. `preprocess`) runs in the same worker thread, after the
    budget's share is no longer needed by the full-size bitmap. `threads` (a `Limiter` of about one
    unit per core) runs the decodes a few at a time in arrival order: on a burst the first requests
    finish first, instead of all of them sharing the cores and all finishing late."""
    if len(data) <= INLINE_OPEN_BYTES:  # a small file's header: microseconds, no thread hop needed
        pending = _open(data, label, max_bytes, max_side)
    else:
        pending = await run_in_threadpool(_open, data, label, max_bytes, max_side)
    cost = pending.cost_bytes
    try:
        await budget.acquire(cost, max(0.0, deadline - time.monotonic()))
    except TooLarge:
        w, h = pending.original_size
        raise HTTPError(
            413,
            "payload_too_large",
            f"{label}: a {w}x{h} {pending.image.mode} image needs {cost / 2**20:.0f} MiB to decode; "
            f"this server decodes at most {budget.capacity / 2**20:.0f} MiB at once",
        ) from None
    except Overloaded:
        raise busy(retry_after_s) from None
    try:
        if threads is None:
            return await run_in_threadpool(_decode, pending, label, then)
        try:
            await threads.acquire(1, max(0.0, deadline - time.monotonic()))
        except Overloaded:
            raise busy(retry_after_s) from None
        try:
            return await run_in_threadpool(_decode, pending, label, then)
        finally:
            threads.release(1)
    finally:
        budget.release(cost)
        del pending
