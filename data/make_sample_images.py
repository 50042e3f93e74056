"""Regenerate the sample images in data/input_images (procedural, no external source).

Run: python data/make_sample_images.py
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).parent / "input_images"


def landscape(width: int = 640, height: int = 427) -> Image.Image:
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):  # sky gradient
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * t), int(150 + 60 * t), 235))
    draw.ellipse([480, 50, 560, 130], fill=(255, 214, 90))
    for i, color in enumerate([(70, 110, 80), (50, 90, 60), (35, 70, 45)]):
        base = 250 + i * 50
        points = [(x, base - 60 * math.sin(x / (70 + 25 * i) + i) ** 2)
                  for x in range(0, width + 1, 8)]
        draw.polygon([(0, height), *points, (width, height)], fill=color)
    return image


def portrait(width: int = 384, height: int = 512) -> Image.Image:
    image = Image.new("RGB", (width, height), (235, 225, 205))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 380, width, height], fill=(120, 80, 50))
    draw.ellipse([110, 120, 280, 330], fill=(200, 70, 60))  # a red vase
    draw.rectangle([165, 60, 225, 140], fill=(190, 60, 50))
    for k in range(7):
        x = 195 + 70 * math.cos(k), 60 + 40 * math.sin(k)
        draw.ellipse([x[0] - 18, x[1] - 18, x[0] + 18, x[1] + 18], fill=(250, 200, 40))
    return image


def logo_rgba(size: int = 300) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse([20, 20, size - 20, size - 20], fill=(40, 120, 220, 255))
    draw.polygon([(size // 2, 50), (size - 60, size - 70), (60, size - 70)],
                 fill=(250, 250, 250, 200))
    return image


def grayscale(width: int = 500, height: int = 350) -> Image.Image:
    image = Image.new("L", (width, height))
    image.putdata([int(127 + 127 * math.sin(x / 23.0) * math.cos(y / 17.0))
                   for y in range(height) for x in range(width)])
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    landscape().save(OUT / "landscape.jpg", quality=88)
    portrait().save(OUT / "still_life.png", optimize=True)
    logo_rgba().save(OUT / "logo_rgba.png", optimize=True)
    grayscale().save(OUT / "waves_gray.png", optimize=True)


if __name__ == "__main__":
    main()
