"""``img2img-producer gallery``: a batch's gallery in a folder (local copies) or in S3
(presigned links, private bucket); the pages are loaded in a real headless Chromium."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from contract.locations import batch_jobs_key
from producer.cli import app
from producer.thumbnails import THUMBNAIL_SIDE
from tests.support.batch_results import enqueue, finish, put_samples
from tests.support.browser import chromium_or_skip, file_url, remote_urls, render

runner = CliRunner()


def finished_batch(fleet, s3, *enqueue_args: str):
    """Four sample pictures: three done, one failed (its input is a real picture)."""
    put_samples(s3, fleet.bucket)
    jobs = enqueue(fleet.bucket, *enqueue_args)
    for job in jobs[1:]:
        finish(s3, job)
    finish(s3, jobs[0], fail="CUDA out of memory at batch size 1")
    return jobs


def gallery(fleet, batch_id: str, dest: str, *extra: str):
    """``gallery DEST``: the destination is positional, as ``fetch``'s is."""
    return runner.invoke(app, ["gallery", dest, "--batch-id", batch_id,
                               "--output", f"s3://{fleet.bucket}/outputs/", *extra])


def test_gallery_in_a_folder_has_thumbnails_and_every_image_loads(fleet, s3, tmp_path):
    jobs = finished_batch(fleet, s3)
    site = tmp_path / "site"

    first = gallery(fleet, jobs[0].batch_id, str(site))
    again = gallery(fleet, jobs[0].batch_id, str(site))

    assert first.exit_code == 0, first.output
    assert f"open: {site / 'index.html'}" in first.stdout
    assert "gallery of 4 jobs; downloaded 4" in first.stdout  # the records
    assert "thumbnails made 7" in first.stdout  # 4 inputs, 3 outputs
    assert "downloaded 0 (0.0 MB), already there 4" in again.stdout
    assert "thumbnails made 0 (0.0 MB), already there 7" in again.stdout
    thumbs = list((site / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 7 and not (site / "inputs").exists()
    assert not list((site / "outputs").glob("*.png")), "no full-size copies"
    for thumb in thumbs:
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= THUMBNAIL_SIDE
    full = max(s3.head_object(Bucket=fleet.bucket, Key=j.input.key)["ContentLength"]
               for j in jobs)
    assert max(t.stat().st_size for t in thumbs) < full
    page = (site / "index.html").read_text()
    assert remote_urls(page) == [] and "s3://" not in "".join(re.findall(r'src="[^"]*"', page))
    assert page.index('class="card failed"') < page.index('class="card done"')
    assert "CUDA out of memory at batch size 1" in page
    assert page.count("<dt>strength</dt><dd>0.6</dd><dt>steps</dt><dd>10</dd>") == 4

    chromium = chromium_or_skip()
    rendered = render(chromium, file_url(site / "index.html"))
    assert rendered.counts == (7, 7, 0), rendered.body  # 4 inputs, 3 outputs


def test_full_size_copies_the_images_and_to_still_names_the_folder(fleet, s3, tmp_path):
    jobs = finished_batch(fleet, s3)
    site = tmp_path / "full"

    result = runner.invoke(app, ["gallery", "--batch-id", jobs[0].batch_id, "--to",
                                 str(site), "--output", f"s3://{fleet.bucket}/outputs/",
                                 "--full-size"])

    assert result.exit_code == 0, result.output
    assert "gallery of 4 jobs; downloaded 11" in result.stdout  # 4 records, 3 outputs, 4 inputs
    assert len(list((site / "inputs").iterdir())) == 4 and not (site / "thumbs").exists()
    assert len(list((site / "outputs").glob("*.png"))) == 3


def test_gallery_in_s3_links_private_objects_by_presigned_url(fleet, s3):
    jobs = finished_batch(fleet, s3)

    result = gallery(fleet, jobs[0].batch_id, f"s3://{fleet.bucket}/site/", "--page-size", "2",
                     "--expires", "3600")

    assert result.exit_code == 0, result.output
    index_url = result.stdout.split("open: ", 1)[1].strip()
    assert index_url.startswith(f"{fleet.endpoint_url}/{fleet.bucket}/site/index.html?")
    assert "X-Amz-Expires=3600" in index_url and "X-Amz-Signature=" in index_url
    keys = {o["Key"]: o for o in s3.list_objects_v2(Bucket=fleet.bucket,
                                                     Prefix="site/")["Contents"]}
    assert set(keys) == {"site/index.html", "site/page-2.html"}
    head = s3.head_object(Bucket=fleet.bucket, Key="site/index.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    with urllib.request.urlopen(index_url, timeout=30) as response:  # noqa: S310 - moto
        page = response.read().decode()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs and all(s.startswith(fleet.endpoint_url) and "X-Amz-Signature" in s
                        for s in srcs)

    chromium = chromium_or_skip()
    first = render(chromium, index_url)
    next_page = next(link for link in first.links if "/site/page-2.html?" in link)
    second = render(chromium, next_page)
    assert first.counts == (3, 3, 0), first.body  # the failure (input only) and one done
    assert second.counts == (4, 4, 0), second.body  # two done


def test_a_batch_without_a_jobs_file_shows_no_strength_or_steps(fleet, s3, tmp_path):
    jobs = finished_batch(fleet, s3)
    s3.delete_object(Bucket=fleet.bucket, Key=batch_jobs_key("outputs/", jobs[0].batch_id))

    result = gallery(fleet, jobs[0].batch_id, str(tmp_path / "site"))

    assert result.exit_code == 0, result.output
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<dt>strength</dt>" not in page and "<dt>seed</dt><dd>7</dd>" in page


def test_bad_expiry_and_unknown_batch_are_errors(fleet, s3, tmp_path):
    jobs = finished_batch(fleet, s3)

    too_long = gallery(fleet, jobs[0].batch_id, f"s3://{fleet.bucket}/site/",
                       "--expires", str(8 * 24 * 3600))
    unknown = gallery(fleet, "b-unknown", str(tmp_path / "x"))
    (tmp_path / "a-file").write_text("")
    into_file = gallery(fleet, jobs[0].batch_id, str(tmp_path / "a-file"))

    assert too_long.exit_code == 2 and "--expires must be 1..604800" in too_long.stderr
    assert unknown.exit_code == 2 and "no batch b-unknown" in unknown.stderr
    assert not Path(tmp_path / "x").exists()
    assert into_file.exit_code == 2, into_file.output
    assert f"error: DEST {tmp_path / 'a-file'} is not a folder" in into_file.stderr
