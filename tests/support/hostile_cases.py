"""Hostile-input cases for the worker: each puts its objects and message(s) in place
before the workers run, then checks what became of them. tests/worker/fleet/test_hostile_worker.py
runs real worker processes over all of them at once (one shared run, many checks)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from PIL import Image

from contract import JobMessage, S3Location, parse_s3_uri, validate_params
from tests.support.fleet import FAST
from tests.support.images import jpeg_bytes, pattern_rgb, png_header_claiming, solid_png
from tests.support.s3_events import event, events

OUT = "out/"
EVENT_OUT = "outputs/"


@dataclass
class Fleet:
    """What a case needs: clients and names (one bucket, one queue with a DLQ)."""

    s3: Any
    sqs: Any
    bucket: str
    queue_url: str


@dataclass
class Outcome:
    """Everything the run left behind, read once after the workers exited."""

    objects: dict[str, bytes]  # key -> body
    versions: dict[str, int]  # key -> how many times it was written
    dlq_bodies: list[str]
    logs: list[dict]

    def record(self, job: JobMessage) -> dict | None:
        body = self.objects.get(job.output.key + ".json")
        return json.loads(body) if body is not None else None

    def logged(self, text: str) -> bool:
        return any(text in json.dumps(entry) for entry in self.logs)


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Fleet], Any]  # returns what check needs
    check: Callable[[Outcome, Any], None]


CASES: list[Case] = []


def case(name: str, setup: Callable[[Fleet], Any]) -> Callable[[Callable], Callable]:
    def register(check: Callable[[Outcome, Any], None]) -> Callable:
        CASES.append(Case(name, setup, check))
        return check
    return register


# -- building messages -------------------------------------------------------------------

def job_for(fleet: Fleet, key: str, data: bytes | None, *, send: bool = True,
            **params: Any) -> JobMessage:
    """Upload ``data`` to ``key`` and (unless ``send`` is False) enqueue its job."""
    etag = None
    if data is not None:
        etag = fleet.s3.put_object(Bucket=fleet.bucket, Key=key, Body=data)["ETag"]
    job = JobMessage.create(
        input=S3Location(bucket=fleet.bucket, key=key), input_etag=etag,
        output_prefix=parse_s3_uri(f"s3://{fleet.bucket}/{OUT}", prefix=True),
        params=validate_params(**{**FAST, **params}), batch_id="hostile")
    if send:
        send_body(fleet, job.to_json())
    return job


def send_body(fleet: Fleet, body: str) -> str:
    fleet.sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=body)
    return body


def raw_job(fleet: Fleet, key: str, **changes: Any) -> tuple[dict, JobMessage]:
    """A valid job as a dict (to spoil), and the job itself."""
    job = job_for(fleet, key, solid_png((64, 64)), send=False)
    data = json.loads(job.to_json())
    data.update(changes)
    return data, job


# -- shared checks -----------------------------------------------------------------------

def assert_done(outcome: Outcome, job: JobMessage) -> dict:
    record = outcome.record(job)
    assert record is not None and record["status"] == "done", record
    assert record["output"] == job.output.uri
    assert outcome.versions.get(job.output.key) == 1, "output written more than once"
    return record


def assert_failed(outcome: Outcome, job: JobMessage, error_type: str, *words: str) -> None:
    record = outcome.record(job)
    assert record is not None and record["status"] == "failed", record
    assert record["error"]["type"] == error_type, record
    for word in words:
        assert word in record["error"]["message"], record["error"]


def assert_dead_lettered(outcome: Outcome, body: str) -> None:
    assert body in outcome.dlq_bodies, "the message should be in the DLQ"


def assert_acknowledged(outcome: Outcome, body: str) -> None:
    assert body not in outcome.dlq_bodies, "an acknowledged message must not reach the DLQ"


def assert_event_done(outcome: Outcome, key: str) -> None:
    stem = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    outputs = [k for k in outcome.objects
               if k.startswith(f"{EVENT_OUT}{stem}.") and k.endswith(".png")]
    assert len(outputs) == 1, outputs
    record = json.loads(outcome.objects[outputs[0] + ".json"])
    assert record["status"] == "done" and record["input"].endswith(key), record


def _poison(body: str) -> Callable[[Fleet], str]:
    return lambda fleet: send_body(fleet, body)


def check_dead_lettered(outcome: Outcome, body: str) -> None:
    assert_dead_lettered(outcome, body)


# -- bodies ------------------------------------------------------------------------------

for _name, _body in [
    ("deeply nested JSON array", "[" * 60_000 + "]" * 60_000),
    ("not JSON at all", "\x01 hello <xml/>"),
    ("JSON number", "42"),
    ("JSON null", "null"),
    ("an empty object", "{}"),
]:
    case(_name, _poison(_body))(check_dead_lettered)


def _deep_field(fleet: Fleet) -> tuple[str, JobMessage]:
    data, job = raw_job(fleet, "in/deep-field.png")
    text = json.dumps(data)[:-1] + ', "extra": ' + "[" * 5000 + "]" * 5000 + "}"
    return send_body(fleet, text), job


@case("a job with a field nested past the parser's depth", _deep_field)
def _(outcome: Outcome, state: tuple[str, JobMessage]) -> None:
    body, job = state
    assert_dead_lettered(outcome, body)
    assert outcome.record(job) is None


def _future(fleet: Fleet) -> str:
    data, _ = raw_job(fleet, "in/future.png", schema_version=3)
    return send_body(fleet, json.dumps(data))


@case("a schema_version from the future", _future)
def _(outcome: Outcome, body: str) -> None:
    assert_dead_lettered(outcome, body)
    assert outcome.logged("newer than this worker")


def _path_job_id(fleet: Fleet) -> str:
    data, _ = raw_job(fleet, "in/path-id.png", job_id="../../etc/passwd")
    return send_body(fleet, json.dumps(data))


case("a job id with path characters", _path_job_id)(check_dead_lettered)


def _other_jobs_key(fleet: Fleet) -> tuple[str, JobMessage]:
    victim = job_for(fleet, "in/victim.png", solid_png((64, 64), color=30))
    data, _ = raw_job(fleet, "in/victim.png", job_id="attacker12345678", steps=0)
    data["output"] = victim.output.model_dump()
    return send_body(fleet, json.dumps(data)), victim


@case("an invalid job naming another job's output key", _other_jobs_key)
def _(outcome: Outcome, state: tuple[str, JobMessage]) -> None:
    body, victim = state
    assert_dead_lettered(outcome, body)
    record = assert_done(outcome, victim)
    assert record["job_id"] == victim.job_id, "the victim's record was overwritten"


def _strict(field_name: str, value: Any) -> Callable[[Fleet], JobMessage]:
    def setup(fleet: Fleet) -> JobMessage:
        data, job = raw_job(fleet, f"in/strict-{field_name}.png", **{field_name: value})
        send_body(fleet, json.dumps(data))
        return job
    return setup


@case("a string for an int on the wire", _strict("steps", "4"))
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_failed(outcome, job, "InvalidJob", "steps")


@case("a boolean for a float on the wire", _strict("strength", True))
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_failed(outcome, job, "InvalidJob", "strength")


def _newer_producer(fleet: Fleet) -> JobMessage:
    data, job = raw_job(fleet, "in/newer.png", colour="blue", upscale={"factor": 2})
    send_body(fleet, json.dumps(data))
    return job


@case("a newer producer's unknown fields", _newer_producer)
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_done(outcome, job)
    assert outcome.logged("ignored unknown fields")


# -- outputs and records -----------------------------------------------------------------

def _preplaced(key: str, at_output: Callable[[bytes], bytes], *,
               own_id: bool = False) -> Callable[[Fleet], tuple[JobMessage, bytes]]:
    """A job whose output key already holds an object (``at_output(input bytes)``),
    optionally carrying the job's own id as an earlier delivery would have written it."""
    def setup(fleet: Fleet) -> tuple[JobMessage, bytes]:
        data = solid_png((64, 64), color=77)
        job = job_for(fleet, key, data, send=False)
        there = at_output(data)
        fleet.s3.put_object(Bucket=fleet.bucket, Key=job.output.key, Body=there,
                            Metadata={"job-id": job.job_id} if own_id else {})
        send_body(fleet, job.to_json())
        return job, there
    return setup


