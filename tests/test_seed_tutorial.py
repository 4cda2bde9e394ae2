"""The seed's end-to-end tutorial, run as written: its seven curl commands, with real ``curl``,
against a real ``trajforge serve`` on a loopback port, a fake Ollama on loopback standing in for
``ollama serve``. Only what cannot be literal is substituted: the port of each server, and the ids
the tutorial's placeholders stand for (``dataset-abc123`` and ``job-xyz789`` are the ids steps 3
and 4 answered; ``model-abc123`` is registered under that very id, without training one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.ollama_server import FakeOllama
from tests.helpers import free_port, make_trajectory, start_server
from tests.test_api_training import TINY_LLAMA, register_model, tiny_ollama_info
from trajforge.records import JOB_STATUSES, WriteBatch
from trajforge.store import open_store

# The seed's "End-to-End Tutorial", steps 1-7, copied verbatim (the first seed's port, 2138).
STEPS = {
    1: """curl http://localhost:2138/api/training/status \\
  -H "Authorization: Bearer your-token"
""",
    2: """curl "http://localhost:2138/api/training/trajectories?limit=10&offset=0" \\
  -H "Authorization: Bearer your-token"
""",
    3: """curl -X POST http://localhost:2138/api/training/datasets/build \\
  -H "Authorization: Bearer your-token" \\
  -H "Content-Type: application/json" \\
  -d '{
    "limit": 500,
    "minLlmCallsPerTrajectory": 2
  }'
""",
    4: """curl -X POST http://localhost:2138/api/training/jobs \\
  -H "Authorization: Bearer your-token" \\
  -H "Content-Type: application/json" \\
  -d '{
    "datasetId": "dataset-abc123",
    "backend": "mlx",
    "model": "llama-3.2-3b",
    "iterations": 100,
    "batchSize": 4,
    "learningRate": 0.0001
  }'
""",
    5: """curl http://localhost:2138/api/training/jobs/job-xyz789 \\
  -H "Authorization: Bearer your-token"
""",
    6: """curl -X POST http://localhost:2138/api/training/models/model-abc123/import-ollama \\
  -H "Authorization: Bearer your-token" \\
  -H "Content-Type: application/json" \\
  -d '{
    "modelName": "my-fine-tuned-agent",
    "baseModel": "llama-3.2-3b",
    "ollamaUrl": "http://localhost:11434"
  }'
""",
    7: """curl -X POST http://localhost:2138/api/training/models/model-abc123/activate \\
  -H "Authorization: Bearer your-token" \\
  -H "Content-Type: application/json" \\
  -d '{"providerModel": "ollama/my-fine-tuned-agent"}'
