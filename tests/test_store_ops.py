"""Running a store: SQLite's commit durability setting, and data migrations that run in resumable
batches with progress (killed mid-way, restarted, exact), also behind a starting server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PG_BASE
from tests.helpers import make_trajectory, until
from trajforge import settings
from trajforge.errors import StoreError
from trajforge.records import WriteBatch
from trajforge.server import create_app
from trajforge.store import Store, TrajectoryFilter, open_store

ROOT = Path(__file__).resolve().parent.parent

# --- TRAJFORGE_SQLITE_SYNC ---------------------------------------------------------------------------


def _synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.parametrize(("value", "pragma"), [(None, 1), ("normal", 1), ("FULL", 2), (" full ", 2)])
def test_sqlite_sync_sets_every_connection_of_the_store(
    value: str | None, pragma: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(settings.SQLITE_SYNC, raising=False)
    else:
        monkeypatch.setenv(settings.SQLITE_SYNC, value)
    store = open_store(tmp_path / "s.db")
    try:
        assert _synchronous(store._writer) == pragma  # type: ignore[attr-defined]
        assert _synchronous(store._reader()) == pragma  # type: ignore[attr-defined]
        store.write(WriteBatch.from_trajectory(make_trajectory()))
        assert store.count(TrajectoryFilter()) == 1
    finally:
        store.close()


def test_a_bad_sqlite_sync_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.SQLITE_SYNC, "off")
    with pytest.raises(StoreError, match=r"TRAJFORGE_SQLITE_SYNC must be one of normal, full, got 'off'"):
        open_store(tmp_path / "s.db")


# --- a data migration killed mid-way ------------------------------------------------------------------

ROWS = 3000

# The child process: runs a data migration that is not idempotent on purpose (v doubles, w counts
# how often a row was rewritten), so a batch applied twice would show. Prints each progress report.
# It stops (blocked on stdin) once ``pause_at`` rows are done, so a kill is sure to come mid-way.
CHILD = """
import sys
from trajforge.store import open_store
from trajforge.store.migrations import DataMigration, run_data_migration

url, pause_at = sys.argv[1], int(sys.argv[2])
migration = DataMigration(
    "9001_test_rewrite",
    table="dm_items",
    key="id",
    setup=("ALTER TABLE dm_items ADD COLUMN w {BIGINT}",),
    batch=("UPDATE dm_items SET v = v * 2 + 1, w = COALESCE(w, 0) + 1 WHERE id > ? AND id <= ?",),
    batch_rows=40,
)
store = open_store(url)

def progress(name, done, total):
    print(done, total, flush=True)
    if done >= pause_at:
        print("paused", flush=True)
        sys.stdin.readline()

