"""One set of limits (trajforge.limits) at every way in — the SDK, HTTP ingest, the importer — and
bounds on every integer a route takes. Through the real ASGI app on SQLite and PostgreSQL; the
export that fails midway goes through a real uvicorn on loopback."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient

import trajforge
from tests.conftest import PG_BASE
from tests.helpers import free_port, make_trajectory
from trajforge import limits
from trajforge.errors import InvalidInput
from trajforge.importer import import_file
from trajforge.records import WriteBatch, batch_to_wire
from trajforge.server import create_app
from trajforge.store import Store, TrajectoryFilter, open_store

FORMATS = ("json", "jsonl", "csv", "art", "zip", "parquet")


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def nested_json(levels: int) -> str:
    """nest(levels) as JSON text, without a recursive encoder."""
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


def nest(levels: int) -> dict[str, Any]:
    """An object ``levels`` deep: nest(1) is {}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def refused(r: httpx.Response, field: str, status: int = 422) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    return str(error["message"])


def one_call(tid: str = "t", **call: Any) -> dict[str, Any]:
    return {
        "trajectories": [
            {
                "id": tid,
                "status": "completed",
                "steps": [
                    {"stepId": f"{tid}-s", "llmCalls": [{"model": "m", "userPrompt": "hello", **call}]}
                ],
            }
        ]
    }


def run_sql(store_url: str, sql: str, params: tuple[Any, ...]) -> None:
    """Write a row the way an old trajforge (or a hand edit) could have: behind the limits' back."""
    if "schema=" not in store_url:
        with sqlite3.connect(store_url) as db:
            db.execute(sql, params)
        return
    schema = store_url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(sql.replace("?", "%s"), params)


# --- item 2: numbers the store (and its sums) cannot hold --------------------------------------


def test_huge_rewards_are_refused_before_the_rollup_overflows(client: TestClient, store: Store) -> None:
    # Each fits a DOUBLE PRECISION; their per-day sum does not (PostgreSQL: a 500 before).
    body = {
        "trajectories": [
            {"id": "a", "status": "completed", "totalReward": 1e308},
            {"id": "b", "status": "completed", "totalReward": 1e308},
        ]
    }
    message = refused(client.post("/api/trajectories", json=body), "trajectories[0].totalReward")
    assert "1e+12" in message
    assert store.count(TrajectoryFilter()) == 0
    for payload, field in (
        (one_call(latencyMs=1e300), "trajectories[0].steps[0].llmCalls[0].latencyMs"),
        (one_call(promptTokens=2**40), "trajectories[0].steps[0].llmCalls[0].promptTokens"),
        (
            {"trajectories": [{"id": "s", "scores": [{"name": "q", "value": -1e300}]}]},
            "trajectories[0].scores[0].value",
        ),
        (
            {"trajectories": [{"id": "r", "steps": [{"stepId": "r1", "reward": 1e13}]}]},
            "trajectories[0].steps[0].reward",
        ),
    ):
        refused(client.post("/api/trajectories", json=payload), field)
    r = client.post(
        "/api/trajectories", json={"trajectories": [{"id": "ok", "totalReward": limits.MAX_ABS_REAL}]}
    )
    assert r.status_code == 200, r.text
    assert client.get("/api/trajectories/stats").status_code == 200
    assert store.count(TrajectoryFilter()) == 1
    client.post("/api/trajectories", json={"trajectories": [{"id": "x", "status": "completed"}]})
    refused(client.post("/api/trajectories/x/scores", json={"name": "q", "value": 1e300}), "value")


