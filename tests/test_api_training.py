"""``/api/training/datasets`` and the export's privacy filter, through the real ASGI app."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.helpers import make_support_corpus
from trajforge.records import WriteBatch
from trajforge.server import create_app
from trajforge.store import Store


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    for t in make_support_corpus():
        store.write(WriteBatch.from_trajectory(t))
    with TestClient(create_app(store)) as c:
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
