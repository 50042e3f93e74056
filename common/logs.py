"""JSON-lines logging and CloudWatch embedded-metric-format lines (CLI-configured)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
EMF_NAMESPACE = "Img2ImgFleet"
_EMIT_LOCK = threading.Lock()


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields (job_id, batch_id) included."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def log_extra(job: Any) -> dict[str, Any]:
    """The fields a job's log lines carry (``extra=``): its job and batch ids."""
    return {"job_id": getattr(job, "job_id", None), "batch_id": getattr(job, "batch_id", None)}


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Only CLIs call this. Quietens the libraries' own progress bars and chatter."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "filelock", "PIL",
                  "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_libraries()


def quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:  # the producer's light install has no diffusers
        return
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


def emit_metrics(metrics: dict[str, float], dimensions: dict[str, str] | None = None,
                 units: dict[str, str] | None = None, stream: Any = None) -> None:
    """Write one CloudWatch EMF line to stdout; the CloudWatch agent/awslogs picks it up."""
    dimensions = dimensions or {}
    units = units or {}
    doc: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": EMF_NAMESPACE,
                "Dimensions": [sorted(dimensions)] if dimensions else [[]],
                "Metrics": [{"Name": name, "Unit": units.get(name, "None")}
                            for name in metrics],
            }],
        },
        **dimensions,
        **metrics,
    }
    out = stream or sys.stdout
    with _EMIT_LOCK:  # one whole line per document, whichever thread writes
        out.write(json.dumps(doc) + "\n")
        out.flush()
