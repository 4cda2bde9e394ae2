"""File import (issue 15, items 5-7): idempotent re-import, all-or-nothing files with --skip-bad,
and no foreign field lost (Eliza trajectory objects and eliza_native_v1 per-call rows), through
the library and the CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from trajforge.cli import app
from trajforge.errors import InvalidInput
from trajforge.importer import import_file
from trajforge.records import now_ms, to_wire
from trajforge.store import Store, TrajectoryFilter, open_store

T0 = 1_760_000_000_000
runner = CliRunner()


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@contextlib.contextmanager
def opened(url: str) -> Iterator[Store]:
    s = open_store(url)
    try:
        yield s
    finally:
        s.close()


def snapshot(store: Store) -> list[dict[str, Any]]:
    """Everything stored, but ``updatedAt``: the store's note of the last write, which a re-sent
    batch touches by design (the timeout sweep reads it)."""
    out = []
    for t in store.iter_trajectories(TrajectoryFilter()):
        wire = to_wire(t)
        wire.pop("updatedAt")
        out.append(wire)
    return out


def eliza_trajectory(tid: str = "eliza-1", final: str = "completed") -> dict[str, Any]:
    """An Eliza plugin-trajectory-logger trajectory: no call or access ids, metrics.finalStatus."""
    return {
        "trajectoryId": tid,
        "agentId": "agent-7",
        "startTime": T0,
        "endTime": T0 + 5_000,
        "durationMs": 5_000,
        "episodeId": "ep-1",
        "scenarioId": "sc-1",
        "steps": [
            {
                "stepId": f"{tid}-s0",
                "stepNumber": 0,
                "timestamp": T0 + 10,
                "environmentState": {"balance": 10},
                "llmCalls": [
                    {
                        "timestamp": T0 + 20,
                        "model": "gpt-x",
                        "systemPrompt": "You are a trader.",
                        "userPrompt": "Buy?",
                        "response": "Yes.",
                        "thinking": "cheap today",
                        "temperature": 0.2,
                        "maxTokens": 64,
                        "purpose": "action",
                        "stepType": "planner",
                        "promptTokens": 5,
                        "completionTokens": 2,
                    },
                    {"timestamp": T0 + 25, "model": "gpt-x", "userPrompt": "Sure?", "stepType": "planner"},
                ],
                "providerAccesses": [
                    {
                        "providerId": "market",
                        "providerName": "market_data",
                        "timestamp": T0 + 15,
                        "data": {"price": 3},
                        "purpose": "context",
                    }
                ],
                "action": {
                    "attemptId": "att-1",
                    "timestamp": T0 + 30,
                    "actionType": "BUY",
                    "actionName": "buy",
                    "parameters": {"n": 1},
                    "success": True,
                },
                "reward": 0.5,
                "done": True,
            }
        ],
        "totalReward": 0.5,
        "rewardComponents": {"environmentReward": 0.5},
        "metrics": {"episodeLength": 1, "finalStatus": final, "tradesExecuted": 1},
        "metadata": {"agentName": "Eliza", "isTrainingData": True},
    }


def native_row(i: int, **over: Any) -> dict[str, Any]:
    """An eliza_native_v1 per-call row (Eliza's ElizaNativeTrajectoryRow)."""
    row = {
        "format": "eliza_native_v1",
        "schemaVersion": 1,
        "boundary": "vercel_ai_sdk.generateText",
        "trajectoryId": "native-1",
        "source": "scenario",
        "status": "completed",
        "stepId": f"step-{i}",
        "stepIndex": i,
        "callId": f"native-1-call-{i}",
        "callIndex": 0,
        "timestamp": T0 + 100 * i,
        "purpose": "planner",
        "stepType": "planner" if i == 0 else "evaluation",
        "model": "teacher",
        "provider": "scenario-runner",
        "request": {
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}],
            "settings": {"temperature": 0.3, "maxTokens" if i == 0 else "maxOutputTokens": 128 + i},
            "toolChoice": "auto",
            "tools": {"lookup": {"description": "find a record"}} if i == 1 else [{"type": "function"}],
        },
        "response": {
            "text": f"a{i}",
            "usage": {"promptTokens": 10, "completionTokens": 3, "totalTokens": 13},
        },
        "metadata": {"agentId": "agent-1", "task_type": "planner", "call_id": f"native-1-call-{i}"},
    }
    row.update(over)
    return row


