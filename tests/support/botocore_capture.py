"""A boto3 S3 request as botocore would send it, stopped before it leaves."""

from __future__ import annotations

import datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config

FIXED_TIME = datetime.datetime(2026, 12, 2, 17, 45, 12)
ACCESS_KEY, SECRET_KEY = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"


class Captured(Exception):
    def __init__(self, request: Any) -> None:
        self.request = request


def botocore_request(monkeypatch: pytest.MonkeyPatch, call: str, *, token: str | None = None,
                     endpoint_url: str | None = None, region: str = "eu-west-1",
                     **params: Any) -> Any:
    """The prepared request (method, url, headers) of ``s3.<call>(**params)``, signed at
    FIXED_TIME with ACCESS_KEY/SECRET_KEY."""
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: FIXED_TIME)
    session = boto3.session.Session(aws_access_key_id=ACCESS_KEY,
                                    aws_secret_access_key=SECRET_KEY,
                                    aws_session_token=token, region_name=region)
    s3 = session.client("s3", endpoint_url=endpoint_url,
                        config=Config(retries={"max_attempts": 1}))

    def stop(request: Any, **_: Any) -> None:
        raise Captured(request)

    s3.meta.events.register("before-send.s3", stop)
    with pytest.raises(Captured) as captured:
        getattr(s3, call)(**params)
    return captured.value.request
