"""The shared contract: job message validation, ids, result records, error classes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from contract import (
    SCHEMA_VERSION,
    ErrorInfo,
    GenerationFailed,
    GenerationParams,
    ImageTooLarge,
    InputNotFound,
    InvalidImage,
    InvalidJob,
    JobMessage,
    LocationNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    OutputFormat,
    ResultRecord,
    S3Location,
    StorageUnavailable,
    TransientError,
    UnsupportedSchemaVersion,
    derive_job_id,
    error_type,
    is_permanent,
    is_within,
    job_json_schema,
    output_key,
    parse_job,
    parse_s3_uri,
    result_key,
    s3_input_identity,
    seed_from_job_id,
    validate_params,
)
from contract.job import MAX_PROMPT_CHARS, V1_DEFAULTS, unknown_fields
from contract.settings import SettingsError

BASE = {"model": "tiny", "prompt": "a watercolor"}


def job_dict(**overrides) -> dict:
    params = validate_params(**BASE, seed=7)
    job = JobMessage.create(
        input=S3Location(bucket="in-bucket", key="photos/cat.jpg"),
        input_etag='"abc123"',
        output_prefix=S3Location(bucket="out-bucket", key="outputs/"),
        params=params,
        batch_id="batch-1",
    )
    data = json.loads(job.to_json())
    data.update(overrides)
    return data


# -- parameter validation -------------------------------------------------------------

@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strength", 0),
        ("strength", 1.5),
        ("steps", 0),
        ("steps", 201),
        ("guidance_scale", -1),
        ("guidance_scale", 31),
        ("max_side", 100),  # not a multiple of 8
        ("max_side", 56),  # below the minimum
        ("max_side", 2056),  # above the maximum
        ("prompt", "x" * (MAX_PROMPT_CHARS + 1)),
        ("negative_prompt", "x" * (MAX_PROMPT_CHARS + 1)),
        ("seed", -1),
        ("output_format", "gif"),
        ("scheduler", "warp-drive"),
        ("model", ""),
        ("model", "has a space"),
    ],
)
def test_bad_parameter_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidJob) as info:
        validate_params(**{**BASE, field: value})
    message = str(info.value)
    assert message.startswith(f"{field}:"), message
    if not isinstance(value, str) or len(value) < 50:
        assert repr(value) in message or str(value) in message


@pytest.mark.parametrize(("field", "value"), [("strength", 1.5), ("steps", 0), ("seed", -5),
                                               ("max_side", 100), ("output_format", "gif")])
def test_bad_parameter_in_a_message_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(json.dumps(job_dict(**{field: value})))
    assert f"{field}:" in str(info.value)


def test_boundaries_are_accepted() -> None:
    params = validate_params(model="tiny", strength=1.0, steps=200, guidance_scale=30.0,
                             max_side=2048, seed=0, prompt="p" * MAX_PROMPT_CHARS)
    assert params.steps == 200 and params.max_side == 2048 and params.seed == 0
    small = validate_params(**BASE, strength=0.01, steps=100, guidance_scale=0.0, max_side=64)
    assert small.max_side == 64


def test_unknown_parameter_from_a_user_rejected() -> None:
    with pytest.raises(InvalidJob, match=r"colour: Extra inputs are not permitted"):
        validate_params(**BASE, colour="blue")


def test_unknown_field_on_the_wire_ignored_within_a_schema_version() -> None:
    """A newer producer's optional addition does not fail the job on an older worker."""
    job = parse_job(job_dict(colour="blue", upscale={"factor": 2}))
    assert job == parse_job(job_dict())
    assert unknown_fields(job_dict(colour="blue")) == ["colour"]
    assert "colour" not in job.to_json()


def test_older_message_without_optional_fields_accepted() -> None:
    data = job_dict()
    for optional in ("negative_prompt", "strength", "steps", "guidance_scale", "seed",
                     "max_side", "output_format", "keep_size", "scheduler", "input_etag",
                     "schema_version"):
        data.pop(optional, None)
    assert parse_job(data).steps == GenerationParams.model_fields["steps"].default


