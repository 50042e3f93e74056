"""The fast PNG writer: lossless, standard, and no bigger than Pillow's on photo-like data."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bench.overlap_inputs import photo_like_image
from contract.job import OutputFormat
from tests.support.images import encode, pattern_rgb
from worker import png_writer
from worker.images import encode_image
from worker.png_writer import encode_png, supports


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (kind, payload), checking every chunk's CRC on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        payload = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + payload), f"bad CRC on {kind!r}"
        found.append((kind, payload))
        offset += 12 + length
    return found


def random_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (33, 17), (512, 512)])
def test_round_trip_is_bit_exact(mode: str, size: tuple[int, int]) -> None:
    image = random_image(mode, *size, seed=size[0] * 1000 + size[1])
    data = encode_png(image)
    back = Image.open(io.BytesIO(data))
    back.load()
    assert (back.format, back.mode, back.size) == ("PNG", mode, size)
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_file_layout_is_standard_png() -> None:
    data = encode_png(pattern_rgb(40, 30))
    kinds = [kind for kind, _ in chunks(data)]
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    header = dict(chunks(data))[b"IHDR"]
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", header)
    assert (width, height, depth, colour) == (40, 30, 8, 2)
    assert (compression, filtering, interlace) == (0, 0, 0)
    raw = zlib.decompress(dict(chunks(data))[b"IDAT"])
    assert len(raw) == 30 * (1 + 40 * 3)
    assert {raw[row * 121] for row in range(30)} == {1}  # the Sub filter on every row


def test_unsupported_modes_are_refused_by_name() -> None:
    palette = Image.new("P", (4, 4))
    assert not supports(palette)
    with pytest.raises(ValueError, match="mode 'P'"):
        encode_png(palette)


@pytest.mark.parametrize("mode", ["P", "I;16", "LA", "1"])
def test_encode_image_falls_back_to_pillow_for_other_modes(mode: str) -> None:
    image = Image.new(mode, (9, 5))
    back = Image.open(io.BytesIO(encode_image(image, OutputFormat.PNG)))
    back.load()
    assert back.format == "PNG" and back.size == (9, 5)
    assert np.array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize("source", ["png", "jpg"])
def test_photo_like_output_is_about_pillows_size(source: str) -> None:
    image = Image.open(io.BytesIO(photo_like_image(512, fmt=source))).convert("RGB")
    fast = encode_image(image, OutputFormat.PNG)
    pillow = encode(image, "PNG", compress_level=1)
    assert 0.85 * len(pillow) <= len(fast) <= 1.10 * len(pillow)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast))), np.asarray(image))


def test_zlib_ng_is_used_and_the_standard_zlib_gives_the_same_image(monkeypatch) -> None:
    assert png_writer.deflate.__name__ == "zlib_ng.zlib_ng"  # the worker extra has it
    image = pattern_rgb(64, 48, seed=5)
    fast = encode_png(image)
    monkeypatch.setattr(png_writer, "deflate", zlib)
    plain = encode_png(image)
    for data in (fast, plain):
        chunks(data)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image))
