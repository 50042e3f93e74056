"""``common.gallery``: pages, order, paging and escaping (the browser tests are apart)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from common.gallery import INDEX, render_gallery, write_gallery
from tests.support.browser import remote_urls


def record(i: int, status: str = "done", **extra) -> dict:
    base = {"job_id": f"job{i:06d}", "status": status, "input": f"in/img{i:06d}.png",
            "output": f"out/img{i:06d}.png" if status == "done" else None,
            "model": "tiny", "prompt": f"prompt {i}", "seed": i, "seconds": 0.5,
            "worker": "w1"}
    if status == "failed":
        base["error"] = {"type": "InvalidImage", "message": f"broken file {i}"}
    return {**base, **extra}


def no_images(record, role):
    return None


def cards(page_html: str) -> list[str]:
    return re.findall(r'<article class="card (\w+)"><h2><span class="status">\w+</span> '
                      r'([^<]+)</h2>', page_html)


def test_failures_come_first_then_running_then_done():
    records = [record(1), record(2, "failed"), record(3, "running"), record(4, "failed"),
               record(0)]

    (page,) = render_gallery(records, image_src=no_images)

    assert cards(page.html) == [("failed", "img000002.png"), ("failed", "img000004.png"),
                                ("running", "img000003.png"), ("done", "img000000.png"),
                                ("done", "img000001.png")]
    assert "InvalidImage</b>: broken file 2" in page.html
    assert "done 2, failed 2, running 1; failures are listed first (pages 1&ndash;1)" in (
        page.html)


def test_pages_link_to_each_other_and_hold_page_size_items():
    records = [record(i) for i in range(23)]

    pages = render_gallery(records, image_src=no_images, page_size=10)

    assert [p.name for p in pages] == [INDEX, "page-2.html", "page-3.html"]
    assert [len(cards(p.html)) for p in pages] == [10, 10, 3]
    assert 'rel="next" href="page-2.html"' in pages[0].html and 'rel="prev"' not in (
        pages[0].html)
    assert 'rel="prev" href="index.html"' in pages[1].html
    assert 'rel="next" href="page-3.html"' in pages[1].html
    assert 'rel="next"' not in pages[2].html
    assert "page 3 of 3, items 21&ndash;23 of 23" in pages[2].html


def test_page_links_can_be_urls_for_a_private_bucket():
    pages = render_gallery([record(i) for i in range(3)], image_src=no_images, page_size=1,
                           page_href=lambda n: f"https://signed.example/p{n}?sig=a&b=c")

    assert 'href="https://signed.example/p2?sig=a&amp;b=c"' in pages[0].html


def test_ten_thousand_jobs_make_small_pages_quickly(tmp_path: Path):
    records = [record(i, "failed" if i % 50 == 0 else "done") for i in range(10_000)]
    started = time.perf_counter()

    index = write_gallery(records, tmp_path, page_size=200)

    assert time.perf_counter() - started < 10
    pages = sorted(tmp_path.glob("*.html"))
    assert len(pages) == 50 and index == tmp_path / INDEX
    assert max(p.stat().st_size for p in pages) < 400_000
    middle = (tmp_path / "page-25.html").read_text()
    # Nav: prev, first, two neighbours each side, last, next; not 50 links.
    nav = re.findall(r'<nav>(.*?)</nav>', middle)[0]
    assert re.findall(r'>(\d+)</a>', nav) == ["1", "23", "24", "26", "27", "50"]
    assert "<b>25</b>" in nav and nav.count("<a ") == 8
    assert "failures are listed first (pages 1&ndash;1)" in middle
    assert cards(index.read_text())[0][0] == "failed" and cards(middle)[0][0] == "done"


def test_text_is_escaped_and_parameters_shown_only_when_known(tmp_path: Path):
    hostile = record(1, prompt='<script>alert("x")</script>', strength=0.6, steps=30)
    plain = record(2)

    (page,) = render_gallery([hostile, plain], image_src=no_images)

    assert "<script>alert" not in page.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.html
    first, second = page.html.split('<article')[1:]
    assert "<dt>strength</dt><dd>0.6</dd><dt>steps</dt><dd>30</dd>" in first
    assert "<dt>strength</dt>" not in second and "<dt>steps</dt>" not in second
    assert "<dt>seconds</dt><dd>0.50</dd>" in second


def test_local_images_are_relative_to_the_page_and_nothing_is_remote(tmp_path: Path):
    images = tmp_path / "runs" / "in"
    images.mkdir(parents=True)
    (images / "a b.png").write_bytes(b"x")
    out = tmp_path / "runs" / "out"
    done = record(1, input=str(images / "a b.png"), output=str(out / "sub" / "a.png"))
    copied = record(2, input="s3://bucket/in/c.png", output="s3://bucket/out/c.png",
                    local_output=str(out / "c.png"))

    index = write_gallery([done, copied], out)

    page = index.read_text()
    assert 'src="../in/a%20b.png"' in page and 'src="sub/a.png"' in page
    assert 'src="c.png"' in page and "s3://bucket/in/c.png" not in re.findall(
        r'src="([^"]+)"', page)
    assert page.count("no local copy") == 1  # c.png's input lives only in S3
    assert remote_urls(page) == []
    assert "<link" not in page and "@import" not in page


def test_a_smaller_rerun_removes_the_pages_it_no_longer_has(tmp_path: Path):
    write_gallery([record(i) for i in range(5)], tmp_path, page_size=2)
    (tmp_path / "notes.html").write_text("kept")

    write_gallery([record(1)], tmp_path, page_size=2)

    assert sorted(p.name for p in tmp_path.glob("*.html")) == [INDEX, "notes.html"]


def test_page_size_must_be_positive():
    with pytest.raises(ValueError, match="page_size"):
        render_gallery([], image_src=no_images, page_size=0)


def test_what_a_job_ran_with_is_shown_with_its_family(tmp_path: Path):
    ran = record(1, family="sdxl-turbo", strength=None, steps=None, generation={
        "steps": 2, "strength": 0.5, "guidance_scale": 0.0, "scheduler": "model",
        "max_side": 512})

    (page,) = render_gallery([ran], image_src=no_images)

    assert "<dt>family</dt><dd>sdxl-turbo</dd>" in page.html
    assert "<dt>strength</dt><dd>0.5</dd><dt>steps</dt><dd>2</dd>" in page.html