""",
}
TRAJECTORIES = 30  # under auto-training's threshold (100): no job starts by itself
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


class Tutorial:
    def __init__(self, port: int, ollama_port: int) -> None:
        self.subst = {"localhost:2138": f"localhost:{port}", "localhost:11434": f"localhost:{ollama_port}"}

    def run(self, step: int, **subst: str) -> tuple[int, Any]:
        """Step ``step`` through bash and curl; returns (HTTP status, JSON body)."""
        command = STEPS[step].rstrip("\n")
        for old, new in {**self.subst, **subst}.items():
            command = command.replace(old, new)
        # Only output options are added: the request is the tutorial's.
        out = subprocess.run(
            ["bash", "-c", command + " -sS -w '\\n%{http_code}'"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        body, _, status = out.rpartition("\n")
        return int(status), json.loads(body)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Tutorial, FakeOllama, str]]:
    db = tmp_path / "tutorial.db"
    store = open_store(str(db))
    for i in range(TRAJECTORIES):
        t = make_trajectory(
            start_time=1_700_000_000_000 + i * 1000, scenario_id=f"sc-{i}", prompt=f"order A-{i}"
        )
        store.write(WriteBatch.from_trajectory(t))
    register_model(store, tmp_path / "model", f"local:{tmp_path / 'model' / 'base'}", model_id="model-abc123")
    store.close()
    # Step 4 trains "llama-3.2-3b": jobs refuse at submit a model this machine cannot load, so the
    # server runs where a folder of that name holds a model (config and weights), as it would for a
    # user who downloaded it. The job is cancelled before it matters what the weights are.
    named = tmp_path / "llama-3.2-3b"
    named.mkdir()
    (named / "config.json").write_text(json.dumps(TINY_LLAMA))
    (named / "model.safetensors").write_bytes(b"")
    port = free_port()
    env = {
        **os.environ,
        "TRAJFORGE_API_TOKEN": "your-token",
        "TRAJFORGE_DISABLE_AUTO_BOOTSTRAP": "1",
        "HF_HUB_OFFLINE": "1",  # a job for a hub model fails at once instead of downloading
    }
    proc = start_server(port, db, tmp_path / "serve.log", env=env, cwd=tmp_path)
    try:
        with FakeOllama({"llama-3.2-3b": tiny_ollama_info()}) as ollama:
            yield Tutorial(port, ollama.port), ollama, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(60)


def test_the_seed_tutorial_runs_as_written(served: tuple[Tutorial, FakeOllama, str]) -> None:
    tutorial, ollama, url = served

    # Step 1: {"runtimeAvailable": true, "trajectoryCount": 150, "jobCount": 0}
    status, body = tutorial.run(1)
    assert status == 200, body
    assert body["runtimeAvailable"] is True and body["jobCount"] == 0
    assert body["trajectoryCount"] == TRAJECTORIES

    # Step 2: the collected trajectories, ten at a time.
    status, body = tutorial.run(2)
    assert status == 200, body
    assert len(body["trajectories"]) == 10 and body["total"] == TRAJECTORIES
    assert {"id", "llmCallCount", "totalPromptTokens", "totalCompletionTokens"} <= set(
        body["trajectories"][0]
    )

    # Step 3: {"dataset": {"id": "dataset-abc123", "trajectoryCount": 342, "createdAt": "2026-…Z"}}
    status, body = tutorial.run(3)
    assert status == 201, body
    dataset = body["dataset"]
    assert dataset["id"].startswith("dataset-") and dataset["trajectoryCount"] == TRAJECTORIES
    assert ISO_MS.match(dataset["createdAt"]), dataset["createdAt"]

    # Step 4 as written asks for mlx (Apple Silicon): where it cannot run, the answer says so and
    # names the field; the tutorial's "cpu" then queues the same job.
    status, body = tutorial.run(4, **{"dataset-abc123": dataset["id"]})
    if status != 201:
        assert status == 400 and body["error"]["field"] == "backend", body
        assert "mlx" in body["error"]["message"]
        status, body = tutorial.run(4, **{"dataset-abc123": dataset["id"], '"mlx"': '"cpu"'})
    assert status == 201, body
    job = body["job"]
    assert job["id"].startswith("job-") and job["status"] == "pending" and job["datasetId"] == dataset["id"]

    # Step 5: pending -> running -> completed (or failed / cancelled).
    status, body = tutorial.run(5, **{"job-xyz789": job["id"]})
    assert status == 200, body
    assert body["job"]["id"] == job["id"] and body["job"]["status"] in JOB_STATUSES
    # Not the tutorial's: stop the job (the folder above holds no real 3B model) so it uses no CPU.
    httpx.post(f"{url}/api/training/jobs/{job['id']}/cancel", headers={"Authorization": "Bearer your-token"})

    # Step 6: the model goes into (the fake) Ollama on loopback.
    status, body = tutorial.run(6)
    assert status == 200, body
    assert body["modelName"] == "my-fine-tuned-agent" and body["model"]["ollamaName"] == "my-fine-tuned-agent"
    created = ollama.created["my-fine-tuned-agent"]
    assert created["from"] == "llama-3.2-3b" and set(created["adapters"]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }

    # Step 7: the agent now uses it.
    status, body = tutorial.run(7)
    assert status == 200, body
    assert body["model"]["id"] == "model-abc123" and body["model"]["active"] is True
    assert body["model"]["providerModel"] == "ollama/my-fine-tuned-agent"
    active = httpx.get(
        f"{url}/api/training/models/active", headers={"Authorization": "Bearer your-token"}
    ).json()
    assert active["providerModel"] == "ollama/my-fine-tuned-agent"
