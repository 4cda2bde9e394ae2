"""The ``vast`` backend through a protocol-faithful fake of the Vast.ai API on loopback
(``tests/fakes/vast.py``): offers, the refusals at submit, provisioning, cancel, the budget, a
failure, a restart after kill -9, and the key kept out of everything stored. Every test that rents
ends with no live instance in the fake."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.fakes.sshd import sshd_session
from tests.fakes.vast import KEY, FakeVast
from tests.helpers import free_port, start_server, until
from tests.test_remote import remote_venv
from trajforge import jobs
from trajforge.cli import app as cli_app
from trajforge.records import JOB_FINISHED
from trajforge.server import create_app
from trajforge.store import Store, open_store

cli = CliRunner()
__all__ = ["remote_venv", "sshd_session"]  # fixtures, imported for pytest


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    with FakeVast(loading_s=0.2) as f:
        monkeypatch.setenv("TRAJFORGE_VAST_URL", f.url)
        monkeypatch.setenv("TRAJFORGE_VAST_API_KEY", KEY)
        yield f


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    url = str(tmp_path / "store.db")
    store = open_store(url)
    yield url, store
    store.close()


@pytest.fixture
def client(db: tuple[str, Store]) -> Iterator[TestClient]:
    with TestClient(create_app(db[1]), base_url="http://127.0.0.1") as c:
        yield c


def error(resp: Any) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    return body


def vast_job(**extra: Any) -> dict[str, Any]:
    return {"backend": "vast", "maxCost": 5.0, **extra}


def finished(store: Store, job_id: str, timeout: float = 90) -> Any:
    return until(
        f"{job_id} to end", lambda: (j := store.get_job(job_id)) and j.status in JOB_FINISHED and j, timeout
    )


def dump(store: Store, home: Path) -> str:
    """Everything the job left behind: records, events, logs, files under the home."""
    parts = [json.dumps([jobs.wire(j) for j in store.list_jobs(limit=1000)])]
    parts += [json.dumps([e.message for e in store.list_events(limit=100_000)])]
    parts += [json.dumps([e.data for e in store.list_events(limit=100_000)])]
    for path in home.rglob("*"):
        if path.is_file() and not path.name.endswith(".vast_key"):
            parts.append(path.read_bytes().decode(errors="replace"))
    return "\n".join(parts)


# --- offers and refusals --------------------------------------------------------------------------


def test_offers_api_filters_and_orders_cheapest_first(fake: FakeVast, client: TestClient) -> None:
    resp = client.get("/api/training/vast/offers", params={"maxDph": "1", "minGpuRam": "20"})
    assert resp.status_code == 200, resp.text
    offers = resp.json()["offers"]
    assert [o["id"] for o in offers] == [1002, 1001]
    assert offers[0]["dphTotal"] == 0.21 and offers[0]["gpuName"] == "RTX 3090"
    only = client.get("/api/training/vast/offers", params={"gpu": "H100_SXM"}).json()["offers"]
    assert [o["numGpus"] for o in only] == [8]
    # The query reached Vast.ai in its own terms: gpu_name with a space, GPU RAM in MB.
    bundles = [b for m, p, b in fake.requests if p == "/api/v0/bundles/"]
    assert bundles[0]["gpu_ram"] == {"gte": 20000} and bundles[0]["dph_total"] == {"lte": 1.0}
    assert bundles[1]["gpu_name"] == {"eq": "H100 SXM"}
    assert all(a == f"Bearer {KEY}" for a in fake.auth_seen)
    bad = client.get("/api/training/vast/offers", params={"minReliability": "2"})
    assert bad.status_code == 422 and error(bad)["field"] == "minReliability"


def test_offers_cli(fake: FakeVast) -> None:
    out = cli.invoke(cli_app, ["vast", "offers", "--max-dph", "0.3", "--json"])
    assert out.exit_code == 0, out.output
    assert [o["id"] for o in json.loads(out.stdout)["offers"]] == [1002]
    table = cli.invoke(cli_app, ["vast", "offers", "--gpu", "RTX_4090"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "RTX 4090" in table.output and "0.4200" in table.output
    bad = cli.invoke(cli_app, ["vast", "offers", "--num-gpus", "0"])
    assert bad.exit_code == 2 and "--num-gpus" in bad.output


def test_a_429_is_retried_honouring_retry_after(fake: FakeVast, client: TestClient) -> None:
    fake.throttle(3, retry_after="0.05")
    resp = client.get("/api/training/vast/offers")
    assert resp.status_code == 200 and len(resp.json()["offers"]) == 3
    assert len([p for _, p, _ in fake.requests if p == "/api/v0/bundles/"]) == 4


def test_without_a_key_every_vast_route_and_the_backend_name_the_setting(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAJFORGE_VAST_API_KEY", raising=False)
    for method, path in (
        ("GET", "/api/training/vast/offers"),
        ("GET", "/api/training/vast/jobs"),
        ("POST", "/api/training/vast/jobs"),
        ("GET", "/api/training/vast/jobs/job-x/budget"),
    ):
        resp = client.request(method, path, json={"maxCost": 1} if method == "POST" else None)
        assert resp.status_code == 400, (path, resp.text)
        assert "TRAJFORGE_VAST_API_KEY" in error(resp)["message"]
    backends = client.get("/api/training/backends").json()["backends"]
    assert backends["vast"]["available"] is False and "TRAJFORGE_VAST_API_KEY" in backends["vast"]["reason"]
    resp = client.post("/api/training/jobs", json=vast_job())
    assert resp.status_code == 400 and "TRAJFORGE_VAST_API_KEY" in error(resp)["message"]
    out = cli.invoke(cli_app, ["vast", "offers"])
    assert out.exit_code == 2 and "TRAJFORGE_VAST_API_KEY" in out.output


def test_a_rejected_key_is_a_400_naming_the_setting(
    fake: FakeVast, client: TestClient, monkeypatch: pytest.MonkeyPatch, db: tuple[str, Store]
) -> None:
    monkeypatch.setenv("TRAJFORGE_VAST_API_KEY", "not-the-key")
    assert client.get("/api/training/backends").json()["backends"]["vast"]["available"] is True
    for resp in (
        client.get("/api/training/vast/offers"),
        client.post("/api/training/vast/jobs", json=vast_job()),
        client.post("/api/training/jobs", json=vast_job()),
    ):
        assert resp.status_code == 400, resp.text
        assert error(resp)["field"] == "TRAJFORGE_VAST_API_KEY"
        assert "refused the API key" in error(resp)["message"] and "not-the-key" not in resp.text
    assert db[1].list_jobs() == [] and fake.live() == 0


def test_submit_refuses_no_offer_a_missing_budget_and_one_below_an_hour(
    fake: FakeVast, client: TestClient, db: tuple[str, Store]
) -> None:
    resp = client.post("/api/training/vast/jobs", json={"gpu": "A100", "maxDph": 0.5, "maxCost": 10})
    assert resp.status_code == 400 and error(resp)["field"] == "gpu"
    assert "gpu=A100, maxDph=0.5" in error(resp)["message"]
    resp = client.post("/api/training/vast/jobs", json={})
    assert resp.status_code == 400 and error(resp)["field"] == "maxCost"
    resp = client.post("/api/training/vast/jobs", json={"maxCost": 0.1})
    assert resp.status_code == 400 and error(resp)["field"] == "maxCost"
    assert "one hour" in error(resp)["message"] and "0.21" in error(resp)["message"]
    resp = client.post("/api/training/vast/jobs", json={"maxCost": 0.3, "offerId": 1001})
    assert (
        resp.status_code == 400
        and error(resp)["field"] == "maxCost"
        and "offer 1001" in error(resp)["message"]
    )
    resp = client.post("/api/training/vast/jobs", json={"maxCost": 3, "offerId": 999})
    assert resp.status_code == 400 and error(resp)["field"] == "offerId"
    resp = client.post("/api/training/vast/jobs", json={"maxCost": -1})
    assert resp.status_code == 422 and error(resp)["field"] == "maxCost"
    # The CLI: the same refusals, naming the flags.
    out = cli.invoke(
        cli_app, ["jobs", "start", "--backend", "vast", "--max-cost", "0.1", "--no-wait", "--db", db[0]]
    )
    assert out.exit_code == 2 and "--max-cost" in out.output and "one hour" in out.output
    out = cli.invoke(
        cli_app,
        [
            "jobs",
            "start",
            "--backend",
            "vast",
            "--gpu",
            "A100",
            "--max-cost",
            "9",
            "--no-wait",
            "--db",
            db[0],
        ],
    )
    assert out.exit_code == 2 and "--gpu" in out.output
    assert db[1].list_jobs() == [] and fake.live() == 0


# --- jobs that rent -------------------------------------------------------------------------------


@pytest.fixture
def runner(db: tuple[str, Store], fake: FakeVast) -> Iterator[jobs.JobRunner]:
    r = jobs.JobRunner(db[0], poll_s=0.2, grace_s=20).start()
    yield r
    r.stop()
    assert fake.live() == 0


def test_cancel_while_provisioning_destroys_the_instance(
    fake: FakeVast, client: TestClient, db: tuple[str, Store], runner: jobs.JobRunner, tmp_path: Path
) -> None:
    fake.loading_s = 3600  # it never gets past loading
    job = client.post("/api/training/vast/jobs", json=vast_job()).json()["job"]
    until("the instance to be rented", lambda: fake.live() == 1)
    until(
        "the instance id on the job",
        lambda: ((db[1].get_job(job["id"]).output or {}).get("vast") or {}).get("instanceId"),
    )
    budget = client.get(f"/api/training/vast/jobs/{job['id']}/budget").json()["budget"]
    assert budget["maxCost"] == 5.0 and budget["dphTotal"] == 0.21 and budget["running"] is True
    assert 0 <= budget["spent"] < 5.0 and budget["remaining"] == pytest.approx(5.0 - budget["spent"])
    label = next(iter(fake.instances.values()))["label"]
    assert label == job["id"]
    resp = client.post(f"/api/training/vast/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["job"]["cancelRequested"] is True
    done = finished(db[1], job["id"])
    assert done.status == "cancelled" and fake.live() == 0
    assert done.output["vast"]["destroyedAt"] is not None
    logs = client.get(f"/api/training/vast/jobs/{job['id']}/logs").json()
    assert any("destroyed Vast.ai instance" in e["message"] for e in logs["events"])
    listed = client.get("/api/training/vast/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert KEY not in dump(db[1], tmp_path)


def test_the_budget_stops_the_job_with_its_reason(
    fake: FakeVast, client: TestClient, db: tuple[str, Store], runner: jobs.JobRunner, tmp_path: Path
) -> None:
    # The offer says $0.21/h; the instance bills $3600/h (storage, bandwidth): $1 lasts a second.
    fake.loading_s = 3600
    fake.instance_dph = 3600.0
    job = client.post("/api/training/vast/jobs", json=vast_job(maxCost=1.0)).json()["job"]
    done = finished(db[1], job["id"])
    assert done.status == "cancelled", done
    assert done.error.startswith("budget of $1 reached after") and "destroyed" in done.error
    assert fake.live() == 0
    budget = client.get(f"/api/training/vast/jobs/{job['id']}/budget").json()["budget"]
    assert budget["spent"] >= 1.0 and budget["remaining"] == 0 and budget["running"] is False
    assert KEY not in dump(db[1], tmp_path)


def test_an_instance_that_fails_to_start_fails_the_job_and_is_destroyed(
    fake: FakeVast, client: TestClient, db: tuple[str, Store], runner: jobs.JobRunner
) -> None:
    fake.start_state = "exited"
    job = client.post("/api/training/vast/jobs", json=vast_job()).json()["job"]
    done = finished(db[1], job["id"])
    assert done.status == "failed" and "exited instead of running" in done.error
    assert fake.live() == 0


def test_a_killed_job_leaves_its_instance_to_the_next_runner(
    fake: FakeVast, db: tuple[str, Store], tmp_path: Path
) -> None:
    """kill -9 of the runner and its job mid-provisioning: a new runner starting finds the job's
    process gone, fails the job, and destroys the instance labelled with it."""
    url, store = db
    fake.loading_s = 3600
    job = jobs.submit(store, vast_job())
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "trajforge.cli", "jobs", "worker", "--db", url],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    try:
        until("the instance", lambda: fake.live() == 1, timeout=90)
        until(
            "its id on the job",
            lambda: ((store.get_job(job.id).output or {}).get("vast") or {}).get("instanceId"),
        )
        pid = until("the job's pid", lambda: store.get_job(job.id).pid)
        os.kill(worker.pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        worker.wait()
        until("the job process to be gone", lambda: not _alive(pid))
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
    assert fake.live() == 1
    # A new server on the store: its runner supervises, then calls the runner hooks, before the
    # server answers at all.
    port = free_port()
    server = start_server(port, url, tmp_path / "server.log")
    try:
        assert fake.live() == 0
        after = store.get_job(job.id)
        assert after.status == "failed" and "interrupted" in after.error
        reaped = store.list_events(job_id=job.id, kinds=["job_log"], limit=100)
        assert any("left behind" in e.message for e in reaped)
        budget = httpx.get(f"http://127.0.0.1:{port}/api/training/vast/jobs/{job.id}/budget").json()["budget"]
        assert budget["running"] is False and budget["instanceId"] is not None
    finally:
        server.terminate()
        server.wait(30)
    assert KEY not in dump(store, tmp_path)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


# --- the dashboard --------------------------------------------------------------------------------


@pytest.mark.slow
def test_dashboard_offers_vast_with_an_offer_picker_and_shows_the_spend(
    fake: FakeVast, db: tuple[str, Store]
) -> None:
    from tests.test_dashboard import XSS, LiveServer, _need_browser

    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    fake.loading_s = 3600
    fake.offers[1]["gpu_name"] = f"RTX 3090{XSS}"  # what a host names its GPU is not ours to trust
    store = db[1]
    with sync_playwright() as p, LiveServer(store) as srv:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        errors: list[str] = []
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(srv.url + "/fine-tuning")
            assert page.locator("[data-only=vast]").first.is_hidden()
            page.select_option("#backend", "vast")
            expect(page.locator("#offer-picker option")).to_have_count(4)
            texts = page.locator("#offer-picker option").all_inner_texts()
            assert texts[1].startswith("1x RTX 3090<script>") and "$0.210/h" in texts[1]
            page.fill("#job-form input[name=maxDph]", "0.3")
            page.dispatch_event("#job-form input[name=maxDph]", "change")
            expect(page.locator("#offer-picker option")).to_have_count(2)
            page.select_option("#offer-picker", "1002")
            page.fill("#job-form input[name=maxCost]", "4")
            page.click("#job-form button[type=submit]")
            until("the instance", lambda: fake.live() == 1)
            [job] = store.list_jobs()
            assert job.request["offerId"] == 1002 and job.request["maxCost"] == 4
            assert "gpu" not in job.request and "host" not in job.request
            row = page.locator(f'#jobs tr[data-job="{job.id}"]')
            row.locator(".job-where", has_text="1x RTX 3090").wait_for(timeout=30_000)
            spend = row.locator(".job-spend")
            assert "of $4" in spend.inner_text()
            row.locator(".job-phase", has_text="provisioning").wait_for(timeout=30_000)
            page.screenshot(path=str(_shots() / "fine-tuning-vast.png"), full_page=True)
            row.locator("button.cancel").click()
            page.wait_for_selector(f'#jobs tr[data-job="{job.id}"][data-status="cancelled"]', timeout=60_000)
            assert page.evaluate("window.__xss") is None
        finally:
            browser.close()
        assert not errors, errors
    assert fake.live() == 0


def _shots() -> Path:
    from tests.test_dashboard import SHOTS

    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


# --- end to end: the fake's instances are a real OpenSSH server on loopback ----------------------


@dataclass
class Remote:
    fake: FakeVast
    url: str
    store: Store
    home: Path
    sshd: Any
    request: dict[str, Any]


@pytest.fixture
def e2e(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sshd_session: Any,
    remote_venv: Path,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Remote]:
    from tests.helpers import make_support_corpus
    from trajforge import datasets
    from trajforge.records import WriteBatch

    url = str(tmp_path / "store.db")
    store = open_store(url)
    for t in make_support_corpus(scenarios=6):
        store.write(WriteBatch.from_trajectory(t))
    ds = datasets.build(
        store, datasets.BuildRequest(format="sft", eval_fraction=0.3, seed=1), root=tmp_path / "ds"
    )
    # The instance's SSH daemon takes the keys attached to it: the fake appends them to the sshd's.
    with FakeVast(
        sshd_session.host,
        sshd_session.port,
        loading_s=0.5,
        authorized_keys=sshd_session.root / "authorized_keys",
    ) as fake:
        monkeypatch.setenv("TRAJFORGE_VAST_URL", fake.url)
        monkeypatch.setenv("TRAJFORGE_VAST_API_KEY", KEY)
        request = {
            "backend": "vast",
            "maxCost": 5.0,
            "gpu": "RTX_3090",
            "model": f"local:{tiny_model_dir}",
            "datasetId": ds.id,
            "batchSize": 2,
            "remoteVenv": str(remote_venv),
            # One remote work dir per session (the ssh tests' too): its wheels and base models stay warm.
            "remoteDir": str(tmp_path_factory.getbasetemp() / "remote-work"),
        }
        yield Remote(fake, url, store, tmp_path / "home", sshd_session, request)
        assert fake.live() == 0
    store.close()


def _trained(store: Store, job_id: str) -> bool:
    return any(e.message.startswith("step ") for e in store.list_events(job_id=job_id, limit=10_000))


@pytest.mark.slow
def test_a_vast_job_from_the_cli_trains_on_the_instance_and_registers_a_model(
    e2e: Remote, tiny_model_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trajforge import models
    from trajforge.train.ssh import known_hosts_file

    flags = []
    for k, v in {**e2e.request, "iterations": 4}.items():
        flags += ["--" + "".join("-" + c.lower() if c.isupper() else c for c in k), str(v)]
    out = cli.invoke(cli_app, ["jobs", "start", *flags, "--db", e2e.url], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    [job] = e2e.store.list_jobs()
    assert job.status == "completed" and job.backend == "vast" and job.kind == "vast"
    phases = [e.phase for e in e2e.store.list_events(job_id=job.id, limit=10_000) if e.kind == "job_progress"]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order[:4] == ["provisioning", "uploading", "training", "downloading"], order
    model = models.get(e2e.store, job.output["modelId"])
    assert model.backend == "vast"
    m = model.metrics
    assert (
        m["lineage"]["gpu"] == "RTX 3090" and m["lineage"]["instanceId"] == job.output["vast"]["instanceId"]
    )
    assert m["phaseSeconds"]["provisioning"] > 0 and m["vast"]["destroyedAt"] is not None
    assert 0 < m["cost"] == job.output["vast"]["spent"] < 5.0
    # The key made for the job was attached to the instance; the instance is gone, and so is its
    # host key (Vast.ai gives its SSH address to another instance later).
    [attach] = [b for meth, p, b in e2e.fake.requests if p.endswith("/ssh/")]
    assert attach["ssh_key"].startswith("ecdsa-sha2-nistp256 ") and attach["ssh_key"].endswith(job.id)
    assert e2e.fake.live() == 0
    assert f"]:{e2e.sshd.port} " not in known_hosts_file().read_text()
    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), model.adapter_path
    )
    assert any("lora_A" in name for name, _ in peft.named_parameters())
    assert KEY not in dump(e2e.store, e2e.home) + out.output


@pytest.mark.slow
def test_cancel_mid_training_stops_it_and_destroys_the_instance(e2e: Remote) -> None:
    runner = jobs.JobRunner(e2e.url, home=e2e.home, autotrain=False, grace_s=60).start()
    try:
        with TestClient(create_app(e2e.store), base_url="http://127.0.0.1") as client:
            job = client.post("/api/training/vast/jobs", json={**e2e.request, "iterations": 5000}).json()[
                "job"
            ]
            until("training steps", lambda: _trained(e2e.store, job["id"]), timeout=300)
            assert e2e.fake.live() == 1
            assert client.post(f"/api/training/vast/jobs/{job['id']}/cancel").status_code == 200
            done = finished(e2e.store, job["id"], timeout=120)
            budget = client.get(f"/api/training/vast/jobs/{job['id']}/budget").json()["budget"]
    finally:
        runner.stop()
    assert done.status == "cancelled" and e2e.fake.live() == 0
    assert budget["running"] is False and 0 < budget["spent"] < 5.0
    assert KEY not in dump(e2e.store, e2e.home)


@pytest.mark.slow
def test_a_failing_remote_run_fails_the_job_and_destroys_the_instance(e2e: Remote) -> None:
    # Every row is longer than 16 tokens: the remote run refuses to train on nothing.
    runner = jobs.JobRunner(e2e.url, home=e2e.home, autotrain=False, grace_s=60).start()
    try:
        job = jobs.submit(e2e.store, {**e2e.request, "iterations": 2, "maxLength": 16})
        done = finished(e2e.store, job.id, timeout=300)
    finally:
        runner.stop()
    assert done.status == "failed" and "maxLength" in done.error, done.error
    assert e2e.fake.live() == 0 and done.output["vast"]["destroyedAt"] is not None


@pytest.mark.slow
def test_the_budget_stops_a_training_run(e2e: Remote) -> None:
    # $0.25 pays for an hour of the $0.21/h offer, but the instance bills $30/h: 30 s of it.
    e2e.fake.instance_dph = 30.0
    runner = jobs.JobRunner(e2e.url, home=e2e.home, autotrain=False, grace_s=60).start()
    try:
        job = jobs.submit(e2e.store, {**e2e.request, "iterations": 5000, "maxCost": 0.25})
        done = finished(e2e.store, job.id, timeout=300)
    finally:
        runner.stop()
    assert done.status == "cancelled", done.error
    assert done.error.startswith("budget of $0.25 reached after") and "destroyed" in done.error
    assert e2e.fake.live() == 0
    assert vast_budget(done)["spent"] >= 0.25


def vast_budget(job: Any) -> dict[str, Any]:
    from trajforge.train import vast

    return vast.budget(job)
