"""The CLI through Typer's runner, on a real SQLite store (and one PostgreSQL pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tests.helpers import make_trajectory
from trajforge.cli import app
from trajforge.records import WriteBatch
from trajforge.store import TrajectoryFilter, open_store

runner = CliRunner()


def seeded(url: str, n: int = 3) -> list[str]:
    store = open_store(url)
    ids = []
    for i in range(n):
        t = make_trajectory(
            start_time=1_700_000_000_000 + i * 1000, source="chat" if i else "discord", prompt=f"case word{i}"
        )
        store.write(WriteBatch.from_trajectory(t))
        ids.append(t.id)
    store.close()
    return ids


def run(*args: str, input: str | None = None):
    result = runner.invoke(app, list(args), input=input, env={"COLUMNS": "250"})
    return result


def test_every_command_has_help() -> None:
    seen = []

    def walk(cmd: Any, path: str) -> None:
        seen.append(path)
        assert cmd.help or cmd.short_help, f"{path} has no help text"
        for param in cmd.params:
            assert getattr(param, "help", None) or param.param_type_name == "argument", (path, param.name)
        # Typer vendors its own click: its groups are not click.Group instances.
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(get_command(app), "trajforge")
    assert "trajforge jobs start" in seen and "trajforge models list" in seen


def test_list_show_stats(store_url: str) -> None:
    ids = seeded(store_url)
    r = run("trajectories", "list", "--db", store_url, "--source", "chat")
    assert r.exit_code == 0, r.output
    assert "2 trajectories" in r.output and ids[2] in r.output and ids[0] not in r.output
    r = run("trajectories", "list", "--db", store_url, "-q", "word1")
    assert "1 trajectories" in r.output
    r = run("trajectories", "show", ids[0], "--db", store_url)
    assert r.exit_code == 0 and "step 0" in r.output and "REFUND" in r.output and "provider" in r.output
    r = run("trajectories", "stats", "--db", store_url)
    assert r.exit_code == 0 and "totalTrajectories" in r.output
    assert run("trajectories", "show", "missing", "--db", store_url).exit_code == 1


def test_errors_name_the_flag(tmp_path: Path) -> None:
    db = str(tmp_path / "e.db")
    r = run("trajectories", "list", "--db", db, "--status", "finished")
    assert r.exit_code == 2 and "--status" in r.output
    r = run("trajectories", "list", "--db", db, "--search", '"open')
    assert r.exit_code == 2 and "--search" in r.output
    r = run("trajectories", "list", "--db", db, "--start-date", "someday")
    assert r.exit_code == 2 and "--start-date" in r.output
    r = run("trajectories", "export", "--db", db, "--format", "xml", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "--format" in r.output
    r = run("trajectories", "list", "--db", "sqlite://bad")
    assert r.exit_code == 2 and "--db" in r.output


def test_export_import_delete_config(tmp_path: Path) -> None:
    db, other = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    ids = seeded(db, 4)
    out = tmp_path / "all.jsonl"
    r = run("trajectories", "export", "--db", db, "--format", "jsonl", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 4 and "wrote 4 trajectories" in r.output
    for fmt in ("json", "csv", "art", "zip", "parquet"):
        path = tmp_path / f"x.{fmt}"
        assert (
            run("trajectories", "export", "--db", db, "-f", fmt, "-o", str(path), "--limit", "2").exit_code
            == 0
        )
        assert path.stat().st_size > 0
    r = run("trajectories", "import", str(out), "--db", other)
    assert r.exit_code == 0 and "stored 4 new trajectories" in r.output, r.output
    r = run("trajectories", "import", str(out), "--db", other)
    assert "stored 0 new trajectories" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "startTime": "soon"}\n')
    r = run("trajectories", "import", str(bad), "--db", other)
    assert r.exit_code == 2 and "startTime" in r.output
    assert run("trajectories", "delete", ids[0], "--db", db).output.strip() == "deleted 1 trajectories"
    r = run("trajectories", "delete", "--all", "--db", db, input="n\n")
    assert r.exit_code == 1 and open_store(db).count(TrajectoryFilter()) == 3
    r = run("trajectories", "delete", "--all", "--yes", "--db", db)
    assert r.exit_code == 0 and open_store(db).count(TrajectoryFilter()) == 0
    assert run("trajectories", "delete", "--db", db).exit_code == 2
    assert run("config", "logging", "off", "--db", db).exit_code == 0
    assert open_store(db).get_setting("logging_enabled") is False
    assert run("config", "logging", "maybe", "--db", db).exit_code == 2


def test_serve_refuses_public_bind_without_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("serve", "--host", "0.0.0.0", "--db", str(tmp_path / "s.db"))
    assert r.exit_code == 2 and "TRAJFORGE_API_TOKEN" in r.output


def test_python_dash_m_sees_every_command(tmp_path: Path) -> None:
    """``python -m trajforge.cli`` runs with every command registered (an entry point defined above
    the models commands once ran before they existed)."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "trajforge.cli", "models", "list", "--db", str(tmp_path / "m.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "0 models" in r.stdout