@case("an output key that already holds a foreign object",
      _preplaced("in/squatted.png", lambda data: b"not an image, and not this job's"))
def _(outcome: Outcome, state: tuple[JobMessage, bytes]) -> None:
    job, squatter = state
    assert_failed(outcome, job, "OutputConflict", "not written by any job")
    assert outcome.objects[job.output.key] == squatter, "the object was overwritten"


@case("an output left by an earlier delivery of the same job",
      _preplaced("in/half-done.png", lambda data: solid_png((64, 64), color=5), own_id=True))
def _(outcome: Outcome, state: tuple[JobMessage, bytes]) -> None:
    job, earlier = state
    assert_done(outcome, job)
    assert outcome.objects[job.output.key] == earlier, "the earlier output must stay"


@case("an output key that holds the job's own input (a crafted job)",
      _preplaced("in/self.png", lambda data: data))
def _(outcome: Outcome, state: tuple[JobMessage, bytes]) -> None:
    job, data = state
    assert_failed(outcome, job, "OutputConflict")
    assert outcome.objects[job.output.key] == data


def _duplicates(fleet: Fleet) -> JobMessage:
    job = job_for(fleet, "in/dup.png", solid_png((96, 96), color=42), steps=30, strength=1.0)
    for _ in range(4):
        send_body(fleet, job.to_json())
    return job


