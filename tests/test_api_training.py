"""``/api/training/datasets`` and the export's privacy filter, through the real ASGI app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.fakes.ollama_server import FakeOllama, llama_info
from tests.helpers import make_support_corpus
from trajforge import models
from trajforge.records import Model, WriteBatch
from trajforge.server import create_app
from trajforge.store import Store


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    for t in make_support_corpus():
        store.write(WriteBatch.from_trajectory(t))
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def test_build_list_and_show_a_dataset(client: TestClient) -> None:
    r = client.post(
        "/api/training/datasets/build",
        json={
            "limit": 500,
            "minLlmCallsPerTrajectory": 2,
            "format": "sft",
            "evalFraction": 0.2,
            "scenarioId": "scenario-1",
        },
    )
    assert r.status_code == 201, r.text
    ds = r.json()["dataset"]
    assert ds["id"].startswith("dataset-") and ds["trajectoryCount"] == 3 and ds["version"] == 1
    assert ds["manifest"]["request"]["filter"] == {"scenarioId": "scenario-1"}
    assert ds["manifest"]["privacy"]["redactions"]["email"] > 0
    listed = client.get("/api/training/datasets").json()["datasets"]
    assert [d["id"] for d in listed] == [ds["id"]]
    shown = client.get(f"/api/training/datasets/{ds['id']}").json()["dataset"]
    assert shown["manifest"]["files"] == ds["manifest"]["files"]
    again = client.post(
        "/api/training/datasets/build", json={"format": "sft", "scenarioId": "scenario-1"}
    ).json()
    assert again["dataset"]["version"] == 2 and again["dataset"]["parent"] == ds["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"format": "csv"}, "format"),
        ({"limit": 0}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"evalFraction": 1}, "evalFraction"),
        ({"seed": False}, "seed"),
        ({"name": "../up"}, "name"),
        ({"privacy": {"dropOn": ["bogus"]}}, "privacy.dropOn"),
        ({"privacy": {"extraPatterns": {"x": "("}}}, "privacy"),
        ({"minReward": 1, "maxReward": 0}, "minReward"),
        ({"startDate": "yesterday"}, "startDate"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_build_requests_are_4xx_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/api/training/datasets/build", json=body)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["field"] == field, r.json()
    assert client.get("/api/training/datasets").json()["datasets"] == []


def test_unknown_dataset_is_404(client: TestClient) -> None:
    r = client.get("/api/training/datasets/dataset-nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "art", "csv"])
def test_exports_run_the_privacy_filter_unless_asked_for_raw(client: TestClient, fmt: str) -> None:
    import io

    def body(**kw: object) -> bytes:
        r = client.post("/api/trajectories/export", json={"format": fmt, **kw})
        assert r.status_code == 200, r.text
        if fmt != "parquet":
            return r.content
        import pyarrow.parquet as pq

        return json.dumps(pq.read_table(io.BytesIO(r.content)).to_pylist()).encode()

    private, raw = body(), body(privacyFilter=False)
    if fmt == "csv":  # summaries only: no personal data in them either way
        assert private == raw
        return
    assert b"buyer1@example.com" not in private and b"REDACTED_EMAIL" in private
    assert b"buyer1@example.com" in raw


def test_the_api_never_imports_reward_code(client: TestClient) -> None:
    # Reward functions run user code: only the CLI and library take module names, never HTTP.
    assert not [
        p for p in client.get("/openapi.json").json()["paths"] if "score" in p and "trajectories/{" not in p
    ]


def _sse(text: str) -> list[dict]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        out.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return out


def test_event_log_streams_as_sse_and_resumes(client: TestClient) -> None:
    for _ in range(3):
        assert client.post("/api/training/datasets/build", json={"format": "grpo"}).status_code == 201
    r = client.get("/api/training/events?follow=false")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    assert [e["event"] for e in events] == ["dataset_built"] * 3
    assert (
        events[0]["data"]["datasetId"].startswith("dataset-") and events[0]["data"]["kind"] == "dataset_built"
    )
    resumed = _sse(
        client.get("/api/training/events?follow=false", headers={"Last-Event-ID": str(events[0]["id"])}).text
    )
    assert [e["id"] for e in resumed] == [e["id"] for e in events[1:]]
    assert (
        client.get("/api/training/events?follow=false", headers={"Last-Event-ID": "abc"}).status_code == 422
    )


# --- the seed's API contract --------------------------------------------------------------------------

TINY_LLAMA = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2}


def register_model(store: Store, folder: Path, base_model: str, model_id: str | None = None) -> Model:
    """A model in the registry without training one: a tiny llama base config and a real (tiny)
    PEFT LoRA adapter in ``folder``, enough for an import into the fake Ollama to go through."""
    base, adapter = folder / "base", folder / "adapter"
    base.mkdir(parents=True)
    adapter.mkdir()
    (base / "config.json").write_text(json.dumps(TINY_LLAMA))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1}))
    header = json.dumps(
        {
            "base_model.model.layers.0.q_proj.lora_A.weight": {
                "dtype": "F32",
                "shape": [1],
                "data_offsets": [0, 4],
            }
        }
    ).encode()
    (adapter / "adapter_model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"\0" * 4
    )
    model = Model(
        job_id=None,
        dataset_id=None,
        base_model=base_model,
        backend="cpu",
        adapter_path=str(adapter),
        metrics={"baseDir": str(base)},
        **({"id": model_id} if model_id else {}),
    )
    store.add_model(model)
    return model


def tiny_ollama_info() -> dict[str, Any]:
    return llama_info(
        TINY_LLAMA["hidden_size"], TINY_LLAMA["num_hidden_layers"], TINY_LLAMA["num_attention_heads"]
    )


def test_training_trajectories_list_and_detail(client: TestClient) -> None:
    r = client.get("/api/training/trajectories?limit=10&offset=0")
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["limit"] == 10 and page["offset"] == 0 and page["total"] == 18
    assert page == client.get("/api/trajectories?limit=10&offset=0").json()
    assert len(page["trajectories"]) == 10
    second = client.get("/api/training/trajectories?limit=10&offset=10").json()["trajectories"]
    assert len(second) == 8 and not {t["id"] for t in second} & {t["id"] for t in page["trajectories"]}
    one = page["trajectories"][0]["id"]
    detail = client.get(f"/api/training/trajectories/{one}")
    assert detail.status_code == 200 and detail.json() == client.get(f"/api/trajectories/{one}").json()
    assert detail.json()["trajectory"]["steps"]
    missing = client.get("/api/training/trajectories/traj-nope")
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
    bad = client.get("/api/training/trajectories?limit=0")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "limit"


def test_training_status_has_the_seed_fields(client: TestClient) -> None:
    status = client.get("/api/training/status").json()
    # The seed's tutorial: {"runtimeAvailable": true, "trajectoryCount": 150, "jobCount": 0}.
    assert status["runtimeAvailable"] is False  # this app runs no job runner (serve's does)
    assert status["trajectoryCount"] == 18 and status["jobCount"] == 0
    assert {"datasetCount", "jobs", "running", "backends"} <= set(status)
    client.post("/api/training/jobs", json={"backend": "native"})
    assert client.get("/api/training/status").json()["jobCount"] == 1


def test_auto_config_takes_post_as_well_as_put(client: TestClient) -> None:
    for method, threshold in (("POST", 7), ("PUT", 9)):
        r = client.request(
            method, "/api/training/auto/config", json={"threshold": threshold, "cooldownHours": 1}
        )
        assert r.status_code == 200, r.text
        assert client.get("/api/training/auto/config").json()["threshold"] == threshold
    r = client.post("/api/training/auto/config", json={"threshold": 0})
    assert r.status_code == 422 and r.json()["error"]["field"] == "threshold"
    assert client.get("/api/training/auto/config").json()["threshold"] == 9


def test_import_ollama_defaults_the_base_from_the_registry(
    client: TestClient, store: Store, tmp_path: Path
) -> None:
    bundled = register_model(store, tmp_path / "bundled", "bundled:smollm2-135m")
    with FakeOllama({"smollm2:135m": tiny_ollama_info()}) as server:
        r = client.post(
            f"/api/training/models/{bundled.id}/import-ollama",
            json={"modelName": "agent", "ollamaUrl": server.url},
        )
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["baseModel"] == "smollm2:135m" and out["baseModelDefaulted"] is True
        assert "smollm2:135m" in out["note"] and server.created["agent"]["from"] == "smollm2:135m"
        # Given explicitly, it is used as given and not reported as defaulted.
        r = client.post(
            f"/api/training/models/{bundled.id}/import-ollama",
            json={"modelName": "agent2", "baseModel": "smollm2:135m", "ollamaUrl": server.url},
        )
        assert r.status_code == 200 and r.json()["baseModelDefaulted"] is False and r.json()["note"] is None
        # A base the registry cannot map to an Ollama name: the 422 says what to pass.
        other = register_model(store, tmp_path / "other", f"local:{tmp_path / 'other' / 'base'}")
        r = client.post(
            f"/api/training/models/{other.id}/import-ollama",
            json={"modelName": "agent3", "ollamaUrl": server.url},
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "baseModel", r.text
        assert '"baseModel"' in r.json()["error"]["message"] and "agent3" not in server.created
    assert models.get(store, other.id).ollama_name is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"backend": [None, None]}, "backend"),  # not a string: once an unhashable 500
        ({"backend": "cpu", "model": "0" * 600}, "model"),  # too long a name for a path: once a 500
        ({"backend": "cpu", "model": "dir\x00name"}, "model"),
    ],
)
def test_job_requests_of_the_wrong_shape_are_4xx_naming_the_field(
    client: TestClient, change: dict[str, Any], field: str
) -> None:
    """Cases schemathesis once drew that answered 500, kept here explicitly."""
    r = client.post("/api/training/jobs", json={"datasetId": "d", **change})
    assert 400 <= r.status_code < 500 and r.json()["error"]["field"] == field, r.text


def test_job_log_errors_are_json_and_documented_so(client: TestClient) -> None:
    r = client.get("/api/training/jobs/nope/log")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    r = client.get("/api/training/jobs/nope/log?tail=0")
    assert r.status_code == 422 and r.json()["error"]["field"] == "tail"
    doc = client.get("/openapi.json").json()["paths"]["/api/training/jobs/{job_id}/log"]["get"]["responses"]
    assert "text/plain" in doc["200"]["content"]
    assert {"application/json"} == set(doc["404"]["content"]) == set(doc["422"]["content"])
