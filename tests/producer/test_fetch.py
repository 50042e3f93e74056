"""``img2img-producer fetch``: a batch's outputs and records, in parallel, skipping what is
already there by size and ETag."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from producer.cli import app
from producer.downloads import is_current, safe_name
from tests.support.batch_results import enqueue, finish, put_samples

runner = CliRunner()


def fetch(fleet, dest: Path, batch_id: str, *extra: str):
    return runner.invoke(app, ["fetch", str(dest), "--batch-id", batch_id,
                               "--output", f"s3://{fleet.bucket}/outputs/", *extra])


def test_fetch_downloads_outputs_and_records_then_only_what_changed(fleet, s3, tmp_path):
    put_samples(s3, fleet.bucket)
    jobs = enqueue(fleet.bucket)
    for job in jobs[1:]:
        finish(s3, job)
    finish(s3, jobs[0], fail="CUDA out of memory")
    dest = tmp_path / "results"

    first = fetch(fleet, dest, jobs[0].batch_id, "--concurrency", "3")
    again = fetch(fleet, dest, jobs[0].batch_id)
    changed = jobs[1].output.key.rsplit("/", 1)[-1]
    (dest / changed).write_bytes(b"x" * (dest / changed).stat().st_size)  # same size
    (dest / (changed + ".json")).unlink()
    repaired = fetch(fleet, dest, jobs[0].batch_id)

    names = {p.name for p in dest.iterdir()}
    done_outputs = {j.output.key.rsplit("/", 1)[-1] for j in jobs[1:]}
    records = {j.output.key.rsplit("/", 1)[-1] + ".json" for j in jobs}
    assert first.exit_code == 0, first.output
    assert names == done_outputs | records  # the failed job has a record and no output
    assert "4 of 4 jobs finished (done 3, failed 1); downloaded 7" in first.stdout
    assert "already there 0" in first.stdout
    assert "downloaded 0 (0.0 MB), already there 7" in again.stdout
    assert "downloaded 2" in repaired.stdout and "already there 5" in repaired.stdout
    output = s3.get_object(Bucket=fleet.bucket, Key=jobs[1].output.key)["Body"].read()
    assert (dest / changed).read_bytes() == output
    failed = json.loads((dest / (jobs[0].output.key.rsplit("/", 1)[-1] + ".json")).read_text())
    assert failed["status"] == "failed" and failed["error"]["message"] == "CUDA out of memory"
    assert not list(dest.glob("*.part"))


def test_fetch_of_an_unfinished_batch_takes_what_is_finished(fleet, s3, tmp_path):
    put_samples(s3, fleet.bucket)
    jobs = enqueue(fleet.bucket)
    finish(s3, jobs[2])

    result = fetch(fleet, tmp_path / "partial", jobs[0].batch_id)

    assert result.exit_code == 0, result.output
    assert "1 of 4 jobs finished (done 1, failed 0); downloaded 2" in result.stdout


def test_fetch_says_which_files_it_could_not_download(fleet, s3, tmp_path):
    put_samples(s3, fleet.bucket)
    jobs = enqueue(fleet.bucket)
    for job in jobs:
        finish(s3, job)
    dest = tmp_path / "blocked"
    dest.mkdir()
    blocked = jobs[0].output.key.rsplit("/", 1)[-1]
    (dest / blocked).mkdir()  # a folder where the output would go

    result = fetch(fleet, dest, jobs[0].batch_id)

    assert result.exit_code == 1, result.output
    assert f"not downloaded: s3://{fleet.bucket}/{jobs[0].output.key}: " in result.stderr
    assert "downloaded 7" in result.stdout and "failed 1" in result.stdout


def test_fetch_of_an_unknown_batch_is_an_error(fleet, tmp_path):
    result = fetch(fleet, tmp_path / "none", "b-unknown")

    assert result.exit_code == 2
    assert f"no batch b-unknown under s3://{fleet.bucket}/outputs/" in result.stderr
    assert not (tmp_path / "none").exists()


def test_current_means_same_size_and_md5_unless_the_etag_is_not_an_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    md5 = '"5d41402abc4b2a76b9719d911017c592"'

    assert is_current(path, 5, md5)
    assert not is_current(path, 5, '"00000000000000000000000000000000"')
    assert not is_current(path, 6, md5)
    assert is_current(path, 5, '"0123456789abcdef0123456789abcdef-3"')  # multipart: size
    assert not is_current(tmp_path / "missing", 5, md5)
    assert [safe_name(n) for n in ("a/b", "..", "", "x.png")] == ["a_b", "_", "_", "x.png"]


def test_fetch_into_a_file_is_a_one_line_error(fleet, s3, tmp_path):
    put_samples(s3, fleet.bucket)
    jobs = enqueue(fleet.bucket)
    finish(s3, jobs[0])
    (tmp_path / "taken").write_text("not a folder")

    into_file = fetch(fleet, tmp_path / "taken", jobs[0].batch_id)
    under_file = fetch(fleet, tmp_path / "taken" / "sub", jobs[0].batch_id)

    assert into_file.exit_code == 2, into_file.output
    assert into_file.stderr.strip() == f"error: DEST {tmp_path / 'taken'} is not a folder"
    assert under_file.exit_code == 2, under_file.output
    assert f"({tmp_path / 'taken'} is a file)" in under_file.stderr
    assert "Traceback" not in into_file.output + under_file.output
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_fetch_json_gives_the_counts_and_no_progress_bars(fleet, s3, tmp_path):
    put_samples(s3, fleet.bucket)
    jobs = enqueue(fleet.bucket)
    finish(s3, jobs[0])

    result = fetch(fleet, tmp_path / "j", jobs[0].batch_id, "--json")

    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert (facts["batch_id"], facts["total"], facts["done"], facts["downloaded"]) == (
        jobs[0].batch_id, 4, 1, 2)
    assert facts["dest"] == str(tmp_path / "j") and facts["not_downloaded"] == []
    assert "fetch" not in result.stderr  # no bar