@case("the same job sent five times to three workers", _duplicates)
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_done(outcome, job)
    ran = [e for e in outcome.logs if e.get("job_id") == job.job_id
           and e.get("status") == "done"]
    assert len(ran) == 1, f"inference ran {len(ran)} times"
    acknowledged = [e for e in outcome.logs if e.get("job_id") == job.job_id and (
        "already done" in e.get("message", "")
        or "ended under another delivery" in e.get("message", ""))]
    assert len(acknowledged) == 4, f"{len(acknowledged)} of 4 duplicates acknowledged"


# -- S3 events ---------------------------------------------------------------------------

for _name, _records in [
    ("an S3 event with a malformed bucket name", [event("Bad_Bucket!", "uploads/a.png")]),
    ("an S3 event whose key is not a string", [event("some-bucket", 12345)]),
    ("an S3 event record without s3", [{"eventName": "ObjectCreated:Put"}]),
    ("an S3 event record that is a list", [["ObjectCreated:Put"]]),
]:
    case(_name, _poison(events(*_records)))(check_dead_lettered)

case("an S3 event whose Records is not a list",
     _poison(json.dumps({"Records": {"oops": 1}})))(check_dead_lettered)


def _event_for_own_output(fleet: Fleet) -> str:
    """A notification for an object one of our jobs wrote (outside the event output
    prefix): recognised by its job-id metadata, skipped, no new output."""
    fleet.s3.put_object(Bucket=fleet.bucket, Key="elsewhere/result.png",
                        Body=solid_png((64, 64)), Metadata={"job-id": "a" * 32})
    return send_body(fleet, events(event(fleet.bucket, "elsewhere/result.png")))


@case("an S3 event for one of our own outputs", _event_for_own_output)
def _(outcome: Outcome, body: str) -> None:
    assert_acknowledged(outcome, body)
    assert not [k for k in outcome.objects if k.startswith(f"{EVENT_OUT}result.")]
    assert outcome.logged("an output, not an input")


def _unicode_event(fleet: Fleet) -> str:
    key = "uploads/été photo #1 (final)?.png"
    fleet.s3.put_object(Bucket=fleet.bucket, Key=key, Body=solid_png((80, 48)))
    send_body(fleet, events(event(fleet.bucket, quote_plus(key, safe="/"))))
    return key


