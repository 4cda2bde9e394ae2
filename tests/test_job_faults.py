"""Jobs under faults: a real ``trajforge serve`` (uvicorn on loopback, its job runner on) killed -9
while a job runs, on a real SQLite file and on PostgreSQL. The job's process outlives the server
(it has a session of its own); these tests check it is never left ``running`` for nobody: a
restarted server adopts it, another running server adopts it, a supervisor elsewhere fails it
``interrupted`` once its heartbeat stops, a cancel reaches it whoever started it, and its process
is gone at the end. A pid that is not the job's process (reused, or a zombie) is never trusted.

The job is native prompt optimization against a deliberately slow fake model on loopback (each
call waits), so it runs for minutes unless stopped and costs almost no CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import task_lm
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import free_port, job_working, start_server, until
from trajforge import jobs, settings
from trajforge.records import JOB_FINISHED, Job, now_ms
from trajforge.store import Store, open_store

pytestmark = [pytest.mark.slow, pytest.mark.faults]

TIMEOUT_S = "2"
"""The heartbeat timeout every process in these tests runs with (the default is a minute)."""


def _gone(pid: int) -> bool:
    """Dead: no process, or a zombie (here pid 1 does not reap orphans, so a dead orphan stays a
    zombie for good; it runs nothing and holds nothing but its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


class Server:
    """``trajforge serve`` in a process of its own, on a free loopback port."""

    def __init__(self, db: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            settings.JOB_HEARTBEAT_TIMEOUT_S: TIMEOUT_S,
            settings.DISABLE_AUTO_BOOTSTRAP: "1",
        }
        self.proc = start_server(self.port, db, log, env=env)

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30)

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def slow_lm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(task_lm.slow(task_lm.answer, 0.3)) as server:
        yield server


@pytest.fixture
def db(store_url: str) -> Iterator[Store]:
    store = open_store(store_url)
    task_lm.fill_store(store, 30)
    yield store
    store.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    started: list[Server] = []

    def start(db_url: str) -> Server:
        started.append(Server(db_url, tmp_path / f"server{len(started)}.log"))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Job process pids a test saw; none may be left running, whatever the test's outcome."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        if not _gone(pid):
            os.killpg(pid, signal.SIGKILL)
            pytest.fail(f"job process {pid} was left running")


def _job_request(lm: FakeOpenAI) -> dict[str, Any]:
    return {"backend": "native", "model": task_lm.MODEL, "baseUrl": lm.base_url, "iterations": 200}


def _adopted(store: Store, job_id: str) -> bool:
    return any("adopted" in e.message for e in store.list_events(job_id=job_id, kinds=["job_log"]))


def _ended(store: Store, job_id: str) -> Job:
    job: Job = until(
        f"{job_id} to end",
        lambda: (j := store.get_job(job_id)) is not None and j.status in JOB_FINISHED and j,
    )
    return job


def _one_ending(store: Store, job_id: str) -> str:
    """The job's events start once and end once; returns the kind of the end."""
    kinds = [e.kind for e in store.list_events(job_id=job_id, limit=100_000)]
    ends = [k for k in kinds if k in ("job_completed", "job_failed", "job_cancelled")]
    assert kinds.count("job_started") == 1 and len(ends) == 1, kinds
    return ends[0]


def _counts(server: Server, **expected: int) -> None:
    status = server.get("/api/training/status")
    assert status["running"] == [] and status["jobs"]["running"] == 0, status
    for key, n in expected.items():
        assert status["jobs"][key] == n, status


