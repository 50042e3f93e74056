"""AWS Signature Version 4 for S3 object requests, as S3 specifies it.

S3's canonical request differs from other services' in one way that matters here: the
path is encoded once, not twice. The worker's object client signs with this; the tests
check it against botocore's signer header for header.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


def object_path(bucket: str | None, key: str) -> str:
    """The request path of an object, encoded as S3 signs it: ``/<key>`` on a bucket's own
    host, ``/<bucket>/<key>`` on a shared one."""
    encoded = quote(key, safe="/~")
    return f"/{bucket}/{encoded}" if bucket else f"/{encoded}"


class S3Signer:
    """Signs requests for one service in any region; the signing key is derived once per
    day and region (an HMAC chain of four) and kept."""

    def __init__(self, service: str = "s3") -> None:
        self.service = service
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._lock = threading.Lock()

    def sign(self, method: str, path: str, headers: dict[str, str], payload_hash: str,
             credentials: Credentials, region: str, amz_date: str,
             query: str = "") -> dict[str, str]:
        """``headers`` (lower-case names, ``host`` included) plus the date, payload hash,
        token and Authorization headers. ``amz_date`` is ``YYYYMMDDTHHMMSSZ`` in UTC;
        ``query`` is already canonical (sorted, encoded)."""
        signed = dict(headers)
        signed["x-amz-date"] = amz_date
        signed["x-amz-content-sha256"] = payload_hash
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = sorted(signed)
        canonical_headers = "".join(f"{name}:{' '.join(signed[name].split())}\n"
                                    for name in names)
        signed_names = ";".join(names)
        canonical = "\n".join((method, path, query, canonical_headers, signed_names,
                               payload_hash))
        day = amz_date[:8]
        scope = f"{day}/{region}/{self.service}/aws4_request"
        to_sign = "\n".join((ALGORITHM, amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(credentials.secret_key, day, region),
                             to_sign.encode(), hashlib.sha256).hexdigest()
        signed["authorization"] = (f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
                                   f"SignedHeaders={signed_names}, Signature={signature}")
        return signed

    def _signing_key(self, secret: str, day: str, region: str) -> bytes:
        cache_key = (secret, day, region)
        with self._lock:
            key = self._keys.get(cache_key)
        if key is None:
            key = ("AWS4" + secret).encode()
            for part in (day, region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            with self._lock:
                if len(self._keys) > 16:  # old days, rotated secrets
                    self._keys.clear()
                self._keys[cache_key] = key
        return key
