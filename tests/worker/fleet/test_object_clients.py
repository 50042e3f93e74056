"""The worker's object requests: the direct client does what botocore does.

Against the moto server both clients get the same answers and raise the same error
codes; against local servers the direct client follows S3's region redirect once, and
treats a body cut short or damaged as transient.
"""

from __future__ import annotations

import logging
import socket
import threading
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError

from common.aws import make_session, s3_client
from common.aws_errors import error_code, is_transient
from common.sigv4 import Credentials
from contract.errors import StorageUnavailable
from contract.locations import S3Location
from tests.support.botocore_capture import botocore_request
from tests.support.local_http import LocalServer, Request
from worker.fleet.http_connections import Answer, ThreadConnections
from worker.fleet.object_clients import (
    BotocoreObjects,
    DirectObjects,
    object_client,
)
from worker.fleet.storage import S3Storage


def direct_for(endpoint: str) -> DirectObjects:
    session = make_session()
    return object_client("direct", s3_client(session, endpoint_url=endpoint), session)


@pytest.fixture(params=["direct", "botocore"])
def objects(request: pytest.FixtureRequest, fleet) -> tuple[object, str]:
    session = make_session()
    s3 = s3_client(session, endpoint_url=fleet.endpoint_url, max_attempts=1)
    client = object_client(request.param, s3, session)
    assert type(client) is (DirectObjects if request.param == "direct" else BotocoreObjects)
    return client, fleet.bucket


@pytest.mark.parametrize("key", ["photos/cat.png", "a b/ü+x~y=z&q?(1).png"])
def test_put_get_head_delete(objects, s3, key: str) -> None:
    client, bucket = objects
    etag = client.put(bucket, key, b"pixels", "image/png", {"job-id": "job-1"},
                      if_none_match=True)
    stored = client.get(bucket, key)
    assert (stored.body, stored.metadata, stored.etag) == (b"pixels", {"job-id": "job-1"},
                                                          etag)
    assert client.head(bucket, key) == {"job-id": "job-1"}
    seen = s3.get_object(Bucket=bucket, Key=key)  # what any other client reads
    assert seen["ContentType"] == "image/png" and seen["Metadata"] == {"job-id": "job-1"}
    replaced = client.put(bucket, key, b"more", "image/png", if_match=etag)
    assert replaced and replaced != etag
    client.delete(bucket, key)
    with pytest.raises(ClientError) as missing:
        client.get(bucket, key)
    assert error_code(missing.value) == "NoSuchKey"


def test_errors_carry_s3s_codes(objects) -> None:
    client, bucket = objects
    client.put(bucket, "taken.json", b"{}", "application/json")
    cases = [
        ("PreconditionFailed", lambda: client.put(bucket, "taken.json", b"x", "a/b",
                                                  if_none_match=True)),
        ("PreconditionFailed", lambda: client.put(bucket, "taken.json", b"x", "a/b",
                                                  if_match='"not-its-etag"')),
        ("404", lambda: client.head(bucket, "missing.png")),
        ("NoSuchBucket", lambda: client.get("no-such-bucket-here", "x.png")),
    ]
    for code, call in cases:
        with pytest.raises(ClientError) as raised:
            call()
        assert error_code(raised.value) == code
        assert not is_transient(raised.value)


def test_address_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    """On AWS: the bucket's own host when its name allows, else path style; on a given
    endpoint: path style, as botocore sends them."""
    credentials = lambda: Credentials("AK", "SK")  # noqa: E731
    for bucket, endpoint in (("photos-bucket", None), ("dotted.bucket.name", None),
                             ("local", "http://127.0.0.1:9000")):
        request = botocore_request(monkeypatch, "get_object", endpoint_url=endpoint,
                                   region="eu-west-1", Bucket=bucket, Key="in/a b.png")
        direct = DirectObjects(credentials, "eu-west-1", endpoint_url=endpoint)
        address = direct.address(bucket, "in/a b.png", "eu-west-1")
        assert address.url == request.url
        assert (address.host, address.path) == (urlsplit(request.url).netloc,
                                                urlsplit(request.url).path)