def standalone_row(text: str) -> dict[str, Any]:
    """An eliza_native_v1 training row as Eliza's optimizer writes them: no ids, no times."""
    return {
        "format": "eliza_native_v1",
        "boundary": "vercel_ai_sdk.generateText",
        "request": {"system": "planner", "messages": [{"role": "user", "content": text}]},
        "response": {"text": "REPLY"},
        "reward": 1.0,
        "metadata": {"caseId": text},
    }


def simple_trajectory(i: int) -> dict[str, Any]:
    return {
        "id": f"t-{i:03d}",
        "agentId": "a",
        "status": "completed",
        "startTime": T0 + i,
        "steps": [
            {
                "stepId": f"t-{i:03d}-s",
                "timestamp": T0 + i,
                "llmCalls": [{"callId": f"c-{i:03d}", "timestamp": T0 + i}],
            }
        ],
    }


@pytest.fixture(params=["read once", "read twice"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small files are converted once and held; big ones are read twice (check, then store)."""
    if request.param == "read twice":
        monkeypatch.setattr("trajforge.importer.KEEP_BYTES", 0)
    return str(request.param)


# --- item 5: re-import changes nothing ------------------------------------------------------------


def test_reimporting_eliza_trajectories_from_another_path_changes_nothing(
    store: Store, tmp_path: Path, reading: str
) -> None:
    first = write_jsonl(tmp_path / "eliza.jsonl", [eliza_trajectory("e-1"), eliza_trajectory("e-2")])
    counts = import_file(store, first)
    assert counts["newTrajectories"] == 2 and counts["newLlmCalls"] == 4
    before = snapshot(store)
    t = store.get_trajectory("e-1")
    assert t is not None and t.provider_access_count == 1 and t.llm_call_count == 2
    # Ids derived from the place in the trajectory (scoped to it, as HTTP ingest derives them).
    assert [c.call_id for c in t.steps[0].llm_calls] == ["e-1-s0:call:0", "e-1-s0:call:1"]
    assert t.steps[0].provider_accesses[0].access_id == "e-1-s0:access:0"
    moved = tmp_path / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    again = import_file(store, moved)
    assert again["newTrajectories"] == 0 and again["newLlmCalls"] == 0
    assert snapshot(store) == before


def test_what_was_sent_over_http_imports_as_the_same_records(store: Store, tmp_path: Path) -> None:
    """A trajectory whose calls and accesses have no ids, posted and then imported from a file,
    is one record each: both ways derive the same ids."""
    from fastapi.testclient import TestClient

    from trajforge.server import create_app

    traj = eliza_trajectory("h-1")
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        r = client.post("/api/trajectories", json={"trajectories": [traj]})
        assert r.status_code == 200, r.text
    counts = import_file(store, write_jsonl(tmp_path / "h.jsonl", [traj]))
    assert counts["newTrajectories"] == 0 and counts["newLlmCalls"] == 0, counts
    t = store.get_trajectory("h-1")
    assert t is not None and t.llm_call_count == 2 and t.provider_access_count == 1


def test_reimporting_rows_without_ids_changes_nothing(store: Store, tmp_path: Path) -> None:
    rows = [standalone_row("lunch"), standalone_row("dinner"), standalone_row("lunch")]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    counts = import_file(store, path)
    # Two identical rows are two training examples: both kept, under distinct stable ids.
    assert counts["newTrajectories"] == 3 and counts["newLlmCalls"] == 3
    before = snapshot(store)
    # The same rows as a JSON document under another name, in another order: still nothing new.
    doc = tmp_path / "copy.json"
    doc.write_text(json.dumps([rows[1], rows[0], rows[2]], indent=2))
    again = import_file(store, doc)
    assert again["newTrajectories"] == 0 and again["newLlmCalls"] == 0
    assert snapshot(store) == before
    assert store.count(TrajectoryFilter()) == 3


def test_reimport_through_the_cli_changes_nothing(store_url: str, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl", [eliza_trajectory(), native_row(0), native_row(1), standalone_row("x")]
    )
    r = cli("trajectories", "import", str(path), "--db", store_url)
    assert r.exit_code == 0, r.output
    assert "stored 3 new trajectories, 5 new LLM calls" in r.output
    with opened(store_url) as s:
        before = snapshot(s)
    r = cli("trajectories", "import", str(path), "--db", store_url)
    assert r.exit_code == 0 and "stored 0 new trajectories, 0 new LLM calls" in r.output, r.output
    with opened(store_url) as s:
        assert snapshot(s) == before


# --- item 6: all or nothing, --skip-bad -----------------------------------------------------------


def _file_with_bad_line_250(tmp_path: Path) -> tuple[Path, str]:
    lines: list[Any] = [simple_trajectory(i) for i in range(260)]
    bad = json.dumps({**simple_trajectory(249), "startTime": "yesterday"})
    lines[249] = bad
    return write_jsonl(tmp_path / "big.jsonl", lines), bad


def test_a_bad_line_stores_nothing_and_is_named(store: Store, tmp_path: Path, reading: str) -> None:
    path, _ = _file_with_bad_line_250(tmp_path)
    with pytest.raises(InvalidInput) as exc:
        import_file(store, path)
    assert "big.jsonl:250.startTime" in exc.value.message and "nothing was stored" in exc.value.message
    assert store.count(TrajectoryFilter()) == 0


def test_skip_bad_stores_the_good_rows_and_writes_the_bad_ones(
    store: Store, tmp_path: Path, reading: str
) -> None:
    path, bad_line = _file_with_bad_line_250(tmp_path)
    out = tmp_path / "bad.jsonl"
    counts = import_file(store, path, bad_rows=out)
    assert counts["badRows"] == 1 and counts["newTrajectories"] == 259
    assert store.count(TrajectoryFilter()) == 259 and store.get_trajectory("t-249") is None
    (bad,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert bad["where"] == "big.jsonl:250" and bad["field"] == "big.jsonl:250.startTime"
    assert "expected a number" in bad["error"] and bad["text"] == bad_line
    fixed = path.read_text().replace(bad_line, json.dumps(simple_trajectory(249)))
    path.write_text(fixed)
    # Fixed, the whole file imported again stores just that row, and no stale bad row is left.
    assert import_file(store, path, bad_rows=out)["newTrajectories"] == 1 and out.read_text() == ""


def test_bad_rows_through_the_cli(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, bad_line = _file_with_bad_line_250(tmp_path)
    r = cli("trajectories", "import", str(path), "--db", store_url)
    assert r.exit_code == 2 and "big.jsonl:250" in r.output and "nothing was stored" in r.output, r.output
    with opened(store_url) as s:
        assert s.count(TrajectoryFilter()) == 0
    monkeypatch.chdir(tmp_path)
    r = cli("trajectories", "import", str(path), "--db", store_url, "--skip-bad")
    assert r.exit_code == 0, r.output
    assert "stored 259 new trajectories" in r.output and "skipped 1 bad rows" in r.output
    assert json.loads((tmp_path / "big.bad.jsonl").read_text())["text"] == bad_line
    with opened(store_url) as s:
        assert s.count(TrajectoryFilter()) == 259
    r = cli("trajectories", "import", str(path), "--db", store_url, "--bad-rows", str(path))
    assert r.exit_code == 2 and "--bad-rows" in r.output


def test_invalid_json_lines_are_bad_rows_too(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [simple_trajectory(1), "{not json", simple_trajectory(2)])
    with pytest.raises(InvalidInput, match=r"x\.jsonl:2: not valid JSON"):
        import_file(store, path)
    assert store.count(TrajectoryFilter()) == 0
    assert import_file(store, path, bad_rows=tmp_path / "b.jsonl")["newTrajectories"] == 2


# --- item 7: foreign fields are kept, malformed rows are errors -----------------------------------


def test_eliza_trajectory_fields_have_a_home(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "e.jsonl", [eliza_trajectory("done"), eliza_trajectory("stopped", final="terminated")]
    )
    import_file(store, path)
    # metrics.finalStatus is the status: a `--status completed` dataset build sees both.
    assert {t.id for t in store.iter_trajectories(TrajectoryFilter(status="completed"))} == {
        "done",
        "stopped",
    }
    t = store.get_trajectory("stopped")
    assert t is not None and t.is_training_data and t.total_reward == 0.5 and t.scenario_id == "sc-1"
    src = t.metadata["sourceFields"]
    assert src["metrics"] == {"episodeLength": 1, "finalStatus": "terminated", "tradesExecuted": 1}
    assert src["rewardComponents"] == {"environmentReward": 0.5} and src["episodeId"] == "ep-1"
    assert t.metadata["agentName"] == "Eliza"
    step = t.steps[0]
    assert step.metadata is not None and step.metadata["stepType"] == "planner"
    assert step.metadata["sourceFields"] == {"environmentState": {"balance": 10}}
    assert step.metadata["actionSourceFields"] == {"attemptId": "att-1"}
    call = step.llm_calls[0]
    assert (call.reasoning, call.temperature, call.max_tokens, call.prompt_tokens) == (
        "cheap today",
        0.2,
        64,
        5,
    )


def test_eliza_native_row_fields_have_a_home(store: Store, tmp_path: Path) -> None:
    rows = [native_row(0), native_row(1)]
    import_file(store, write_jsonl(tmp_path / "n.jsonl", rows))
    t = store.get_trajectory("native-1")
    assert t is not None
    assert (t.agent_id, t.source, t.status) == ("agent-1", "scenario", "completed")  # agentId from metadata
    assert (t.start_time, t.end_time) == (T0, T0 + 100)  # the earliest and latest call, not 1970
    assert t.metadata["task_type"] == "planner" and t.metadata["agentId"] == "agent-1"
    assert t.metadata["sourceFields"] == {
        "format": "eliza_native_v1",
        "schemaVersion": 1,
        "boundary": "vercel_ai_sdk.generateText",
        "callIndex": 0,
        "provider": "scenario-runner",
        "response": {"usage": {"totalTokens": 13}},
    }
    s0, s1 = t.steps
    assert s0.step_number == 0 and s1.step_number == 1
    assert s0.metadata is not None and s1.metadata is not None
    assert (s0.metadata["stepType"], s1.metadata["stepType"]) == ("planner", "evaluation")
    assert s1.metadata["callSourceFields"] == {
        "native-1-call-1": {
            "metadata": {"call_id": "native-1-call-1"},
            # Not a list: kept as it is (and so this row's request differs from the other's).
            "request": {"toolChoice": "auto", "tools": {"lookup": {"description": "find a record"}}},
        }
    }
    c0, c1 = s0.llm_calls[0], s1.llm_calls[0]
    assert (c0.temperature, c0.max_tokens, c1.max_tokens) == (0.3, 128, 129)
    assert (c0.system_prompt, c0.user_prompt, c0.response, c0.prompt_tokens) == ("sys", "q0", "a0", 10)
    assert c0.tools == [{"type": "function"}] and c1.tools is None


def test_a_trajectory_without_any_time_says_so(store: Store, tmp_path: Path) -> None:
    started = now_ms()
    rows = [native_row(0, timestamp=None), native_row(1, timestamp=None)]
    import_file(store, write_jsonl(tmp_path / "n.jsonl", rows))
    t = store.get_trajectory("native-1")
    assert t is not None and t.metadata["startTimeUnknown"] is True
    assert t.start_time >= started and t.end_time is None  # the import time, flagged; never 1970
    before = snapshot(store)
    import_file(store, tmp_path / "n.jsonl")
    assert snapshot(store) == before  # a later import does not move it


def test_a_call_without_a_time_takes_its_steps_and_is_flagged(store: Store, tmp_path: Path) -> None:
    traj = eliza_trajectory()
    del traj["steps"][0]["llmCalls"][1]["timestamp"]
    import_file(store, write_jsonl(tmp_path / "e.jsonl", [traj]))
    t = store.get_trajectory("eliza-1")
    assert t is not None and "startTimeUnknown" not in t.metadata
    step = t.steps[0]
    late = next(c for c in step.llm_calls if c.call_id == "eliza-1-s0:call:1")
    assert late.timestamp == step.timestamp == T0 + 10
    assert step.metadata is not None and step.metadata["timesUnknown"] == ["call:eliza-1-s0:call:1"]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"callId": "c", "request": {"prompt": "p"}, "response": {"text": "r"}}, "trajectoryId"),
        ({"trajectoryId": "t", "request": {"prompt": "p"}, "response": {"text": "r"}}, "callId"),
        (
            {"trajectoryId": "t", "callId": "c", "response": {"text": "r"}, "usage": {"prompt_tokens": "12"}},
            "usage.prompt_tokens",
        ),
        (
            {"trajectoryId": "t", "callId": "c", "request": {"settings": {"temperature": "hot"}}},
            "request.settings.temperature",
        ),
        ({"agentId": "a", "steps": []}, "trajectoryId"),
        ({**native_row(0), "format": "eliza_native_v9"}, "format"),
        ({"trajectoryId": "t", "metrics": {"finalStatus": "finished"}, "steps": []}, "metrics.finalStatus"),
        (
            {
                "id": "t",
                "steps": [
                    {"stepId": "s", "llmCalls": [{"callId": "c"}]},
                    {"stepId": "u", "llmCalls": [{"callId": "c"}]},
                ],
            },
            "steps[1].llmCalls[0].callId",
        ),
    ],
)
def test_malformed_rows_are_errors(tmp_path: Path, row: dict[str, Any], field: str) -> None:
    db = str(tmp_path / "s.db")
    path = write_jsonl(tmp_path / "m.jsonl", [simple_trajectory(1), row])
    r = cli("trajectories", "import", str(path), "--db", db)
    assert r.exit_code == 2 and f"m.jsonl:2.{field}" in r.output, r.output
    with opened(db) as s:
        assert s.count(TrajectoryFilter()) == 0


def test_a_reused_call_id_is_an_error_and_an_exact_copy_is_read_once(store: Store, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [native_row(0), native_row(0), native_row(1, callId="native-1-call-0")]
    )
    with pytest.raises(InvalidInput, match=r"d\.jsonl:3\.callId.*already used.*d\.jsonl:1"):
        import_file(store, path)
    counts = import_file(store, write_jsonl(path, [native_row(0), native_row(0), native_row(1)]))
    assert counts["duplicateRows"] == 1 and counts["newLlmCalls"] == 2


maybe = st.booleans()


@st.composite
def foreign_trajectories(draw: st.DrawFn) -> dict[str, Any]:
    """Trajectory objects with any of their ids and times left out, and fields we have no column for.
    The ids given are unique across trajectories (the store's id scope is another change's)."""
    tid = f"f-{draw(st.integers(0, 10**6))}"
    steps = []
    for j in range(draw(st.integers(0, 3))):
        step: dict[str, Any] = {"llmCalls": [], "providerAccesses": [], "envState": draw(st.integers())}
        if draw(maybe):
            step["stepId"] = f"{tid}-s{j}"
        if draw(maybe):
            step["timestamp"] = T0 + j
        for k in range(draw(st.integers(0, 2))):
            call: dict[str, Any] = {"userPrompt": f"q{j}{k}", "stepType": draw(st.sampled_from(["a", "b"]))}
            if draw(maybe):
                call["callId"] = f"{tid}-c{j}{k}"
            if draw(maybe):
                call["timestamp"] = T0 + 10 * j + k
            step["llmCalls"].append(call)
        for k in range(draw(st.integers(0, 2))):
            access: dict[str, Any] = {"providerName": "p", "data": {"k": k}}
            if draw(maybe):
                access["timestamp"] = T0 + 10 * j + k
            step["providerAccesses"].append(access)
        steps.append(step)
    t: dict[str, Any] = {
        "trajectoryId": tid,
        "steps": steps,
        "metrics": {"x": 1},
    }
    if draw(maybe):
        t["startTime"] = T0
    return t


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(foreign_trajectories(), min_size=1, max_size=3, unique_by=lambda t: t["trajectoryId"]))
def test_any_trajectory_reimports_to_the_same_store(tmp_path: Path, items: list[dict[str, Any]]) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = write_jsonl(folder / "f.jsonl", items)
    store = open_store(str(folder / "s.db"))
    try:
        first = import_file(store, path)
        assert first["newTrajectories"] == len(items)
        assert first["newLlmCalls"] == sum(len(s["llmCalls"]) for t in items for s in t["steps"])
        before = snapshot(store)
        again = import_file(store, path)
        assert again["newTrajectories"] == 0 and again["newLlmCalls"] == 0
        assert snapshot(store) == before
        for t in store.iter_trajectories(TrajectoryFilter()):
            assert t.start_time > 0 and t.provider_access_count == sum(
                len(s["providerAccesses"])
                for s in next(i for i in items if i["trajectoryId"] == t.id)["steps"]
            )
    finally:
        store.close()
