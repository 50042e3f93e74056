"""The worker's single-object S3 requests (GET, HEAD, PUT, DELETE), two ways.

``DirectObjects`` signs each request itself (SigV4) and sends it over a keep-alive
connection of the calling thread: about a quarter of the CPU botocore spends on it
(measured in docs/benchmarks.md), which is most of what a job costs around the engine
at turbo rates. ``BotocoreObjects`` goes through a boto3 client; it is used where the
direct path does not apply (a proxy, S3 Accelerate, dual-stack or FIPS endpoints,
partitions other than aws and aws-cn) and when ``IMG2IMG_S3_CLIENT=botocore``.

Both raise botocore's ``ClientError`` with S3's error code for an S3 error answer, and
network errors as they come, so ``common.aws_errors`` classifies them the same way.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit
from xml.etree import ElementTree

from botocore.exceptions import ClientError, NoCredentialsError, ResponseStreamingError

from common.sigv4 import UNSIGNED_PAYLOAD, Credentials, S3Signer, object_path
from worker.fleet.http_connections import Answer, ThreadConnections

log = logging.getLogger(__name__)

USER_AGENT = "img2img-fleet-worker"
META = "x-amz-meta-"
# Bucket names S3 can serve as <bucket>.s3.<region>.amazonaws.com with a valid
# certificate: DNS labels without dots.
_VIRTUAL_HOSTABLE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# Variables under which botocore would send a request elsewhere or differently.
_BOTOCORE_ONLY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                            "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT",
                            "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT")


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    etag: str = ""


class Address(NamedTuple):
    """Where one object request goes, and the Host and path it is signed with."""

    scheme: str
    host: str  # host[:port]
    path: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"


class ObjectClient(Protocol):
    def get(self, bucket: str, key: str) -> StoredObject: ...

    def head(self, bucket: str, key: str) -> dict[str, str]: ...

    def put(self, bucket: str, key: str, body: bytes, content_type: str,
            metadata: dict[str, str] | None = None, *, if_none_match: bool = False,
            if_match: str | None = None) -> str: ...

    def delete(self, bucket: str, key: str) -> None: ...


class BotocoreObjects:
    """The object requests through a boto3 S3 client."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3

    def get(self, bucket: str, key: str) -> StoredObject:
        response = self.s3.get_object(Bucket=bucket, Key=key)
        return StoredObject(body=response["Body"].read(),
                            metadata=dict(response.get("Metadata") or {}),
                            etag=str(response.get("ETag", "")))

    def head(self, bucket: str, key: str) -> dict[str, str]:
        return dict(self.s3.head_object(Bucket=bucket, Key=key).get("Metadata") or {})

    def put(self, bucket: str, key: str, body: bytes, content_type: str,
            metadata: dict[str, str] | None = None, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        condition = ({"IfNoneMatch": "*"} if if_none_match else
                     {"IfMatch": if_match} if if_match else {})
        response = self.s3.put_object(Bucket=bucket, Key=key, Body=body,
                                      ContentType=content_type, Metadata=metadata or {},
                                      **condition)
        return str(response.get("ETag") or "")

    def delete(self, bucket: str, key: str) -> None:
        self.s3.delete_object(Bucket=bucket, Key=key)


class DirectObjects:
    """Signed object requests over each thread's keep-alive connections, without
    botocore's request pipeline. Credentials come from a botocore credential source
    (which refreshes them).

    ``endpoint_url`` None means AWS: ``<bucket>.s3.<region>.amazonaws.com`` (path style
    for bucket names with dots), with the region of a bucket in another region learnt
    from S3's redirect and kept. A given endpoint (MinIO, an emulator) is path style.
    """

    def __init__(self, credentials: Callable[[], Credentials | None], region: str, *,
                 endpoint_url: str | None = None, ca_bundle: str | None = None,
                 connections: ThreadConnections | None = None) -> None:
        self._credentials = credentials
        self._region = region
        endpoint = urlsplit(endpoint_url) if endpoint_url else None
        # (scheme, host[:port]) of a given endpoint; None: AWS, addressed per bucket.
        self._endpoint = (endpoint.scheme, endpoint.netloc) if endpoint else None
        self._domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        self._signer = S3Signer()
        self._bucket_regions: dict[str, str] = {}
        self._lock = threading.Lock()
        self._connections = connections or ThreadConnections(ca_bundle)

    def get(self, bucket: str, key: str) -> StoredObject:
        response = self._send("GetObject", "GET", bucket, key,
                              {"x-amz-checksum-mode": "ENABLED"})
        _check_crc32(response, bucket, key)
        return StoredObject(body=response.body, metadata=_metadata(response.headers),
                            etag=response.headers.get("etag", ""))

    def head(self, bucket: str, key: str) -> dict[str, str]:
        return _metadata(self._send("HeadObject", "HEAD", bucket, key, {}).headers)

    def put(self, bucket: str, key: str, body: bytes, content_type: str,
            metadata: dict[str, str] | None = None, *, if_none_match: bool = False,
            if_match: str | None = None) -> str:
        headers = {"content-type": content_type,
                   "x-amz-checksum-crc32": _crc32(body)}
        for name, value in (metadata or {}).items():
            if not (name.isascii() and value.isascii()):
                raise ValueError(f"S3 metadata must be ASCII: {name}={value!r}")
            headers[META + name.lower()] = value
        if if_none_match:
            headers["if-none-match"] = "*"
        elif if_match:
            headers["if-match"] = if_match
        response = self._send("PutObject", "PUT", bucket, key, headers, body)
        return response.headers.get("etag", "")

    def delete(self, bucket: str, key: str) -> None:
        self._send("DeleteObject", "DELETE", bucket, key, {})

    def _send(self, operation: str, method: str, bucket: str, key: str,
              headers: dict[str, str], body: bytes = b"") -> Answer:
        for attempt in range(2):  # the second only after S3 named the bucket's region
            region = self._bucket_regions.get(bucket, self._region)
            address = self.address(bucket, key, region)
            response = self._connections.request(
                address.scheme, address.host, method, address.path,
                self._signed(method, address, headers, body, region), body)
            if response.status < 300:
                return response
            moved_to = response.headers.get("x-amz-bucket-region")
            if (attempt == 0 and self._endpoint is None and moved_to
                    and moved_to != region):
                with self._lock:
                    self._bucket_regions[bucket] = moved_to
                log.info("s3://%s is in %s; sending its requests there", bucket, moved_to)
                continue
            raise _client_error(operation, response, bucket)
        raise AssertionError("unreachable")

    def address(self, bucket: str, key: str, region: str) -> Address:
        if self._endpoint is not None:
            return Address(*self._endpoint, object_path(bucket, key))
        if _VIRTUAL_HOSTABLE.match(bucket):
            return Address("https", f"{bucket}.s3.{region}.{self._domain}",
                           object_path(None, key))
        return Address("https", f"s3.{region}.{self._domain}", object_path(bucket, key))

    def _signed(self, method: str, address: Address, headers: dict[str, str],
                body: bytes, region: str) -> dict[str, str]:
        credentials = self._credentials()
        if credentials is None:
            raise NoCredentialsError()
        # Over TLS S3 takes the payload unsigned (botocore does the same); the CRC32
        # header still has S3 check the bytes. Over plain HTTP the payload is signed.
        payload = UNSIGNED_PAYLOAD if address.scheme == "https" else _sha256(body)
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = self._signer.sign(method, address.path, {"host": address.host, **headers},
                                   payload, credentials, region, amz_date)
        signed["user-agent"] = USER_AGENT
        signed["content-length"] = str(len(body))
        return signed


def object_client(name: str, s3: Any, session: Any) -> ObjectClient:
    """The client for a job's object requests (``IMG2IMG_S3_CLIENT``): ``direct`` where
    it can send what the boto3 client ``s3`` would, else botocore (saying why)."""
    if name == "direct":
        unsupported = direct_objects_unsupported(s3)
        if unsupported is None:
            return direct_objects_for(s3, session)
        log.warning("S3 object requests go through botocore: %s", unsupported)
    return BotocoreObjects(s3)


def direct_objects_unsupported(s3: Any) -> str | None:
    """Why the direct path cannot stand in for this boto3 client (None: it can)."""
    for name in _BOTOCORE_ONLY_VARIABLES:
        if os.environ.get(name):
            return f"{name} is set"
    config = s3.meta.config
    s3_options = dict(getattr(config, "s3", None) or {})
    for option in ("use_accelerate_endpoint", "use_dualstack_endpoint"):
        if s3_options.get(option):
            return f"the S3 client has {option}"
    if _other_aws_endpoint(s3):
        return f"the S3 endpoint {s3.meta.endpoint_url} is not S3's regional one"
    if s3_options.get("addressing_style") == "virtual" and not _aws_endpoint(s3):
        return "virtual addressing on a custom endpoint"
    if getattr(config, "proxies", None):
        return "the S3 client has proxies"
    if getattr(config, "use_fips_endpoint", False) or getattr(config,
                                                              "use_dualstack_endpoint", False):
        return "a FIPS or dual-stack endpoint"
    region = s3.meta.region_name or ""
    if not region:
        return "no region"
    if s3.meta.partition not in ("aws", "aws-cn"):
        return f"the {s3.meta.partition} partition"
    return None


def direct_objects_for(s3: Any, session: Any) -> DirectObjects:
    """A DirectObjects that sends where ``s3`` (a boto3 client) sends, with its
    session's credentials."""
    source = session.get_credentials() if session is not None else None

    def credentials() -> Credentials | None:
        if source is None:
            return None
        frozen = source.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    endpoint = None if _aws_endpoint(s3) else s3.meta.endpoint_url
    ca_bundle = os.environ.get("AWS_CA_BUNDLE") or _botocore_ca_bundle()
    return DirectObjects(credentials, s3.meta.region_name, endpoint_url=endpoint,
                         ca_bundle=ca_bundle)


def _aws_endpoint(s3: Any) -> bool:
    """The client sends to S3's own regional (or global) endpoint."""
    region = s3.meta.region_name or ""
    host = urlsplit(s3.meta.endpoint_url or "").hostname or ""
    return host in ("s3.amazonaws.com", f"s3.{region}.amazonaws.com",
                    f"s3.{region}.amazonaws.com.cn")


def _other_aws_endpoint(s3: Any) -> bool:
    """An AWS endpoint that is not S3's regional one: a VPC interface endpoint, an access
    point, FIPS, dual-stack or Accelerate; botocore knows their addressing rules."""
    host = urlsplit(s3.meta.endpoint_url or "").hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn")) and not _aws_endpoint(s3)


def _botocore_ca_bundle() -> str | None:
    try:
        from botocore.httpsession import get_cert_path
        return get_cert_path(True)
    except Exception:  # noqa: BLE001 - the TLS context then uses the system's store
        return None


def _metadata(headers: Any) -> dict[str, str]:
    return {name[len(META):].lower(): value for name, value in headers.items()
            if name.lower().startswith(META)}


def _crc32(body: bytes) -> str:
    return base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _check_crc32(response: Answer, bucket: str, key: str) -> None:
    """S3 sends the stored CRC32 when the object has one; a body that does not match was
    damaged on the way (transient: read again)."""
    expected = response.headers.get("x-amz-checksum-crc32")
    if expected and "-" not in expected and expected != _crc32(response.body):
        raise ResponseStreamingError(
            error=f"s3://{bucket}/{key}: body does not match its CRC32 {expected}")


def _client_error(operation: str, response: Answer,
                  bucket: str) -> ClientError:
    """S3's error answer as botocore raises it: the XML's Code (the status for a HEAD,
    which has no body), Message and BucketName."""
    error: dict[str, str] = {"Code": str(response.status), "Message": response.reason or ""}
    if response.body:
        try:
            root = ElementTree.fromstring(response.body)
        except ElementTree.ParseError:
            error["Message"] = response.body[:200].decode("utf-8", "replace")
        else:
            for name in ("Code", "Message", "BucketName", "Region"):
                value = root.findtext(name)
                if value:
                    error[name] = value
    if error["Code"] == "NoSuchBucket":
        error.setdefault("BucketName", bucket)
    return ClientError({"Error": error,
                        "ResponseMetadata": {"HTTPStatusCode": response.status,
                                             "HTTPHeaders": response.headers}},
                       operation)
