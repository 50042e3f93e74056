"""``enqueue --jobs``: per-image parameters from CSV or JSONL; bad files abort before sending."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from contract.job import parse_job
from producer.cli import app

runner = CliRunner()


def put(s3, bucket: str, *keys: str) -> None:
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())


def drain(sqs, queue_url: str):
    jobs = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=0).get("Messages", []):
        jobs.extend(parse_job(m["Body"]) for m in got)
    return {j.input.key: j for j in jobs}


def test_csv_rows_override_the_command_line_defaults(fleet, s3, sqs, tmp_path):
    put(s3, fleet.bucket, "in/a.png", "in/b.png", "elsewhere/c.jpg")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "input,prompt,model,steps,strength,format,keep_size\n"
        "a.png,a red fox,,,,,\n"
        f"s3://{fleet.bucket}/elsewhere/c.jpg,,sd-turbo,4,1.0,jpg,false\n"
        "b.png,,,10,,webp,\n")

    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--jobs", str(jobs),
                                 "-m", "tiny", "-p", "default prompt", "--steps", "20"])

    assert result.exit_code == 0, result.output
    assert "found 3, enqueued 3" in result.stdout
    by_key = drain(sqs, fleet.queue_url)
    a, b, c = by_key["in/a.png"], by_key["in/b.png"], by_key["elsewhere/c.jpg"]
    assert (a.prompt, a.model, a.steps, a.output_format.value) == ("a red fox", "tiny", 20, "png")
    assert (c.model, c.prompt, c.steps, c.strength, c.keep_size) == (
        "sd-turbo", "default prompt", 4, 1.0, False)
    assert c.output.key.endswith(".jpg") and c.output.key.startswith("outputs/")
    assert (b.steps, b.output_format.value) == (10, "webp")
    assert all(j.input_etag for j in by_key.values())


def test_jsonl_rows_with_keys_relative_to_the_bucket(fleet, s3, sqs, tmp_path):
    put(s3, fleet.bucket, "x/one.png", "x/two.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([
        json.dumps({"input": "x/one.png", "prompt": "", "seed": 42, "guidance_scale": 3}),
        "",
        json.dumps({"input": "x/two.png", "negative_prompt": "blurry", "max_side": 768}),
    ]) + "\n")

    result = runner.invoke(app, ["enqueue", "--jobs", str(jobs), "--bucket", fleet.bucket,
                                 "-m", "tiny", "-p", "p"])

    assert result.exit_code == 0, result.output
    by_key = drain(sqs, fleet.queue_url)
    one, two = by_key["x/one.png"], by_key["x/two.png"]
    assert (one.prompt, one.seed, one.guidance_scale) == ("", 42, 3.0)
    assert (two.negative_prompt, two.max_side, two.prompt) == ("blurry", 768, "p")


def test_bad_rows_are_all_reported_with_line_and_field_and_nothing_is_sent(
        fleet, s3, sqs, tmp_path):
    put(s3, fleet.bucket, "in/a.png", "in/b.png")
    csv_file = tmp_path / "jobs.csv"
    csv_file.write_text("input,steps,strength\n"
                        "a.png,10,0.5\n"
                        "b.png,abc,0.5\n"
                        "missing.png,10,0.5\n"
                        "a.png,10,2\n")
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(json.dumps({"input": "a.png"}) + "\n"
                     + json.dumps({"input": "b.png", "colour": "red"}) + "\n"
                     + "{not json\n"
                     + json.dumps({"prompt": "no input"}) + "\n")

    bad_csv = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--jobs",
                                  str(csv_file), "-m", "tiny", "-p", "p"])
    bad_jsonl = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--jobs",
                                    str(jsonl), "-m", "tiny", "-p", "p"])

    assert bad_csv.exit_code == 2, bad_csv.output
    assert "line 3: steps:" in bad_csv.stderr
    assert "line 4: input: no such object" in bad_csv.stderr and "missing.png" in bad_csv.stderr
    assert "line 5: strength:" in bad_csv.stderr
    assert "line 2:" not in bad_csv.stderr and "nothing was sent" in bad_csv.stderr
    assert bad_jsonl.exit_code == 2, bad_jsonl.output
    assert "line 2: colour: unknown field" in bad_jsonl.stderr
    assert "line 3: not valid JSON" in bad_jsonl.stderr
    assert "line 4: input: required" in bad_jsonl.stderr
    assert drain(sqs, fleet.queue_url) == {}
    assert "Contents" not in s3.list_objects_v2(Bucket=fleet.bucket, Prefix="outputs/")
