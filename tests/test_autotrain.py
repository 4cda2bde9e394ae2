from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trajforge import autotrain
from trajforge.errors import InvalidInput
from trajforge.optimize import artifacts
from trajforge.records import LlmCall, Step, Trajectory, TrajectoryHeader, WriteBatch, now_ms
from trajforge.server import create_app
from trajforge.store import Store

HOUR = 3_600_000


def _complete(store: Store, n: int, task: str = "support_reply", status: str = "completed") -> list[str]:
    ids = []
    for _ in range(n):
        t = Trajectory(status=status)
        step = Step()
        step.llm_calls.append(LlmCall(user_prompt="hi", response="ok", action_type=task))
        step.llm_calls.append(LlmCall(user_prompt="hmm", response="ok", purpose="reasoning"))
        t.steps.append(step)
        store.write(WriteBatch.from_trajectory(t))
        ids.append(t.id)
    return ids


def _counts(store: Store) -> dict[str, int]:
    return {r["task"]: r["completed"] for r in store.task_counters()}


def test_completed_trajectories_are_counted_once_per_task(store: Store) -> None:
    ids = _complete(store, 3)
    _complete(store, 2, status="active")
    assert _counts(store) == {"support_reply": 3, "reasoning": 3}
    # Re-sending a completion, or completing later in another write, counts exactly once.
    store.write(WriteBatch(trajectories=[TrajectoryHeader(id=ids[0], status="completed")]))
    late = _complete(store, 1, status="active")[0]
    store.write(WriteBatch(trajectories=[TrajectoryHeader(id=late, status="completed")]))
    assert _counts(store) == {"support_reply": 4, "reasoning": 4}


def test_threshold_cooldown_and_reset_rules(store: Store, tmp_path: Path) -> None:
    autotrain.set_config(
        store, {"threshold": 5, "cooldownHours": 1, "perTask": {"reasoning": {"threshold": 1000}}}
    )
    t0 = now_ms()
    _complete(store, 4)
    assert autotrain.check(store, t0, home=tmp_path) == []
    _complete(store, 1)
    [job] = autotrain.check(store, t0, home=tmp_path)
    assert job.request["task"] == "support_reply" and store.get_job(job.id).status == "pending"
    assert autotrain.check(store, t0 + 1, home=tmp_path) == []  # its job is on its way
    _complete(store, 2)  # arrive while it runs: they stay counted after the reset
    store.finish_job(job.id, "completed", t0 + 2)
    assert autotrain.check(store, t0 + 3, home=tmp_path) == []  # settles; 2 < 5
    assert _counts(store)["support_reply"] == 2
    _complete(store, 5)
    assert autotrain.check(store, t0 + 10, home=tmp_path) == []  # cooldown: 1 h since the trigger
    [again] = autotrain.check(store, t0 + HOUR + 1, home=tmp_path)
    store.finish_job(again.id, "failed", t0 + HOUR + 2, error="boom")
    autotrain.check(store, t0 + HOUR + 3, home=tmp_path)
    assert _counts(store)["support_reply"] == 7  # a failed run resets nothing
    status = {t["task"]: t for t in autotrain.status(store, t0 + HOUR + 4, home=tmp_path)["tasks"]}
    assert status["support_reply"]["cooldownHoursLeft"] > 0.99 and not status["support_reply"]["due"]
    assert status["reasoning"]["threshold"] == 1000


def test_bootstrap_optimizes_tasks_without_a_prompt(store: Store, tmp_path: Path) -> None:
    autotrain.set_config(
        store, {"threshold": 3, "cooldownHours": 12, "perTask": {"reasoning": {"threshold": 99}}}
    )
    _complete(store, 3)
    t0 = now_ms()
    [first] = autotrain.check(store, t0, home=tmp_path)
    store.finish_job(first.id, "failed", t0 + 1, error="x")
    assert autotrain.check(store, t0 + 2, home=tmp_path) == []  # cooling down
    [boot] = autotrain.check(store, t0 + 3, bootstrap=True, home=tmp_path)  # no prompt yet: bootstrap
    store.finish_job(boot.id, "completed", t0 + 4)
    autotrain.check(store, t0 + 5, home=tmp_path)
    _complete(store, 3)
    artifacts.save(artifacts.PromptArtifact("support_reply", "x", "p", "b"), force=True, home=tmp_path)
    assert autotrain.check(store, t0 + 6, bootstrap=True, home=tmp_path) == []  # has a prompt: cooldown rules


def test_disabled_and_manual_trigger(store: Store, tmp_path: Path) -> None:
    autotrain.set_config(store, {"enabled": False, "threshold": 1})
    _complete(store, 2)
    assert autotrain.check(store, home=tmp_path) == []
    jobs = autotrain.trigger(store, "support_reply")
    assert len(jobs) == 1 and autotrain.trigger(store, "support_reply") == []
    with pytest.raises(Exception) as err:
        autotrain.trigger(store, "nope")
    assert "nope" in str(err.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": "100"}, "threshold"),
        ({"cooldownHours": -1}, "cooldownHours"),
        ({"enabled": "yes"}, "enabled"),
        ({"perTask": {"a": {"threshold": 0}}}, "perTask.a.threshold"),
        ({"perTask": {"a": {"colour": 1}}}, "perTask.a.colour"),
        ({"perTask": {"a": {"backend": "tpu"}}}, "perTask.a.backend"),
        ({"thresold": 5}, "thresold"),
    ],
)
def test_bad_config_is_refused_naming_the_field(store: Store, body: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        autotrain.set_config(store, body)
    assert err.value.field == field
    assert autotrain.get_config(store) == autotrain.DEFAULTS


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def test_auto_api(client: TestClient, store: Store) -> None:
    assert client.get("/api/training/auto/config").json()["threshold"] == 100
    r = client.put("/api/training/auto/config", json={"threshold": 2, "cooldownHours": 0.5})
    assert r.status_code == 200 and r.json()["cooldownHours"] == 0.5
    bad = client.put("/api/training/auto/config", json={"threshold": -3})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "threshold"
    _complete(store, 2)
    tasks = {t["task"]: t for t in client.get("/api/training/auto/status").json()["tasks"]}
    assert tasks["support_reply"]["due"] and tasks["support_reply"]["completedSinceLastRun"] == 2
    started = client.post("/api/training/auto/trigger", json={"task": "support_reply"}).json()["jobs"]
    assert len(started) == 1 and started[0]["request"]["task"] == "support_reply"
    assert client.post("/api/training/auto/trigger", json={"task": "ghost"}).status_code == 404
