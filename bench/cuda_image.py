"""Build the CUDA worker image (the Dockerfile's default target) and measure it.

    python -m bench.cuda_image                       # build, measure, remove the image
    python -m bench.cuda_image --keep --compressed   # keep it; also the size a pull moves
    python -m bench.cuda_image --code-change         # then rebuild after a code edit

Building needs no GPU (running it does). Without an image registry the base is made
locally (``make base-image``: Debian with Python 3.11) and used for both stages in place
of ``nvidia/cuda:...-base-ubuntu24.04``; torch comes from PyPI, whose torch 2.13.0 is the
CUDA 13.0 build (the same wheels as the cu130 index). Reported: the image's size, each
layer's size (the dependency layer and the project's must be separate, so a code change
re-pulls megabytes), optionally each layer gzip-compressed as a registry stores it, the
torch build inside, and (``--code-change``) what a rebuild after an edit to the project's
code shares with the first build and what a host holding that build must still pull.
Numbers and the machine go in docs/deploy.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TAG = "img2img-fleet-worker:cuda-bench"
DEFAULT_BASE = "img2img-base:bookworm"
PROBE = ("import torch, importlib.metadata as m; "
         "print('torch', torch.__version__, 'cuda', torch.version.cuda, "
         "'cudnn', torch.backends.cudnn.version()); "
         "print('xformers', next((d.version for d in m.distributions() "
         "if d.metadata['Name'] == 'xformers'), None))")


def _docker() -> str:
    return os.environ.get("DOCKER", "docker")


@dataclass(frozen=True)
class Build:
    """The build arguments the bench varies; the defaults make the CUDA image."""

    base: str = DEFAULT_BASE
    python: str = "python3.11"
    ca_bundle: str | None = None
    torch_version: str = "2.13.0"  # 2.13.0+cpu (with xformers "") is `make image`'s build
    xformers_version: str = "0.0.35"


def build(tag: str, spec: Build, context: Path = ROOT) -> float:
    """Build the runtime target as ``spec`` says; returns the wall time in seconds."""
    command = [_docker(), "build", "--target", "runtime", "-t", tag,
               "--build-arg", f"BUILD_IMAGE={spec.base}",
               "--build-arg", f"CUDA_IMAGE={spec.base}",
               "--build-arg", f"PYTHON={spec.python}",
               "--build-arg", f"TORCH_VERSION={spec.torch_version}",
               "--build-arg", f"XFORMERS_VERSION={spec.xformers_version}",
               # PyPI's torch==2.13.0 is the CUDA 13.0 build; pip's own index serves it.
               "--build-arg", "TORCH_INDEX_URL="]
    if spec.ca_bundle:
        command += ["--secret", f"id=ca,src={spec.ca_bundle}"]
    started = time.monotonic()
    subprocess.run([*command, "."], cwd=context, check=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return time.monotonic() - started


def layers(tag: str) -> list[tuple[int, str]]:
    """(size in bytes, the instruction that made it), oldest first."""
    out = subprocess.run(
        [_docker(), "history", "--no-trunc", "--human=false", "--format",
         "{{json .}}", tag], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [(int(row["Size"]), " ".join(row["CreatedBy"].split())) for row in reversed(rows)]


def image_size(tag: str) -> int:
    out = subprocess.run([_docker(), "image", "inspect", "-f", "{{.Size}}", tag],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def compressed_layer_sizes(tag: str, compress: bool = True) -> list[tuple[int, int]]:
    """(unpacked, gzip level 6 as pushes compress) bytes of each layer of ``docker save``,
    in the image's layer order (that of ``RootFS.Layers``); 0 compressed if not
    ``compress``."""
    sizes: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    with subprocess.Popen([_docker(), "save", tag], stdout=subprocess.PIPE) as save:
        assert save.stdout is not None
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for member in archive:
                stream = archive.extractfile(member) if member.isfile() else None
                if stream is None:
                    continue
                if member.name == "manifest.json":
                    order = json.loads(stream.read())[0]["Layers"]
                elif member.name.endswith("layer.tar") and not compress:
                    sizes[member.name] = (member.size, 0)
                elif member.name.endswith("layer.tar"):
                    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
                    packed = 0
                    while chunk := stream.read(1 << 20):
                        packed += len(compressor.compress(chunk))
                    sizes[member.name] = (member.size, packed + len(compressor.flush()))
    if save.returncode:
        raise RuntimeError(f"docker save {tag} exited {save.returncode}")
    return [sizes[name] for name in order if name in sizes]


def diff_ids(tag: str) -> list[str]:
    out = subprocess.run([_docker(), "image", "inspect", "-f", "{{json .RootFS.Layers}}", tag],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# The context the Dockerfile sees (.dockerignore's allow-list), for the code-change probe.
CONTEXT_PATHS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "LICENSE",
                 "contract", "common", "worker", "producer", "capacity_planner", "infra",
                 "wheelhouse")


def rebuild_after_code_change(tag: str, spec: Build) -> tuple[float, int, int, int]:
    """Rebuild from a copy of the context with one line added to the worker's code.

    Returns (seconds, layers shared with ``tag``, layers new, bytes in the new layers):
    a host that has ``tag`` pulls only the new layers.
    """
    changed = f"{tag}-code-change"
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        for name in CONTEXT_PATHS:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, context / name, ignore=shutil.ignore_patterns(
                    "__pycache__", "cdk.out", "*.pyc"))
            elif source.exists():
                shutil.copy2(source, context / name)
        with (context / "worker" / "__init__.py").open("a") as code:
            code.write("# a code change\n")
        seconds = build(changed, spec, context=context)
    try:
        before = set(diff_ids(tag))
        layers = diff_ids(changed)
        sizes = compressed_layer_sizes(changed, compress=False)
        new = [size for layer, (size, _) in zip(layers, sizes, strict=True)
               if layer not in before]
        return seconds, len(layers) - len(new), len(new), sum(new)
    finally:
        subprocess.run([_docker(), "image", "rm", changed], check=False)


def probe(tag: str) -> str:
    """The torch build inside the image (no GPU needed to read it)."""
    return subprocess.run(
        [_docker(), "run", "--rm", "--network", "none", "--entrypoint", "python", tag,
         "-c", PROBE], check=True, capture_output=True, text=True).stdout.strip()


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--base", default=DEFAULT_BASE,
                        help="base image for both stages (default: make base-image's)")
    parser.add_argument("--python", default="python3.11",
                        help="the base's interpreter command (Ubuntu 24.04: python3.12)")
    parser.add_argument("--ca-bundle", default=os.environ.get("PIP_CERT"),
                        help="CA bundle for pip inside the build (default: $PIP_CERT)")
    parser.add_argument("--torch-version", default=Build.torch_version,
                        help="e.g. 2.13.0+cpu for the CPU build (with --xformers-version '')")
    parser.add_argument("--xformers-version", default=Build.xformers_version)
    parser.add_argument("--compressed", action="store_true",
                        help="also gzip each layer of `docker save` (minutes)")
    parser.add_argument("--code-change", action="store_true",
                        help="rebuild after a one-line code edit: what a host must pull")
    parser.add_argument("--keep", action="store_true", help="keep the image afterwards")
    args = parser.parse_args(argv)

    spec = Build(base=args.base, python=args.python, ca_bundle=args.ca_bundle,
                 torch_version=args.torch_version, xformers_version=args.xformers_version)
    seconds = build(args.tag, spec)
    try:
        rows = layers(args.tag)
        compressed = compressed_layer_sizes(args.tag) if args.compressed else []
        print(f"\nbuilt {args.tag} on {args.base} in {seconds:.0f} s")
        print(probe(args.tag))
        print(f"image size (docker image inspect): {_gb(image_size(args.tag))}")
        print("layers (non-empty), oldest first:")
        for size, made_by in rows:
            if size:
                print(f"  {_gb(size):>9}  {made_by[:110]}")
        if compressed:
            print("layers as a registry stores them (unpacked -> gzip), oldest first:")
            for unpacked, packed in compressed:
                print(f"  {_gb(unpacked):>9} -> {_gb(packed)}")
            print(f"to pull (all layers, gzip): {_gb(sum(p for _, p in compressed))}")
        if args.code_change:
            seconds, shared, new, size = rebuild_after_code_change(args.tag, spec)
            print(f"after a code change: rebuilt in {seconds:.0f} s; {shared} layers "
                  f"shared with the first build, {new} new, {_gb(size)} unpacked to pull")
    finally:
        if not args.keep:
            subprocess.run([_docker(), "image", "rm", args.tag], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
