"""IDX files (the MNIST container), read with every size checked before memory is committed.

An IDX file is a 4-byte magic `00 00 <dtype code> <ndim>`, then `ndim` big-endian uint32
dimensions, then the row-major big-endian payload. Files may be gzip-compressed (detected by
content, not by name). The reader trusts nothing: it reads the header first (from the gzip
stream when compressed), computes the exact payload size, refuses it if it exceeds `max_bytes`,
then reads at most that size + 1 byte, so a gzip bomb or a lying header is refused, not obeyed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from digitnet.errors import DatasetError, InputError
from digitnet.utils import atomic_open

# IDX dtype code -> big-endian NumPy dtype (the format's own table).
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").str: code for code, dt in DTYPES.items()}
MAX_NDIM = 8
# Large enough for EMNIST-style sets (~550 MB), small enough that a hostile header cannot make
# us allocate the machine away.
DEFAULT_MAX_BYTES = 1 << 30
_GZIP_MAGIC = b"\x1f\x8b"


def _n(x: int) -> str:
    return f"{x:,}"


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes; fewer only at end of stream."""
    chunks, left = [], n
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _parse_header(f: BinaryIO, name: str) -> tuple[np.dtype, tuple[int, ...], bytes]:
    magic = _read_exact(f, 4)
    if len(magic) < 4:
        raise DatasetError(f"{name}: file is {len(magic)} bytes, too short for an IDX header")
    if magic[0] != 0 or magic[1] != 0:
        raise DatasetError(
            f"{name}: bad magic number 0x{magic.hex()} (an IDX file starts with 00 00); not an IDX file"
        )
    code, ndim = magic[2], magic[3]
    if code not in DTYPES:
        raise DatasetError(f"{name}: unknown IDX dtype code 0x{code:02x} (magic 0x{magic.hex()})")
    if not 1 <= ndim <= MAX_NDIM:
        raise DatasetError(f"{name}: IDX header says {ndim} dimensions; expected 1 to {MAX_NDIM}")
    raw_dims = _read_exact(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{name}: header truncated: {ndim} dimensions promised, file ends first")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    return DTYPES[code], tuple(dims), magic + raw_dims


def _open(source: str | os.PathLike | bytes) -> tuple[BinaryIO, int | None, bool]:
    """(stream, stored size or None, compressed?) for a path or in-memory bytes."""
    if isinstance(source, bytes | bytearray | memoryview):
        raw: BinaryIO = io.BytesIO(bytes(source))
        size: int | None = len(source)
    else:
        raw = open(source, "rb")  # noqa: SIM115 - closed by the caller
        size = os.fstat(raw.fileno()).st_size
    compressed = raw.read(2) == _GZIP_MAGIC
    raw.seek(0)
    if compressed:
        return gzip.GzipFile(fileobj=raw, mode="rb"), None, True  # type: ignore[return-value]
    return raw, size, False


def read_idx_digest(
    source: str | os.PathLike | bytes, name: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, str]:
    """Like `read_idx`, also returning the SHA-256 hex digest of the decompressed file."""
    if name is None:
        name = "<bytes>" if isinstance(source, bytes | bytearray | memoryview) else Path(source).name
    try:
        f, stored, compressed = _open(source)
    except FileNotFoundError:
        raise DatasetError(f"{name}: file not found ({source!s})") from None
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read: {exc.strerror or exc}") from None
    what = "decompressed data is" if compressed else "file is"
    try:
        with f:
            dtype, dims, header = _parse_header(f, name)
            expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
            if expected > max_bytes:
                raise DatasetError(
                    f"{name}: header promises {_n(expected)} bytes of data {dims}, over the "
                    f"{_n(max_bytes)}-byte limit; refusing (corrupt or hostile header?)"
                )
            if stored is not None and stored != len(header) + expected:
                hint = "truncated?" if stored < len(header) + expected else "trailing data?"
                raise DatasetError(
                    f"{name}: file is {_n(stored)} bytes, header promises "
                    f"{_n(len(header) + expected)} ({hint})"
                )
            # Allocated only now that the size is known and bounded; one extra byte read
            # afterwards tells us whether the stream holds more than the header said.
            buf = bytearray(expected)
            view, got = memoryview(buf), 0
            while got < expected:
                n = f.readinto(view[got:])  # type: ignore[attr-defined]  # files and GzipFile have it
                if not n:
                    break
                got += n
            extra = f.read(1) if got == expected else b""
    except DatasetError:
        raise
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{name}: not a valid gzip stream ({exc})") from None
    except EOFError:
        raise DatasetError(f"{name}: gzip stream is truncated (ends before its end marker)") from None
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read: {exc}") from None
    if got < expected:
        raise DatasetError(
            f"{name}: {what} {_n(len(header) + got)} bytes, header promises "
            f"{_n(len(header) + expected)} (truncated?)"
        )
    if extra:
        raise DatasetError(
            f"{name}: {what} more than the {_n(len(header) + expected)} bytes the header promises "
            "(trailing data or a lying header)"
        )
    digest = hashlib.sha256(header)
    digest.update(buf)
    arr = np.frombuffer(buf, dtype=dtype).reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))  # native order for everything downstream
    return arr, digest.hexdigest()


def read_idx(
    source: str | os.PathLike | bytes, name: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Read an IDX file (raw or gzip) or IDX bytes into a native-endian, writable array.

    `name` labels error messages (default: the file name). Raises `DatasetError` with a one-line
    message for anything wrong: bad magic, unknown dtype, bad ndim, truncated or over-long
    payload, a payload over `max_bytes`, corrupt gzip.
    """
    return read_idx_digest(source, name, max_bytes=max_bytes)[0]


def encode_idx(array: np.ndarray) -> bytes:
    """The uncompressed IDX bytes for `array` (header + big-endian payload)."""
    arr = np.asarray(array)
    code = _CODES.get(arr.dtype.newbyteorder("=").str)
    if code is None:
        raise InputError(
            f"cannot write dtype {arr.dtype} as IDX; use one of uint8, int8, int16, int32, float32, float64"
        )
    if not 1 <= arr.ndim <= MAX_NDIM:
        raise InputError(f"cannot write a {arr.ndim}-D array as IDX; 1 to {MAX_NDIM} dimensions")
    if any(d >= 2**32 for d in arr.shape):
        raise InputError(f"dimension too large for IDX: {arr.shape}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as IDX, gzip-compressed when `path` ends in `.gz`; atomic."""
    data = encode_idx(array)
    if str(path).endswith(".gz"):
        # mtime=0 keeps the output byte-identical across runs.
        data = gzip.compress(data, mtime=0)
    with atomic_open(path, "wb") as f:
        f.write(data)