def test_a_version_1_message_keeps_its_meaning_and_version_2_takes_the_familys() -> None:
    """Version 1 left steps, guidance, size and scheduler out meaning SD 1.5's values;
    version 2 means the model family's (filled in by the worker once it knows the model)."""
    data = job_dict()
    for field in V1_DEFAULTS:
        data.pop(field, None)
    v1 = parse_job({**data, "schema_version": 1})
    assert {f: getattr(v1, f) for f in V1_DEFAULTS} == V1_DEFAULTS
    v2 = parse_job({**data, "schema_version": 2})
    assert all(getattr(v2, f) is None for f in V1_DEFAULTS)
    assert parse_job({**data, "schema_version": 1, "steps": 4}).steps == 4


def test_newer_major_schema_version_refused_as_unsupported() -> None:
    assert SCHEMA_VERSION == 2
    with pytest.raises(UnsupportedSchemaVersion, match=r"schema_version 3 is newer"):
        parse_job(job_dict(schema_version=3))
    with pytest.raises(InvalidJob, match=r"schema_version:"):
        parse_job(job_dict(schema_version=0))


@pytest.mark.parametrize(("field", "value"), [
    ("steps", "4"), ("strength", True), ("seed", "5"), ("keep_size", 1),
    ("guidance_scale", "7.5"), ("max_side", 512.0), ("schema_version", "1"),
])
def test_wire_types_are_strict(field: str, value: object) -> None:
    with pytest.raises(InvalidJob, match=rf"{field}:"):
        parse_job(json.dumps(job_dict(**{field: value})))


def test_output_key_must_carry_the_job_id() -> None:
    """So no message can name another job's output (and overwrite its record)."""
    with pytest.raises(InvalidJob, match=r"output: the file name must contain"):
        parse_job(job_dict(output={"bucket": "out-bucket", "key": "outputs/someone-else.png"}))


@pytest.mark.parametrize(("steps", "strength"), [(1, 0.5), (3, 0.3), (10, 0.05)])
def test_less_than_one_denoising_step_rejected(steps: int, strength: float) -> None:
    with pytest.raises(InvalidJob) as info:
        validate_params(**BASE, steps=steps, strength=strength)
    message = str(info.value)
    assert "steps * strength" in message
    assert f"steps={steps}" in message and f"strength={strength}" in message


def test_exactly_one_denoising_step_accepted() -> None:
    assert validate_params(**BASE, steps=2, strength=0.5).steps == 2
    assert validate_params(**BASE, steps=4, strength=0.25).strength == 0.25


def test_several_problems_all_named() -> None:
    with pytest.raises(InvalidJob) as info:
        validate_params(**BASE, steps=0, guidance_scale=99)
    assert "steps:" in str(info.value) and "guidance_scale:" in str(info.value)


def test_missing_field_named() -> None:
    with pytest.raises(InvalidJob, match=r"prompt: required"):
        validate_params(model="tiny")


# -- the job message ----------------------------------------------------------------------

@pytest.mark.parametrize("job_id", ["short", "has space in it", "semi;colon-123456", "x" * 129,
                                    "ünïcödé-12345"])
def test_bad_job_id_rejected(job_id: str) -> None:
    with pytest.raises(InvalidJob, match=r"job_id:"):
        parse_job(job_dict(job_id=job_id))


def test_output_key_that_is_a_prefix_rejected() -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(job_dict(output={"bucket": "out-bucket", "key": "outputs/"}))
    assert "output" in str(info.value) and "prefix" in str(info.value)


@pytest.mark.parametrize("bucket", ["Bad_Bucket", "ab", "-leading-hyphen", "x" * 64,
                                    "UPPER"])
def test_bad_bucket_name_rejected(bucket: str) -> None:
    with pytest.raises(InvalidJob, match=r"input\.bucket:"):
        parse_job(job_dict(input={"bucket": bucket, "key": "a.png"}))


def test_bad_batch_id_rejected() -> None:
    with pytest.raises(InvalidJob, match=r"batch_id:"):
        parse_job(job_dict(batch_id="no spaces allowed"))


