"""Decoding (bounded, format by content) and MNIST-style normalisation of arbitrary images."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from digitnet.errors import InputError
from digitnet.inference.preprocess import ACCEPTED_FORMATS, MNIST_COM, as_mnist, decode_image, preprocess


def draw_digit(
    size: int = 200,
    *,
    canvas: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
    dark_on_light: bool = True,
    width: int | None = None,
) -> Image.Image:
    """A '7'-like stroke drawn in a size×size box placed at `offset` on a canvas."""
    w, h = canvas or (size, size)
    bg, ink = (235, 20) if dark_on_light else (0, 255)
    img = Image.new("L", (w, h), bg)
    d = ImageDraw.Draw(img)
    ox, oy = offset
    s = size / 28
    pts = [(ox + 6 * s, oy + 6 * s), (ox + 21 * s, oy + 6 * s), (ox + 12 * s, oy + 23 * s)]
    d.line(pts, fill=ink, width=width or max(1, round(2.5 * s)), joint="curve")
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height with almost no data: a cheap decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# -- decode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_decode_every_accepted_format(fmt):
    img = draw_digit(56)
    out = decode_image(encode(img.convert("RGB") if fmt == "JPEG" else img, fmt))
    assert out.size == (56, 56) and out.mode in ("L", "RGB")
    assert abs(np.asarray(out.convert("L"), np.float32).mean() - np.asarray(img, np.float32).mean()) < 8


def test_format_decided_by_content_not_name(tmp_path):
    path = tmp_path / "digit.jpg"  # really a PNG
    path.write_bytes(encode(draw_digit(40), "PNG"))
    assert decode_image(path).size == (40, 40)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"notes\.png: not a recognised image"):
        decode_image(text)


def test_formats_subset_refuses_others():
    data = encode(draw_digit(30), "TIFF")
    with pytest.raises(InputError, match="not a recognised image"):
        decode_image(data, formats=("PNG", "JPEG"))


def test_gif_first_frame():
    frames = [Image.new("L", (20, 20), 255), Image.new("L", (20, 20), 0)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert np.asarray(decode_image(buf.getvalue()).convert("L")).mean() > 250


def test_exif_orientation_applied():
    img = Image.new("RGB", (60, 30), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (30, 60)


def test_alpha_flattened_onto_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((5, 5), (0, 0, 0, 255))
    out = np.asarray(decode_image(encode(rgba, "PNG")).convert("L"))
    assert out[0, 0] == 255 and out[5, 5] == 0
    la = Image.new("LA", (4, 4), (0, 0))
    assert np.asarray(decode_image(encode(la, "PNG")).convert("L")).min() == 255


def test_16_bit_png_scaled_not_clipped():
    a = np.full((8, 8), 65535, np.uint16)
    a[2:6, 2:6] = 0
    out = np.asarray(decode_image(encode(Image.fromarray(a), "PNG")).convert("L"))
    assert out[0, 0] == 255 and out[3, 3] == 0


def test_truncated_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)  # incompressible
    data = encode(Image.fromarray(noise), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png: cannot decode PNG data") as err:
        decode_image(path)
    assert "\n" not in str(err.value)


def test_huge_header_refused_before_decoding():
    data = png_header_only(30000, 30000)
    assert len(data) < 200
    t = time.perf_counter()
    with pytest.raises(InputError, match="pixel") as err:
        decode_image(data)
    assert time.perf_counter() - t < 0.5  # refused from the header, not after allocating 900 MP
    assert "\n" not in str(err.value)


def test_pixel_and_byte_caps():
    data = encode(draw_digit(100), "PNG")
    with pytest.raises(InputError, match="over the 100-byte limit"):
        decode_image(data, max_bytes=100)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)  # 100×100 is allowed …
    with pytest.raises(InputError, match="10,201 pixels is over the 10,000-pixel limit"):
        decode_image(encode(draw_digit(101), "PNG"), max_pixels=10_000)  # … 101×101 is not


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="not a file"):
        decode_image(tmp_path)
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        decode_image(tmp_path / "zero.png")


def test_accepted_formats_constant():
    assert set(ACCEPTED_FORMATS) == {"PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"}


# -- preprocess ---------------------------------------------------------------------------------


def ink_box(a: np.ndarray, level: float = 0.1) -> tuple[int, int]:
    rows, cols = np.flatnonzero((a > level).any(1)), np.flatnonzero((a > level).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def com(a: np.ndarray) -> tuple[float, float]:
    r = np.arange(a.shape[0])
    return float(a.sum(1) @ r / a.sum()), float(a.sum(0) @ r / a.sum())


def test_output_is_mnist_shaped_sized_and_centred():
    p = preprocess(draw_digit(120, canvas=(400, 300), offset=(250, 20)))
    assert not p.empty and p.image.shape == (28, 28) and p.image.dtype == np.float32
    assert p.image.min() >= 0.0 and p.image.max() <= 1.0 and p.image.max() > 0.9
    assert max(ink_box(p.image, 0.05)) in (19, 20, 21)  # longest side normalised to the 20-px box
    cy, cx = com(p.image)
    assert abs(cy - MNIST_COM) <= 0.6 and abs(cx - MNIST_COM) <= 0.6
    assert p.image[:, :3].max() < 0.05 or p.image[:3].max() < 0.05  # a margin remains, as in MNIST


def test_polarity_position_and_scale_invariance():
    a = preprocess(draw_digit(280)).image  # dark on light, filling the image
    b = preprocess(draw_digit(280, dark_on_light=False)).image  # light on dark
    c = preprocess(draw_digit(70, canvas=(500, 400), offset=(30, 300))).image  # small, off-centre
    for other in (b, c):
        corr = np.corrcoef(a.ravel(), other.ravel())[0, 1]
        assert corr > 0.9, corr


def test_mnist_form_input_nearly_unchanged():
    # A 28×28 light-on-dark digit already in MNIST form comes back (almost) as it went in.
    digit = preprocess(draw_digit(280)).image
    again = preprocess(digit).image
    assert np.abs(again - digit).mean() < 0.02


def test_anti_aliased_edges_kept():
    p = preprocess(draw_digit(200).resize((50, 50), Image.Resampling.LANCZOS))
    grey = ((p.image > 0.05) & (p.image < 0.95)).sum()
    assert grey > 20  # partial pixels around the strokes, not a binary mask


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.full((100, 100), 255, np.uint8),  # blank paper
        lambda: np.zeros((100, 100), np.uint8),  # all black
        lambda: np.full((64, 80), 128, np.uint8),  # uniform grey
        lambda: np.clip(np.random.default_rng(1).normal(225, 4, (300, 300)), 0, 255).astype(
            np.uint8
        ),  # light noise
        lambda: np.zeros((1, 1), np.uint8),  # a single pixel
        lambda: np.full((1, 1), 255, np.uint8),
    ],
)
def test_empty_images_reported(make):
    p = preprocess(make())
    assert p.empty and p.image.shape == (28, 28) and not p.image.any()


def test_one_by_one_png_decodes_and_is_empty():
    assert preprocess(decode_image(encode(Image.new("L", (1, 1), 0), "PNG"))).empty


def test_keep_steps_names_every_stage():
    p = preprocess(draw_digit(90, canvas=(200, 150), offset=(10, 20)), keep_steps=True)
    names = [n for n, _ in p.steps]
    assert names == ["grayscale", "polarity", "suppressed", "cropped", "resized", "centred"]
    assert all(a.ndim == 2 and a.dtype == np.float32 for _, a in p.steps)
    assert np.array_equal(p.steps[-1][1], p.image)
    assert preprocess(draw_digit(90)).steps == ()


def test_rgb_rgba_arrays_and_bad_shapes():
    rgb = np.asarray(draw_digit(84).convert("RGB"))
    assert not preprocess(rgb).empty
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.allclose(preprocess(rgba).image, preprocess(rgb).image, atol=1e-5)
    for bad in (np.zeros((2, 3, 4, 5)), np.zeros((0, 5)), np.array([[1, 2]], np.int64)):
        with pytest.raises(InputError):
            preprocess(bad)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        preprocess(np.full((5, 5), 3.0))


def test_small_input_is_fast():
    digit = (preprocess(draw_digit(280)).image * 255).astype(np.uint8)
    for _ in range(20):
        preprocess(digit)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        preprocess(digit)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 1e-3, f"median {np.median(times) * 1e3:.3f} ms"


def test_as_mnist_no_preprocessing():
    a = np.zeros((28, 28), np.uint8)
    a[5:20, 10:14] = 255
    out = as_mnist(a)
    assert out.dtype == np.float32 and out.shape == (28, 28) and np.array_equal(out, a / 255.0)
    big = as_mnist(Image.fromarray(np.kron(a, np.ones((2, 2), np.uint8))))  # 56×56 → 28×28, no inversion
    assert big.shape == (28, 28) and np.abs(big - a / 255.0).mean() < 0.05
    with pytest.raises(InputError):
        as_mnist(np.full((28, 28), -0.5, np.float32))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 80), st.integers(1, 80), st.integers(0, 2**32 - 1), st.booleans())
def test_never_crashes_and_keeps_invariants(h, w, seed, sparse):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if sparse:
        a = np.where(rng.random((h, w)) < 0.05, a, 0).astype(np.uint8)
    p = preprocess(a)
    assert p.image.shape == (28, 28) and p.image.dtype == np.float32
    assert np.isfinite(p.image).all() and p.image.min() >= 0.0 and p.image.max() <= 1.0
    assert (not p.image.any()) if p.empty else p.image.max() > 0.5


@pytest.mark.parametrize(("canvas", "width"), [(400, 1), (800, 2), (3000, 3)])
def test_thin_pen_lines_become_mnist_strokes(canvas, width):
    # A 1–3 px pen line on a big canvas would shrink to a faint hair; it must come out as a solid
    # stroke like MNIST's (≥ 2 px wide, peak ink at full white).
    p = preprocess(draw_digit(canvas, width=width))
    assert not p.empty and p.image.max() == pytest.approx(1.0)
    assert (p.image > 0.5).sum() >= 50  # a 20-px '7' drawn with a ≥ 2-px stroke
    assert max(ink_box(p.image, 0.05)) in (19, 20, 21)


def test_large_photo_is_bounded_in_time():
    img = draw_digit(2000, canvas=(4000, 3000), offset=(900, 500))
    t = time.perf_counter()
    p = preprocess(img)
    assert not p.empty and time.perf_counter() - t < 1.0
