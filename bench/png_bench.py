"""PNG encoding cost per output: Pillow (what the worker used before) against the
worker's writer (worker/png_writer.py) with the standard zlib and with zlib-ng.

    PYTHONPATH=. python -m bench.png_bench [--size 512] [--repeat 30]
"""

from __future__ import annotations

import argparse
import io
import json
import zlib
from collections.abc import Callable

from PIL import Image

from bench.devstats import thread_cpu_per_call
from bench.overlap_inputs import photo_like_image


def seconds_per_call(fn: Callable[[], bytes], repeat: int) -> tuple[float, int]:
    """(CPU seconds per call in this thread, bytes of the result)."""
    data = fn()
    return thread_cpu_per_call(fn, repeat), len(data)


def run(size: int = 512, repeat: int = 30) -> list[dict]:
    from worker import png_writer

    rows = []
    for source in ("png", "jpg"):
        image = Image.open(io.BytesIO(photo_like_image(size, fmt=source))).convert("RGB")

        def pillow(image: Image.Image = image) -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, "PNG", compress_level=1)
            return buffer.getvalue()

        def writer(deflate, image: Image.Image = image) -> bytes:
            saved, png_writer.deflate = png_writer.deflate, deflate
            try:
                return png_writer.encode_png(image)
            finally:
                png_writer.deflate = saved

        cases = {"Pillow compress_level=1": pillow,
                 "writer, stdlib zlib": lambda: writer(zlib)}
        if png_writer.deflate is not zlib:
            cases["writer, zlib-ng"] = lambda: writer(png_writer.deflate)
        for name, fn in cases.items():
            cpu, nbytes = seconds_per_call(fn, repeat)
            rows.append({"image": f"photo-like {size} px (from {source})", "encoder": name,
                         "cpu_ms": round(1000 * cpu, 2), "kib": round(nbytes / 1024, 1)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args(argv)
    rows = run(args.size, args.repeat)
    print("| image | encoder | CPU ms | KiB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['encoder']} | {r['cpu_ms']} | {r['kib']} |")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
