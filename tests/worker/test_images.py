"""Decoding, normalising, sizing and encoding images (real Pillow codecs, real bytes)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract.errors import ImageTooLarge, InvalidImage
from contract.job import OutputFormat
from tests.support.images import (
    cmyk_jpeg_bytes,
    encode,
    exif_rotated_jpeg_bytes,
    gray16,
    gray16_big_endian_tiff_bytes,
    gray_l,
    jpeg_bytes,
    max_abs_diff,
    mean_abs_diff,
    palette_with_transparency,
    pattern_rgb,
    png_bytes,
    png_header_claiming,
    rgba_transparent_left,
    truncated_png_bytes,
    webp_bytes,
)
from worker.images import (
    decode_image,
    encode_image,
    prepare_image,
    restore_size,
    target_size,
    to_rgb,
)

MAX = 40_000_000


# -- decoding ---------------------------------------------------------------------------

@pytest.mark.parametrize("make", [png_bytes, webp_bytes])
def test_decode_lossless_formats_exactly(make) -> None:
    src = pattern_rgb(37, 23)
    out = decode_image(make(src), max_pixels=MAX)
    assert out.mode == "RGB" and out.size == (37, 23)
    assert max_abs_diff(out, src) == 0


def test_decode_jpeg() -> None:
    src = pattern_rgb(64, 48)
    out = decode_image(jpeg_bytes(src), max_pixels=MAX)
    assert out.mode == "RGB" and out.size == (64, 48)
    assert mean_abs_diff(out, src) < 12


def test_rgba_is_composited_on_white() -> None:
    out = decode_image(png_bytes(rgba_transparent_left(40, 20)), max_pixels=MAX)
    assert out.mode == "RGB" and out.size == (40, 20)
    assert out.getpixel((5, 10)) == (255, 255, 255)  # transparent black -> white
    assert out.getpixel((35, 10)) == (255, 0, 0)  # opaque red stays red


def test_semi_transparent_pixel_is_blended_with_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    r, g, b = decode_image(png_bytes(image), max_pixels=MAX).getpixel((0, 0))
    assert r == g == b and 120 <= r <= 135


def test_la_is_composited_on_white() -> None:
    image = Image.new("LA", (4, 4), (0, 0))
    assert to_rgb(image).getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency() -> None:
    data = png_bytes(palette_with_transparency(20, 20))
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data, max_pixels=MAX)
    assert out.mode == "RGB"
    assert out.getpixel((10, 2)) == (0, 0, 255)  # opaque blue top half
    assert out.getpixel((10, 17)) == (255, 255, 255)  # transparent index -> white, not black


def test_gif_palette_decodes() -> None:
    out = decode_image(encode(palette_with_transparency(10, 10), "GIF"), max_pixels=MAX)
    assert out.mode == "RGB" and out.getpixel((5, 1)) == (0, 0, 255)


def test_grayscale_l() -> None:
    out = decode_image(png_bytes(gray_l(16, 12, 77)), max_pixels=MAX)
    assert out.mode == "RGB" and out.size == (16, 12)
    assert out.getpixel((3, 3)) == (77, 77, 77)


@pytest.mark.parametrize(("value16", "expected8"), [(32768, 128), (65535, 255), (0, 0),
                                                    (16384, 64)])
def test_16bit_grayscale_is_scaled_not_clipped(value16: int, expected8: int) -> None:
    data = png_bytes(gray16(8, 8, value16))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    r, g, b = decode_image(data, max_pixels=MAX).getpixel((4, 4))
    assert r == g == b
    assert abs(r - expected8) <= 1, (value16, r)


def test_16bit_big_endian_tiff_is_scaled() -> None:
    data = gray16_big_endian_tiff_bytes(8, 8, 32768)
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    r, g, b = decode_image(data, max_pixels=MAX).getpixel((4, 4))
    assert r == g == b and abs(r - 128) <= 1


def test_dark_16bit_image_stays_dark() -> None:
    # 200/65535 is almost black; treating it as 8-bit would make it 200/255.
    r, _, _ = decode_image(png_bytes(gray16(8, 8, 200)), max_pixels=MAX).getpixel((0, 0))
    assert r <= 1


def test_cmyk_jpeg() -> None:
    data = cmyk_jpeg_bytes(16, 16)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, max_pixels=MAX)
    assert out.mode == "RGB" and out.size == (16, 16)
    r, g, b = out.getpixel((8, 8))
    assert r < 60 and g > 200 and b > 200  # cyan


def test_exif_orientation_is_applied() -> None:
    data = exif_rotated_jpeg_bytes(40, 20, orientation=6)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    out = decode_image(data, max_pixels=MAX)
    assert out.size == (20, 40)  # width and height swapped
    # Rotated 90 degrees clockwise: the stored left (red) half is now on top.
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_broken_exif_does_not_reject_the_pixels() -> None:
    image = pattern_rgb(16, 16)
    data = jpeg_bytes(image, exif=b"Exif\x00\x00garbage-not-tiff")
    assert decode_image(data, max_pixels=MAX).size == (16, 16)


def test_zero_bytes_is_invalid() -> None:
    with pytest.raises(InvalidImage, match=r"cat\.png: empty file"):
        decode_image(b"", max_pixels=MAX, name="cat.png")


@pytest.mark.parametrize("data", [b"this is not an image at all", b"\x00" * 100,
                                  b"\x89PNG\r\n\x1a\n" + b"garbage" * 5])
def test_corrupt_bytes_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage, match=r"^bad\.png: "):
        decode_image(data, max_pixels=MAX, name="bad.png")


def test_truncated_png_is_invalid() -> None:
    with pytest.raises(InvalidImage, match=r"half\.png: unreadable image"):
        decode_image(truncated_png_bytes(), max_pixels=MAX, name="half.png")


def test_truncated_jpeg_is_invalid() -> None:
    data = jpeg_bytes(pattern_rgb(64, 64))
    with pytest.raises(InvalidImage):
        decode_image(data[:200], max_pixels=MAX)


def test_decompression_bomb_header_is_too_large() -> None:
    # 100k x 100k = 10^10 pixels: far past both our limit and Pillow's own.
    with pytest.raises(ImageTooLarge, match=r"bomb\.png"):
        decode_image(png_header_claiming(100_000, 100_000), max_pixels=MAX, name="bomb.png")


def test_header_over_our_limit_but_under_pillows_is_too_large() -> None:
    with pytest.raises(ImageTooLarge, match=r"10000x5000 = 50000000 pixels"):
        decode_image(png_header_claiming(10_000, 5_000), max_pixels=MAX, name="big.png")


def test_real_image_over_max_pixels_is_too_large() -> None:
    data = png_bytes(pattern_rgb(20, 20))
    with pytest.raises(ImageTooLarge, match="400 pixels exceeds the limit of 399"):
        decode_image(data, max_pixels=399)
    assert decode_image(data, max_pixels=400).size == (20, 20)


def test_too_large_is_not_invalid_image() -> None:
    with pytest.raises(ImageTooLarge) as info:
        decode_image(png_header_claiming(100_000, 100_000), max_pixels=MAX)
    assert not isinstance(info.value, InvalidImage)


# -- sizing -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("size", "max_side", "bucket", "expected"),
    [
        ((1024, 768), 512, 8, (512, 384)),
        ((768, 1024), 512, 8, (384, 512)),
        ((512, 512), 512, 8, (512, 512)),
        ((333, 517), 512, 8, (328, 512)),
        ((333, 517), 512, 64, (320, 512)),
        ((4000, 10), 512, 8, (512, 8)),  # extreme aspect: short side floored at one step
        ((100, 60), 256, 8, (256, 152)),  # upscaled when smaller than max_side
    ],
)
def test_target_size(size, max_side, bucket, expected) -> None:
    assert target_size(size, max_side, bucket) == expected


@pytest.mark.parametrize("size", [(333, 517), (640, 480), (1920, 1080), (517, 333), (7, 1000),
                                  (999, 998), (64, 64), (3000, 2000)])
@pytest.mark.parametrize(("max_side", "bucket"), [(512, 8), (512, 64), (768, 64), (128, 64),
                                                  (256, 8)])
def test_target_size_properties(size, max_side, bucket) -> None:
    w, h = target_size(size, max_side, bucket)
    assert max(w, h) == max_side
    assert (w >= h) == (size[0] >= size[1])  # orientation kept
    short = min(w, h)
    assert short % 8 == 0 and short % min(bucket, max_side) == 0
    assert 0 < short <= max_side
    # Aspect kept up to the bucket's rounding (unless clamped at one bucket).
    ideal_short = min(size) * max_side / max(size)
    if ideal_short >= bucket:
        assert abs(short - ideal_short) <= bucket / 2 + 1e-6


def test_prepare_and_restore_size() -> None:
    image = pattern_rgb(333, 517)
    prepared = prepare_image(image, 256, 8)
    assert prepared.size == target_size((333, 517), 256, 8)
    assert prepared.original_size == (333, 517)
    assert restore_size(prepared.image, prepared, keep_size=True).size == (333, 517)
    assert restore_size(prepared.image, prepared, keep_size=False).size == prepared.size


def test_prepare_keeps_an_image_already_at_size() -> None:
    image = pattern_rgb(256, 128)
    assert prepare_image(image, 256, 8).image is image


# -- encoding ----------------------------------------------------------------------------

MAGIC = {OutputFormat.PNG: b"\x89PNG", OutputFormat.JPG: b"\xff\xd8\xff",
         OutputFormat.WEBP: b"RIFF"}


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_encode_round_trip(fmt: OutputFormat) -> None:
    src = pattern_rgb(48, 32, seed=3)
    data = encode_image(src, fmt)
    assert data.startswith(MAGIC[fmt])
    if fmt is OutputFormat.WEBP:
        assert data[8:12] == b"WEBP"
    again = decode_image(data, max_pixels=MAX)
    assert again.size == (48, 32) and again.mode == "RGB"
    assert Image.open(io.BytesIO(data)).format == fmt.pil_format
    if fmt is OutputFormat.PNG:
        assert np.array_equal(np.asarray(again), np.asarray(src))
    else:
        assert mean_abs_diff(again, src) < 15
