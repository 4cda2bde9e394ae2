"""Ids the user supplies (steps, calls, provider accesses, scores) are unique only within their
trajectory: two trajectories that reuse them (every Eliza export says ``"stepId": "step-1"``)
each keep all of theirs, through the store on both backends and through HTTP ingest."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from trajforge import export
from trajforge.records import (
    AccessRow,
    CallRow,
    LlmCall,
    ProviderAccess,
    Score,
    StepHeader,
    WriteBatch,
    batch_from_wire,
    batch_to_wire,
    to_wire,
)
from trajforge.server import create_app
from trajforge.store import Store, TrajectoryFilter, open_store
from trajforge.store.migrations import MIGRATIONS

BASE = 1_700_000_000_000


def eliza(i: int, *, steps: int = 2, call_ids: bool = True) -> dict[str, Any]:
    """An Eliza-shaped trajectory: step ids "step-1", "step-2", ... in every trajectory, and call ids
    "c1", "c2", ... (or none, so the store derives "step-1:call:0"); accesses never carry ids."""
    out = []
    for n in range(steps):
        call: dict[str, Any] = {
            "model": "m-1",
            "timestamp": BASE + i * 1000 + n,
            "systemPrompt": "You are Eliza.",
            "userPrompt": f"question{i} of step {n}",
            "response": f"answer{i} of step {n}",
            "promptTokens": 10 + i,
            "completionTokens": 2,
            "latencyMs": 50.0,
        }
        if call_ids:
            call["callId"] = f"c{n + 1}"
        out.append(
            {
                "stepId": f"step-{n + 1}",
                "stepNumber": n,
                "timestamp": BASE + i * 1000 + n,
                "reward": i + n / 10,
                "llmCalls": [call],
                "providerAccesses": [{"providerName": "memory", "data": {"who": i, "step": n}}],
                "action": {"actionType": "REPLY", "parameters": {"to": i}},
            }
        )
    return {
        "id": f"eliza-{i}",
        "agentId": "eliza",
        "source": "chat",
        "status": "completed",
        "startTime": BASE + i * 1000,
        "endTime": BASE + i * 1000 + 500,
        "totalReward": float(i),
        "steps": out,
        "scores": [{"name": "csat", "value": i / 10, "source": "judge"}],
    }


def check(store: Store, n: int, steps: int = 2) -> None:
    """Every one of ``n`` Eliza trajectories reads back whole and as its own."""
    for i in range(n):
        t = store.get_trajectory(f"eliza-{i}")
        assert t is not None
        assert (t.step_count, t.llm_call_count, t.provider_access_count) == (steps, steps, steps), t.id
        assert t.total_prompt_tokens == steps * (10 + i)
        assert [s.step_id for s in t.steps] == [f"step-{k + 1}" for k in range(steps)]
        assert [s.reward for s in t.steps] == [i + k / 10 for k in range(steps)]
        assert [[c.user_prompt for c in s.llm_calls] for s in t.steps] == [
            [f"question{i} of step {k}"] for k in range(steps)
        ]
        assert [[a.data for a in s.provider_accesses] for s in t.steps] == [
            [{"who": i, "step": k}] for k in range(steps)
        ]
        assert [(s.name, s.value) for s in t.scores] == [("csat", i / 10)]
    s = store.stats()
    assert (s["totalTrajectories"], s["totalSteps"], s["totalLlmCalls"], s["totalProviderAccesses"]) == (
        n,
        n * steps,
        n * steps,
        n * steps,
    )
    assert s["byModel"][0]["llmCalls"] == n * steps


def test_two_trajectories_may_reuse_step_call_and_access_ids(store: Store) -> None:
    batch = batch_from_wire({"trajectories": [eliza(0), eliza(1)]})
    result = store.write(batch)
    assert (result.new_trajectories, result.new_steps, result.new_calls, result.new_accesses) == (2, 4, 4, 4)
    check(store, 2)
    # Re-sent, in another batch split: nothing new, nothing doubled.
    for t in (eliza(1), eliza(0)):
        again = store.write(batch_from_wire({"trajectories": [t]}))
        assert (again.new_trajectories, again.new_steps, again.new_calls, again.new_accesses) == (0, 0, 0, 0)
    check(store, 2)


def test_ids_derived_from_the_step_are_scoped_too(store: Store) -> None:
    # No callId: both trajectories' calls are "step-1:call:0", their accesses "step-1:access:0".
    for i in range(5):
        store.write(batch_from_wire({"trajectories": [eliza(i, call_ids=False)]}))
    check(store, 5)


def test_a_later_step_update_reaches_only_its_own_trajectory(store: Store) -> None:
    store.write(batch_from_wire({"trajectories": [eliza(0), eliza(1)]}))
    store.write(WriteBatch(steps=[StepHeader("eliza-1", "step-1", reward=9.5, done=True)]))
    a, b = store.get_trajectory("eliza-0"), store.get_trajectory("eliza-1")
    assert a is not None and b is not None
    assert (a.steps[0].reward, a.steps[0].done) == (0.0, None)
    assert (b.steps[0].reward, b.steps[0].done) == (9.5, True)
    # A call added later to "step-2" of one trajectory lands in that trajectory's step.
    store.write(WriteBatch(calls=[CallRow("eliza-0", "step-2", LlmCall(call_id="c9", model="m-1"))]))
    a, b = store.get_trajectory("eliza-0"), store.get_trajectory("eliza-1")
    assert a is not None and b is not None
    assert [c.call_id for c in a.steps[1].llm_calls] == ["c2", "c9"] and a.llm_call_count == 3
    assert [c.call_id for c in b.steps[1].llm_calls] == ["c2"] and b.llm_call_count == 2


def test_reads_keep_reused_ids_apart(store: Store) -> None:
    store.write(batch_from_wire({"trajectories": [eliza(i) for i in range(3)]}))
    # An orphan call (its step never arrived) under a step id other trajectories use.
    store.write(WriteBatch(calls=[CallRow("eliza-9", "step-1", LlmCall(call_id="c1", model="m-1"))]))
    flt = TrajectoryFilter()
    records = list(store.iter_trajectories(flt, chunk=2))
    assert [orjson.loads(d) for d in store.iter_json_docs(flt, chunk=2)] == [to_wire(t) for t in records]
    # (The action column is JSON whose key order may differ; an orphan call's flat row has no step.)
    rows = [r[:10] + r[11:] for r in store.iter_call_rows(flt, chunk=2) if r[0] != "eliza-9"]
    assert rows == [r[:10] + r[11:] for r in export.call_rows(records) if r[0] != "eliza-9"]
    # Each row carries its own trajectory's step (reward) and call.
    assert sorted((r[0], r[7], r[9], r[10]) for r in rows) == sorted(
        (f"eliza-{i}", f"step-{k + 1}", i + k / 10, f"c{k + 1}") for i in range(3) for k in range(2)
    )
    orphan = store.get_trajectory("eliza-9")
    assert orphan is not None and [s.step_id for s in orphan.steps] == ["step-1"]
    assert [c.call_id for c in orphan.steps[0].llm_calls] == ["c1"]


def test_search_and_delete_with_reused_ids(store: Store) -> None:
    store.write(batch_from_wire({"trajectories": [eliza(0), eliza(1)]}))

    def hits(q: str) -> set[str]:
        return {t.id for t in store.list_trajectories(TrajectoryFilter(search=q)).items}

    assert hits("question0") == {"eliza-0"} and hits("answer1") == {"eliza-1"}
    assert hits("eliza") == {"eliza-0", "eliza-1"}
    assert store.delete(["eliza-0"]) == 1
    check_one = store.get_trajectory("eliza-1")
    assert check_one is not None and check_one.llm_call_count == 2
    assert len([c for s in check_one.steps for c in s.llm_calls]) == 2
    assert hits("question1") == {"eliza-1"} and hits("question0") == set()
    assert store.stats()["totalLlmCalls"] == 2


def test_two_trajectories_may_reuse_a_score_id(store: Store) -> None:
    store.add_scores([Score("a", "csat", 0.5, score_id="s1"), Score("b", "csat", 0.7, score_id="s1")])
    store.add_scores([Score("a", "judge", 0.1, score_id="s1")])
    got = store.get_scores(["a", "b"])
    assert sorted((s.name, s.value) for s in got["a"]) == [("csat", 0.5), ("judge", 0.1)]
    assert [(s.name, s.value, s.score_id) for s in got["b"]] == [("csat", 0.7, "s1")]


def test_concurrent_writers_with_reused_ids(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    batches = [batch_from_wire({"trajectories": [eliza(i, call_ids=i % 2 == 0)]}) for i in range(24)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for batch in batches[k::4]:
                stores[k].write(batch)
                stores[(k + 1) % 4].write(batch)  # the same ids again, from another writer
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        assert not errors
        check(stores[0], 24)
    finally:
        for st in stores:
            st.close()


def test_batch_to_wire_keeps_reused_step_ids_apart() -> None:
    # The SDK's HTTP transport and spool send batches in wire form.
    batch = WriteBatch()
    for tid in ("a", "b"):
        batch.steps.append(StepHeader(tid, "step-1", step_number=0, reward=1.0 if tid == "a" else 2.0))
        batch.calls.append(CallRow(tid, "step-1", LlmCall(call_id="c1", model="m", user_prompt=tid)))
        batch.accesses.append(AccessRow(tid, "step-1", ProviderAccess(access_id="x", provider_name=tid)))
    back = batch_from_wire(batch_to_wire(batch))
    assert sorted((s.trajectory_id, s.step_id, s.reward) for s in back.steps) == [
        ("a", "step-1", 1.0),
        ("b", "step-1", 2.0),
    ]
    assert sorted((c.trajectory_id, c.step_id, c.call.user_prompt) for c in back.calls) == [
        ("a", "step-1", "a"),
        ("b", "step-1", "b"),
    ]
    assert sorted((a.trajectory_id, a.access.provider_name) for a in back.accesses) == [
        ("a", "a"),
        ("b", "b"),
    ]


# --- HTTP ingest, through the real ASGI app --------------------------------------------------------


def test_http_ingest_of_eliza_exports_stores_everything(store: Store) -> None:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        # Five Eliza trajectories in one request, then two more one by one: the counts stored
        # are the counts received.
        r = client.post(
            "/api/trajectories", json={"trajectories": [eliza(i, call_ids=False) for i in range(5)]}
        )
        assert r.status_code == 200, r.text
        assert (
            r.json()["stored"]
            == r.json()["received"]
            == {
                "trajectories": 5,
                "steps": 10,
                "llmCalls": 10,
                "providerAccesses": 10,
                "scores": 5,
            }
        )
        for i in (5, 6):
            r = client.post("/api/trajectories", json={"trajectories": [eliza(i)]})
            assert r.status_code == 200, r.text
            assert r.json()["stored"] == r.json()["received"]
        # Re-sent: nothing new.
        r = client.post(
            "/api/trajectories", json={"trajectories": [eliza(i, call_ids=False) for i in range(5)]}
        )
        assert r.status_code == 200 and r.json()["stored"]["llmCalls"] == 0
        for i in range(7):
            got = client.get(f"/api/trajectories/eliza-{i}").json()["trajectory"]
            assert (got["stepCount"], got["llmCallCount"], got["providerAccessCount"]) == (2, 2, 2)
            assert [s["stepId"] for s in got["steps"]] == ["step-1", "step-2"]
            calls = [c for s in got["steps"] for c in s["llmCalls"]]
            assert [c["userPrompt"] for c in calls] == [f"question{i} of step 0", f"question{i} of step 1"]
            expected = ["c1", "c2"] if i >= 5 else ["step-1:call:0", "step-2:call:0"]
            assert [c["callId"] for c in calls] == expected
            accesses = [a["accessId"] for s in got["steps"] for a in s["providerAccesses"]]
            assert accesses == ["step-1:access:0", "step-2:access:0"]
        assert client.get("/api/trajectories").json()["total"] == 7
        assert client.get("/api/trajectories/stats").json()["totalLlmCalls"] == 14


def test_http_ingest_of_two_trajectories_sharing_a_call_id(store: Store) -> None:
    def one(tid: str, prompt: str) -> dict[str, Any]:
        call = {"callId": "c1", "model": "m", "userPrompt": prompt}
        return {"id": tid, "steps": [{"stepId": f"{tid}-s", "llmCalls": [call]}]}

    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        r = client.post("/api/trajectories", json={"trajectories": [one("t1", "first"), one("t2", "second")]})
        assert r.status_code == 200 and r.json()["stored"]["llmCalls"] == 2
        got = client.get("/api/trajectories/t2").json()["trajectory"]
        assert [c["userPrompt"] for s in got["steps"] for c in s["llmCalls"]] == ["second"]


# --- the migration: stores built before it read back the same --------------------------------------

_SCOPED = ("steps", "llm_calls", "provider_accesses", "scores")
_SCOPING = "0009_trajectory_scoped_ids"


def _to_old_schema(store: Store) -> None:
    """Rebuild the four tables exactly as migration 0001 created them (sub-ids as global keys), keeping
    their rows, and forget that the scoping migration ran."""
    first = MIGRATIONS[0].statements(store.dialect)  # type: ignore[attr-defined]
    with store._write_tx() as cur:  # type: ignore[attr-defined]
        for table in _SCOPED:
            ddl = [
                s
                for s in first
                if s.startswith(f"CREATE TABLE {table} (")
                or (s.startswith("CREATE INDEX") and f" ON {table} (" in s)
            ]
            assert ddl[0].startswith("CREATE TABLE")
            store._ex(cur, f"CREATE TABLE old_{table} AS SELECT * FROM {table}")  # type: ignore[attr-defined]
            store._ex(cur, f"DROP TABLE {table}")  # type: ignore[attr-defined]
            for stmt in ddl:
                store._ex(cur, stmt)  # type: ignore[attr-defined]
            store._ex(cur, f"INSERT INTO {table} SELECT * FROM old_{table}")  # type: ignore[attr-defined]
            store._ex(cur, f"DROP TABLE old_{table}")  # type: ignore[attr-defined]
        store._ex(cur, "DELETE FROM schema_migrations WHERE name = ?", [_SCOPING])  # type: ignore[attr-defined]


def _snapshot(store: Store) -> tuple[Any, ...]:
    flt = TrajectoryFilter()
    return (
        [orjson.loads(d) for d in store.iter_json_docs(flt)],
        [to_wire(t) for t in store.iter_trajectories(flt)],
        list(store.iter_call_rows(flt)),
        store.stats(),
        sorted(t.id for t in store.list_trajectories(TrajectoryFilter(search="refund")).items),
        store.get_scores(["x", "y"]),
    )


def test_the_scoping_migration_keeps_every_row_of_an_existing_store(store: Store, store_url: str) -> None:
    from tests.helpers import make_trajectory

    assert _SCOPING in [m.name for m in MIGRATIONS]
    ts = [make_trajectory(n_steps=3, prompt=f"refund number{i}") for i in range(4)]
    for t in ts:
        store.write(WriteBatch.from_trajectory(t))
    store.add_scores([Score(ts[0].id, "csat", 0.5), Score(ts[0].id, "csat", 0.7, source="judge")])
    store.write(WriteBatch(calls=[CallRow("x", "lone", LlmCall(model="m", user_prompt="orphan refund"))]))
    store.add_scores([Score("y", "n", 1.0)])
    before = _snapshot(store)
    _to_old_schema(store)
    store.close()
    again = open_store(store_url)
    try:
        assert _SCOPING in again.migrations()
        assert _snapshot(again) == before
        # The migrated store takes reused ids, and the old rows are still found by their ids.
        again.write(batch_from_wire({"trajectories": [eliza(0), eliza(1)]}))
        check_two = [again.get_trajectory(f"eliza-{i}") for i in (0, 1)]
        assert all(t is not None and t.llm_call_count == 2 for t in check_two)
        assert again.write(WriteBatch.from_trajectory(ts[1])).new_calls == 0
        assert again.get_trajectory(ts[1].id).llm_call_count == 6  # type: ignore[union-attr]
    finally:
        again.close()


@pytest.mark.parametrize("table", _SCOPED)
def test_the_scoped_keys_are_the_primary_keys(store: Store, table: str) -> None:
    # What the migration leaves is what a fresh store has: (trajectory_id, sub-id) is the key.
    key = {
        "steps": ("step_id", "trajectory_id"),
        "llm_calls": ("call_id", "trajectory_id"),
        "provider_accesses": ("access_id", "trajectory_id"),
        "scores": ("name", "source", "trajectory_id"),
    }[table]
    with store._read_tx() as cur:  # type: ignore[attr-defined]
        if store.dialect == "sqlite":  # type: ignore[attr-defined]
            rows = store._ex(cur, f"SELECT name, pk FROM pragma_table_info('{table}')").fetchall()  # type: ignore[attr-defined]
            got = tuple(sorted(r[0] for r in rows if r[1]))
        else:
            got = tuple(
                sorted(
                    r[0]
                    for r in store._ex(  # type: ignore[attr-defined]
                        cur,
                        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = ?::regclass AND i.indisprimary",
                        [table],
                    ).fetchall()
                )
            )
    assert got == key
