"""``trajforge score``, ``judge`` and ``datasets`` through Typer's runner on a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import make_support_corpus
from trajforge.cli import app
from trajforge.records import WriteBatch
from trajforge.store import open_store

runner = CliRunner()


def run(*args: str) -> object:
    return runner.invoke(app, list(args), env={"COLUMNS": "250"})


def seeded(tmp_path: Path) -> str:
    db = str(tmp_path / "s.db")
    store = open_store(db)
    for t in make_support_corpus(3):
        store.write(WriteBatch.from_trajectory(t))
    store.close()
    return db


def test_score_then_build_then_list_and_show(tmp_path: Path) -> None:
    db = seeded(tmp_path)
    r = run("score", "--fn", "action_reward_sum", "--db", db)
    assert r.exit_code == 0 and "scored 9" in r.output, r.output
    r = run("score", "--fn", "tests.reward_fns:broken", "--db", db)
    assert r.exit_code == 0 and "errors 6" in r.output and "cannot score" in r.output
    r = run(
        "datasets", "build", "--db", db, "--format", "preference", "--reward-score", "action_reward_sum",
        "--task", "support_reply", "--eval-fraction", "0", "--name", "prefs",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "prefs v1" in r.output and "redacted:" in r.output and "email" in r.output
    r = run("datasets", "list", "--db", db)
    assert r.exit_code == 0 and "1 datasets" in r.output
    store = open_store(db)
    ds_id = store.list_datasets()[0].id
    store.close()
    r = run("datasets", "show", ds_id, "--db", db, "--manifest")
    manifest = json.loads(r.output)
    assert (
        manifest["request"]["rewardScore"] == "action_reward_sum" and manifest["counts"]["rows"]["train"] == 3
    )
    assert run("datasets", "show", "dataset-missing", "--db", db).exit_code == 2


def test_cli_errors_name_the_flag(tmp_path: Path) -> None:
    db = seeded(tmp_path)
    for args, flag in [
        (("datasets", "build", "--format", "csv"), "--format"),
        (("datasets", "build", "--eval-fraction", "1.5"), "--eval-fraction"),
        (("datasets", "build", "--pair-by", "moon"), "--pair-by"),
        (("datasets", "build", "--privacy-pattern", "nolabel"), "--privacy-pattern"),
        (("datasets", "build", "--drop-on", "aliens"), "--drop-on"),
        (("datasets", "build", "--min-llm-calls", "-1"), "--min-llm-calls"),
        (("score", "--fn", "nothing_here"), "--fn"),
        (("judge",), "--base-url"),
    ]:
        r = run(*args, "--db", db)
        assert r.exit_code == 2 and flag in r.output, (args, r.output)


def test_judge_command(tmp_path: Path) -> None:
    db = seeded(tmp_path)

    def answer(messages: list[dict], request: dict) -> str:
        n = messages[1]["content"].count("<trajectory id=")
        return json.dumps(
            {
                "scores": [
                    {"trajectory_id": str(i), "score": i / n, "explanation": "ok"} for i in range(1, n + 1)
                ]
            }
        )

    with FakeOpenAI(answer) as server:
        r = run("judge", "--db", db, "--base-url", server.base_url, "--model", "judge-1")
    assert r.exit_code == 0 and "9 trajectories scored in 3 groups, 0 failed" in r.output, r.output


def test_jobs_and_prompts_commands(tmp_path: Path) -> None:
    from tests.fakes import task_lm

    db = str(tmp_path / "j.db")
    store = open_store(db)
    task_lm.fill_store(store, 30)
    store.close()
    with FakeOpenAI(task_lm.answer) as server:
        r = run(
            "jobs", "start", "--db", db, "--model", "task", "--base-url", server.base_url, "--iterations", "3"
        )
    assert r.exit_code == 0, r.output
    assert "support_reply: 0.000 →" in r.output and "promoted" in r.output
    store = open_store(db)
    job_id = store.list_jobs()[0].id
    store.close()
    assert json.loads(run("jobs", "show", job_id, "--db", db).output)["status"] == "completed"
    assert "job_completed" in run("jobs", "logs", job_id, "--db", db).output
    assert run("jobs", "list", "--db", db).exit_code == 0
    r = run("jobs", "cancel", job_id, "--db", db)
    assert r.exit_code == 2 and "already ended" in r.output
    r = run("jobs", "start", "--db", db, "--backend", "cuda", "--no-wait")
    assert r.exit_code == 2 and "--backend" in r.output
    assert json.loads(run("prompts", "show", "support_reply").output)["version"] == 1
    assert "support_reply" in run("prompts", "list").output
    r = run("prompts", "rollback", "support_reply")
    assert r.exit_code == 2 and "no earlier promoted prompt" in r.output
