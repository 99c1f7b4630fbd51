"""Untrusted bytes → a small 8-bit image, in bounded memory.

Decoding is the only place untrusted bytes meet Pillow, so it is bounded at every step: a byte cap
before reading, a pixel cap from the header before decoding, the real format (not the file name)
decides, and every failure is an `InputError` with one line for a person.

Memory is bounded too. A 6300×6300 RGBA PNG is 170 KB on the wire but 159 MB once decoded, and
flattening its alpha, converting and copying it at full size used to cost ≈ 760 MB. Here the work
is reduced to `max_side` (the working size of `preprocess`) as the very first step, in 8-bit,
before any float array exists:

- JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (`Image.draft`);
- L and RGB images are box-reduced straight from the decoded bitmap (`Image.reduce`, no copy);
- other modes (alpha, palette, 16-bit, float, CMYK) are flattened to 8-bit one strip of rows at a
  time (≤ `STRIP_BYTES`), each strip reduced as soon as it exists.

The peak is the decoded bitmap plus one strip, and `open_image` says what that peak will be
(`PendingImage.cost_bytes`) before a byte is decoded, so a server can admit the work by memory
(`digitnet.serve.budget`) rather than by request count alone.
"""

from __future__ import annotations

import errno
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from digitnet.errors import InputError
from digitnet.utils import first_line

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_WORK_SIDE = 640  # larger inputs are box-downscaled first: same result, bounded time and memory
STRIP_BYTES = 8 * 1024 * 1024
# A JPEG is decoded at no less than 15/16 of the working size (see open_image): a 1200×900 phone
# photo then decodes at 1/2 scale (600 px, not 1200 reduced to 640): `predict` takes 8.2 → 4.7 ms
# for it, and scripts/jpeg_draft.py compares the answers (BENCHMARKS.md, "Under hostile load").
# For reading (`max_side` 1280) it applies to JPEGs of 2400 px and more, which then reach the
# reader at 1200-1280 px rather than 1280.
JPEG_DRAFT = 15 / 16

# Bytes per pixel of Pillow's in-memory storage: multi-band 8-bit modes use 4 (RGB is RGBX).
_ONE_BYTE = frozenset({"1", "L", "P"})
_TWO_BYTES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# EXIF orientation → the transpose that shows the image upright (as `ImageOps.exif_transpose`).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _fail(message: str) -> InputError:
    return InputError(" ".join(message.split()))  # always one line


def bytes_per_pixel(mode: str) -> int:
    return 1 if mode in _ONE_BYTE else 2 if mode in _TWO_BYTES else 4


@dataclass
class PendingImage:
    """An image whose header passed the checks and which is not decoded yet."""

    image: Image.Image  # opened lazily by Pillow; JPEG already set to decode at a reduced scale
    label: str  # names it in error messages ("image", or the file's path)
    original_size: tuple[int, int]  # (width, height) from the header
    max_side: int | None

    @property
    def cost_bytes(self) -> int:
        """Peak memory `decode` will hold: the decoded bitmap, one strip and the reduced result."""
        w, h = self.image.size
        full = w * h * bytes_per_pixel(self.image.mode)
        return full + min(full, STRIP_BYTES) + (self.max_side or 0) ** 2 * 4

    def decode(self) -> Image.Image:
        """Decode, reduce to `max_side` and flatten to 8-bit "L" or "RGB" (alpha on white); upright."""
        img = self.image
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img.seek(0)  # GIF/TIFF/WebP: the first frame
                if ImageFile.LOAD_TRUNCATED_IMAGES:
                    raise _fail("refusing to decode with PIL.ImageFile.LOAD_TRUNCATED_IMAGES set")
                img.load()
                orientation = img.getexif().get(0x0112, 1)
            except InputError:
                raise
            except Exception as exc:  # truncated data, bad compression stream, …
                raise _fail(
                    f"{self.label}: cannot decode {img.format or 'image'} data ({first_line(exc, 160)})"
                ) from None
        out = reduce_8bit(img, self.max_side)
        method = _ORIENT.get(orientation) if isinstance(orientation, int) else None
        return out.transpose(method) if method is not None else out


