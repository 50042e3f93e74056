"""Headless Chromium for tests: the DOM after the page's scripts ran, and screenshots.

Chromium is a system package (``apt-get install chromium``); tests that need it skip
when it is missing, unless IMG2IMG_TEST_BROWSER=required (CI sets it), where a missing
browser fails them instead of hiding them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--hide-scrollbars", "--mute-audio"]
# Virtual time: the page's loads and scripts run to completion within this budget, then
# Chromium dumps or shoots; images from the disk or a local S3 take milliseconds.
VIRTUAL_TIME_MS = 5000


def chromium_or_skip() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    reason = "Chromium is not installed (apt-get install chromium)"
    if os.environ.get("IMG2IMG_TEST_BROWSER") == "required":
        pytest.fail(reason + "; IMG2IMG_TEST_BROWSER=required")
    pytest.skip(reason=reason)


def _run(chromium: str, url: str, *extra: str, window: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
             f"--virtual-time-budget={VIRTUAL_TIME_MS}", *extra, url],
            capture_output=True, text=True, timeout=120, check=True)


def dump_dom(chromium: str, url: str, *, window: str = "1400,6000") -> str:
    """The page's DOM once its images loaded (a tall window keeps lazy images in view)."""
    return _run(chromium, url, "--dump-dom", window=window).stdout


def screenshot(chromium: str, url: str, path: Path, *, window: str = "1400,900") -> Path:
    _run(chromium, url, f"--screenshot={path}", window=window)
    assert path.is_file(), f"Chromium wrote no screenshot for {url}"
    return path


@dataclass(frozen=True)
class Image:
    src: str
    classes: frozenset[str]

    @property
    def broken(self) -> bool:
        return "broken" in self.classes


@dataclass(frozen=True)
class RenderedPage:
    body: dict[str, str]  # <body>'s attributes after the scripts ran
    images: list[Image]
    links: list[str]  # every <a href>

    @property
    def counts(self) -> tuple[int, int, int]:
        """(total, loaded, broken) as the page's own script counted them."""
        return tuple(int(self.body[f"data-images-{k}"]) for k in ("total", "loaded", "broken"))


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.images: list[Image] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = values
        elif tag == "img":
            self.images.append(Image(values.get("src", ""),
                                     frozenset(values.get("class", "").split())))
        elif tag == "a" and "href" in values:
            self.links.append(values["href"])


def render(chromium: str, url: str) -> RenderedPage:
    collector = _Collector()
    collector.feed(dump_dom(chromium, url))
    assert collector.body, f"no <body> in Chromium's DOM of {url}"
    return RenderedPage(collector.body, collector.images, collector.links)


def distinct_colours(png: Path) -> int:
    from PIL import Image as PILImage

    with PILImage.open(png) as shot:
        return len(shot.convert("RGB").getcolors(maxcolors=1 << 24) or [])


def file_url(path: Path) -> str:
    return path.resolve().as_uri()


def remote_urls(page_html: str) -> list[str]:
    """Every http(s) URL in a page: a self-contained local page has none."""
    return re.findall(r"https?://[^\s\"'<>]+", page_html)
