"""``img2img-worker run`` writes index.html next to results.jsonl, and names the failed
files on the console; the page is checked in a real headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.failures import failure_lines
from tests.support.browser import (
    chromium_or_skip,
    distinct_colours,
    file_url,
    remote_urls,
    render,
    screenshot,
)
from tests.support.local_cli import FAST_ARGS, Run, run_cli
from tests.support.paths import REPO

SAMPLES = REPO / "data" / "input_images"


@pytest.fixture(scope="module")
def gallery_run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("gallery")
    shutil.copytree(SAMPLES, root / "in", ignore=shutil.ignore_patterns("*.md"))
    (root / "in" / "corrupt.png").write_bytes(b"not a png at all" * 10)
    return run_cli(["in", "-m", "tiny", "-p", "a <b>bold</b> prompt", *FAST_ARGS],
                   cwd=root, model_cache=model_cache, out=root / "out")


def test_run_writes_the_gallery_and_names_the_failed_file(gallery_run: Run) -> None:
    index = gallery_run.out / "index.html"

    assert gallery_run.returncode == 1, gallery_run.stderr  # corrupt.png failed
    assert f"gallery {index}" in gallery_run.stdout
    assert "  failed in/corrupt.png: InvalidImage: " in gallery_run.stderr
    page = index.read_text()
    assert page.index("corrupt.png") < page.index("landscape.jpg")  # failures first
    assert "<dt>strength</dt><dd>0.5</dd><dt>steps</dt><dd>4</dd>" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; prompt" in page
    assert remote_urls(page) == []


def test_every_image_of_the_gallery_loads_in_chromium(gallery_run: Run) -> None:
    chromium = chromium_or_skip()
    samples = sorted(p.name for p in SAMPLES.iterdir() if p.suffix != ".md")

    page = render(chromium, file_url(gallery_run.out / "index.html"))

    # Each sample's input and output, and the corrupt file's input (which cannot show).
    assert page.counts == (2 * len(samples) + 1, 2 * len(samples), 1), page.body
    assert [i.src for i in page.images if i.broken] == ["../in/corrupt.png"]
    assert all(not i.src.startswith(("/", "http", "file:")) for i in page.images)


def test_a_screenshot_of_the_gallery_is_not_blank(gallery_run: Run, tmp_path: Path) -> None:
    chromium = chromium_or_skip()

    shot = screenshot(chromium, file_url(gallery_run.out / "index.html"),
                      tmp_path / "gallery.png")

    # A blank or text-only page has a few dozen colours; photos and noise have thousands.
    assert distinct_colours(shot) > 2000


def test_failure_lines_stop_at_the_limit_and_say_how_many_more():
    records = [{"status": "done", "input": "ok.png"}] + [
        {"status": "failed", "input": f"bad{i}.png",
         "error": {"type": "InvalidImage", "message": f"reason {i}"}} for i in range(5)]

    lines = failure_lines(records, limit=3, more="all in out/results.jsonl")

    assert lines == ["  failed bad0.png: InvalidImage: reason 0",
                     "  failed bad1.png: InvalidImage: reason 1",
                     "  failed bad2.png: InvalidImage: reason 2",
                     "  ... and 2 more failed (all in out/results.jsonl)"]
    assert failure_lines(records[:1]) == []
