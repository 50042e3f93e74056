"""Image factories for the tests: real encoded bytes in every shape the worker meets."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112


def pattern_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with structure (gradients) plus noise, so outputs are not flat."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                           np.broadcast_to(y, (height, width, 1)),
                           np.full((height, width, 1), 128, np.float32)], axis=2)
    noisy = base + rng.normal(0, 20, size=(height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def solid_png(size: tuple[int, int], mode: str = "RGB", color: Any = 120) -> bytes:
    """A PNG of one colour: the cheapest valid input for fleet tests."""
    return png_bytes(Image.new(mode, size, color))


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    return encode(image, "JPEG", quality=95, **options)


def webp_bytes(image: Image.Image) -> bytes:
    return encode(image, "WEBP", lossless=True)


def rgba_transparent_left(width: int = 40, height: int = 20,
                          color: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    """Left half fully transparent (black under the alpha), right half opaque ``color``."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (width - width // 2, height), (*color, 255)),
                (width // 2, 0))
    return image


def palette_with_transparency(width: int = 20, height: int = 20) -> Image.Image:
    """A P-mode image: index 0 is transparent (its colour black), index 1 opaque blue."""
    image = Image.new("P", (width, height), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    image.paste(1, (0, 0, width, height // 2))  # top half blue
    image.info["transparency"] = 0
    return image


def gray_l(width: int = 16, height: int = 16, value: int = 77) -> Image.Image:
    return Image.new("L", (width, height), value)


def gray16(width: int = 8, height: int = 8, value: int = 32768) -> Image.Image:
    image = Image.fromarray(np.full((height, width), value, dtype=np.uint16))
    assert image.mode == "I;16", image.mode
    return image


def cmyk_jpeg_bytes(width: int = 16, height: int = 16) -> bytes:
    # Pure cyan in CMYK: (255, 0, 0, 0) -> roughly (0, 255, 255) in RGB.
    return jpeg_bytes(Image.new("CMYK", (width, height), (255, 0, 0, 0)))


def exif_rotated_jpeg_bytes(width: int = 40, height: int = 20, orientation: int = 6) -> bytes:
    """Stored ``width`` x ``height``: left half red, right half blue, with an EXIF
    orientation tag. Orientation 6 means "rotate 90 degrees clockwise to display"."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    return jpeg_bytes(image, exif=exif.tobytes())


def truncated_png_bytes(width: int = 64, height: int = 64) -> bytes:
    data = png_bytes(pattern_rgb(width, height))
    return data[: len(data) // 2]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed-looking PNG whose IHDR claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def max_abs_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def gray16_big_endian_tiff_bytes(width: int = 8, height: int = 8, value: int = 32768) -> bytes:
    """A 16-bit grayscale TIFF in big-endian ("MM") byte order: Pillow opens it as I;16B."""
    return encode(Image.new("I;16B", (width, height), value), "TIFF")
