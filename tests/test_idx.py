"""The IDX reader: round trips, and every kind of damaged or hostile file refused with a clear message."""

from __future__ import annotations

import gzip
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from digitnet.data.idx import encode_idx, read_idx, read_idx_digest, write_idx
from digitnet.errors import DatasetError, InputError


def _images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_images_and_labels(tmp_path, suffix):
    x, y = _images(7), np.arange(7, dtype=np.uint8) % 10
    write_idx(tmp_path / f"x-idx3-ubyte{suffix}", x)
    write_idx(tmp_path / f"y-idx1-ubyte{suffix}", y)
    x2, y2 = read_idx(tmp_path / f"x-idx3-ubyte{suffix}"), read_idx(str(tmp_path / f"y-idx1-ubyte{suffix}"))
    assert x2.dtype == np.uint8 and x2.shape == (7, 28, 28) and np.array_equal(x, x2)
    assert np.array_equal(y, y2)
    assert x2.flags.writeable  # callers may normalise in place
    raw = (tmp_path / f"x-idx3-ubyte{suffix}").read_bytes()
    assert raw.startswith(b"\x1f\x8b") == (suffix == ".gz")


def test_header_layout_matches_the_format():
    data = encode_idx(np.zeros((3, 28, 28), dtype=np.uint8))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", data[4:16]) == (3, 28, 28)
    assert len(data) == 16 + 3 * 784


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "float32", "float64"])
def test_round_trip_multibyte_dtypes_native_order(dtype):
    a = (np.arange(24) - 12).astype(dtype).reshape(2, 3, 4)
    b = read_idx(encode_idx(a))
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and np.array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6)), st.booleans())
def test_round_trip_property(a, compress):
    data = encode_idx(a)
    data = gzip.compress(data) if compress else data
    b, digest = read_idx_digest(data)
    assert b.shape == a.shape and np.array_equal(a, b)
    import hashlib

    assert digest == hashlib.sha256(encode_idx(a)).hexdigest()


def test_digest_is_of_the_decompressed_file(tmp_path):
    import hashlib

    x = _images(3)
    write_idx(tmp_path / "a.gz", x)
    _, digest = read_idx_digest(tmp_path / "a.gz")
    assert digest == hashlib.sha256(gzip.decompress((tmp_path / "a.gz").read_bytes())).hexdigest()


def _err(source, name=None, **kw) -> str:
    with pytest.raises(DatasetError) as info:
        read_idx(source, name, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bad_magic_named():
    msg = _err(b"\x12\x34\x08\x01" + b"\x00" * 20, "train-labels")
    assert msg.startswith("train-labels: bad magic number 0x12340801")


def test_unknown_dtype_code_and_bad_ndim():
    assert "unknown IDX dtype code 0x07" in _err(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "f")
    assert "0 dimensions" in _err(b"\x00\x00\x08\x00", "f")


def test_too_short_for_header():
    assert "too short for an IDX header" in _err(b"\x00\x00", "f")
    assert "header truncated" in _err(b"\x00\x00\x08\x03\x00\x00\x00\x05", "f")


def test_truncated_raw_file_message(tmp_path):
    full = encode_idx(_images(10))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(full[:5000])
    msg = _err(path, "t10k-images")
    assert msg == "t10k-images: file is 5,000 bytes, header promises 7,856 (truncated?)"


def test_truncated_payload_inside_gzip(tmp_path):
    full = encode_idx(_images(10))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(full[:5000]))  # a valid gzip of a short IDX
    assert _err(path) == "x.gz: decompressed data is 5,000 bytes, header promises 7,856 (truncated?)"


def test_trailing_data_refused(tmp_path):
    data = encode_idx(np.arange(5, dtype=np.uint8)) + b"junk"
    assert "trailing data" in _err(data, "y")
    assert "more than the 13 bytes" in _err(gzip.compress(data), "y")


def test_gzip_garbage_and_cut_gzip():
    assert _err(b"\x1f\x8b" + b"garbage" * 10, "t10k-labels").startswith(
        "t10k-labels: not a valid gzip stream"
    )
    good = gzip.compress(encode_idx(_images(50)))
    assert "gzip stream is truncated" in _err(good[: len(good) // 2], "t10k-images")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    msg = _err(bytes(flipped), "t10k-images")
    assert msg.startswith("t10k-images: ")


def test_gzip_crc_is_checked():
    good = bytearray(gzip.compress(encode_idx(np.arange(100, dtype=np.uint8))))
    good[-8] ^= 0x01  # CRC32 field of the gzip trailer
    assert "not a valid gzip stream" in _err(bytes(good), "y")


def test_gzip_bomb_with_small_header_is_refused_fast():
    # Header says 10 bytes; the stream inflates to 200 MB of zeros. Only 11 bytes may be read.
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 10)]
    zeros = b"\x00" * (1 << 20)
    parts += [comp.compress(zeros) for _ in range(200)]
    bomb = b"".join([*parts, comp.flush()])
    assert len(bomb) < 300_000
    t0 = time.perf_counter()
    msg = _err(bomb, "bomb")
    assert "more than the 18 bytes the header promises" in msg
    assert time.perf_counter() - t0 < 1.0


def test_lying_header_refused_before_allocation():
    # 60000×2800×2800 uint8 would be 470 GB: refused from the header alone.
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 60000, 2800, 2800)
    msg = _err(gzip.compress(header + b"\x00" * 100), "train-images")
    assert "over the 1,073,741,824-byte limit" in msg
    assert "over the 100-byte limit" in _err(encode_idx(np.zeros(200, np.uint8)), "f", max_bytes=100)


def test_missing_file_is_a_dataset_error(tmp_path):
    assert "file not found" in _err(tmp_path / "nope.gz")


def test_write_idx_rejects_unsupported_dtype_without_creating_a_file(tmp_path):
    with pytest.raises(InputError, match="cannot write dtype complex128"):
        write_idx(tmp_path / "c", np.zeros(3, dtype=complex))
    assert list(tmp_path.iterdir()) == []


def test_write_idx_gz_is_deterministic(tmp_path):
    write_idx(tmp_path / "a.gz", _images(2))
    write_idx(tmp_path / "b.gz", _images(2))
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