class ToLocalServer(ThreadConnections):
    """Connections that all go to one local server, whatever host a request names."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.server = urlsplit(base_url).netloc

    def request(self, scheme: str, host: str, method: str, path: str,
                headers: dict[str, str], body: bytes) -> Answer:
        return super().request("http", self.server, method, path, headers, body)


def aws_at_local_server(base_url: str) -> DirectObjects:
    """An AWS-addressed client (regions, redirects) whose requests go to a local server."""
    return DirectObjects(lambda: Credentials("AK", "SK"), "us-east-1",
                         connections=ToLocalServer(base_url))


def test_follows_the_buckets_region_once_and_remembers_it() -> None:
    seen: list[str] = []

    def respond(request: Request) -> tuple[int, bytes, dict[str, str]]:
        scope = request.headers["Authorization"].split("Credential=")[1].split(",")[0]
        seen.append(scope.split("/")[2])
        if "/eu-west-2/" not in scope:
            return 301, b"<Error><Code>PermanentRedirect</Code></Error>", {
                "x-amz-bucket-region": "eu-west-2"}
        return 200, b"body", {"ETag": '"e1"'}

    server = LocalServer(respond)
    try:
        client = aws_at_local_server(server.base_url)
        assert client.get("far-bucket", "k.png").body == b"body"
        assert client.get("far-bucket", "k2.png").body == b"body"
    finally:
        server.close()
    assert seen == ["us-east-1", "eu-west-2", "eu-west-2"]


def test_a_wrong_region_answer_without_a_hint_is_an_error() -> None:
    server = LocalServer(lambda request: (403, b"<Error><Code>AccessDenied</Code>"
                                               b"<Message>no</Message></Error>"))
    try:
        with pytest.raises(ClientError) as raised:
            aws_at_local_server(server.base_url).get("bucket-x", "k.png")
    finally:
        server.close()
    assert error_code(raised.value) == "AccessDenied"


def test_a_damaged_body_is_transient_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter([b"damaged", b"pixels"])

    def respond(request: Request) -> tuple[int, bytes, dict[str, str]]:
        return 200, next(answers), {"x-amz-checksum-crc32": "zhE8yw=="}  # CRC32 of "pixels"

    server = LocalServer(respond)
    try:
        storage = S3Storage(None, objects=aws_at_local_server(server.base_url), max_backoff=0.01)
        with caplog.at_level(logging.INFO):
            body = storage.read(S3Location(bucket="bucket-x", key="k.png"))
    finally:
        server.close()
    assert body == b"pixels"
    assert "does not match its CRC32" in caplog.text


def test_a_body_cut_short_is_transient() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")

    threading.Thread(target=serve, daemon=True).start()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        storage = S3Storage(None, objects=aws_at_local_server(base), attempts=2, max_backoff=0.01)
        with pytest.raises(StorageUnavailable) as raised:
            storage.read(S3Location(bucket="bucket-x", key="k.png"))
    finally:
        listener.close()
    assert "GET s3://bucket-x/k.png" in str(raised.value)


def test_botocore_is_used_where_direct_would_send_differently(
        moto_endpoint: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(direct_for(moto_endpoint), DirectObjects)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    with caplog.at_level(logging.WARNING):
        assert isinstance(direct_for(moto_endpoint), BotocoreObjects)
    assert "HTTPS_PROXY is set" in caplog.text
    monkeypatch.delenv("HTTPS_PROXY")
    session = make_session()
    chosen = object_client("botocore", s3_client(session, endpoint_url=moto_endpoint),
                           session)
    assert isinstance(chosen, BotocoreObjects)


@pytest.mark.parametrize(("endpoint", "direct"), [
    (None, True),  # S3's regional endpoint, as boto3 picks it
    ("https://s3.eu-west-1.amazonaws.com", True),
    ("https://bucket.vpce-0a1b2c3d-4e5f.s3.eu-west-1.vpce.amazonaws.com", False),
    ("https://s3-fips.eu-west-1.amazonaws.com", False),
    ("https://s3.dualstack.eu-west-1.amazonaws.com", False),
])
def test_only_s3s_regional_aws_endpoint_is_addressed_directly(
        monkeypatch: pytest.MonkeyPatch, endpoint: str | None, direct: bool) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    session = boto3.session.Session(aws_access_key_id="AK", aws_secret_access_key="SK",
                                    region_name="eu-west-1")
    chosen = object_client("direct", session.client("s3", endpoint_url=endpoint), session)
    assert isinstance(chosen, DirectObjects) is direct