@case("an S3 event with a URL-encoded unicode key", _unicode_event)
def _(outcome: Outcome, key: str) -> None:
    assert_event_done(outcome, key)


def _mixed_event(fleet: Fleet) -> str:
    key = "uploads/mixed-good.png"
    fleet.s3.put_object(Bucket=fleet.bucket, Key=key, Body=solid_png((64, 64)))
    return send_body(fleet, events(event("Bad_Bucket!", "uploads/x.png"), event(fleet.bucket, key)))


def _repeated_record(fleet: Fleet) -> tuple[str, str]:
    """One object listed 1,500 times in one notification (about 200 KB of body)."""
    key = "uploads/repeated.png"
    fleet.s3.put_object(Bucket=fleet.bucket, Key=key, Body=solid_png((64, 64), color=99))
    return send_body(fleet, events(*[event(fleet.bucket, key)] * 1500)), key


@case("an S3 event listing one object 1,500 times", _repeated_record)
def _(outcome: Outcome, state: tuple[str, str]) -> None:
    body, key = state
    assert_event_done(outcome, key)
    assert_acknowledged(outcome, body)
    output = next(k for k in outcome.objects if k.startswith(f"{EVENT_OUT}repeated.")
                  and k.endswith(".png"))
    assert outcome.versions[output] == 1
    assert outcome.versions[output + ".json"] == 2, "the claim, then the done record"
    ran = [e for e in outcome.logs if e.get("status") == "done"
           and e.get("job_id") == json.loads(outcome.objects[output + ".json"])["job_id"]]
    assert len(ran) == 1, f"inference ran {len(ran)} times"
    assert outcome.logged("1499 records repeat an object of this event")


@case("an S3 event with one bad and one good record", _mixed_event)
def _(outcome: Outcome, body: str) -> None:
    assert_event_done(outcome, "uploads/mixed-good.png")
    assert_acknowledged(outcome, body)
    assert outcome.logged("skipped S3 event records")


@case("an S3 test event", _poison(json.dumps({"Event": "s3:TestEvent"})))
def _(outcome: Outcome, body: str) -> None:
    assert_acknowledged(outcome, body)


# -- inputs ------------------------------------------------------------------------------

def _eps(fleet: Fleet) -> JobMessage:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "EPS")
    return job_for(fleet, "in/ghost.png", buffer.getvalue())


@case("an EPS file named .png (no Ghostscript)", _eps)
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_failed(outcome, job, "InvalidImage", "not a recognised image format")


@case("a text file named .png", lambda f: job_for(f, "in/notes.png", b"hello, world\n"))
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_failed(outcome, job, "InvalidImage")


@case("a truncated JPEG",
      lambda f: job_for(f, "in/cut.jpg", jpeg_bytes(pattern_rgb(64, 64))[:400]))
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_failed(outcome, job, "InvalidImage")


@case("a PNG header claiming 10 gigapixels",
      lambda f: job_for(f, "in/bomb.png", png_header_claiming(100_000, 100_000)))
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_failed(outcome, job, "ImageTooLarge", "decompression bomb")


@case("an extreme aspect ratio (2400x16)",
      lambda f: job_for(f, "in/wide.jpg", jpeg_bytes(pattern_rgb(2400, 16))))
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_done(outcome, job)
    out = Image.open(io.BytesIO(outcome.objects[job.output.key]))
    assert out.size == (2400, 16)


@case("a key with spaces, unicode, # and ?",
      lambda f: job_for(f, "in/a b/ünï #1?.png", solid_png((40, 30))))
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_done(outcome, job)


def _traversal_model(fleet: Fleet) -> JobMessage:
    return job_for(fleet, "in/model.png", solid_png((64, 64)),
                   model=f"s3://{fleet.bucket}/models/../../../escape/")


@case("a model prefix climbing out of the model cache", _traversal_model)
def _(outcome: Outcome, job: JobMessage) -> None:
    assert_failed(outcome, job, "ModelNotAllowed", "'..'")
