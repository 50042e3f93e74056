"""Thumbnails for a local gallery: each image is read from S3 into memory and only a
small JPEG is written, so a gallery of a large batch takes megabytes, not a copy of
every full-size input and output. A thumbnail already there is kept: outputs never
change (their keys name their job) and an input that changes makes another job."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, ImageOps, UnidentifiedImageError

from producer.downloads import each_file

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 512  # the long side, in pixels: sharp in a gallery card, a few dozen KB
JPEG_QUALITY = 85
# A thumbnail is made of an image below Pillow's decompression-bomb limit only.
MAX_SOURCE_PIXELS = 40_000_000


@dataclass(frozen=True)
class Thumbnail:
    bucket: str
    key: str
    dest: Path  # a .jpg


@dataclass
class ThumbnailReport:
    made: int = 0
    unchanged: int = 0
    bytes: int = 0
    failed: list[str] = field(default_factory=list)  # "s3://bucket/key: why"

    def line(self) -> str:
        return (f"thumbnails made {self.made} ({self.bytes / 1e6:.1f} MB), already there "
                f"{self.unchanged}, failed {len(self.failed)}")


def thumbnail_name(name: str) -> str:
    return f"{name}.jpg"


def make_thumbnails(s3: Any, items: list[Thumbnail], *, concurrency: int = 8,
                    on_file: Callable[[int], None] = lambda n: None) -> ThumbnailReport:
    """Write a JPEG of at most THUMBNAIL_SIDE px per image; ``on_file(1)`` after each."""
    report = ThumbnailReport()

    def one(item: Thumbnail) -> tuple[str, int]:
        try:
            if item.dest.is_file():
                return "unchanged", 0
            data = s3.get_object(Bucket=item.bucket, Key=item.key)["Body"].read()
            item.dest.parent.mkdir(parents=True, exist_ok=True)
            part = item.dest.with_name(item.dest.name + ".part")
            part.write_bytes(shrink(data))
            part.replace(item.dest)
            return "written", item.dest.stat().st_size
        except (ClientError, BotoCoreError, OSError, UnidentifiedImageError,
                Image.DecompressionBombError) as exc:
            log.debug("thumbnail of s3://%s/%s failed", item.bucket, item.key, exc_info=True)
            return f"s3://{item.bucket}/{item.key}: {exc}", 0
        finally:
            on_file(1)

    tally = each_file(one, items, concurrency=concurrency, thread_name="thumbnail")
    report.made, report.unchanged, report.bytes, report.failed = tally
    return report


def shrink(data: bytes) -> bytes:
    """An image's bytes as a JPEG thumbnail (orientation applied, alpha on white)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_SOURCE_PIXELS:
            raise Image.DecompressionBombError(
                f"{image.width}x{image.height} is over {MAX_SOURCE_PIXELS} pixels")
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode smaller
        picture = ImageOps.exif_transpose(image)
        if picture.mode in ("RGBA", "LA", "P"):
            rgba = picture.convert("RGBA")
            picture = Image.new("RGB", rgba.size, (255, 255, 255))
            picture.paste(rgba, mask=rgba.getchannel("A"))
        picture = picture.convert("RGB")
        picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        return out.getvalue()
