"""Cancelling a batch, or some of its jobs: the batch's ``cancel.json``.

Workers read it before they claim a job and again right before it runs (at most every
IMG2IMG_CANCEL_CHECK_SECONDS per batch); a job not yet started ends as ``cancelled``,
with no output, and its message is deleted. Jobs already running or ended are not
touched. Writing the order is a read-modify-write with a conditional PUT, so two
cancels at once both count; doing it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from common.aws_errors import is_not_found, is_precondition_failed
from contract.batches import CancelOrder
from contract.errors import InvalidJob
from contract.locations import S3Location, batch_cancel_key, batch_jobs_key
from producer.batch_jobs import read_batch_jobs
from producer.manifest import read_manifest
from producer.status import batch_progress

WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class CancelResult:
    order: CancelOrder | None  # None: nothing was written (the batch had ended)
    finished: int  # jobs of the batch already ended
    total: int
    dry_run: bool = False  # the order is what would be written; nothing was

    def to_dict(self, batch_id: str) -> dict[str, Any]:
        """``cancel --json``."""
        order = self.order
        return {"batch_id": batch_id, "dry_run": self.dry_run,
                "ended_already": order is None, "finished": self.finished,
                "total": self.total,
                "cancelled": None if order is None else (
                    "all" if order.all_jobs else list(order.job_ids)),
                "reason": None if order is None else order.reason}


def cancel(s3: Any, output: S3Location, batch_id: str, *, job_ids: list[str] | None = None,
           reason: str = "cancelled", dry_run: bool = False) -> CancelResult:
    """Cancel the whole batch (``job_ids`` None) or those jobs of it; with ``dry_run``,
    say what the order would be and write nothing."""
    manifest = read_manifest(s3, output, batch_id)
    if manifest is None:
        raise InvalidJob(f"no batch {batch_id!r} under {output.uri} (no manifest): check "
                         "--batch-id and --output")
    if job_ids is not None:
        _check_in_batch(s3, output, batch_id, job_ids)
    progress = batch_progress(s3, output, batch_id)
    if progress.complete:
        return CancelResult(order=None, finished=progress.finished, total=manifest.total)
    where = S3Location(bucket=output.bucket, key=batch_cancel_key(output.key, batch_id))
    if dry_run:
        return CancelResult(order=_merged(_read(s3, where)[0], job_ids, reason),
                            finished=progress.finished, total=manifest.total, dry_run=True)
    for _ in range(WRITE_ATTEMPTS):
        current, etag = _read(s3, where)
        if current is not None and all(current.covers(j) for j in job_ids or []) and (
                job_ids is not None or current.all_jobs):
            return CancelResult(order=current, finished=progress.finished,
                                total=manifest.total)  # already so: nothing changes
        order = _merged(current, job_ids, reason)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            s3.put_object(Bucket=where.bucket, Key=where.key, Body=order.model_dump_json(),
                          ContentType="application/json", **condition)
            return CancelResult(order=order, finished=progress.finished,
                                total=manifest.total)
        except ClientError as exc:
            if not is_precondition_failed(exc):
                raise
    raise InvalidJob(f"the cancel order of batch {batch_id} kept changing; try again")


def _check_in_batch(s3: Any, output: S3Location, batch_id: str, job_ids: list[str]) -> None:
    """Refuse job ids the batch does not hold (its jobs file says which it holds; a batch
    from another producer has none, and its ids cannot be checked)."""
    jobs = read_batch_jobs(s3, output, batch_id)
    if jobs is None:
        return
    known = {job["job_id"] for job in jobs}
    unknown = [j for j in dict.fromkeys(job_ids) if j not in known]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more"
                                          if len(unknown) > 5 else "")
        raise InvalidJob(f"--job-id {shown}: not a job of batch {batch_id} (its "
                         f"{len(known)} job ids are in {output.uri}"
                         f"{batch_jobs_key(output.key, batch_id).removeprefix(output.key)}); "
                         "nothing was cancelled")


def _read(s3: Any, where: S3Location) -> tuple[CancelOrder | None, str | None]:
    try:
        response = s3.get_object(Bucket=where.bucket, Key=where.key)
    except ClientError as exc:
        if is_not_found(exc):
            return None, None
        raise
    return CancelOrder.model_validate_json(response["Body"].read()), response["ETag"]


def _merged(current: CancelOrder | None, job_ids: list[str] | None,
            reason: str) -> CancelOrder:
    if job_ids is None:
        return CancelOrder(all_jobs=True, reason=reason)
    known = current.job_ids if current else []
    return CancelOrder(all_jobs=bool(current and current.all_jobs),
                       job_ids=sorted({*known, *job_ids}), reason=reason)
