"""What decoding and encoding one 512 px job image costs, and whether it runs off the
GIL: CPU ms per image on one thread, and images/s on one thread against two.

    PYTHONPATH=. python -m bench.codec_cpu [--images 40]
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def codec_cpu(fmt: str, images: int) -> dict[str, float]:
    from bench.devstats import thread_cpu_per_call
    from bench.overlap_inputs import photo_like_image
    from contract.job import OutputFormat
    from worker.images import decode_image, encode_image

    data = photo_like_image(512, fmt=fmt)
    image = decode_image(data, max_pixels=10**8)
    output = OutputFormat(fmt)

    def cpu_ms(work) -> float:
        return round(1000 * thread_cpu_per_call(work, images), 2)

    def both() -> None:
        encode_image(decode_image(data, max_pixels=10**8), output)

    def per_second(threads: int) -> float:
        workers = [threading.Thread(target=lambda: [both() for _ in range(images)])
                   for _ in range(threads)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return round(threads * images / (time.perf_counter() - started), 1)

    return {"input_kib": round(len(data) / 1024),
            "decode_cpu_ms": cpu_ms(lambda: decode_image(data, max_pixels=10**8)),
            "encode_cpu_ms": cpu_ms(lambda: encode_image(image, output)),
            "images_per_s_1_thread": per_second(1),
            "images_per_s_2_threads": per_second(2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args(argv)
    result = {fmt: codec_cpu(fmt, args.images) for fmt in ("jpg", "png")}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
