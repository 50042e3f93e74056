"""Where a batch's outputs are: ``--output``, else IMG2IMG_BUCKET + IMG2IMG_OUTPUT_PREFIX."""

from __future__ import annotations

from contract.errors import InvalidJob
from contract.locations import S3_SCHEME, S3Location, parse_s3_uri


def output_location(output: str | None, bucket: str | None,
                    output_prefix: str) -> S3Location | None:
    """The output prefix, or None when neither ``--output`` nor a bucket is given."""
    if output:
        if not output.startswith(S3_SCHEME):
            raise InvalidJob(f"--output must be s3://bucket/prefix/: {output!r}")
        return parse_s3_uri(output, prefix=True)
    if not bucket:
        return None
    return parse_s3_uri(f"{S3_SCHEME}{bucket}/{output_prefix}", prefix=True)


def require_output(location: S3Location | None) -> S3Location:
    if location is None:
        raise InvalidJob("where are the outputs? pass --output s3://bucket/prefix/ or set "
                         "IMG2IMG_BUCKET")
    return location
