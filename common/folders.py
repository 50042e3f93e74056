"""Finding the images in a local folder: one scan for the producer's uploads and the
worker's local folder mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contract.locations import is_image_key


@dataclass(frozen=True)
class LocalImage:
    path: Path
    relative: str  # posix path under the scanned folder (an upload's key suffix)


def scan_images(root: Path) -> tuple[list[LocalImage], list[Path]]:
    """Image files under ``root`` (recursive, sorted), and the other files found.

    Hidden files and folders (a name starting with '.') are left out of both.
    """
    images: list[LocalImage] = []
    others: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if is_image_key(path.name):
            images.append(LocalImage(path=path, relative=relative.as_posix()))
        else:
            others.append(path)
    return images, others


def output_name(relative: Path, extension: str, taken: set[Path]) -> Path:
    """Where the output of the input at ``relative`` goes (its relative path with the
    output's extension), kept apart from outputs already ``taken``: a.png and a.jpg
    both make a.png, so the second becomes a_jpg.png (then a_jpg_2.png ...). Adds the
    name to ``taken``."""
    out = relative.with_suffix("." + extension)
    if out in taken:
        base = f"{relative.stem}_{relative.suffix.lstrip('.')}"
        out = out.with_name(f"{base}{out.suffix}")
        counter = 2
        while out in taken:
            out = out.with_name(f"{base}_{counter}{out.suffix}")
            counter += 1
    taken.add(out)
    return out
