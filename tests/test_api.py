"""The REST API through the real ASGI app, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.helpers import make_trajectory
from trajforge.export import PROMPT_MARKER
from trajforge.records import WriteBatch, batch_to_wire
from trajforge.server import create_app
from trajforge.store import Store


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def ingest(client: TestClient, *trajectories) -> dict:
    batch = WriteBatch()
    for t in trajectories:
        batch.extend(WriteBatch.from_trajectory(t))
    r = client.post("/api/trajectories", json=batch_to_wire(batch))
    assert r.status_code == 200, r.text
    return r.json()


def test_ingest_is_idempotent_and_accepts_gzip(client: TestClient) -> None:
    t = make_trajectory(n_steps=2, calls_per_step=2)
    first = ingest(client, t)
    assert first["stored"] == {
        "trajectories": 1,
        "steps": 2,
        "llmCalls": 4,
        "providerAccesses": 2,
        "scores": 0,
    }
    body = json.dumps(batch_to_wire(WriteBatch.from_trajectory(t))).encode()
    r = client.post(
        "/api/trajectories",
        content=gzip.compress(body),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["stored"]["llmCalls"] == 0
    assert client.get("/api/trajectories").json()["total"] == 1


def test_ingest_appends_steps_to_a_known_trajectory(client: TestClient) -> None:
    client.post(
        "/api/trajectories", json={"trajectories": [{"id": "live", "agentId": "a", "status": "active"}]}
    )
    for i in range(3):
        step = {
            "stepId": f"s{i}",
            "stepNumber": i,
            "llmCalls": [{"callId": f"c{i}", "model": "m", "userPrompt": "hi"}],
        }
        assert (
            client.post(
                "/api/trajectories", json={"trajectories": [{"id": "live", "steps": [step]}]}
            ).status_code
            == 200
        )
    client.post(
        "/api/trajectories", json={"trajectories": [{"id": "live", "status": "completed", "totalReward": 2}]}
    )
    got = client.get("/api/trajectories/live").json()["trajectory"]
    assert (got["agentId"], got["status"], got["stepCount"], got["llmCallCount"], got["totalReward"]) == (
        "a",
        "completed",
        3,
        3,
        2,
    )


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"nope": []}, 422, "trajectories"),
        ({"trajectories": [{"agentId": "x"}]}, 422, "trajectories[0].id"),
        ({"trajectories": [{"id": "x", "startTime": "yesterday"}]}, 422, "trajectories[0].startTime"),
        ({"trajectories": [{"id": "x", "status": "done"}]}, 422, "trajectories[0].status"),
        (
            {"trajectories": [{"id": "x", "steps": [{"stepId": "s", "llmCalls": [{"model": 5}]}]}]},
            422,
            "trajectories[0].steps[0].llmCalls[0].model",
        ),
    ],
)
def test_ingest_errors_name_the_field(client: TestClient, body: dict, status: int, field: str) -> None:
    r = client.post("/api/trajectories", json=body)
    assert r.status_code == status
    assert r.json()["error"]["field"] == field


def test_ingest_rejects_bad_json_bad_gzip_and_oversized_bodies(store: Store) -> None:
    with TestClient(create_app(store, max_ingest_bytes=2000), base_url="http://127.0.0.1") as c:
        r = c.post("/api/trajectories", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        r = c.post("/api/trajectories", content=b"garbage", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "Content-Encoding"
        big = json.dumps({"trajectories": [{"id": "x", "metadata": {"pad": "x" * 5000}}]}).encode()
        assert c.post("/api/trajectories", content=big).status_code == 413
        bomb = gzip.compress(b'{"trajectories": [' + b" " * 1_000_000 + b"]}")
        assert len(bomb) < 2000
        r = c.post("/api/trajectories", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        assert c.get("/api/trajectories").json()["total"] == 0


def test_list_filters_pagination_and_limits(client: TestClient) -> None:
    base = 1_700_000_000_000
    ingest(
        client,
        *[
            make_trajectory(
                start_time=base + i * 60_000,
                source="chat" if i % 2 else "discord",
                status="completed" if i % 3 else "error",
                scenario_id=f"sc-{i % 2}",
                batch_id="b1",
                reward=i / 10,
                prompt=f"message number{i}",
                is_training_data=i == 4,
            )
            for i in range(7)
        ],
    )
    r = client.get("/api/trajectories", params={"limit": 3, "offset": 3}).json()
    assert r["total"] == 7 and len(r["trajectories"]) == 3 and (r["limit"], r["offset"]) == (3, 3)
    item = r["trajectories"][0]
    assert set(item) == {
        "id", "agentId", "source", "status", "startTime", "endTime", "durationMs", "llmCallCount",
        "totalPromptTokens", "totalCompletionTokens", "createdAt", "scenarioId", "batchId",
        "isTrainingData", "stepCount", "providerAccessCount", "totalReward",
    }  # fmt: skip
    assert item["createdAt"].endswith("Z")

    def total(**params) -> int:
        resp = client.get("/api/trajectories", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()["total"]

    assert total(source="chat") == 3
    assert total(status="error") == 3
    assert total(scenarioId="sc-1", batchId="b1") == 3
    assert total(isTrainingData="true") == 1
    assert total(minReward=0.3, maxReward=0.5) == 3
    assert total(startDate=base + 60_000, endDate="2023-11-14T22:16:20Z") == 3  # inclusive bounds
    assert total(search="number3") == 1
    assert total(agentId="agent-1") == 7
    for params, field in (
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"status": "finished"}, "status"),
        ({"startDate": "last tuesday"}, "startDate"),
        ({"minReward": "nan"}, "minReward"),
        ({"isTrainingData": "maybe"}, "isTrainingData"),
        ({"scenarioID": "sc-1"}, "scenarioID"),  # a misspelt filter is an error, not ignored
    ):
        resp = client.get("/api/trajectories", params=params)
        assert resp.status_code == 422, params
        assert resp.json()["error"]["field"] == field
    resp = client.get("/api/trajectories", params={"search": '"unclosed'})
    assert resp.status_code == 400 and resp.json()["error"] == {
        "code": "invalid_search",
        "message": 'search has an unbalanced double quote (")',
        "field": "search",
    }


def test_detail_stats_config_and_404(client: TestClient) -> None:
    t = make_trajectory(n_steps=2)
    ingest(client, t)
    detail = client.get(f"/api/trajectories/{t.id}").json()["trajectory"]
    assert detail["id"] == t.id and [s["stepNumber"] for s in detail["steps"]] == [0, 1]
    step = detail["steps"][0]
    assert step["llmCalls"][0]["systemPrompt"] == t.steps[0].llm_calls[0].system_prompt
    assert (
        step["providerAccesses"][0]["providerName"] == "orders" and step["action"]["actionType"] == "REFUND"
    )
    r = client.get("/api/trajectories/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    stats = client.get("/api/trajectories/stats").json()
    assert (
        stats["totalTrajectories"] == 1
        and stats["totalLlmCalls"] == 4
        and stats["byModel"][0]["model"] == "m-1"
    )
    assert client.get("/api/trajectories/config").json() == {"enabled": True}
    assert client.put("/api/trajectories/config", json={"enabled": False}).json() == {"enabled": False}
    assert client.get("/api/trajectories/config").json() == {"enabled": False}
    r = client.put("/api/trajectories/config", json={"enabled": "sometimes"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "enabled"
    assert client.get("/no/such/route").json()["error"]["code"] == "not_found"


def test_scores(client: TestClient) -> None:
    t = make_trajectory()
    ingest(client, t)
    r = client.post(
        f"/api/trajectories/{t.id}/scores", json={"name": "resolved", "value": 1, "source": "outcome"}
    )
    assert r.status_code == 201 and r.json()["score"]["value"] == 1.0
    client.post(
        f"/api/trajectories/{t.id}/scores",
        json={"name": "resolved", "value": 0.5, "source": "outcome", "comment": "reopened"},
    )
    scores = client.get(f"/api/trajectories/{t.id}").json()["trajectory"]["scores"]
    assert [(s["name"], s["value"], s["comment"]) for s in scores] == [("resolved", 0.5, "reopened")]
    assert client.post("/api/trajectories/nope/scores", json={"name": "x", "value": 1}).status_code == 404
    r = client.post(f"/api/trajectories/{t.id}/scores", json={"name": "", "value": 1})
    assert r.status_code == 422 and r.json()["error"]["field"] == "name"
    r = client.post(f"/api/trajectories/{t.id}/scores", json={"name": "x", "value": "high"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "value"


def test_delete(client: TestClient) -> None:
    a, b, c = make_trajectory(), make_trajectory(), make_trajectory()
    ingest(client, a, b, c)
    assert client.request("DELETE", "/api/trajectories", json={"ids": [a.id, "nope"]}).json() == {
        "deleted": 1
    }
    for body, field in (
        ({}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": [b.id], "all": True}, "all"),
        ({"all": False}, "ids"),
    ):
        r = client.request("DELETE", "/api/trajectories", json=body)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.json())
    assert client.request("DELETE", "/api/trajectories", json={"all": True}).json() == {"deleted": 2}
    assert client.get("/api/trajectories").json()["total"] == 0


def export(client: TestClient, **body) -> bytes:
    r = client.post("/api/trajectories/export", json=body)
    assert r.status_code == 200, r.text
    return r.content


def test_export_every_format(client: TestClient, tmp_path) -> None:
    tricky = make_trajectory(agent_id='agent, "quoted"\nnewline', metadata={"note": "é"}, scenario_id="s1")
    other = make_trajectory(scenario_id="s2", reward=0.25)
    ingest(client, tricky, other)
    as_json = json.loads(export(client, format="json"))
    assert {t["id"] for t in as_json} == {tricky.id, other.id} and as_json[0]["steps"]
    lines = export(client, format="jsonl").decode().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["steps"][0]["llmCalls"]
    rows = list(csv.reader(io.StringIO(export(client, format="csv").decode(), newline="")))
    assert rows[0][:3] == ["trajectoryId", "agentId", "source"] and len(rows) == 3
    assert any(r[1] == 'agent, "quoted"\nnewline' for r in rows[1:])
    assert b"\r\n" in export(client, format="csv")
    art = [json.loads(x) for x in export(client, format="art").decode().splitlines()]
    first = art[0]
    assert [m["role"] for m in first["messages"]].count("system") == 1  # same system prompt: sent once
    assert [m["role"] for m in first["messages"]][:3] == ["system", "user", "assistant"]
    assert {"trajectoryId", "agentId", "scenarioId"} <= set(first["metadata"]) and "metrics" in first
    z = zipfile.ZipFile(io.BytesIO(export(client, format="zip")))
    manifest = json.loads(z.read("manifest.json"))
    assert len(manifest["trajectories"]) == 2
    for entry in manifest["trajectories"]:
        assert json.loads(z.read(f"{entry['folder']}/trajectory.json"))["id"] == entry["trajectoryId"]
        assert "steps" not in json.loads(z.read(f"{entry['folder']}/summary.json"))
    path = tmp_path / "x.parquet"
    path.write_bytes(export(client, format="parquet"))
    table = pq.read_table(path)
    assert table.num_rows == 8 and "userPrompt" in table.column_names
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert len(ds) == 8 and ds[0]["model"] == "m-1"


def test_export_filters_ids_limit_and_prompt_redaction(client: TestClient) -> None:
    a, b = make_trajectory(scenario_id="keep"), make_trajectory(scenario_id="drop")
    ingest(client, a, b)
    only = [json.loads(x) for x in export(client, format="jsonl", scenarioId="keep").decode().splitlines()]
    assert [t["id"] for t in only] == [a.id]
    by_ids = [
        json.loads(x) for x in export(client, format="jsonl", trajectoryIds=[b.id]).decode().splitlines()
    ]
    assert [t["id"] for t in by_ids] == [b.id]
    assert len(export(client, format="jsonl", limit=1).decode().splitlines()) == 1
    hidden = json.loads(export(client, format="json", includePrompts=False))
    call = hidden[0]["steps"][0]["llmCalls"][0]
    assert (
        call["userPrompt"] == PROMPT_MARKER
        and call["response"] == PROMPT_MARKER
        and call["systemPrompt"] == PROMPT_MARKER
    )
    assert a.steps[0].llm_calls[0].user_prompt.encode() not in export(
        client, format="parquet", includePrompts=False
    )
    r = client.post("/api/trajectories/export", json={"format": "xml"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "format"
    r = client.post("/api/trajectories/export", json={"format": "json", "search": "OR"})
    assert r.status_code == 400  # validated before the stream starts


def test_bearer_token_guards_every_api_route(store: Store) -> None:
    with TestClient(create_app(store, token="s3cret"), base_url="http://127.0.0.1") as c:
        r = c.get("/api/trajectories")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert c.get("/api/trajectories", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/api/trajectories", json={"trajectories": []}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/trajectories", headers=ok).status_code == 200
        assert c.get("/api/trajectories/stats", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness needs no token


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/api/trajectories"]) == {"get", "post", "delete"}
    assert "put" in paths["/api/trajectories/config"] and "post" in paths["/api/trajectories/export"]
    assert "post" in paths["/api/trajectories/{trajectory_id}/scores"]
    assert "413" in paths["/api/trajectories"]["post"]["responses"]
    assert paths["/api/trajectories"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "required"
    ] == ["trajectories"]


def test_hostile_values_are_refused_or_stored_safely(client: TestClient) -> None:
    r = client.post("/api/trajectories", json={"trajectories": [{"id": "big", "startTime": 10**20}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "trajectories[0].startTime"
    call = {"model": "m", "promptTokens": 2**40}
    r = client.post(
        "/api/trajectories",
        json={"trajectories": [{"id": "t", "steps": [{"stepId": "s", "llmCalls": [call]}]}]},
    )
    assert (
        r.status_code == 422
        and r.json()["error"]["field"] == "trajectories[0].steps[0].llmCalls[0].promptTokens"
    )
    nul = {
        "id": "nul",
        "agentId": "a\x00b",
        "metadata": {"k": "v\x00"},
        "steps": [{"stepId": "n1", "llmCalls": [{"model": "m\x00", "userPrompt": "p\x00q"}]}],
    }
    assert client.post("/api/trajectories", json={"trajectories": [nul]}).status_code == 200
    got = client.get("/api/trajectories/nul").json()["trajectory"]
    assert got["agentId"] in ("a\x00b", "a\ufffdb")  # PostgreSQL text cannot hold NUL
    assert client.get("/api/trajectories/stats").status_code == 200
