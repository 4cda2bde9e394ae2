"""The job queue, runner and native jobs, through the real ASGI app with a runner that spawns real
job processes, against a deterministic task model on loopback."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import trajforge
from tests.fakes import task_lm
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import job_working, until
from trajforge import jobs
from trajforge.errors import InvalidInput, NotFound, Unavailable
from trajforge.records import Job, now_ms
from trajforge.server import create_app
from trajforge.store import Store

pytestmark = pytest.mark.slow


def _fill(store: Store, n: int = 30) -> None:
    task_lm.fill_store(store, n)


def _wait(client: TestClient, job_id: str, until: tuple[str, ...], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/training/jobs/{job_id}").json()["job"]
        if job["status"] in until:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {until}: {job}")


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    _fill(store)
    with TestClient(create_app(store, run_jobs=True), base_url="http://127.0.0.1") as c:
        yield c


def test_a_native_job_runs_end_to_end(client: TestClient, task_server: FakeOpenAI, store: Store) -> None:
    r = client.post(
        "/api/training/jobs",
        json={
            "backend": "native",
            "optimizer": "bootstrap-fewshot",
            "model": "task",
            "baseUrl": task_server.base_url,
        },
    )
    assert r.status_code == 201, r.text
    job = _wait(client, r.json()["job"]["id"], ("completed", "failed"))
    assert job["status"] == "completed", job
    job = until(  # the runner reaps the process next
        "the runner to reap the job's process",
        lambda: (
            (j := client.get(f"/api/training/jobs/{job['id']}").json()["job"])["exitCode"] is not None and j
        ),
        timeout=10,
    )
    assert job["progress"] == 1.0 and job["exitCode"] == 0 and job["datasetId"]
    [art] = job["output"]["artifacts"]
    assert art["task"] == "support_reply" and art["promoted"] and art["score"] > art["baselineScore"]
    prompt = trajforge.prompts.get("support_reply", "default")
    assert prompt.version == art["version"] and prompt.demos
    events = client.get(f"/api/training/jobs/{job['id']}/events?follow=false").text
    kinds = [line.split(": ", 1)[1] for line in events.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "job_started" and kinds[-1] == "job_completed" and "job_progress" in kinds
    assert Path(job["logPath"]).read_text().count("optimize") > 0
    listed = client.get("/api/training/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    status = client.get("/api/training/status").json()
    assert status["jobs"]["completed"] == 1 and status["trajectoryCount"] == 30
    assert client.post(f"/api/training/jobs/{job['id']}/cancel").status_code == 409


def test_cancel_stops_a_running_job(client: TestClient, store: Store) -> None:
    def slow(messages: list[dict], request: dict) -> str:
        time.sleep(0.3)
        return task_lm.answer(messages, request)

    with FakeOpenAI(slow) as server:
        job_id = client.post(
            "/api/training/jobs", json={"model": "task", "baseUrl": server.base_url, "iterations": 50}
        ).json()["job"]["id"]
        running = _wait(client, job_id, ("running",))
        assert running["status"] == "running"
        # Cancelled once it works (its process started, its SIGTERM handler set), not after a guess.
        pid = job_working(store, job_id)
        assert client.post(f"/api/training/jobs/{job_id}/cancel").json()["job"]["cancelRequested"]
        job = _wait(client, job_id, ("cancelled", "failed", "completed"), timeout=30)
        assert job["status"] == "cancelled", job
        # The job records its end before its process exits; the runner then reaps it.
        until(
            "the runner to reap the cancelled job's process",
            lambda: (j := store.get_job(job_id)) is not None and j.exit_code is not None,
            timeout=15,
        )
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_killed_job_process_fails_the_job(client: TestClient, store: Store) -> None:
    def slow(messages: list[dict], request: dict) -> str:
        time.sleep(0.3)
        return task_lm.answer(messages, request)

    with FakeOpenAI(slow) as server:
        job_id = client.post("/api/training/jobs", json={"model": "task", "baseUrl": server.base_url}).json()[
            "job"
        ]["id"]
        _wait(client, job_id, ("running",))
        pid = until("the job's pid", lambda: (j := store.get_job(job_id)) is not None and j.pid, timeout=20)
        os.kill(pid, signal.SIGKILL)
        job = _wait(client, job_id, ("failed", "cancelled", "completed"), timeout=30)
    assert (
        job["status"] == "failed"
        and job["exitCode"] == -signal.SIGKILL
        and "exited with code" in job["error"]
    )


def test_submit_validates_before_queueing(store: Store) -> None:
    with pytest.raises(Unavailable) as err:
        jobs.submit(store, {"backend": "mlx"})  # not on this Linux machine
    assert err.value.field == "backend" and err.value.status == 400 and "macOS" in err.value.message
    with pytest.raises(InvalidInput) as bad:
        jobs.submit(store, {"backend": "cpu", "batchSize": 0})
    assert bad.value.field == "batchSize"
    with pytest.raises(InvalidInput) as bad:
        jobs.submit(store, {"backend": "cpu", "learningRate": "fast"})
    assert bad.value.field == "learningRate"
    with pytest.raises(InvalidInput):
        jobs.submit(store, {"backend": "tpu"})
    with pytest.raises(InvalidInput):
        jobs.submit(store, {"optimizer": "magic"})
    with pytest.raises(NotFound):
        jobs.submit(store, {"datasetId": "dataset-nope"})
    assert store.list_jobs() == []
    pending = jobs.submit(store, {})
    assert jobs.cancel(store, pending.id).status == "cancelled"
    assert [e.kind for e in store.list_events(job_id=pending.id)] == ["job_cancelled"]


def test_runner_fails_jobs_left_running_by_a_dead_process(store: Store) -> None:
    dead = Job(
        status="running",
        host=socket.gethostname(),
        pid=2**22 + 12345,
        started_at=now_ms(),
        heartbeat_at=now_ms(),
    )
    stale = Job(
        status="running",
        host="another-host",
        pid=1,
        started_at=now_ms() - 3_600_000,
        heartbeat_at=now_ms() - 3_600_000,
    )
    alive = Job(status="running", host="another-host", pid=1, started_at=now_ms(), heartbeat_at=now_ms())
    for j in (dead, stale, alive):
        store.add_job(j)
    runner = jobs.JobRunner(store.url)
    try:
        assert runner.recover() == 2
    finally:
        runner.stop()
    got = {j.id: j for j in store.list_jobs()}
    assert got[dead.id].status == "failed" and "interrupted" in (got[dead.id].error or "")
    assert got[stale.id].status == "failed" and got[alive.id].status == "running"


def test_concurrent_claims_never_take_a_job_twice(store: Store) -> None:
    for _ in range(12):
        store.add_job(Job())
    taken: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        while (job := store.claim_job("h", now_ms())) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 12 and len(set(taken)) == 12
    assert all(j.status == "running" for j in store.list_jobs())


def test_api_refuses_unavailable_backends_with_400(client: TestClient) -> None:
    r = client.post("/api/training/jobs", json={"backend": "cuda"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "backend"
    assert client.post("/api/training/jobs", json={"backend": "native", "iterations": 0}).status_code == 422
    backends = client.get("/api/training/backends").json()["backends"]
    assert backends["native"]["available"] and backends["cpu"]["available"]
    assert not backends["mlx"]["available"] and "macOS" in backends["mlx"]["reason"]
    assert not backends["cuda"]["available"] and "CUDA" in backends["cuda"]["reason"]


def test_auto_training_fires_in_a_running_server(
    store: Store, task_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trajforge import autotrain

    monkeypatch.setenv("TRAJFORGE_LM_BASE_URL", task_server.base_url)
    monkeypatch.setenv("TRAJFORGE_LM_MODEL", "task")
    autotrain.set_config(store, {"threshold": 20, "cooldownHours": 12})
    _fill(store, 30)
    with TestClient(create_app(store, run_jobs=True), base_url="http://127.0.0.1") as client:
        # The runner's start-up bootstrap: 30 ≥ 20 and no prompt yet.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = client.get("/api/training/jobs").json()["jobs"]
            if listed and listed[0]["status"] in ("completed", "failed"):
                break
            time.sleep(0.3)
        assert listed and listed[0]["status"] == "completed", listed
        assert listed[0]["request"]["autotrain"] == "30 new trajectories"
        assert trajforge.prompts.get("support_reply", "d").version == 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the next check settles the counter
            tasks = {t["task"]: t for t in client.get("/api/training/auto/status").json()["tasks"]}
            if tasks["support_reply"]["pendingJobId"] is None:
                break
            time.sleep(0.3)
        assert tasks["support_reply"]["completedSinceLastRun"] == 0 and tasks["support_reply"]["lastRunAt"]


def _model_folder(path: Path, *, weights: bool = True) -> Path:
    """A transformers folder's shape: what the submit check looks at (nothing is loaded)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    if weights:
        (path / "model.safetensors").write_bytes(b"\0" * 8)
    return path