@pytest.mark.parametrize("body", ["not json", "", "{", b"\xff\xfe", "{'single': 'quotes'}"])
def test_parse_job_of_non_json(body: str | bytes) -> None:
    with pytest.raises(InvalidJob, match=r"message body is not JSON"):
        parse_job(body)


@pytest.mark.parametrize("body", ["[1, 2]", '"hello"', "42", "null"])
def test_parse_job_of_json_that_is_not_an_object(body: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job(body)
    assert "object" in str(info.value)


def test_parse_job_of_an_object_that_is_not_a_job() -> None:
    with pytest.raises(InvalidJob) as info:
        parse_job('{"Records": [{"eventName": "ObjectCreated:Put"}]}')
    message = str(info.value)
    for field in ("job_id: required", "input: required", "output: required", "model: required"):
        assert field in message


def test_json_round_trip() -> None:
    job = parse_job(job_dict())
    again = parse_job(job.to_json())
    assert again == job
    assert again.to_json() == job.to_json()
    assert parse_job(job.to_json().encode()) == job
    assert parse_job(json.loads(job.to_json())) == job
    body = json.loads(job.to_json())
    assert body["schema_version"] == SCHEMA_VERSION
    assert body["output_format"] == "png"
    assert body["input"] == {"bucket": "in-bucket", "key": "photos/cat.jpg"}


def test_round_trip_without_seed_omits_it_and_keeps_it_none() -> None:
    body = job_dict()
    del body["seed"]
    job = parse_job(body)
    assert job.seed is None
    assert "seed" not in json.loads(job.to_json())
    assert parse_job(job.to_json()) == job


def test_job_is_frozen() -> None:
    job = parse_job(job_dict())
    with pytest.raises(ValidationError):
        job.strength = 0.5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        job.input.key = "other.png"  # type: ignore[misc]
    params = validate_params(**BASE)
    with pytest.raises(ValidationError):
        params.prompt = "changed"  # type: ignore[misc]
    assert job.strength == 0.75 and params.prompt == BASE["prompt"]


def test_job_params_property_matches_the_generation_fields() -> None:
    job = parse_job(job_dict())
    params = job.params
    assert isinstance(params, GenerationParams) and not isinstance(params, JobMessage)
    assert params.model_dump() == {k: getattr(job, k) for k in GenerationParams.model_fields}


# -- job_id derivation -------------------------------------------------------------------

IDENTITY = s3_input_identity(S3Location(bucket="in-bucket", key="a/cat.png"), '"etag1"')


def test_job_id_is_deterministic() -> None:
    params = validate_params(**BASE)
    first = derive_job_id(IDENTITY, params)
    assert first == derive_job_id(IDENTITY, validate_params(**BASE))
    assert len(first) == 32 and all(c in "0123456789abcdef" for c in first)


def test_etag_quotes_do_not_change_identity() -> None:
    loc = S3Location(bucket="in-bucket", key="a/cat.png")
    assert s3_input_identity(loc, '"etag1"') == s3_input_identity(loc, "etag1")


def test_job_id_depends_on_input_identity() -> None:
    params = validate_params(**BASE)
    loc = S3Location(bucket="in-bucket", key="a/cat.png")
    ids = {
        derive_job_id(s3_input_identity(loc, "etag1"), params),
        derive_job_id(s3_input_identity(loc, "etag2"), params),
        derive_job_id(s3_input_identity(loc, None), params),
        derive_job_id(s3_input_identity(S3Location(bucket="in-bucket", key="a/dog.png"),
                                        "etag1"), params),
        derive_job_id(s3_input_identity(S3Location(bucket="other-bucket", key="a/cat.png"),
                                        "etag1"), params),
    }
    assert len(ids) == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "sd15"), ("prompt", "an oil painting"), ("negative_prompt", "blurry"),
     ("strength", 0.5), ("steps", 30), ("guidance_scale", 5.0), ("seed", 1),
     ("max_side", 768), ("output_format", "webp"), ("keep_size", False),
     ("scheduler", "euler")],
)
def test_job_id_changes_with_any_parameter(field: str, value: object) -> None:
    base = validate_params(**BASE)
    changed = validate_params(**{**BASE, field: value})
    assert getattr(changed, field) != getattr(base, field)
    assert derive_job_id(IDENTITY, changed) != derive_job_id(IDENTITY, base)


