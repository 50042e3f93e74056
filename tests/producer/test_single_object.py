"""``enqueue s3://bucket/key.png``: SOURCE naming one image object enqueues that object."""

from __future__ import annotations

from typer.testing import CliRunner

from contract.job import parse_job
from producer.cli import app
from tests.support.queues import depth, drain, put_images

runner = CliRunner()


def test_one_object_as_source_enqueues_that_object(fleet, s3, sqs):
    put_images(s3, fleet.bucket, ["in/cat.png", "in/dog.png", "cat.jpg"])

    nested = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/cat.png", "-m", "tiny",
                                 "-p", "p", "--output", f"s3://{fleet.bucket}/out/"])
    at_root = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/cat.jpg", "-m", "tiny",
                                  "-p", "p", "--output", f"s3://{fleet.bucket}/out/"])

    assert nested.exit_code == 0, nested.output
    assert at_root.exit_code == 0, at_root.output
    assert "found 1, enqueued 1" in nested.stdout and "found 1, enqueued 1" in at_root.stdout
    jobs = drain(sqs, fleet.queue_url)
    assert sorted(j.input.key for j in jobs) == ["cat.jpg", "in/cat.png"]
    head = s3.head_object(Bucket=fleet.bucket, Key="in/cat.png")
    assert next(j for j in jobs if j.input.key == "in/cat.png").input_etag == head["ETag"]


def test_one_object_picks_the_model_and_prompt_its_prefix_would(fleet, s3):
    put_images(s3, fleet.bucket, ["in/a.png", "in/b.png", "in/c.png"])
    picks = ["-m", "tiny", "-m", "sd15", "-p", "x", "-p", "y", "-p", "z", "--seed", "3"]

    whole = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--dry-run", *picks])
    one = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/b.png", "--dry-run", *picks])

    assert whole.exit_code == one.exit_code == 0, whole.output + one.output
    by_key = {j.input.key: j for j in map(parse_job, whole.stdout.splitlines())}
    (single,) = map(parse_job, one.stdout.splitlines())
    assert (single.model, single.prompt) == (by_key["in/b.png"].model,
                                             by_key["in/b.png"].prompt)


def test_a_missing_object_is_an_error_that_says_how_to_name_a_prefix(fleet, sqs):
    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/nope.png", "-m", "tiny",
                                 "-p", "p"])

    assert result.exit_code == 2, result.output
    assert f"no such object: s3://{fleet.bucket}/in/nope.png" in result.stderr
    assert "end a prefix with '/'" in result.stderr
    assert depth(sqs, fleet.queue_url) == 0


def test_a_prefix_without_slash_is_still_a_prefix(fleet, s3, sqs):
    put_images(s3, fleet.bucket, ["photos/a.png", "photos/b.png"])

    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/photos", "-m", "tiny",
                                 "-p", "p"])

    assert result.exit_code == 0, result.output
    assert "found 2, enqueued 2" in result.stdout