def _read(source: str | Path, max_bytes: int) -> tuple[bytes, str]:
    path = Path(source)
    label = str(path)
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _fail(f"{label}: symbolic link loop") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            what = "broken symbolic link" if path.is_symlink() else "no such file"
            raise _fail(f"{label}: {what}") from None
        raise _fail(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not path.is_file():
        raise _fail(f"{label}: not a file")
    if st.st_size > max_bytes:
        raise _fail(f"{label}: {st.st_size:,} bytes is over the {max_bytes:,}-byte limit")
    try:
        return path.read_bytes(), label
    except OSError as exc:
        raise _fail(f"{label}: cannot read ({exc.strerror or exc})") from None


def open_image(
    source: bytes | str | Path,
    *,
    formats: tuple[str, ...] = ACCEPTED_FORMATS,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_side: int | None = MAX_WORK_SIDE,
    gray: bool = False,
) -> PendingImage:
    """Read and check the header of bytes or a file; nothing is decoded yet (see `PendingImage`).

    `gray`: the caller only needs luma (as `preprocess` does); a colour JPEG then decodes its Y
    channel alone, which is ITU-R 601 luma, what `convert("L")` computes, at ~60 % of the cost."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, label = bytes(source), "image"
        if len(data) > max_bytes:
            raise _fail(f"{label}: {len(data):,} bytes is over the {max_bytes:,}-byte limit")
    else:
        data, label = _read(os.fspath(source), max_bytes)
    if not data:
        raise _fail(f"{label}: empty file, not an image")
    names = ", ".join(formats)
    with warnings.catch_warnings():
        # Pillow's own bomb check warns between 1× and 2× its limit; make that a refusal too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data), formats=list(formats))
        except UnidentifiedImageError:
            raise _fail(f"{label}: not a recognised image (accepted formats: {names})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = f"{int(found.group(1)):,} pixels" if found else "its size"
            raise _fail(
                f"{label}: {pixels} is over the {max_pixels:,}-pixel limit (decompression-bomb guard)"
            ) from None
        except Exception as exc:  # a header Pillow recognised but could not parse
            raise _fail(f"{label}: corrupt {names} header ({first_line(exc, 160)})") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise _fail(f"{label}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:  # header size, before any pixel is decoded
        raise _fail(f"{label}: {w}x{h} = {w * h:,} pixels is over the {max_pixels:,}-pixel limit")
    if img.format == "JPEG" and ((max_side is not None and max(w, h) > max_side) or gray):
        # libjpeg decodes at the largest 1/2^k scale whose result is still at least this size (its
        # DCT-domain scaling averages like a box filter), and with `gray` only the luma channel.
        scale = min(1.0, JPEG_DRAFT * max_side / max(w, h)) if max_side is not None else 1.0
        mode = "L" if gray and img.mode in ("RGB", "YCbCr") else img.mode
        img.draft(mode, (max(1, round(w * scale)), max(1, round(h * scale))))
    return PendingImage(img, label, (w, h), max_side)


def decode_image(
    source: bytes | str | Path,
    *,
    formats: tuple[str, ...] = ACCEPTED_FORMATS,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_side: int | None = MAX_WORK_SIDE,
    gray: bool = False,
) -> Image.Image:
    """Decode bytes or a file into an 8-bit "L" or "RGB" image (alpha on white), upright, its longest
    side at most `max_side` (None: full size); `img.info["original_size"]` is the header's size.
    `gray`: luma is all the caller needs (a JPEG may then come back "L"; see `open_image`)."""
    pending = open_image(
        source, formats=formats, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side, gray=gray
    )
    out = pending.decode()
    out.info["original_size"] = pending.original_size
    return out


def reduce_8bit(img: Image.Image, max_side: int | None) -> Image.Image:
    """A loaded image → 8-bit L or RGB with its longest side at most `max_side`, never holding a
    second full-size copy: box-reduced by an integer factor first, then thumbnailed (BOX)."""
    w, h = img.size
    factor = max(w, h) // max_side if max_side else 1
    if factor < 2:
        out = to_8bit(img)
    elif img.mode in ("L", "RGB"):
        out = img.reduce(factor)  # straight from the decoded bitmap: no full-size copy
    else:
        scale = _full_scale(img)  # one scale for every strip of a 16-bit / float image
        rows = max(factor, STRIP_BYTES // max(1, w * 4) // factor * factor)
        parts = [
            to_8bit(img.crop((0, top, w, min(h, top + rows))), scale).reduce(factor)
            for top in range(0, h, rows)
        ]
        out = Image.new(parts[0].mode, (-(-w // factor), -(-h // factor)))
        for i, part in enumerate(parts):
            out.paste(part, (0, i * rows // factor))
    if max_side and max(out.size) > max_side:
        out.thumbnail((max_side, max_side), Image.Resampling.BOX)
    return out


def _full_scale(img: Image.Image) -> float | None:
    """The full-scale value of a 16-bit / 32-bit / float image (1, 255 or 65535), from its extrema."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return None
    extrema = img.getextrema()
    hi = float(extrema[1])  # type: ignore[arg-type]  # one band: (min, max)
    return 1.0 if hi <= 1.0 and img.mode == "F" else (255.0 if hi <= 255 else 65535.0)


def to_8bit(img: Image.Image, scale: float | None = None) -> Image.Image:
    """Flatten alpha onto white and bring odd modes (16-bit, float, CMYK, palette) to L or RGB.
    `scale`: the full-scale value of a 16-bit / float image (default: judged from its own extrema)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = scale or _full_scale(img) or 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("L" if img.mode == "1" else "RGB")