def test_derived_seed_is_stable_and_recorded() -> None:
    params = validate_params(**BASE)
    job_id = derive_job_id(IDENTITY, params)
    seed = params.effective_seed(job_id)
    assert seed == seed_from_job_id(job_id) == params.effective_seed(job_id)
    assert 0 <= seed <= 2**63 - 1
    assert seed_from_job_id("another-job-id") != seed
    # An explicit seed wins over the derived one.
    assert validate_params(**BASE, seed=42).effective_seed(job_id) == 42
    # The seed lands in the result record.
    record = ResultRecord(job_id=job_id, status="done", input="s3://in-bucket/a/cat.png",
                          output="s3://out/x.png", seed=seed)
    assert json.loads(record.to_json())["seed"] == seed


def test_create_derives_job_id_and_output_key() -> None:
    params = validate_params(**BASE, output_format="webp")
    src = S3Location(bucket="in-bucket", key="photos/2024/cat.final.jpg")

    def make(etag: str) -> JobMessage:
        return JobMessage.create(input=src, input_etag=etag,
                                 output_prefix=S3Location(bucket="out-bucket", key="results"),
                                 params=params, batch_id="b1")

    job = make("e1")
    assert job.job_id == derive_job_id(s3_input_identity(src, "e1"), params)
    assert job.output.bucket == "out-bucket"
    assert job.output.key == f"results/cat.final.{job.job_id[:12]}.webp"
    assert make("e1") == job  # deterministic
    other = make("e2")
    assert other.job_id != job.job_id and other.output.key != job.output.key
    assert job.params == params


# -- schema ---------------------------------------------------------------------------

def test_json_schema_contains_the_fields() -> None:
    schema = job_json_schema()
    props = schema["properties"]
    for field in ("schema_version", "job_id", "batch_id", "input", "input_etag", "output",
                  "model", "prompt", "negative_prompt", "strength", "steps", "guidance_scale",
                  "seed", "output_format", "max_side", "keep_size", "scheduler"):
        assert field in props, field
    assert {"job_id", "batch_id", "input", "output", "model", "prompt"} <= set(
        schema["required"])
    steps = props["steps"]["anyOf"][0]  # an integer, or null for the family's default
    assert steps["maximum"] == 200 and steps["minimum"] == 1
    assert props["steps"]["anyOf"][1] == {"type": "null"}
    assert props["job_id"]["pattern"]
    json.dumps(schema)  # serialisable as published


# -- result record ----------------------------------------------------------------------

def test_result_record_invariants() -> None:
    err = ErrorInfo(type="InvalidImage", message="x: empty file")
    done = ResultRecord(job_id="j1", status="done", input="in.png", output="out.png")
    failed = ResultRecord(job_id="j1", status="failed", input="in.png", error=err)
    assert done.error is None and failed.output is None
    with pytest.raises(ValidationError, match="done record needs an output"):
        ResultRecord(job_id="j1", status="done", input="in.png")
    with pytest.raises(ValidationError, match="done record needs an output and no error"):
        ResultRecord(job_id="j1", status="done", input="in.png", output="o.png", error=err)
    with pytest.raises(ValidationError, match="failed record needs an error"):
        ResultRecord(job_id="j1", status="failed", input="in.png")
    with pytest.raises(ValidationError, match="failed record needs an error and no output"):
        ResultRecord(job_id="j1", status="failed", input="in.png", output="o.png", error=err)
    with pytest.raises(ValidationError):
        ResultRecord(job_id="j1", status="pending", input="in.png")  # type: ignore[arg-type]


def test_result_record_json_and_error_from_exception() -> None:
    err = ErrorInfo.from_exception(InvalidImage("cat.png: truncated"))
    assert err.type == "InvalidImage" and err.message == "cat.png: truncated"
    assert ErrorInfo.from_exception(ValueError()).message == "ValueError"
    record = ResultRecord(job_id="j1", batch_id="b", status="failed", input="s3://b/in.png",
                          error=err, model="tiny", seed=3, timings={"read": 0.1})
    data = json.loads(record.to_json())
    assert data["status"] == "failed"
    assert data["error"] == {"type": "InvalidImage", "message": "cat.png: truncated"}
    assert data["schema_version"] == SCHEMA_VERSION and data["finished_at"]
    assert ResultRecord.model_validate_json(record.to_json()) == record


