"""The local fleet's worker processes: started in their own session, so a Ctrl-C in the
terminal reaches only the runner, which stops them itself and waits for them (no
worker outlives the run or prints over the shell's prompt). Their JSON logs go to one
file per worker, not to the screen."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# How long a worker asked to stop (one signal: finish or release, then exit) may take,
# and how long after the second signal (release everything, exit at once).
STOP_GRACE_SECONDS = 20.0
ABORT_GRACE_SECONDS = 10.0
READY_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class WorkerShare:
    """How many jobs each worker takes at a time, so every worker gets some: a worker
    receives at most one batch ahead, and a batch is at most its share of the jobs."""

    batch_size: int
    prefetch_batches: int

    @classmethod
    def of(cls, jobs: int, workers: int, batch_size: int) -> WorkerShare:
        if workers <= 1:
            return cls(batch_size=batch_size, prefetch_batches=2)
        return cls(batch_size=max(1, min(batch_size, math.ceil(jobs / workers))),
                   prefetch_batches=1)


class WorkerGroup:
    """The running ``img2img-worker serve`` processes, their health and log files."""

    def __init__(self, procs: list[subprocess.Popen], health_files: list[Path],
                 log_files: list[Path]) -> None:
        self.procs = procs
        self.health_files = health_files
        self.log_files = log_files

    @classmethod
    def start(cls, command: list[str], envs: list[dict[str, str]], log_dir: Path
              ) -> WorkerGroup:
        """One worker per environment (each names its IMG2IMG_WORKER_ID and
        IMG2IMG_HEALTH_FILE); a health file left by an earlier run is removed first."""
        log_dir.mkdir(parents=True, exist_ok=True)
        procs, health, logs = [], [], []
        for env in envs:
            health_file = Path(env["IMG2IMG_HEALTH_FILE"])
            health_file.unlink(missing_ok=True)
            log_file = log_dir / f"{env['IMG2IMG_WORKER_ID']}.log"
            with log_file.open("w") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                              stderr=log, start_new_session=True))
            health.append(health_file)
            logs.append(log_file)
        return cls(procs, health, logs)

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until every worker runs its loop (its health file is written); the
        reason when one exited first or the time ran out, else None."""
        deadline = time.monotonic() + timeout
        while True:
            for proc, log in zip(self.procs, self.log_files, strict=True):
                if proc.poll() is not None:
                    return f"a worker exited at start (status {proc.returncode}): see {log}"
            if all(path.exists() for path in self.health_files):
                return None
            if time.monotonic() > deadline:
                return f"the workers did not start within {timeout:.0f} s"
            time.sleep(READY_POLL_SECONDS)

    def running(self) -> bool:
        return any(proc.poll() is None for proc in self.procs)

    def stop(self, *, at_once: bool = False) -> None:
        """Stop every worker and wait for it: one signal lets a worker finish or release
        its batch; ``at_once`` sends the second signal too (release everything, exit).
        Two different signals, so neither is merged into the other."""
        self._signal(signal.SIGTERM)
        if not at_once and self._wait(STOP_GRACE_SECONDS):
            return
        self._signal(signal.SIGINT)
        if not self._wait(ABORT_GRACE_SECONDS):
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
            self._wait(ABORT_GRACE_SECONDS)

    def _signal(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    def _wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True
