"""The job runner: claims queued jobs, runs each in a process of its own, supervises them all.

A :class:`JobRunner` (started by ``trajforge serve``, or ``trajforge jobs worker``) claims pending
jobs from the store — atomically, so several runners on one PostgreSQL never take the same job —
and runs each as ``python -m trajforge.jobs <id> --db <url>`` (:mod:`trajforge.jobs.process`), so
a crash or a cancel never takes the server down. It heartbeats its jobs, turns a cancel request
into SIGTERM and, after a grace period, SIGKILL, and ends the job ``cancelled``.

Every runner supervises all running jobs, at start and then every few seconds: one on this host
whose process is gone is failed ``interrupted`` at once; one whose runner died (a server killed -9
leaves its job's process running) is adopted; one anywhere whose heartbeat is older than
``TRAJFORGE_JOB_HEARTBEAT_TIMEOUT_S`` is failed ``interrupted``. A pid is trusted only when its
command line is that job's (see :mod:`trajforge.procs`): a reused pid is never signalled.

It also calls the runner hooks (:mod:`trajforge.jobs.hooks`; auto-training is one).
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
from trajforge.jobs import hooks
from trajforge.records import JOB_FINISHED, Job, JobEvent, now_ms

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
"""How often a job heartbeats and a runner supervises, at most (more often with a short timeout)."""
GRACE_S = 10.0
"""How long a job asked to stop (SIGTERM) has before it is killed (SIGKILL)."""
INTERRUPTED = "interrupted: its process ended without finishing the job"


def heartbeat_every_s() -> float:
    """The heartbeat period: several beats fit in the timeout, so one slow beat is not a death."""
    return min(HEARTBEAT_S, settings.job_heartbeat_timeout_s() / 4)


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
    """Also call the runner hooks (:data:`trajforge.jobs.hooks.HOOKS`): auto-training, which
    starts jobs when tasks are due (see :mod:`trajforge.autotrain`). False: only run jobs."""

    def __post_init__(self) -> None:
        from trajforge.store import open_store

        self._store = open_store(self.store_url)
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = 0.0
        self._hook_at: dict[str, float] = {}
        """Hook name → when this runner last called it (monotonic)."""

    def start(self) -> JobRunner:
        if self.autotrain:
            hooks.load_builtin()
        self.recover()
        self._call_hooks(starting=True)
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
        status = "failed"
        if job.cancel_requested:
            status, error = "cancelled", f"cancelled ({error.split(': ', 1)[-1]})"
        return self._store.finish_job(job.id, status, now_ms(), error=error)

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
        self._call_hooks(starting=False)
        while len(self._running) < self.max_parallel and not self._stop.is_set():
            job = self._store.claim_job(self.host, now_ms())
            if job is None:
                break
            self._spawn(job)

    def _call_hooks(self, *, starting: bool) -> None:
        """Call the hooks that are due (all of them when ``starting``). One that fails is logged:
        jobs are still claimed and supervised in this pass."""
        if not self.autotrain:
            return
        for hook in list(hooks.HOOKS.values()):
            last = self._hook_at.get(hook.name)
            if not starting and last is not None and time.monotonic() - last <= hook.every_s:
                continue
            try:
                hook.run(self._store, self.home, starting)
            except Exception:
                log.exception("runner hook %s failed", hook.name)
            self._hook_at[hook.name] = time.monotonic()

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
            self._store.finish_job(
                job.id, "failed", now_ms(), error=f"could not start the job process: {exc}"
            )
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
        self._store.finish_job(r.job_id, status, now_ms(), error=error)