def test_the_sdk_refuses_non_finite_and_huge_values_naming_the_field(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = trajforge.Recorder(store_url, spool_dir=tmp_path / "spool")
    with caplog.at_level(logging.ERROR, logger="trajforge.capture"):
        with rec.trajectory(agent_id="a") as t:
            with t.step() as s:
                s.llm_call(model="m", user_prompt="fine", response="ok", prompt_tokens=3)
                s.llm_call(model="m", user_prompt="too many tokens", prompt_tokens=2**40)
                s.llm_call(model="m", user_prompt="no latency", latency_ms=float("inf"))
                s.reward(float("nan"))
            t.reward(float("nan"))
        with rec.trajectory(metadata=nest(limits.MAX_JSON_DEPTH + 1)) as deep:
            deep.llm_call(model="m", user_prompt="lost with its trajectory")
        with rec.trajectory(trajectory_id="x" * (limits.MAX_ID_CHARS + 1)) as long:
            long.llm_call(model="m", user_prompt="too long an id")
        with rec.trajectory(metadata={"k": "lone \ud800 surrogate"}) as bad_text:
            bad_text.llm_call(model="m", user_prompt="its metadata could not be read back")
        with rec.trajectory() as summed:  # each step's reward is fine, their sum is not
            for _ in range(2):
                with summed.step() as s:
                    s.llm_call(model="m", user_prompt="big")
                    s.reward(limits.MAX_ABS_REAL)
    assert rec.flush(30)
    stats = rec.stats
    rec.close()
    for field in (
        "llmCall.promptTokens",
        "llmCall.latencyMs",
        "step.reward",
        "trajectory.totalReward",
        "trajectory.metadata",
        "trajectory.id",
    ):
        assert field in caplog.text, field
    assert "lone surrogate" in caplog.text
    assert "ends without its reward and metadata" in caplog.text
    store = open_store(store_url)
    try:
        got = store.get_trajectory(t.id)
        # The good call and the trajectory's end arrive: a refused value never fails the batch.
        assert got is not None and got.status == "completed" and got.total_reward is None
        assert [c.user_prompt for s in got.steps for c in s.llm_calls] == ["fine"]
        ended = store.get_trajectory(summed.id)
        assert ended is not None and ended.status == "completed" and ended.total_reward is None
        assert store.count(TrajectoryFilter()) == 2
        assert stats["lost"] == 0 and stats["rejected"] == 0, stats
    finally:
        store.close()


def test_validate_trajectory_reports_values_over_the_limits() -> None:
    t = make_trajectory(reward=float("nan"), metadata=nest(limits.MAX_JSON_DEPTH + 1))
    t.steps[0].llm_calls[1].temperature = float("inf")
    t.steps[1].action.parameters = {"x": [float("nan")]}  # type: ignore[union-attr]
    errors = trajforge.validate_trajectory(t).errors
    for field in (
        "totalReward",
        "metadata",
        "steps[0].llmCalls[1].temperature",
        "steps[1].action.parameters",
    ):
        assert any(e.startswith(f"{field}: ") for e in errors), (field, errors)
    assert trajforge.validate_trajectory(make_trajectory(metadata=nest(limits.MAX_JSON_DEPTH))).valid


# --- item 8: depth, id length and string size -------------------------------------------------


def test_depth_and_id_length_are_refused_at_http_ingest(client: TestClient, store: Store) -> None:
    too_deep = nest(limits.MAX_JSON_DEPTH + 1)
    for payload, field in (
        (
            {"trajectories": [{"id": "m", "metadata": too_deep}]},
            "trajectories[0].metadata",
        ),
        (one_call(messages=[too_deep]), "trajectories[0].steps[0].llmCalls[0].messages"),
        (
            {
                "trajectories": [
                    {
                        "id": "a",
                        "steps": [{"stepId": "a1", "action": {"actionType": "X", "result": too_deep}}],
                    }
                ]
            },
            "trajectories[0].steps[0].action.result",
        ),
        (
            {"trajectories": [{"id": "o", "steps": [{"stepId": "o1", "observation": [too_deep]}]}]},
            "trajectories[0].steps[0].observation",
        ),
        ({"trajectories": [{"id": "x" * (limits.MAX_ID_CHARS + 1)}]}, "trajectories[0].id"),
        # NUL: PostgreSQL text cannot hold it, so a stored id would differ from the one re-sent.
        ({"trajectories": [{"id": "a\u0000b"}]}, "trajectories[0].id"),
        (
            {"trajectories": [{"id": "s", "steps": [{"stepId": "s\u00001"}]}]},
            "trajectories[0].steps[0].stepId",
        ),
        (
            {"trajectories": [{"id": "n", "agentId": "a" * (limits.MAX_NAME_CHARS + 1)}]},
            "trajectories[0].agentId",
        ),
    ):
        refused(client.post("/api/trajectories", json=payload), field)
    # 1000 levels: what orjson still parses, and a 500 before.
    raw = '{"trajectories":[{"id":"k","metadata":' + nested_json(1000) + "}]}"
    r = client.post("/api/trajectories", content=raw, headers={"Content-Type": "application/json"})
    refused(r, "trajectories[0].metadata")
    assert store.count(TrajectoryFilter()) == 0


def test_what_the_limits_let_in_every_read_returns(client: TestClient) -> None:
    deepest = nest(limits.MAX_JSON_DEPTH)
    t = make_trajectory(metadata=deepest)
    t.id = "i" * limits.MAX_ID_CHARS
    t.steps[0].llm_calls[0].messages = [nest(limits.MAX_JSON_DEPTH - 1)]
    t.steps[0].action.result = deepest  # type: ignore[union-attr]
    r = client.post("/api/trajectories", json=batch_to_wire(WriteBatch.from_trajectory(t)))
    assert r.status_code == 200, r.text
    got = client.get(f"/api/trajectories/{t.id}")
    assert got.status_code == 200 and got.json()["trajectory"]["metadata"] == deepest
    assert client.get(f"/trajectories/{t.id}").status_code == 200
    for fmt in FORMATS:
        for pf in (True, False):
            r = client.post("/api/trajectories/export", json={"format": fmt, "privacyFilter": pf})
            assert r.status_code == 200 and len(r.content) > 100, (fmt, pf)
            if fmt == "json":
                assert json.loads(r.content)[0]["metadata"] == deepest


def test_the_importer_enforces_the_same_limits(store: Store, tmp_path: Path) -> None:
    deep = tmp_path / "deep.jsonl"
    ok = json.dumps({"id": "fine", "status": "completed"})
    deep.write_text(ok + "\n" + json.dumps({"id": "d", "metadata": nest(limits.MAX_JSON_DEPTH + 1)}) + "\n")
    with pytest.raises(InvalidInput, match=r"deep.jsonl:2.metadata: is nested more than 64 levels"):
        import_file(store, deep)
    seed = tmp_path / "seed.jsonl"
    row = {"trajectoryId": "t1", "stepId": "s", "callId": "c1", "model": "m", "request": {"prompt": "hi"}}
    seed.write_text(json.dumps({**row, "usage": {"prompt_tokens": 2**40}}) + "\n")
    with pytest.raises(InvalidInput, match=r"seed.jsonl:1.usage.prompt_tokens: must be between"):
        import_file(store, seed)
    seed.write_text(json.dumps({**row, "metadata": nest(limits.MAX_JSON_DEPTH + 1)}) + "\n")
    with pytest.raises(
        InvalidInput, match=r"seed.jsonl: trajectory t1.metadata: is nested more than 64 levels"
    ):
        import_file(store, seed)
    # Fields without a column are kept in metadata, deeper than in the file: checked as stored,
    # so an import never stores what the detail route then cannot show.
    near = nest(limits.MAX_JSON_DEPTH - 1)
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps({"id": "f", "status": "completed", "vendorField": near}) + "\n")
    with pytest.raises(InvalidInput, match=r"foreign.jsonl:1.metadata.*nested more than 64 levels"):
        import_file(store, foreign)
    seed.write_text(json.dumps({**row, "vendorField": near}) + "\n")
    with pytest.raises(InvalidInput, match=r"trajectory t1\..*nested more than 64 levels"):
        import_file(store, seed)
    bad_rows = tmp_path / "seed.bad.jsonl"
    assert import_file(store, seed, bad_rows=bad_rows)["badRows"] == 1
    assert json.loads(bad_rows.read_text())["where"] == "seed.jsonl:1"
    seed.write_text(json.dumps({**row, "callId": "c\u00001"}) + "\n")
    with pytest.raises(InvalidInput, match=r"seed.jsonl:1.callId: must not contain a NUL"):
        import_file(store, seed)
    long_id = tmp_path / "long.jsonl"
    long_id.write_text(json.dumps({"id": "x" * 300}) + "\n")
    with pytest.raises(InvalidInput, match=r"long.jsonl:1.id: is 300 characters long; the limit is 200"):
        import_file(store, long_id)
    assert store.get_trajectory("d") is None and store.get_trajectory("t1") is None
    # The store's own counters in an export are read back, not stored: a big total imports.
    export = tmp_path / "export.jsonl"
    export.write_text(json.dumps({"id": "big", "status": "completed", "totalPromptTokens": 2**33}) + "\n")
    assert import_file(store, export)["newTrajectories"] == 1


