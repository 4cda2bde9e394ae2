"""End to end: a real uvicorn server on a loopback port, the HTTP SDK, and a server that is killed
and restarted in the middle of the run. Nothing may be lost or duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

import trajforge
from tests import helpers
from tests.helpers import free_port
from trajforge.store import TrajectoryFilter, open_store

TOKEN = "e2e-token"


def start_server(port: int, db: str, log: Path) -> subprocess.Popen[bytes]:
    """``trajforge serve`` with the token these tests' clients send."""
    return helpers.start_server(port, db, log, env={**os.environ, "TRAJFORGE_API_TOKEN": TOKEN})


def test_http_sdk_survives_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    db = str(tmp_path / "server.db")
    log = tmp_path / "server.log"
    server = start_server(port, db, log)
    rec = trajforge.Recorder(f"http://127.0.0.1:{port}", token=TOKEN, spool_dir=tmp_path / "spool")
    ids: list[str] = []
    try:
        for i in range(60):
            if i == 20:
                rec.flush()
                server.send_signal(signal.SIGKILL)  # no goodbye: the worst case
                server.wait(10)
            if i == 40:
                server = start_server(port, db, log)
            with rec.trajectory(agent_id=f"agent-{i % 3}", source="api", scenario_id=f"s{i}") as t:
                for k in range(2):
                    with t.step() as s:
                        s.provider("kb", data={"i": i, "k": k})
                        s.llm_call(
                            model="m",
                            user_prompt=f"question {i}.{k}",
                            response=f"answer {i}.{k}",
                            prompt_tokens=3,
                        )
                        s.action("REPLY", reward=0.5)
            ids.append(t.id)
            time.sleep(0.01)
        assert rec.flush(30)
        deadline = time.monotonic() + 30
        while rec.stats["healthy"] is False or rec.stats["pending"]:
            assert time.monotonic() < deadline, rec.stats
            time.sleep(0.1)
        stats = rec.stats
        assert stats["spilled"] > 0 and stats["lost"] == 0 and stats["rejected"] == 0, stats
    finally:
        rec.close()
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    store = open_store(db)
    try:
        got = {t.id: t for t in store.iter_trajectories(TrajectoryFilter())}
        assert set(got) == set(ids)
        for t in got.values():
            assert (t.status, t.step_count, t.llm_call_count, t.provider_access_count) == (
                "completed",
                2,
                2,
                2,
            )
            assert t.total_prompt_tokens == 6 and t.total_reward == 1.0
        assert store.stats()["totalLlmCalls"] == 120
    finally:
        store.close()


def test_a_wrong_token_spools_and_the_next_process_delivers(tmp_path: Path) -> None:
    port = free_port()
    db = str(tmp_path / "s.db")
    server = start_server(port, db, tmp_path / "log")
    try:
        rec = trajforge.Recorder(f"http://127.0.0.1:{port}", token="wrong", spool_dir=tmp_path / "spool")
        with rec.trajectory() as t, t.step() as s:
            s.llm_call(model="m")
        rec.flush()
        assert rec.stats["spilled"] > 0 and rec.stats["rejected"] == 0 and rec.stats["lost"] == 0
        rec.close()
        fixed = trajforge.Recorder(f"http://127.0.0.1:{port}", token=TOKEN, spool_dir=tmp_path / "spool")
        deadline = time.monotonic() + 10
        while not fixed.stats["replayed"]:
            assert time.monotonic() < deadline, fixed.stats
            time.sleep(0.05)
        fixed.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    store = open_store(db)
    assert store.get_trajectory(t.id).llm_call_count == 1  # type: ignore[union-attr]
    store.close()


def test_the_sdk_reads_the_active_model_from_a_server(tmp_path: Path) -> None:
    from trajforge import models
    from trajforge.records import Model
    from trajforge.store import open_store

    db = str(tmp_path / "s.db")
    store = open_store(db)
    m = Model(
        job_id=None, dataset_id=None, base_model="bundled:smollm2-135m", backend="cpu", adapter_path="/a"
    )
    store.add_model(m)
    models.activate(store, m.id, "ollama/support-agent")
    store.close()
    port = free_port()
    proc = start_server(port, db, tmp_path / "server.log")
    try:
        url = f"http://127.0.0.1:{port}"
        assert trajforge.active_model(url, token=TOKEN) == "ollama/support-agent"
        with pytest.raises(httpx.HTTPStatusError):
            models._read_active(url, "wrong-token")  # the server's token check holds
    finally:
        proc.terminate()
        proc.wait(10)
