"""Decoding, normalising, resizing and encoding images (Pillow only, no torch)."""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from contract.errors import ImageTooLarge, InvalidImage
from contract.job import OutputFormat
from contract.locations import IMAGE_EXTENSIONS  # noqa: F401  (re-exported)
from worker import png_writer

_BACKGROUND = (255, 255, 255)
# The only formats Pillow may try: what IMAGE_EXTENSIONS names (the JPEG plugin also
# opens MPO, the multi-picture JPEG of cameras). Every other plugin stays off, so a
# hostile file cannot reach Ghostscript (EPS) or a rarely used, rarely audited decoder.
DECODE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_ENCODE_OPTIONS: dict[OutputFormat, dict] = {
    OutputFormat.PNG: {"compress_level": 1},  # modes the fast writer does not take
    OutputFormat.JPG: {"quality": 92},
    OutputFormat.WEBP: {"quality": 90, "method": 0},  # method 4 is 2-5x slower, ~same size
}


@dataclass(frozen=True)
class PreparedImage:
    """An input ready for the pipeline, with what is needed to restore its size."""

    image: Image.Image
    original_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


class PixelBudget:
    """Bounds the pixels being decoded at once across I/O threads.

    A decoded image costs about 3 bytes per pixel, and converting and resizing it makes
    a few copies: sixteen threads each decoding a 36-megapixel photo would need
    gigabytes. Each decode reserves its pixel count first and waits while the budget
    is spent; one image larger than the whole budget still runs, alone.
    """

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self._in_use = 0
        self._cond = threading.Condition()
        self.peak = 0

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._in_use == 0
                                or self._in_use + pixels <= self.max_pixels)
            self._in_use += pixels
            self.peak = max(self.peak, self._in_use)
        try:
            yield
        finally:
            with self._cond:
                self._in_use -= pixels
                self._cond.notify_all()


_NO_BUDGET = PixelBudget(2**62)


def decode_image(data: bytes, *, max_pixels: int, name: str = "input",
                 budget: PixelBudget | None = None) -> Image.Image:
    """Bytes to an upright RGB image; InvalidImage / ImageTooLarge name the problem."""
    with _decoding(data, max_pixels, name, budget or _NO_BUDGET) as image:
        return image


def decode_and_prepare(data: bytes, *, max_pixels: int, max_side: int, size_bucket: int,
                       name: str = "input", budget: PixelBudget | None = None
                       ) -> PreparedImage:
    """Decode and resize for the model while holding the pixel budget: the full-size
    pixels are released before the next decode may use them."""
    with _decoding(data, max_pixels, name, budget or _NO_BUDGET) as image:
        return prepare_image(image, max_side, size_bucket)


@contextlib.contextmanager
def _decoding(data: bytes, max_pixels: int, name: str,
              budget: PixelBudget) -> Iterator[Image.Image]:
    if not data:
        raise InvalidImage(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{name}: {width}x{height} = {width * height} pixels exceeds the limit "
                    f"of {max_pixels} (decompression bomb protection)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{name}: not a recognised image format (accepted: "
                           f"{', '.join(DECODE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{name}: unreadable image ({exc})") from None
    with budget.reserve(width * height):
        yield _load_upright_rgb(image, name)


def _load_upright_rgb(image: Image.Image, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{name}: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise InvalidImage(f"{name}: unreadable image ({type(exc).__name__}: {exc})") from None
    # A broken EXIF block should not reject otherwise good pixels.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    try:
        return to_rgb(image)
    except (OSError, ValueError, TypeError, MemoryError) as exc:
        raise InvalidImage(f"{name}: cannot convert {image.mode} image to RGB ({exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha is composited on white, 16-bit is scaled to 8-bit."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        # Pillow's own conversion of 16-bit data clips instead of scaling.
        sixteen_bit = image.mode.startswith("I;16")
        image = image.convert("I")
        scale = 1 / 256 if sixteen_bit or image.getextrema()[1] > 255 else 1
        image = image.point(lambda v: v * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def target_size(size: tuple[int, int], max_side: int, bucket: int = 8) -> tuple[int, int]:
    """Scale so the long side is ``max_side``; round the short side to ``bucket``.

    Rounding the short side to a coarse bucket (64 px by default) makes images of
    similar aspect share a shape, so they batch together; the small aspect change is
    undone when the output is resized back to the input's size.
    """
    width, height = size
    long_side, short_side = max(width, height), min(width, height)
    scaled_short = short_side * max_side / long_side
    step = min(bucket, max_side)
    short = max(step, int(round(scaled_short / step)) * step)
    short = min(short, max_side)
    return (max_side, short) if width >= height else (short, max_side)


def prepare_image(image: Image.Image, max_side: int, bucket: int = 8) -> PreparedImage:
    size = target_size(image.size, max_side, bucket)
    resized = image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
    return PreparedImage(image=resized, original_size=image.size)


def restore_size(output: Image.Image, prepared: PreparedImage, keep_size: bool) -> Image.Image:
    if not keep_size or output.size == prepared.original_size:
        return output
    return output.resize(prepared.original_size, Image.Resampling.LANCZOS)


def encode_image(image: Image.Image, fmt: OutputFormat) -> bytes:
    if fmt is OutputFormat.PNG and png_writer.supports(image):
        return png_writer.encode_png(image)  # 4-7x less CPU than Pillow, about as small
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.pil_format, **_ENCODE_OPTIONS[fmt])
    return buffer.getvalue()
