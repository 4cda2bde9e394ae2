"""Training jobs: a queue in the store, one subprocess per job, events, cancel and recovery.

* :func:`submit` validates a request and queues a job (``pending``).
* A :class:`JobRunner` (started by ``trajforge serve``, or ``trajforge jobs worker``) claims
  pending jobs from the store — atomically, so several runners on one PostgreSQL never take the
  same job — and runs each as ``python -m trajforge.jobs <id> --db <url>``, a process of its own, so
  a crash or a cancel never takes the server down. It heartbeats its jobs, turns a cancel request
  into SIGTERM and, after a grace period, SIGKILL, and ends the job ``cancelled``.
* The job process reports progress as ``job_progress`` events and job columns, and ends its job
  ``completed`` (with its output) or ``failed`` (with the error). It heartbeats itself and polls
  the store, so a cancel reaches it whoever started it, and it stops when its job was given up on.
* Every runner supervises all running jobs, at start and then every few seconds: one on this host
  whose process is gone is failed ``interrupted`` at once; one whose runner died (a server killed
  -9 leaves its job's process running) is adopted; one anywhere whose heartbeat is older than
  ``TRAJFORGE_JOB_HEARTBEAT_TIMEOUT_S`` is failed ``interrupted``. A pid is trusted only when its
  command line is that job's (see :mod:`trajforge.procs`): a reused pid is never signalled.

Job state and events live in the store, so the CLI, the API and a second server see the same jobs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajforge import procs, settings
from trajforge.errors import Cancelled, Conflict, InvalidInput, NotFound, Unavailable
from trajforge.records import JOB_FINISHED, JOB_STATUSES, Job, JobEvent, now_ms
from trajforge.store.base import Store

log = logging.getLogger(__name__)

BACKENDS = ("native", "cpu", "cuda", "mlx")
HEARTBEAT_S = 5.0
"""How often a job heartbeats and a runner supervises, at most (more often with a short timeout)."""
GRACE_S = 10.0
"""How long a job asked to stop (SIGTERM) has before it is killed (SIGKILL)."""
INTERRUPTED = "interrupted: its process ended without finishing the job"


def heartbeat_every_s() -> float:
    """The heartbeat period: several beats fit in the timeout, so one slow beat is not a death."""
    return min(HEARTBEAT_S, settings.job_heartbeat_timeout_s() / 4)


def backends() -> dict[str, dict[str, Any]]:
    """Which backends work on this machine, and why the others do not."""
    from trajforge.train import backends as train_backends

    return {
        "native": {"available": True, "reason": "prompt optimization: needs only a model to call"},
        **train_backends.status(),
    }


def kind_of(backend: str) -> str:
    """The job kind a backend runs: prompt optimization or LoRA fine-tuning."""
    return "native" if backend == "native" else "lora"


def submit(store: Store, request: dict[str, Any]) -> Job:
    """Queue a job for ``request`` (the API body, camelCase). Unavailable backends, unknown
    optimizers, models that cannot load here and datasets that do not exist are refused here,
    before anything is queued."""
    backend = request.get("backend") or "native"
    if backend not in BACKENDS:
        raise InvalidInput(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}", "backend")
    status = backends()[backend]
    if not status["available"]:
        raise Unavailable(
            f"the {backend} backend is not available on this machine: {status['reason']}", "backend"
        )
    request = {**request, "backend": backend}
    if backend == "native":
        from trajforge.optimize.native import NativeOptions, check_optimizer

        request["optimizer"] = check_optimizer(request.get("optimizer"))
        NativeOptions.from_request(request)  # bad options fail here, not in the job
        if request.get("metric"):
            from trajforge.optimize.common import resolve_metric

            resolve_metric(request["metric"])  # an unknown metric fails here, not in the job
    else:
        from trajforge.train.lora import LoraOptions

        LoraOptions.from_request(request)  # bad options fail here, not in the job
    from trajforge.train import backends as train_backends

    # A model the job could not load fails here (offline checks), not minutes later in the job.
    train_backends.check_model(backend, request.get("model"), request.get("baseUrl"))
    dataset_id = request.get("datasetId")
    ds = None if dataset_id is None else store.get_dataset(dataset_id)
    if dataset_id is not None and ds is None:
        raise NotFound(f"no dataset {dataset_id!r}", "datasetId")
    if ds is not None:
        from trajforge.optimize import common
        from trajforge.train import lora

        reads = common.FORMATS if backend == "native" else lora.FORMATS
        if ds.format not in reads:
            what = "native optimization" if backend == "native" else "LoRA training"
            raise InvalidInput(
                f"{what} reads {', '.join(reads)} datasets; {dataset_id} is {ds.format!r}", "datasetId"
            )
    job = Job(kind=kind_of(backend), backend=backend, request=request, dataset_id=dataset_id)
    store.add_job(job)
    return job


def submit_benchmark(store: Store, model_id: str, request: dict[str, Any]) -> Job:
    """Queue a base-vs-trained benchmark of a registered model (see :mod:`trajforge.evaluate`)."""
    from trajforge import evaluate

    evaluate.check_request(store, model_id, request)
    job = Job(kind="benchmark", backend="native", request={**request, "modelId": model_id})
    store.add_job(job)
    return job


def counts(store: Store, recent: int = 1000) -> dict[str, int]:
    """Jobs by status among the ``recent`` newest (what the status views show)."""
    jobs = store.list_jobs(limit=recent)
    return {s: sum(1 for j in jobs if j.status == s) for s in JOB_STATUSES}


def get(store: Store, job_id: str) -> Job:
    job = store.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}", "id")
    return job


def cancel(store: Store, job_id: str) -> Job:
    """Ask for a job to stop: a pending job ends ``cancelled`` now; a running one sees the request
    in the store and stops, and the runner supervising it sends SIGTERM, then SIGKILL. Cancelling
    a finished job is a conflict."""
    job = get(store, job_id)
    if job.status in JOB_FINISHED:
        raise Conflict(f"job {job_id} has already ended ({job.status})", "id")
    if job.status == "pending" and store.finish_job(
        job_id, "cancelled", now_ms(), error="cancelled before it started"
    ):
        store.add_event(JobEvent("job_cancelled", "cancelled before it started", job_id=job_id))
    else:
        store.update_job(job_id, cancel_requested=True)
    return get(store, job_id)


def wire(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "backend": job.backend,
        "status": job.status,
        "phase": job.phase,
        "progress": job.progress,
        "request": job.request,
        "datasetId": job.dataset_id,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "finishedAt": job.finished_at,
        "error": job.error,
        "exitCode": job.exit_code,
        "logPath": job.log_path,
        "output": job.output,
        "cancelRequested": job.cancel_requested,
    }


@dataclass
class _Running:
    job_id: str
    pid: int
    proc: subprocess.Popen[bytes] | None = None
    """None for an adopted job: its process was started by a runner that is gone."""
    log: Any = None
    term_sent_at: float | None = None
    ended_seen_at: float | None = None
    """When this runner first saw the job ended in the store while its process still ran."""

    def exited(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        return procs.job_process(self.pid, self.job_id) is None


@dataclass
class JobRunner:
    """Claims and runs jobs from ``store_url`` until :meth:`stop`. ``max_parallel`` jobs at once
    (training on a laptop CPU wants 1)."""

    store_url: str
    max_parallel: int = 1
    poll_s: float = 0.5
    grace_s: float = GRACE_S
    home: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    host: str = field(default_factory=socket.gethostname)
    autotrain: bool = True
    """Also start auto-training jobs when tasks are due (see :mod:`trajforge.autotrain`)."""
    autotrain_every_s: float = 10.0

    def __post_init__(self) -> None:
        from trajforge.store import open_store

        self._store = open_store(self.store_url)
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = 0.0
        self._autotrain_at = 0.0

    def start(self) -> JobRunner:
        self.recover()
        if self.autotrain:
            from trajforge import autotrain

            try:
                autotrain.check(self._store, bootstrap=autotrain.bootstrap_allowed(), home=self.home)
            except Exception:
                log.exception("auto-training bootstrap failed")
            self._autotrain_at = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="trajforge-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; jobs this runner started are cancelled (a server going down takes its
        jobs). Adopted ones are let go: they run on, and the next runner here adopts them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        own = [r for r in self._running.values() if r.proc is not None]
        for r in own:
            self._terminate(r, hard=False)
        deadline = time.monotonic() + self.grace_s
        for r in own:
            assert r.proc is not None
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            self._finalize(r, "cancelled", "the runner stopped")
        self._running.clear()
        self._store.close()

    def recover(self) -> int:
        """One supervision pass (a runner starts with one); see :meth:`supervise`."""
        return self.supervise()

    def supervise(self) -> int:
        """Look at every running job this runner does not run itself: on this host, fail it when
        its process is gone and adopt it when the runner that started it is; anywhere, fail it
        when it has not heartbeated within the timeout. Returns how many jobs it ended."""
        n = 0
        now = now_ms()
        timeout_s = settings.job_heartbeat_timeout_s()
        for job in self._store.list_jobs(status="running", limit=1000):
            if job.id in self._running:
                continue
            if job.host == self.host and job.pid:
                p = procs.info(job.pid)
                runner = self._runner_pid(job.id)
                if procs.runs_job(p, job.id):
                    assert p is not None
                    if runner is not None and p.ppid != runner:
                        self._adopt(job, runner)
                    continue  # its runner is alive (or it has only just started)
                if p is not None and not p.alive and runner is not None and p.ppid == runner:
                    continue  # exited, and its runner (alive: still its parent) will record how
                error = INTERRUPTED
            elif now - (job.heartbeat_at or job.started_at or 0) > timeout_s * 1000:
                error = f"interrupted: no heartbeat for {timeout_s:g} s (its process or its host is gone)"
            else:
                continue
            if self._end(job, error):
                n += 1
        return n

    def _runner_pid(self, job_id: str) -> int | None:
        """The pid of the runner that started the job, as its process recorded when it started."""
        for e in self._store.list_events(job_id=job_id, kinds=["job_started"], limit=1):
            value = (e.data or {}).get("runnerPid")
            return value if isinstance(value, int) else None
        return None

    def _adopt(self, job: Job, runner: int) -> None:
        assert job.pid is not None
        self._running[job.id] = _Running(job.id, job.pid)
        self._store.add_event(
            JobEvent(
                "job_log",
                f"adopted by the runner on {self.host} (pid {os.getpid()}): "
                f"the runner that started it (pid {runner}) is gone",
                job_id=job.id,
                data={"adoptedBy": os.getpid(), "host": self.host},
            )
        )

    def _end(self, job: Job, error: str) -> bool:
        """End a job whose process is gone: ``cancelled`` when a cancel was asked for, else
        ``failed``. False when it had already ended."""
        if job.cancel_requested:
            status, kind, error = "cancelled", "job_cancelled", f"cancelled ({error.split(': ', 1)[-1]})"
        else:
            status, kind = "failed", "job_failed"
        if not self._store.finish_job(job.id, status, now_ms(), error=error):
            return False
        self._store.add_event(JobEvent(kind, error, job_id=job.id))
        return True

    def run_once(self) -> None:
        """One pass: reap finished processes, act on cancels, heartbeat, supervise, claim new jobs."""
        for r in list(self._running.values()):
            if r.exited():
                self._finalize(r, None, None)
                continue
            job = self._store.get_job(r.job_id)
            if job is None or job.status in JOB_FINISHED:
                # Ended in the store (given up on by a supervisor, say) but still running: the
                # process stops by itself when it sees that; if it has not after the grace, kill it.
                r.ended_seen_at = r.ended_seen_at or time.monotonic()
                if time.monotonic() - r.ended_seen_at > self.grace_s:
                    self._terminate(r, hard=True)
            elif job.cancel_requested:
                if r.term_sent_at is None:
                    self._terminate(r, hard=False)
                elif time.monotonic() - r.term_sent_at > self.grace_s:
                    self._terminate(r, hard=True)
        if time.monotonic() - self._beat > heartbeat_every_s():
            self._beat = time.monotonic()
            for job_id in self._running:
                self._store.update_job(job_id, heartbeat_at=now_ms())
            self.supervise()
        if self.autotrain and time.monotonic() - self._autotrain_at > self.autotrain_every_s:
            from trajforge import autotrain

            self._autotrain_at = time.monotonic()
            autotrain.check(self._store, home=self.home)
        while len(self._running) < self.max_parallel and not self._stop.is_set():
            job = self._store.claim_job(self.host, now_ms())
            if job is None:
                break
            self._spawn(job)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("job runner pass failed")
            self._stop.wait(self.poll_s)

    def _spawn(self, job: Job) -> None:
        logs = (self.home or settings.home()) / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{job.id}.log"
        fh = open(log_path, "ab")  # noqa: SIM115 - closed when the job is finalized
        env = {**os.environ, **self.env}
        if self.home is not None:
            env[settings.HOME] = str(self.home)
        argv = [sys.executable, "-m", procs.JOB_MODULE, job.id, "--db", self.store_url]
        try:
            proc = subprocess.Popen(
                [*argv, "--runner", str(os.getpid())],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # signals reach the job, not the server
            )
        except OSError as exc:
            fh.close()
            if self._store.finish_job(
                job.id, "failed", now_ms(), error=f"could not start the job process: {exc}"
            ):
                self._store.add_event(JobEvent("job_failed", f"could not start: {exc}", job_id=job.id))
            return
        self._store.update_job(job.id, pid=proc.pid, log_path=str(log_path))
        self._running[job.id] = _Running(job.id, proc.pid, proc, fh)

    def _terminate(self, r: _Running, *, hard: bool) -> None:
        sig = signal.SIGKILL if hard else signal.SIGTERM
        if r.proc is not None:
            # Our child: its pid cannot be reused before we reap it, so no check is needed.
            try:
                os.killpg(r.proc.pid, sig)
            except ProcessLookupError:
                pass
        else:
            procs.signal_job(r.pid, r.job_id, sig)
        if r.term_sent_at is None:
            r.term_sent_at = time.monotonic()

    def _finalize(self, r: _Running, status: str | None, error: str | None) -> None:
        """The job's process has exited: record how, unless the job already recorded its end."""
        self._running.pop(r.job_id, None)
        if r.log is not None:
            r.log.close()
        job = self._store.get_job(r.job_id)
        if job is None:
            return
        if r.proc is None:  # adopted: not our child, so its exit code is not ours to know
            if job.status not in JOB_FINISHED:
                self._end(job, INTERRUPTED)
            return
        code = r.proc.returncode
        self._store.update_job(r.job_id, exit_code=code)
        if job.status in JOB_FINISHED:
            return
        if status is None:
            status = "cancelled" if job.cancel_requested else "failed"
            error = "cancelled" if job.cancel_requested else f"the job process exited with code {code}"
        if self._store.finish_job(r.job_id, status, now_ms(), error=error):
            kind = "job_cancelled" if status == "cancelled" else "job_failed"
            self._store.add_event(JobEvent(kind, error or status, job_id=r.job_id))


