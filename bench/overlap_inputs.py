"""The overlap benchmark's inputs: photo-like images, their jobs, the S3 endpoint's own
capacity, and a feeder that keeps the queue shallow (moto's SQS slows with depth)."""

from __future__ import annotations

import io
import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

JSON = "application/json"
# SQS gets slow in moto with deep queues: keep at most this many messages visible.
MAX_VISIBLE = 40


def photo_like_image(size: int, seed: int = 0, fmt: str = "png") -> bytes:
    """A size x size PNG or JPEG (quality 90) that compresses like a photo (smooth
    shapes plus sensor noise), not like a flat test card, so download and decode cost
    what a real input costs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([
        128 + 100 * np.sin(6 * x + 3 * y + seed),
        128 + 90 * np.cos(5 * y - 2 * x),
        128 + 80 * np.sin(4 * (x + y)),
    ], axis=-1)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "jpg" else {}
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG" if fmt == "jpg" else "PNG", **options)
    return buffer.getvalue()


def upload_and_make_jobs(s3, bucket: str, jobs: int, size: int, params: dict,
                         input_format: str = "png") -> tuple[list, int]:
    from contract import GenerationParams, JobMessage, S3Location, parse_s3_uri

    data = photo_like_image(size, fmt=input_format)
    prefix = parse_s3_uri(f"s3://{bucket}/out/", prefix=True)

    def one(i: int):
        key = f"in/img-{i:05d}.{input_format}"
        etag = s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
        return JobMessage.create(input=S3Location(bucket=bucket, key=key), input_etag=etag,
                                 output_prefix=prefix, params=GenerationParams(**params),
                                 batch_id="overlap")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(jobs))), len(data)


def write_batch_manifest(s3, bucket: str, queue_url: str, jobs: list) -> None:
    """The batch's manifest, as ``img2img-producer enqueue`` writes it, so the workers
    keep the batch's totals and announce it as they do in production."""
    from contract.batches import BatchManifest
    from contract.locations import batch_manifest_key, output_dir

    first = jobs[0]
    folder = output_dir(first.output.key)
    manifest = BatchManifest(
        batch_id=first.batch_id, total=len(jobs), queue_url=queue_url,
        source=f"s3://{bucket}/in/", output=f"s3://{bucket}/{folder}",
        shard_totals=BatchManifest.shard_totals_of(job.job_id for job in jobs))
    s3.put_object(Bucket=bucket, Key=batch_manifest_key(folder, first.batch_id),
                  Body=manifest.model_dump_json(), ContentType="application/json")


def moto_alone(objects, sqs, bucket: str, input_key: str, output_format: str, threads: int,
               seconds: float = 5.0, warm_up: float = 1.0) -> float:
    """Job-equivalents per second the S3+SQS endpoint serves alone: ``threads`` threads
    (S3 object requests through ``objects``, a worker.fleet.object_clients client)
    repeat a job's essential requests with no worker around them: a conditional claim
    PUT, the input GET, a conditional output PUT and the record PUT, and per 10 jobs a
    SendMessageBatch, a ReceiveMessage and a DeleteMessageBatch of 10. The same
    yardstick whatever the worker under test does; where a run's jobs/s comes near it,
    the endpoint, not the worker, limits the run. Jobs ending in the first ``warm_up``
    seconds are not counted (a cold moto served 27-46 job-equivalents/s in 3 s windows
    minutes apart)."""
    from contract.job import OutputFormat
    from worker.images import decode_image, encode_image

    image = decode_image(objects.get(bucket, input_key).body, max_pixels=10**8)
    output = encode_image(image, OutputFormat(output_format))
    queue_url = sqs.create_queue(QueueName=f"{bucket}-alone")["QueueUrl"]
    start = time.perf_counter()
    counted_from, stop = start + warm_up, start + warm_up + seconds
    counter = itertools.count()
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    done: list[int] = []

    def loop() -> None:
        n = counted = 0
        while time.perf_counter() < stop:
            i = next(counter)
            objects.put(bucket, f"{probe}/{i}.json", b"{}" * 150, JSON, if_none_match=True)
            objects.get(bucket, input_key)
            objects.put(bucket, f"{probe}/{i}.{output_format}", output, "image/" + output_format,
                        if_none_match=True)
            objects.put(bucket, f"{probe}/{i}.json", b"{}" * 200, JSON)
            n += 1
            counted += time.perf_counter() >= counted_from
            if n % 10 == 0:
                sqs.send_message_batch(QueueUrl=queue_url, Entries=[
                    {"Id": str(j), "MessageBody": "{}" * 400} for j in range(10)])
                got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                          WaitTimeSeconds=0).get("Messages", [])
                if got:
                    sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                        {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]}
                        for j, m in enumerate(got)])
        done.append(counted)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return sum(done) / (time.perf_counter() - counted_from)


class Feeder:
    """Sends jobs in waves, keeping at most MAX_VISIBLE messages waiting."""

    def __init__(self, sqs, queue_url: str, bodies: list[str]) -> None:
        self.sqs, self.queue_url, self.bodies = sqs, queue_url, list(bodies)

    def visible(self) -> int:
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                              AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

    def send_some(self, count: int) -> None:
        while count > 0 and self.bodies:
            take = min(10, count)
            chunk, self.bodies = self.bodies[:take], self.bodies[take:]
            self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)])
            count -= len(chunk)

    def run(self) -> None:
        while self.bodies:
            room = MAX_VISIBLE - self.visible()
            if room >= 10:
                self.send_some(room)
            time.sleep(0.1)


def feed_in_subprocess(endpoint: str, queue_url: str, bodies: list[str]) -> None:
    """The feeder's own process: its CPU is not counted as the worker's."""
    from common.aws import sqs_client

    Feeder(sqs_client(endpoint_url=endpoint), queue_url, bodies).run()
