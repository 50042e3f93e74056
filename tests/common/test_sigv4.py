"""The direct S3 signer gives botocore's signature for the same request, byte for byte.

botocore's own signer is the reference: each case sends a real boto3 request, stops it
just before it leaves (``before-send``), and signs the very same method, path, headers
and payload hash with ``common.sigv4``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from common.sigv4 import Credentials, S3Signer, object_path
from tests.support.botocore_capture import (
    ACCESS_KEY,
    FIXED_TIME,
    SECRET_KEY,
    botocore_request,
)

CASES = [
    ("get_object", None, None, {"Bucket": "photos-bucket", "Key": "in/cat.png"}),
    ("get_object", "SESSIONTOKEN/+=", None,
     {"Bucket": "photos-bucket", "Key": "a b/ü+x~y=z&q?(1).png"}),
    ("put_object", None, None,
     {"Bucket": "photos-bucket", "Key": "out/cat.0123456789ab.png", "Body": b"\x89PNG...",
      "ContentType": "image/png", "Metadata": {"job-id": "j1"}, "IfNoneMatch": "*"}),
    ("put_object", "TOKEN", None,
     {"Bucket": "dotted.bucket.name", "Key": "out/rec.json", "Body": b"{}",
      "ContentType": "application/json", "IfMatch": '"etag-1"'}),
    ("put_object", None, "http://127.0.0.1:9000",
     {"Bucket": "local", "Key": "spaced key/ü.json", "Body": b'{"a": 1}',
      "ContentType": "application/json"}),
    ("head_object", None, "https://minio.example:9000", {"Bucket": "b1b", "Key": "x/y.png"}),
]


@pytest.mark.parametrize(("call", "token", "endpoint_url", "params"), CASES)
def test_signature_is_botocores(monkeypatch: pytest.MonkeyPatch, call: str,
                                token: str | None, endpoint_url: str | None,
                                params: dict[str, Any]) -> None:
    request = botocore_request(monkeypatch, call, token=token, endpoint_url=endpoint_url,
                               **params)
    url = urlsplit(request.url)
    headers = {name.lower(): (value.decode() if isinstance(value, bytes) else value)
               for name, value in request.headers.items()}
    payload_hash = headers.pop("x-amz-content-sha256")
    signed_names = headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    # What botocore signed, less what the signer adds itself.
    unsigned = {name: headers[name] for name in signed_names.split(";")
                if name not in ("host", "x-amz-date", "x-amz-content-sha256",
                                "x-amz-security-token")}
    unsigned["host"] = url.netloc
    signed = S3Signer().sign(request.method, url.path, unsigned, payload_hash,
                             Credentials(ACCESS_KEY, SECRET_KEY, token),
                             "eu-west-1", FIXED_TIME.strftime("%Y%m%dT%H%M%SZ"), url.query)
    assert signed["authorization"] == headers["authorization"]
    assert signed.get("x-amz-security-token") == headers.get("x-amz-security-token")
    assert signed["x-amz-date"] == headers["x-amz-date"]


@pytest.mark.parametrize("key", ["in/cat.png", "a b/ü+x~y=z&q?(1).png", "x//y/./../z"])
def test_object_path_is_botocores_encoding(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    request = botocore_request(monkeypatch, "get_object", endpoint_url="http://127.0.0.1:9000",
                               Bucket="local", Key=key)
    assert object_path("local", key) == urlsplit(request.url).path


def test_signing_key_is_derived_once_per_day_and_region() -> None:
    signer = S3Signer()
    credentials = Credentials("AK", "SECRET")
    first = signer.sign("GET", "/k", {"host": "h"}, "UNSIGNED-PAYLOAD", credentials,
                        "us-east-1", "20261202T000000Z")
    again = signer.sign("GET", "/k", {"host": "h"}, "UNSIGNED-PAYLOAD", credentials,
                        "us-east-1", "20261202T000000Z")
    other_day = signer.sign("GET", "/k", {"host": "h"}, "UNSIGNED-PAYLOAD", credentials,
                            "us-east-1", "20261203T000000Z")
    assert first["authorization"] == again["authorization"]
    assert first["authorization"] != other_day["authorization"]
    assert "20261203/us-east-1/s3/aws4_request" in other_day["authorization"]