def test_a_restarted_server_adopts_the_orphan_and_its_cancel_stops_it(
    db: Store, slow_lm: FakeOpenAI, servers: Callable[[str], Server], pids: list[int]
) -> None:
    first = servers(db.url)
    r = first.post("/api/training/jobs", _job_request(slow_lm))
    assert r.status_code == 201, r.text
    job_id = r.json()["job"]["id"]
    pid = job_working(db, job_id)
    pids.append(pid)
    first.kill9()
    # The job's process outlives its server: it is the orphan the next server has to deal with.
    progress = len(db.list_events(job_id=job_id, kinds=["job_progress"], limit=100_000))
    until("the orphan to keep working", lambda: len(db.list_events(job_id=job_id, limit=100_000)) > progress)
    assert not _gone(pid)

    second = servers(db.url)
    until("the restarted server to adopt the orphan", lambda: _adopted(db, job_id))
    assert second.get(f"/api/training/jobs/{job_id}")["job"]["status"] == "running"
    r = second.post(f"/api/training/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["job"]["cancelRequested"], r.text
    job = _ended(db, job_id)
    assert job.status == "cancelled", job
    until("the orphan's process to stop", lambda: _gone(pid))
    assert _one_ending(db, job_id) == "job_cancelled"
    _counts(second, cancelled=1, failed=0, completed=0)


def test_a_running_server_adopts_the_orphan_of_a_killed_one_and_fails_it_when_it_dies(
    db: Store, slow_lm: FakeOpenAI, servers: Callable[[str], Server], pids: list[int]
) -> None:
    first = servers(db.url)
    job_id = first.post("/api/training/jobs", _job_request(slow_lm)).json()["job"]["id"]
    pid = job_working(db, job_id)
    pids.append(pid)
    # A second server on the same store, up before the first dies: no restart involved. While the
    # first lives, the job is the first one's to run, not the second's to adopt.
    other = servers(db.url)
    seen = len(db.list_events(job_id=job_id, limit=100_000))
    until("a few more events", lambda: len(db.list_events(job_id=job_id, limit=100_000)) > seen + 2)
    assert not _adopted(db, job_id)
    first.kill9()
    until("the other server to adopt the orphan", lambda: _adopted(db, job_id))
    os.kill(pid, signal.SIGKILL)  # now the orphan dies too; nobody reaps it
    job = _ended(db, job_id)
    assert job.status == "failed" and "interrupted" in (job.error or ""), job
    assert _gone(pid)
    assert _one_ending(db, job_id) == "job_failed"
    _counts(other, failed=1, cancelled=0, completed=0)


def test_a_supervisor_elsewhere_fails_a_job_whose_heartbeat_stopped(
    db: Store,
    slow_lm: FakeOpenAI,
    servers: Callable[[str], Server],
    pids: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = servers(db.url)
    job_id = first.post("/api/training/jobs", _job_request(slow_lm)).json()["job"]["id"]
    pid = job_working(db, job_id)
    pids.append(pid)
    first.kill9()
    os.kill(pid, signal.SIGKILL)  # the whole machine gone, as another host sees it
    monkeypatch.setenv(settings.JOB_HEARTBEAT_TIMEOUT_S, TIMEOUT_S)
    runner = jobs.JobRunner(db.url, host="another-host", autotrain=False).start()
    try:
        job = _ended(db, job_id)
    finally:
        runner.stop()
    assert job.status == "failed" and "interrupted" in (job.error or ""), job
    assert "heartbeat" in (job.error or "")
    assert _one_ending(db, job_id) == "job_failed"


@pytest.mark.parametrize("how", ["cancel", "given up"])
def test_a_job_process_with_no_runner_stops_when_the_store_says_so(
    db: Store, slow_lm: FakeOpenAI, how: str, pids: list[int]
) -> None:
    """Cancel works through the store: the job's process polls it, so nobody needs to be its parent.
    And a job a supervisor has given up on (failed ``interrupted``) stops working for nobody."""
    job = jobs.submit(db, _job_request(slow_lm))
    assert db.claim_job(socket.gethostname(), now_ms()) is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "trajforge.jobs", job.id, "--db", db.url],
        env={**os.environ, settings.JOB_HEARTBEAT_TIMEOUT_S: TIMEOUT_S},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pids.append(proc.pid)
    try:
        until("progress", lambda: db.list_events(job_id=job.id, kinds=["job_progress"], limit=1))
        if how == "cancel":
            assert jobs.cancel(db, job.id).cancel_requested
        else:
            assert db.finish_job(job.id, "failed", now_ms(), error="interrupted: test")
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job's process did not stop ({how})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = db.get_job(job.id)
    assert got is not None and got.pid == proc.pid  # the process records its own pid
    if how == "cancel":
        assert code == 130 and got.status == "cancelled"
        assert _one_ending(db, job.id) == "job_cancelled"
    else:
        assert got.status == "failed" and got.error == "interrupted: test"
        # The one ending is the supervisor's (finish_job writes it with the status); the job's
        # process, told it was given up on, adds none of its own.
        assert _one_ending(db, job.id) == "job_failed"


def test_a_pid_that_is_not_the_jobs_process_is_never_trusted(store: Store) -> None:
    """A reused pid (here: an unrelated live process) and a zombie are not the job's process: the
    jobs are failed ``interrupted``, and the unrelated process is neither adopted nor signalled."""
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # never waited for until the end
    try:
        until("the zombie", lambda: _gone(zombie.pid))
        host = socket.gethostname()
        reused = Job(
            status="running", host=host, pid=unrelated.pid, started_at=now_ms(), heartbeat_at=now_ms()
        )
        dead = Job(status="running", host=host, pid=zombie.pid, started_at=now_ms(), heartbeat_at=now_ms())
        for j in (reused, dead):
            store.add_job(j)
        store.update_job(reused.id, cancel_requested=True)  # a runner must not signal that pid
        runner = jobs.JobRunner(store.url, autotrain=False, grace_s=0.1)
        try:
            assert runner.recover() == 2
            runner.run_once()
            runner.run_once()
        finally:
            runner.stop()
        got = {j.id: j for j in store.list_jobs()}
        assert got[reused.id].status == "cancelled" and "ended" in (got[reused.id].error or "")
        assert got[dead.id].status == "failed" and "interrupted" in (got[dead.id].error or "")
        assert unrelated.poll() is None  # never signalled
    finally:
        unrelated.kill()
        unrelated.wait()
        zombie.wait()