run_data_migration(store, migration, progress)
store.close()
print("finished", flush=True)
"""


def _child(url: str, pause_at: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(pause_at)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _sql(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with store._write_tx() as cur:  # type: ignore[attr-defined]
        got = store._ex(cur, sql, params)  # type: ignore[attr-defined]
        return list(got.fetchall()) if got.description else []


def _cursor(store: Store) -> int | None:
    value = store.get_setting("data_migration:9001_test_rewrite")
    return None if value is None else int(value)


def test_a_data_migration_killed_mid_way_resumes_where_it_stopped_and_is_exact(store_url: str) -> None:
    store = open_store(store_url)
    try:
        _sql(store, "CREATE TABLE dm_items (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)")
        with store._write_tx() as cur:  # type: ignore[attr-defined]
            store._exmany(
                cur, "INSERT INTO dm_items (id, v) VALUES (?, ?)", [(i, i) for i in range(1, ROWS + 1)]
            )  # type: ignore[attr-defined]

        # 1. Killed between batches, after a third of the rows.
        child = _child(store_url, ROWS // 3)
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.strip() == "paused":
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert lines[-1] == "paused", lines
        paused_at = int(lines[-2].split()[0])
        assert ROWS // 3 <= paused_at < ROWS
        assert _cursor(store) == paused_at  # ids are 1..ROWS: the cursor is the last row done
        assert _sql(store, "SELECT COUNT(*) FROM dm_items WHERE w = 1")[0][0] == paused_at
        assert _sql(store, "SELECT COUNT(*) FROM dm_items WHERE w IS NULL")[0][0] == ROWS - paused_at

        # 2. Killed again at its first report: it resumed (its first report is past the first
        # run's rows); the kill lands before two thirds, most likely inside a batch.
        child = _child(store_url, 2 * ROWS // 3)
        assert child.stdout is not None
        first = child.stdout.readline().split()
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert int(first[0]) > paused_at and int(first[1]) == ROWS
        second_stop = _cursor(store)
        assert second_stop is not None and paused_at < second_stop <= 2 * ROWS // 3 + 40

        # 3. Run to the end: it starts from the stored cursor, not from scratch.
        child = _child(store_url, ROWS + 1)
        out, _ = child.communicate(timeout=600)
        reports = [line.split() for line in out.splitlines() if line != "finished"]
        assert out.splitlines()[-1] == "finished", out
        assert int(reports[0][0]) > second_stop
        assert [int(r[0]) for r in reports] == sorted(int(r[0]) for r in reports)
        assert reports[-1] == [str(ROWS), str(ROWS)]

        # Every row rewritten exactly once, and the migration recorded, its cursor gone.
        rows = _sql(store, "SELECT id, v, w FROM dm_items ORDER BY id")
        assert len(rows) == ROWS
        bad = [r for r in rows if (r[1], r[2]) != (2 * r[0] + 1, 1)]
        assert bad == []
        assert "9001_test_rewrite" in store.migrations()
        assert _cursor(store) is None
    finally:
        store.close()


# --- migration 0008 as a data migration --------------------------------------------------------------


def _pre_0008(url: str, n: int = 40) -> dict[int, str | None]:
    """A store with texts as an old trajforge left it before 0008 (no ``owner``), and the owners
    0008 must give them: texts used by one trajectory and texts shared by all."""
    store = open_store(url)
    try:
        for i in range(n):
            t = make_trajectory(n_steps=2, calls_per_step=2, prompt=f"customer {i} asks for order A-{i}")
            store.write(WriteBatch.from_trajectory(t))
        expected = {int(r[0]): r[1] for r in _sql(store, "SELECT id, owner FROM texts")}
        assert sum(o is not None for o in expected.values()) >= n  # each prompt is one trajectory's
        assert sum(o is None for o in expected.values()) >= 1  # the system prompt is shared
        _sql(store, "ALTER TABLE texts DROP COLUMN owner")
        _sql(store, "DELETE FROM schema_migrations WHERE name = '0008_text_owner'")
    finally:
        store.close()
    return expected


def test_0008_runs_as_a_resumable_batched_data_migration(store_url: str) -> None:
    expected = _pre_0008(store_url)
    store = open_store(store_url, migrate_data=False)
    try:
        assert store.pending_data_migration() == "0008_text_owner"
        reports: list[tuple[str, int, int]] = []
        store.migrate_data(lambda *r: reports.append(r), batch_rows=7)
        assert store.pending_data_migration() is None
        total = len(expected)
        assert len(reports) == -(-total // 7) + 1  # one per batch, and the closing one
        assert reports[-1] == ("0008_text_owner", total, total)
        assert [r[1] for r in reports[:-1]] == [min(total, 7 * (i + 1)) for i in range(len(reports) - 1)]
        owners = {int(r[0]): r[1] for r in _sql(store, "SELECT id, owner FROM texts")}
        assert owners == expected
        assert "0008_text_owner" in store.migrations()
    finally:
        store.close()
    # Opening again finds nothing to do.
    again = open_store(store_url, migrate_data=False)
    try:
        assert again.pending_data_migration() is None
    finally:
        again.close()


def test_a_plain_open_runs_a_pending_data_migration_to_the_end(store_url: str) -> None:
    expected = _pre_0008(store_url, n=5)
    store = open_store(store_url)
    try:
        assert store.pending_data_migration() is None
        assert {int(r[0]): r[1] for r in _sql(store, "SELECT id, owner FROM texts")} == expected
    finally:
        store.close()


# --- the server while a data migration runs -----------------------------------------------------------


class _Hold:
    """Keeps the store's data migration from taking its next batch: SQLite's write lock, or the
    PostgreSQL migration lock, held from another connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    def __enter__(self) -> _Hold:
        if "schema=" in self.url:
            from trajforge.store.postgres import _MIGRATION_LOCK

            self.conn = psycopg.connect(PG_BASE, autocommit=True)
            self.conn.execute("SELECT pg_advisory_lock(%s)", [_MIGRATION_LOCK])
        else:
            self.conn = sqlite3.connect(self.url, isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        return self

    def release(self) -> None:
        if self.conn is not None:
            if "schema=" in self.url:
                self.conn.execute("SELECT pg_advisory_unlock_all()")
            else:
                self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_the_server_answers_health_and_503_while_a_data_migration_runs(store_url: str) -> None:
    expected = _pre_0008(store_url)
    store = open_store(store_url, migrate_data=False)
    reports: list[tuple[str, int, int]] = []
    try:
        with _Hold(store_url) as hold:
            app = create_app(store, on_migration=lambda *r: reports.append(r))
            with TestClient(app, base_url="http://127.0.0.1") as client:
                health = client.get("/healthz")
                assert health.status_code == 200
                migration = health.json()["migration"]
                assert migration["state"] == "running" and migration["name"] == "0008_text_owner"
                busy = client.get("/api/trajectories")
                assert busy.status_code == 503
                assert busy.headers["Retry-After"] == "5"
                assert busy.json()["error"]["code"] == "migrating"
                assert client.get("/").status_code == 503  # the dashboard too
                assert client.post("/api/trajectories", json={}).status_code == 503

                hold.release()
                until(
                    "the migration to finish",
                    lambda: client.get("/healthz").json()["migration"]["state"] == "done",
                )
                done = client.get("/healthz").json()["migration"]
                assert done["progress"] == 1.0 and done["done"] == done["total"] == len(expected)
                assert reports[-1] == ("0008_text_owner", len(expected), len(expected))
                listed = client.get("/api/trajectories")
                assert listed.status_code == 200 and listed.json()["total"] == 40
        owners = {int(r[0]): r[1] for r in _sql(store, "SELECT id, owner FROM texts")}
        assert owners == expected
    finally:
        store.close()


def test_health_reports_no_migration_on_a_migrated_store(store: Store) -> None:
    with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
        body = client.get("/healthz").json()
        assert body["ok"] is True and body["migration"] == {"state": "done"}
        assert client.get("/api/trajectories").status_code == 200


def test_trajforge_serve_starts_and_runs_a_pending_data_migration(store_url: str, tmp_path: Path) -> None:
    """The real command: the server comes up, says it is migrating, and ends up serving the
    migrated store."""
    import httpx

    from tests.helpers import free_port, start_server

    expected = _pre_0008(store_url)
    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "TRAJFORGE_HOME": str(tmp_path / "home")}
    proc = start_server(port, store_url, log, "--no-jobs", env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        until(
            "the migration to finish",
            lambda: httpx.get(f"{base}/healthz").json()["migration"]["state"] == "done",
        )
        assert httpx.get(f"{base}/api/trajectories").json()["total"] == 40
    finally:
        proc.terminate()
        proc.wait(60)
    assert "migrating the store's data (0008_text_owner)" in log.read_text()
    store = open_store(store_url, migrate_data=False)
    try:
        assert store.pending_data_migration() is None
        assert {int(r[0]): r[1] for r in _sql(store, "SELECT id, owner FROM texts")} == expected
    finally:
        store.close()
