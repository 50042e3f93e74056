"""What each job costs besides the GPU: its S3, SQS and SNS requests, from dated tables.

``REQUESTS_PER_JOB`` counts what one job of a producer batch makes today, read from the
worker's and the producer's code on ``REQUESTS_COUNTED`` (a change to the per-job
plumbing changes these numbers, here and nowhere else):

- S3 PUT class (PUT, COPY, POST, LIST): the claim (the running record), the output, the
  done record, and per group of jobs a worker ends together (about 6 in the overlap
  bench, docs/benchmarks.md) one batch marker naming them all and one conditional
  counter write;
- S3 GET class: the input, plus a few hundredths of a request for the cancel order and
  a counter re-read when another worker wrote it since;
- SQS: SendMessageBatch (10 jobs a call), ReceiveMessage (up to 10; a batch of 8 at a
  time in practice), DeleteMessageBatch (a batch at a time), and about one
  ChangeMessageVisibilityBatch per ten jobs held past a heartbeat;
- SNS: the job's end event on the events topic.

Prices: standard list prices in us-east-1, USD, as ``REQUEST_PRICES_DATE`` (S3
Standard, SQS standard queue, SNS standard topic; the free tiers are left out). Other
regions and storage classes differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

REQUESTS_COUNTED = "2026-12-02"
REQUEST_PRICES_DATE = "2026-12-02"
REQUEST_PRICES_SOURCE = ("AWS list prices, us-east-1: S3 Standard requests, SQS standard "
                         "queue requests, SNS publishes (free tiers left out)")


@dataclass(frozen=True)
class JobRequests:
    """Requests per job, by price class."""

    s3_put: float
    s3_get: float
    sqs: float
    sns: float


REQUESTS_PER_JOB = JobRequests(
    s3_put=3 + 2 / 6,  # the overlap bench measures 3.28-3.36
    s3_get=1.05,  # measured 1.04-1.06
    # send 1/10 + receive 1/8 + delete 1/8 + visibility 1/10
    sqs=1 / 10 + 1 / 8 + 1 / 8 + 1 / 10,
    sns=1,
)

# USD per request.
USD_PER_REQUEST = JobRequests(
    s3_put=0.005 / 1000,
    s3_get=0.0004 / 1000,
    sqs=0.40 / 1_000_000,
    sns=0.50 / 1_000_000,
)


@dataclass(frozen=True)
class RequestCost:
    """The request bill of ``images`` jobs, by class and in all."""

    images: int
    usd: JobRequests
    source: str

    @property
    def total_usd(self) -> float:
        return sum(asdict(self.usd).values())

    @property
    def per_1000_images_usd(self) -> float:
        return 1000 * self.total_usd / self.images

    def to_dict(self) -> dict[str, object]:
        return {"by_class_usd": asdict(self.usd), "total_usd": self.total_usd,
                "per_1000_images_usd": self.per_1000_images_usd,
                "requests_per_job": asdict(REQUESTS_PER_JOB),
                "counted": REQUESTS_COUNTED, "source": self.source}


def request_cost(images: int, per_job: JobRequests = REQUESTS_PER_JOB,
                 prices: JobRequests = USD_PER_REQUEST) -> RequestCost:
    """The requests of ``images`` jobs at the table's prices."""
    usd = JobRequests(**{name: images * count * getattr(prices, name)
                         for name, count in asdict(per_job).items()})
    return RequestCost(images=images, usd=usd,
                       source=f"{REQUEST_PRICES_SOURCE}, {REQUEST_PRICES_DATE}")
