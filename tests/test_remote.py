"""The ``ssh`` backend against a real OpenSSH server on loopback (:mod:`tests.fakes.sshd`): a real
upload, a real training run of the tiny model through our entry point on the "remote" (this
machine's CPU), live progress events, a real download and a registered model whose adapter loads
with PEFT; cancel, a failing run, and the bad-input errors, each naming its option.

The remote venv is a throwaway venv whose ``.pth`` points at the dev venv's site-packages (torch,
transformers, TRL are importable there without installing them again); the job installs its own
trajforge wheel into it with ``--no-deps`` (its own site-packages come first), never into the dev
venv. It is made once per session, so after the first job it is "warm".
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.fakes.sshd import Sshd, keygen, sshd_session
from tests.helpers import free_port, make_support_corpus
from trajforge import datasets, jobs, models
from trajforge.errors import InvalidInput
from trajforge.records import Job, WriteBatch
from trajforge.server import create_app
from trajforge.store import Store, open_store
from trajforge.train import backends, remote
from trajforge.train.ssh import Host

pytestmark = pytest.mark.slow
__all__ = ["sshd_session"]  # the fixture, imported for pytest


@pytest.fixture(scope="session")
def remote_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv for the remote side that sees the dev venv's packages (and not its editable trajforge:
    a .pth line adds a folder, it does not process the folder's own .pth files)."""
    root = tmp_path_factory.mktemp("remote-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python3*/site-packages"))
    (site / "trajforge-test-dev.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


@dataclass
class Setup:
    db: str
    home: Path
    dataset_id: str
    server: Sshd
    venv: Path
    remote_dir: Path
    model: str

    def request(self, **extra: Any) -> dict[str, Any]:
        return {
            "backend": "ssh",
            "host": self.server.spec,
            "identity": str(self.server.identity),
            "remoteVenv": str(self.venv),
            "remoteDir": str(self.remote_dir),
            "model": self.model,
            "datasetId": self.dataset_id,
            "batchSize": 2,
            **extra,
        }

    def store(self) -> Store:
        return open_store(self.db)


@pytest.fixture
def setup(
    tmp_path: Path,
    sshd_session: Sshd,
    remote_venv: Path,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    db = str(tmp_path / "store.db")
    store = open_store(db)
    try:
        for t in make_support_corpus(scenarios=6):
            store.write(WriteBatch.from_trajectory(t))
        ds = datasets.build(
            store, datasets.BuildRequest(format="sft", eval_fraction=0.3, seed=1), root=tmp_path / "datasets"
        )
    finally:
        store.close()
    # One remote work dir per session: its cached wheels and base models make later jobs warm.
    remote_dir = tmp_path_factory.getbasetemp() / "remote-work"
    yield Setup(
        db, tmp_path / "home", ds.id, sshd_session, remote_venv, remote_dir, f"local:{tiny_model_dir}"
    )


def _wait(store: Store, job_id: str, timeout: float = 300) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get(store, job_id)
        if job.status in ("completed", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job still {job.status} ({job.phase}): {job}"
        time.sleep(0.2)


def _entry_processes(job_id: str) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", f"remote_entry --job-dir .*{job_id}"], capture_output=True, text=True
    )
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def _assert_adapter_loads(adapter: Path, base_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_A" in name for name, _ in peft.named_parameters())


# --- the whole job, through the runner ----------------------------------------------------------


def test_an_ssh_job_trains_on_the_host_streams_progress_and_registers_the_model(
    setup: Setup, tiny_model_dir: Path
) -> None:
    store = setup.store()
    runner = jobs.JobRunner(setup.db, home=setup.home, autotrain=False, grace_s=60).start()
    try:
        with TestClient(create_app(setup.db), base_url="http://127.0.0.1") as client:
            answer = client.post("/api/training/jobs", json=setup.request(iterations=6))
        assert answer.status_code == 201, answer.text
        job = jobs.get(store, answer.json()["job"]["id"])
        assert job.kind == "remote" and job.backend == "ssh" and job.request["host"] == setup.server.spec
        final = _wait(store, job.id)
        assert final.status == "completed", final.error
        events = store.list_events(job_id=job.id, limit=10_000)
    finally:
        runner.stop()
    phases = [e.phase for e in events if e.kind == "job_progress"]
    # The phases in order, each seen while the job ran (the done event is the last).
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order[:3] == ["uploading", "training", "downloading"], order
    steps = [e.message for e in events if e.phase == "training" and e.message.startswith("step ")]
    assert steps and "loss" in steps[-1] and "tok/s" in steps[-1], steps
    assert all(e.ts <= (final.finished_at or 0) for e in events if e.phase == "training")

    output = final.output or {}
    model = models.get(store, output["modelId"])
    assert model.backend == "ssh" and model.dataset_id == setup.dataset_id
    m = model.metrics
    assert m["steps"] == 6 and m["host"] == str(Host.parse(setup.server.spec))
    assert m["gpu"] == "cpu" and m["device"] == "cpu"
    assert m["lineage"]["dataset"] == setup.dataset_id and m["lineage"]["base"] == setup.model
    assert set(m["phaseSeconds"]) >= {"uploading", "training", "downloading", "teardown"}
    assert "evalLoss" in m and m["options"]["host"] == setup.server.spec
    # The adapter came back (its sha256 checked) where a local job puts it, and loads with PEFT.
    adapter = Path(output["adapterPath"])
    assert adapter.parent.parent == setup.home / "models"
    _assert_adapter_loads(adapter, tiny_model_dir)
    # The job's folder on the host is gone; the venv, wheel and base model stay for the next job.
    assert not (setup.remote_dir / "jobs" / job.id).exists()
    assert list((setup.remote_dir / "wheels").glob("trajforge-*.whl"))
    assert list((setup.remote_dir / "models").glob("*/.complete"))
    assert not _entry_processes(job.id)
    store.close()


def test_train_on_host_is_callable_directly_with_lineage_and_phase_times(setup: Setup) -> None:
    """What the vast backend calls: its provisioning time and cost end up in the model's metrics."""
    store = setup.store()
    try:
        job = jobs.submit(store, setup.request(iterations=2))
        opts = remote.RemoteOptions.from_stored(job.request)
        host = Host.parse(opts.host, opts.identity)
        seen: list[tuple[float, str, str]] = []
        out = remote.train_on_host(
            store,
            job,
            opts,
            host,
            lambda p, ph, msg: seen.append((p, ph, msg)),
            setup.home,
            lambda: False,
            backend="vast",
            lineage={"cost": 0.0123, "instance": 42},
            phase_times={"provisioning": 3.5},
        )
        m = out["metrics"]
        assert m["phaseSeconds"]["provisioning"] == 3.5 and m["lineage"]["cost"] == 0.0123
        assert m["lineage"]["backend"] == "vast" and models.get(store, out["modelId"]).backend == "vast"
        progress = [p for p, _, _ in seen]
        assert progress == sorted(progress) and progress[-1] == 1.0
    finally:
        store.close()


# --- cancel and failure --------------------------------------------------------------------------


def test_cancel_stops_the_remote_run_fetches_its_log_and_tears_down(setup: Setup) -> None:
    store = setup.store()
    runner = jobs.JobRunner(setup.db, home=setup.home, autotrain=False, grace_s=60).start()
    try:
        job = jobs.submit(store, setup.request(iterations=5000))
        deadline = time.monotonic() + 240
        while not any(e.message.startswith("step ") for e in store.list_events(job_id=job.id, limit=10_000)):
            assert time.monotonic() < deadline, jobs.get(store, job.id)
            assert jobs.get(store, job.id).status in ("pending", "running"), jobs.get(store, job.id).error
            time.sleep(0.2)
        assert _entry_processes(job.id)  # it is running on the host now
        jobs.cancel(store, job.id)
        final = _wait(store, job.id, timeout=60)
    finally:
        runner.stop()
    assert final.status == "cancelled"
    assert not _entry_processes(job.id)
    assert not (setup.remote_dir / "jobs" / job.id).exists()
    kept = remote.leftovers_dir(job.id, setup.home)
    assert (kept / "remote.log").exists()
    # The run saved its adapter so far on the way out, and it came back.
    assert (kept / "checkpoint" / "adapter_model.safetensors").exists()
    assert int((kept / "checkpoint" / "step").read_text()) >= 1
    store.close()


def test_a_failing_remote_run_fails_the_job_with_the_remote_error(setup: Setup, tmp_path: Path) -> None:
    """A base model whose weights are garbage: it passes the offline checks, and fails to load on
    the host; the job's error carries the remote's own message."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in Path(setup.model.split(":", 1)[1]).iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    store = setup.store()
    try:
        job = jobs.submit(store, {**setup.request(iterations=2), "model": f"local:{broken}"})
        store.update_job(job.id, status="running")
        with pytest.raises(remote.RemoteError) as err:
            remote.run(store, jobs.get(store, job.id), lambda *a: None, setup.home)
    finally:
        store.close()
    message = str(err.value)
    assert "failed (exit 1)" in message and "safetensors" in message.lower(), message
    assert (remote.leftovers_dir(job.id, setup.home) / "remote.log").exists()
    assert not (setup.remote_dir / "jobs" / job.id).exists()
    assert not _entry_processes(job.id)


# --- bad input, each naming its option -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"host": "no-user-here"}, "host"),
        ({"host": "me@bad host"}, "host"),
        ({"host": "me@127.0.0.1:99999"}, "host"),
        ({"identity": "/nonexistent/key"}, "identity"),
        ({"remoteDir": "a\nrm -rf ~"}, "remoteDir"),
        ({"remotePython": "python3\x00"}, "remotePython"),
    ],
)
def test_bad_options_are_refused_at_submit_naming_the_option(
    setup: Setup, change: dict[str, Any], field: str
) -> None:
    store = setup.store()
    try:
        with pytest.raises(InvalidInput) as err:
            jobs.submit(store, {**setup.request(), **change})
        assert err.value.field == field
        assert not store.list_jobs()
    finally:
        store.close()


def _run_direct(setup: Setup, **change: Any) -> InvalidInput:
    store = setup.store()
    try:
        job = jobs.submit(store, {**setup.request(iterations=1), **change})
        with pytest.raises(InvalidInput) as err:
            remote.run(store, job, lambda *a: None, setup.home)
        return err.value
    finally:
        store.close()


def test_a_refused_key_fails_naming_identity(setup: Setup, tmp_path: Path) -> None:
    other = keygen(tmp_path / "not-authorized")
    err = _run_direct(setup, identity=str(other))
    assert err.field == "identity" and "refused" in err.message


def test_an_unknown_or_unreachable_host_fails_naming_host(setup: Setup) -> None:
    err = _run_direct(setup, host="me@no-such-host.invalid")
    assert err.field == "host" and "unknown host" in err.message
    err = _run_direct(setup, host=f"me@127.0.0.1:{free_port()}")
    assert err.field == "host" and "cannot connect" in err.message


def test_a_changed_host_key_is_refused_naming_host(setup: Setup) -> None:
    """accept-new: the first key seen is remembered; a different key on the same address is not."""
    from trajforge.train import ssh

    with Sshd() as server:
        ssh.Connection(Host.parse(server.spec, str(server.identity))).close()
        remembered = ssh.known_hosts_file().read_text()
        assert server.known_hosts_line.split()[2] in remembered
        ssh.Connection(Host.parse(server.spec, str(server.identity))).close()  # known: accepted
        # The same address, another host key.
        server.stop()
        server.host_key.unlink()
        server.host_key.with_suffix(".pub").unlink()
        server.start(port=server.port)
        with pytest.raises(InvalidInput) as err:
            ssh.Connection(Host.parse(server.spec, str(server.identity)))
        assert err.value.field == "host" and "changed" in err.value.message


@pytest.mark.skipif(
    not Path("/root/.pyenv/versions/3.10.13/bin/python3").exists(), reason="needs a Python 3.10 to refuse"
)
def test_a_remote_python_older_than_3_11_fails_naming_remote_python(setup: Setup, tmp_path: Path) -> None:
    err = _run_direct(
        setup,
        remoteVenv=None,
        remotePython="/root/.pyenv/versions/3.10.13/bin/python3",
        remoteDir=str(tmp_path / "old-python"),
    )
    assert err.field == "remotePython" and "3.10" in err.message and "3.11+" in err.message


def test_the_backends_list_ssh_as_available_without_the_train_extra_being_needed() -> None:
    status = jobs.backends()["ssh"]
    assert status["available"] is True and "host" in status["reason"]
    assert backends.ssh()[0]


# --- the API and the CLI -----------------------------------------------------------------------


def test_the_api_refuses_a_bad_or_missing_host_naming_it(setup: Setup) -> None:
    """(An ssh job submitted through the API runs to a model in the first test.)"""
    with TestClient(create_app(setup.db), base_url="http://127.0.0.1") as client:
        bad = client.post("/api/training/jobs", json={**setup.request(), "host": "nobody"})
        assert bad.status_code == 422 and "host" in json.dumps(bad.json())
        missing = client.post(
            "/api/training/jobs", json={k: v for k, v in setup.request().items() if k != "host"}
        )
        assert missing.status_code == 422 and "host" in json.dumps(missing.json())
        ok = client.post("/api/training/jobs", json=setup.request(iterations=2))
        assert ok.status_code == 201, ok.text
        job = ok.json()["job"]
        assert (
            job["backend"] == "ssh"
            and job["kind"] == "remote"
            and job["request"]["host"] == setup.server.spec
        )
        listed = client.get("/api/training/backends").json()["backends"]
        assert listed["ssh"]["available"] is True


def test_the_cli_runs_an_ssh_job_to_a_registered_model(setup: Setup) -> None:
    from trajforge.cli import app

    r = setup.request(iterations=2)
    args = ["jobs", "start", "--db", setup.db, "--backend", "ssh", "--host", r["host"]]
    args += ["--identity", r["identity"], "--remote-venv", r["remoteVenv"], "--remote-dir", r["remoteDir"]]
    args += ["--model", r["model"], "--dataset", r["datasetId"], "--iterations", "2", "--batch-size", "2"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250", "TRAJFORGE_HOME": str(setup.home)})
    assert result.exit_code == 0, result.output
    assert "model " in result.output and "training" in result.output
    bad = CliRunner().invoke(app, ["jobs", "start", "--db", setup.db, "--backend", "ssh", "--host", "x"])
    assert bad.exit_code != 0 and "--host" in bad.output


# --- the GPU path --------------------------------------------------------------------------------


def _cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA device here: the cuda and multi-GPU (accelerate launch) path needs one"
    return True, ""


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda()[0], reason=_cuda()[1])
def test_on_a_cuda_host_the_entry_trains_on_every_gpu(setup: Setup) -> None:
    import torch

    store = setup.store()
    try:
        job = jobs.submit(store, setup.request(iterations=4, device="cuda"))
        out = remote.run(store, job, lambda *a: None, setup.home)
    finally:
        store.close()
    m = out["metrics"]
    assert m["device"] == "cuda" and m["gpu"] != "cpu"
    assert m["processes"] == torch.cuda.device_count()


def test_the_multi_gpu_command_is_accelerate_launch_of_our_entry_point() -> None:
    from trajforge.train import remote_entry

    cmd = remote_entry.multi_gpu_command(["--job-dir", "/j"], 4)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4" and "--multi_gpu" in cmd
    assert cmd[-4:] == ["-m", "trajforge.train.remote_entry", "--job-dir", "/j"]