def _hub_cache(root: Path, repo_id: str) -> Path:
    """A Hugging Face cache holding ``repo_id``, laid out as huggingface_hub lays it out."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    _model_folder(repo / "snapshots" / ("0" * 40))
    return root


def test_submit_refuses_a_model_that_cannot_load_here(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(_hub_cache(tmp_path / "hf", "acme/tiny-llama")))
    monkeypatch.delenv("TRAJFORGE_LM_BASE_URL", raising=False)
    no_weights = _model_folder(tmp_path / "no-weights", weights=False)
    refused = [
        ({"backend": "cpu", "model": "llama-3.2-3b"}, "not in the local Hugging Face cache"),
        ({"backend": "cpu", "model": "acme/not-downloaded"}, "not in the local Hugging Face cache"),
        ({"backend": "cpu", "model": "local:/etc"}, "no config.json"),
        ({"model": "local:/etc"}, "no config.json"),
        ({"model": f"local:{tmp_path / 'nowhere'}"}, "is not a folder"),
        ({"backend": "cpu", "model": f"local:{no_weights}"}, "has no weights"),
        ({"backend": "cpu", "model": str(no_weights)}, "has no weights"),
        ({"backend": "cpu", "model": "bundled:llama-3.2-3b"}, "no bundled model"),
        ({"backend": "cpu", "model": "../nowhere/at-all"}, "not a bundled:, local: or Hugging Face model"),
        ({"model": "llama3.2"}, "no baseUrl is given"),
    ]
    for request, why in refused:
        with pytest.raises(Unavailable) as err:
            jobs.submit(store, request)
        assert err.value.field == "model" and err.value.status == 400, request
        assert why in err.value.message, (request, err.value.message)
        # … and says what would work.
        assert "bundled:smollm2-135m" in err.value.message and "local:<dir>" in err.value.message
    assert store.list_jobs() == []
    folder = _model_folder(tmp_path / "ok")
    accepted = [
        {"backend": "cpu", "model": "bundled:smollm2-135m"},
        {"backend": "cpu", "model": f"local:{folder}"},
        {"backend": "cpu", "model": str(folder)},
        {"backend": "cpu", "model": "acme/tiny-llama"},  # in the cache: loads offline
        {"model": f"local:{folder}"},
        {"model": "llama3.2", "baseUrl": "http://127.0.0.1:11434/v1"},
        {},
    ]
    for request in accepted:
        assert jobs.submit(store, request).status == "pending", request


def test_api_and_cli_refuse_a_model_that_cannot_load_with_400_naming_it(client: TestClient) -> None:
    from typer.testing import CliRunner

    from trajforge.cli import app

    for body in ({"backend": "cpu", "model": "llama-3.2-3b"}, {"model": "local:/etc"}):
        r = client.post("/api/training/jobs", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["field"] == "model" and "local:<dir>" in error["message"], error
    assert client.get("/api/training/jobs").json()["jobs"] == []
    db = client.app.state.store.url  # type: ignore[attr-defined]
    r = CliRunner().invoke(
        app, ["jobs", "start", "--db", db, "--backend", "cpu", "--model", "llama-3.2-3b", "--no-wait"]
    )
    assert r.exit_code == 2 and "--model" in r.output and "bundled:smollm2-135m" in r.output, r.output
    assert client.get("/api/training/jobs").json()["jobs"] == []