def test_a_stored_row_over_the_limits_gives_a_clear_error_not_a_500(store_url: str, store: Store) -> None:
    store.write(WriteBatch.from_trajectory(make_trajectory()))
    tid = store.list_trajectories(TrajectoryFilter(), limit=1).items[0].id
    run_sql(store_url, "UPDATE trajectories SET metadata = ? WHERE id = ?", (nested_json(300), tid))
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        message = refused(client.get(f"/api/trajectories/{tid}"), "metadata")
        assert "stored before the current limits" in message
        r = client.get(f"/trajectories/{tid}")
        assert r.status_code == 422 and "stored before the current limits" in r.text


@pytest.fixture
def live_server(store: Store) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_an_export_that_fails_midway_never_ends_as_a_complete_200(
    store_url: str, store: Store, live_server: str
) -> None:
    for i in range(3):
        t = make_trajectory(start_time=1_700_000_000_000 + i)
        t.id = f"e{i}"
        store.write(WriteBatch.from_trajectory(t))
    bad = "e1"
    # Deeper than the privacy filter (and the stdlib encoder) can walk: rendering it fails. Written
    # with spaces, as no writer of ours writes JSON, so the filter must parse it (a canonical value
    # it can tell unchanged without parsing is embedded as stored, and renders).
    deep = nested_json(980).replace(":", ": ")
    run_sql(store_url, "UPDATE trajectories SET metadata = ? WHERE id = ?", (deep, bad))
    for fmt in ("jsonl", "json", "art", "csv", "zip"):
        with (
            pytest.raises(httpx.RemoteProtocolError, match="incomplete"),
            httpx.stream(
                "POST", f"{live_server}/api/trajectories/export", json={"format": fmt}, timeout=60
            ) as r,
        ):
            assert r.status_code == 200  # the status line went out before the failure
            r.read()
    good = httpx.post(
        f"{live_server}/api/trajectories/export",
        json={"format": "jsonl", "trajectoryIds": ["e2"]},
        timeout=60,
    )
    assert good.status_code == 200 and len(good.content.splitlines()) == 1