# -- S3 locations -------------------------------------------------------------------------

def test_parse_s3_uri() -> None:
    loc = parse_s3_uri("s3://in-bucket/photos/cat.png")
    assert (loc.bucket, loc.key, loc.uri) == ("in-bucket", "photos/cat.png",
                                               "s3://in-bucket/photos/cat.png")
    assert parse_s3_uri("s3://in-bucket/photos", prefix=True).key == "photos/"
    assert parse_s3_uri("s3://in-bucket", prefix=True).key == ""
    with pytest.raises(InvalidJob, match="not an S3 URI"):
        parse_s3_uri("https://in-bucket/cat.png")
    with pytest.raises(InvalidJob, match="needs a bucket and a key"):
        parse_s3_uri("s3://in-bucket/")


@pytest.mark.parametrize("uri", ["s3://Bad_Bucket/key.png", "s3://bucket/" + "k" * 1100])
def test_parse_s3_uri_bad_parts_raise_invalid_job(uri: str) -> None:
    with pytest.raises(InvalidJob):
        parse_s3_uri(uri)


def test_a_bad_bucket_name_is_explained_in_words_not_a_pattern() -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_s3_uri("s3://Bad_Bucket/o/", prefix=True)
    message = str(raised.value)
    assert "'s3://Bad_Bucket/o/'" in message and "3 to 63 lowercase letters" in message
    assert "[a-z" not in message and "pattern" not in message


def test_output_and_result_keys() -> None:
    key = output_key("outputs", "photos/cat.final.JPG", "0123456789abcdef", "png")
    assert key == "outputs/cat.final.0123456789ab.png"
    assert output_key("", "cat.png", "0123456789abcdef", "webp") == "cat.0123456789ab.webp"
    assert output_key("o/", "dir/", "0123456789abcdef", "png") == "o/image.0123456789ab.png"
    assert result_key(key) == key + ".json"


def test_is_within() -> None:
    allowed = ["s3://in-bucket/photos/", "s3://other"]
    assert is_within(S3Location(bucket="in-bucket", key="photos/a.png"), allowed)
    assert is_within(S3Location(bucket="other", key="any/where.png"), allowed)
    assert not is_within(S3Location(bucket="in-bucket", key="private/a.png"), allowed)
    assert not is_within(S3Location(bucket="in-bucket", key="photosx/a.png"), allowed)
    assert not is_within(S3Location(bucket="other-bucket", key="a.png"), allowed)
    assert not is_within(S3Location(bucket="in-bucket", key="photos/../private/a.png"),
                         allowed)
    assert not is_within(S3Location(bucket="in-bucket", key="photos/a.png"), [])


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [InvalidJob, InvalidImage, ImageTooLarge, InputNotFound,
                                 LocationNotAllowed, ModelNotAllowed, ModelNotFound,
                                 GenerationFailed, SettingsError])
def test_permanent_errors(cls: type[Exception]) -> None:
    exc = cls("boom")
    assert is_permanent(exc) is True
    assert error_type(exc) == cls.__name__


@pytest.mark.parametrize("cls", [StorageUnavailable, TransientError])
def test_transient_errors(cls: type[Exception]) -> None:
    assert is_permanent(cls("slow down")) is False


def test_unknown_exceptions_count_as_permanent() -> None:
    assert is_permanent(RuntimeError("bug")) is True
    assert is_permanent(KeyError("k")) is True


def test_output_format_properties() -> None:
    assert OutputFormat("jpg").pil_format == "JPEG"
    assert OutputFormat.WEBP.content_type == "image/webp"
    assert OutputFormat.PNG.extension == "png"


def test_contract_imports_neither_torch_nor_boto3() -> None:
    code = ("import sys, contract, contract.settings, contract.result, contract.locations; "
            "bad = [m for m in ('torch', 'boto3', 'botocore', 'diffusers') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
