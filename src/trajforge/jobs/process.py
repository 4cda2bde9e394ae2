"""The job process: ``python -m trajforge.jobs <id> --db <url>`` runs one claimed job.

It reports progress as ``job_progress`` events and job columns, and ends its job ``completed``
(with its output) or ``failed`` (with the error). It heartbeats itself and polls the store, so a
cancel reaches it whoever started it, and it stops when its job was given up on. What does the work
is the job's kind's run function (:mod:`trajforge.jobs.kinds`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trajforge.errors import Cancelled
from trajforge.jobs import kinds
from trajforge.jobs.runner import GRACE_S, heartbeat_every_s
from trajforge.records import Job, JobEvent, now_ms
from trajforge.store.base import Store

log = logging.getLogger(__name__)


class _Cancelled(BaseException):
    """Raised in the job process by SIGTERM (unless the job stops cooperatively, see below)."""


_CANCEL = threading.Event()
_cooperative = False
"""True while a job body checks :data:`_CANCEL` itself (its kind is ``cooperative``: LoRA training
stops between steps, so the adapter is never cut mid-update); otherwise SIGTERM raises at once."""
_DONE = threading.Event()
"""Set once the job body has returned or raised: the process is only recording how it ended."""


def _on_sigterm(signum: int, frame: Any) -> None:
    # Only the first SIGTERM raises: the runner and the job's own watcher may both send one, and a
    # second must not cut short the cancel the first one started.
    first = not _CANCEL.is_set()
    _CANCEL.set()
    if first and not _cooperative and not _DONE.is_set():
        raise _Cancelled()


def _watch(store: Store, job_id: str, stop: threading.Event) -> None:
    """The job process's own supervisor: heartbeat, and stop when the store says to (a cancel, or
    the job ended by someone else — a supervisor that gave up on it), whoever started this process.
    SIGTERM first, so the job stops the way a runner's cancel stops it; SIGKILL after the grace."""
    asked_at: float | None = None
    every = heartbeat_every_s()
    while not stop.wait(every):
        try:
            store.update_job(job_id, heartbeat_at=now_ms())
            job = store.get_job(job_id)
        except Exception:
            log.warning("job %s: heartbeat failed", job_id, exc_info=True)
            continue
        if _DONE.is_set() or (job is not None and job.status == "running" and not job.cancel_requested):
            continue
        if asked_at is None:
            asked_at = time.monotonic()
            why = "a cancel was requested" if job is not None and job.status == "running" else "the job ended"
            log.info("job %s: stopping, %s", job_id, why)
            os.kill(os.getpid(), signal.SIGTERM)
        elif time.monotonic() - asked_at > GRACE_S:
            log.warning("job %s: still running %g s after SIGTERM; killing it", job_id, GRACE_S)
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


def execute(store: Store, job: Job, home: Path | None = None, runner_pid: int | None = None) -> int:
    """Run ``job`` in this process, recording progress, events and the outcome. Returns the exit code.
    ``runner_pid`` (default: the parent) is the runner that started it: a runner that finds this
    process with another parent knows that runner is gone, and adopts it."""
    global _cooperative
    last = [0.0]
    held: list[JobEvent] = []

    def release() -> None:
        if held:
            store.add_event(held.pop())

    def report(progress: float, phase: str, message: str) -> None:
        store.update_job(job.id, progress=round(progress, 4), phase=phase)
        event = JobEvent("job_progress", message, job_id=job.id, progress=progress, phase=phase)
        if held and held[0].phase != phase:
            release()  # the last word of the phase before (its final step, say) is never dropped
        held.clear()
        now = time.monotonic()
        if now - last[0] > 0.2 or progress >= 1.0:  # events at most 5/s: a log, not a firehose
            last[0] = now
            store.add_event(event)
        else:
            held.append(event)
        print(f"[{progress:6.1%}] {phase}: {message}", flush=True)

    started = {"pid": os.getpid(), "runnerPid": runner_pid or os.getppid(), "host": socket.gethostname()}
    store.add_event(
        JobEvent(
            "job_started",
            f"{job.backend} {job.kind} job started",
            job_id=job.id,
            phase="start",
            data=started,
        )
    )
    try:
        kind = kinds.get(job.kind)
        body = kind.body(job.backend)
        _cooperative = kind.cooperative
        if _CANCEL.is_set():
            raise _Cancelled()
        output = body(store, job, report, home, _CANCEL.is_set)
        _DONE.set()
        release()
    except (_Cancelled, Cancelled):
        _DONE.set()
        return _cancelled(store, job)
    except Exception as exc:
        _DONE.set()
        log.exception("job %s failed", job.id)
        message = f"{type(exc).__name__}: {exc}"
        store.finish_job(job.id, "failed", now_ms(), error=message)
        return 1
    finally:
        _cooperative = False
    store.finish_job(job.id, "completed", now_ms(), output=output, progress=1.0, phase="done")
    return 0


def _cancelled(store: Store, job: Job) -> int:
    store.finish_job(job.id, "cancelled", now_ms(), error="cancelled")
    return 130


def main(argv: list[str] | None = None) -> int:
    import argparse

    from trajforge.store import open_store

    parser = argparse.ArgumentParser(prog="python -m trajforge.jobs", description="Run one queued job.")
    parser.add_argument("job_id")
    parser.add_argument("--db", required=True)
    parser.add_argument("--runner", type=int, help="pid of the runner that started this process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    store = open_store(args.db)
    try:
        job = store.get_job(args.job_id)
        if job is None or job.status != "running":
            why = "no such job" if job is None else f"it is {job.status}, not claimed by a runner"
            print(f"not running job {args.job_id}: {why}", file=sys.stderr)
            return 2
        # Recorded here too: a runner killed right after starting this process never recorded it.
        store.update_job(job.id, pid=os.getpid())
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(store, job.id, stop), name="job-watch", daemon=True)
        watcher.start()
        try:
            return execute(store, job, runner_pid=args.runner)
        finally:
            stop.set()
            watcher.join(10)
    finally:
        store.close()