# --- the job process ---------------------------------------------------------------------------------


class _Cancelled(BaseException):
    """Raised in the job process by SIGTERM (unless the job stops cooperatively, see below)."""


_CANCEL = threading.Event()
_cooperative = False
"""True while a job body checks :data:`_CANCEL` itself (LoRA training stops between steps, so
the adapter is never cut mid-update); otherwise SIGTERM raises at once."""
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


def _body(job: Job) -> Any:
    """The function that does ``job``'s work: ``body(store, job, report, home, should_stop)``."""
    if job.kind == "benchmark":
        from trajforge import evaluate

        return evaluate.run_job
    if job.backend == "native":
        from trajforge.optimize import native

        return native.run
    if job.backend == "mlx":
        from trajforge.train import mlx

        return mlx.run
    from trajforge.train import lora

    return lora.run


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
        body = _body(job)
        _cooperative = job.kind == "lora"
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
        if store.finish_job(job.id, "failed", now_ms(), error=message):
            store.add_event(JobEvent("job_failed", message, job_id=job.id))
        return 1
    finally:
        _cooperative = False
    model_id = (output or {}).get("modelId") if isinstance(output, dict) else None
    if store.finish_job(job.id, "completed", now_ms(), output=output, progress=1.0, phase="done"):
        store.add_event(
            JobEvent(
                "job_completed", "completed", job_id=job.id, model_id=model_id, progress=1.0, data=output
            )
        )
    return 0


def _cancelled(store: Store, job: Job) -> int:
    if store.finish_job(job.id, "cancelled", now_ms(), error="cancelled"):
        store.add_event(JobEvent("job_cancelled", "cancelled", job_id=job.id))
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


if __name__ == "__main__":
    sys.exit(main())
