"""Looking at a queue from a test: what is on it, how deep it is."""

from __future__ import annotations

from contract import JobMessage, parse_job


def put_images(s3, bucket: str, keys: list[str]) -> None:
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=f"not really an image: {key}".encode())


def drain(sqs, queue_url: str) -> list[JobMessage]:
    """Every message on the queue (received once, not deleted), parsed as jobs."""
    jobs: list[JobMessage] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                  VisibilityTimeout=60, WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return jobs
        jobs.extend(parse_job(m["Body"]) for m in got)


def depth(sqs, queue_url: str) -> int:
    return int(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"])