def test_request_bodies_are_bounded_on_every_route(store: Store) -> None:
    with TestClient(create_app(store, max_ingest_bytes=2000), base_url="http://127.0.0.1") as client:
        big = {"format": "jsonl", "trajectoryIds": [f"id-{i}" for i in range(500)]}
        refused_413 = client.post("/api/trajectories/export", json=big)
        assert refused_413.status_code == 413, refused_413.text
        assert refused_413.json()["error"]["code"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield json.dumps(big).encode()

        r = client.post("/api/training/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        r = client.post("/api/trajectories/export", json={"format": "jsonl"})
        assert r.status_code == 200


# --- item 9: every integer a route takes is bounded ---------------------------------------------

HUGE = "53849584749490290688"


@pytest.mark.parametrize(
    "path",
    ["/api/training/datasets", "/api/training/models", "/api/training/jobs", "/api/trajectories"],
)
def test_huge_offsets_are_refused_naming_the_parameter(client: TestClient, path: str) -> None:
    refused(client.get(f"{path}?offset={HUGE}"), "offset")
    refused(client.get(f"{path}?offset={limits.MAX_OFFSET + 1}"), "offset")
    r = client.get(f"{path}?offset={limits.MAX_OFFSET}")
    assert r.status_code == 200, r.text


def test_event_positions_are_bounded(client: TestClient, store: Store) -> None:
    for path in ("/api/training/events", "/api/training/jobs/job-x/events"):
        refused(client.get(f"{path}?follow=false&after={HUGE}"), "after")
    refused(client.get("/api/training/events?follow=false", headers={"Last-Event-ID": HUGE}), "Last-Event-ID")
    refused(
        client.get("/api/training/events?follow=false", headers={"Last-Event-ID": "9" * 5000}),
        "Last-Event-ID",
    )
    r = client.get(f"/api/training/events?follow=false&after={limits.MAX_SEQ}")
    assert r.status_code == 200 and r.text == ""
    r = client.get("/api/training/events?follow=false", headers={"Last-Event-ID": str(limits.MAX_SEQ)})
    assert r.status_code == 200 and r.text == ""


def test_dates_and_pages_with_thousands_of_digits_are_clear_errors(client: TestClient) -> None:
    refused(client.get("/api/trajectories?startDate=" + "9" * 5000), "startDate")
    r = client.post("/api/trajectories/export", json={"format": "jsonl", "startDate": "9" * 5000})
    assert r.status_code == 422, r.text
    for page in (HUGE, "9" * 5000, "0", "x"):
        r = client.get(f"/trajectories?page={page}")
        assert r.status_code == 200 and "page must be a number from 1 to" in r.text, page
    r = client.get("/trajectories?startDate=" + "9" * 5000)
    assert r.status_code == 200 and "startDate must be" in r.text


def test_body_integers_are_bounded_too(client: TestClient, store: Store) -> None:
    store.write(WriteBatch.from_trajectory(make_trajectory()))
    r = client.post("/api/training/datasets/build", json={"minLlmCallsPerTrajectory": 10**30})
    refused(r, "minLlmCallsPerTrajectory")
