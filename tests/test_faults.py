"""Nothing lost, ever: capture under faults, with real parts only.

A real ``trajforge serve`` killed with SIGKILL while client processes write to it through the HTTP
SDK and share one spool directory; an SDK process writing straight into the store killed with
SIGKILL; stores that refuse a value (a CHECK constraint / trigger in the test's own schema or file);
a server that answers 500 to one batch for good. Each asserts 0 lost, 0 duplicated, and the SDK's
counters equal to what was stored.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

import trajforge
from tests.conftest import PG_BASE, drop_pg_schema, pg_url
from tests.helpers import free_port
from tests.test_e2e_http import start_server
from trajforge import jsonutil
from trajforge.records import batch_from_wire
from trajforge.server import create_app
from trajforge.store import TrajectoryFilter, open_store
from trajforge.store.postgres import split_url

pytestmark = pytest.mark.faults

RECORDS_PER_TRAJECTORY = 5  # start header, step, call, step close, end header
POISON = "poison"
INVALID = "invalid"


def refuse_agent(url: str, agent: str = POISON) -> None:
    """Make the store refuse every trajectory of ``agent`` on insert, as a store refuses a value it
    cannot hold (the validator is not involved: the refusal is the database's own)."""
    open_store(url).close()  # migrated first
    if url.startswith("postgresql"):
        conninfo, schema = split_url(url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                f'ALTER TABLE "{schema}".trajectories ADD CONSTRAINT refuse_{agent} '
                f"CHECK (agent_id <> '{agent}')"
            )
        return
    conn = sqlite3.connect(url)
    try:
        for event in ("INSERT", "UPDATE"):
            conn.execute(
                f"CREATE TRIGGER refuse_{agent}_{event.lower()} BEFORE {event} ON trajectories "
                f"WHEN NEW.agent_id = '{agent}' BEGIN SELECT RAISE(ABORT, 'refused: {agent}'); END"
            )
        conn.commit()
    finally:
        conn.close()


def record(rec: trajforge.Recorder, tid: str, agent: str = "a") -> None:
    with rec.trajectory(agent_id=agent, trajectory_id=tid) as t, t.step() as s:
        s.llm_call(model="m", user_prompt=f"question of {tid}", response="answer", prompt_tokens=3)
        s.action("REPLY", reward=0.5)


def rejected_ids(spool: Path) -> list[str]:
    ids = []
    for path in spool.glob("rejected-*.jsonl"):
        for line in path.read_bytes().splitlines():
            entry = jsonutil.loads(line)
            assert entry["reason"]
            ids += [h.id for h in batch_from_wire(entry["batch"]).trajectories]
    return sorted(set(ids))


def assert_complete(store: Any, ids: list[str]) -> None:
    """Every id stored once, whole: no trajectory missing, none with a step or call twice."""
    got = {t.id: t for t in store.iter_trajectories(TrajectoryFilter(trajectory_ids=ids))}
    missing = sorted(set(ids) - set(got))
    assert not missing, f"{len(missing)} lost: {missing[:5]}"
    for t in got.values():
        assert (t.status, t.step_count, t.llm_call_count) == ("completed", 1, 1), t.id


# --- a store that refuses a value ----------------------------------------------------------------


def test_ingest_stores_the_good_trajectories_of_a_batch_the_store_refuses(store_url: str) -> None:
    refuse_agent(store_url)
    store = open_store(store_url)
    body = {
        "trajectories": [
            {"id": "good-1", "agentId": "a", "status": "completed"},
            {"id": "bad", "agentId": POISON, "status": "completed"},
            {"id": "good-2", "agentId": "b", "status": "completed"},
        ]
    }
    try:
        with TestClient(create_app(store), base_url="http://127.0.0.1") as client:
            r = client.post("/api/trajectories", json=body)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["received"]["trajectories"] == 3 and out["stored"]["trajectories"] == 2
            assert [x["id"] for x in out["refused"]] == ["bad"] and "refuse" in out["refused"][0]["reason"]
            again = client.post("/api/trajectories", json=body).json()  # re-sent: nothing new
            assert again["stored"]["trajectories"] == 0 and len(again["refused"]) == 1
        assert sorted(t.id for t in store.iter_trajectories(TrajectoryFilter())) == ["good-1", "good-2"]
    finally:
        store.close()


def test_direct_sdk_rejects_only_the_refused_trajectory_of_a_batch(store_url: str, tmp_path: Path) -> None:
    refuse_agent(store_url)
    spool = tmp_path / "spool"
    # One flush, one batch: the refused trajectory travels with good ones before and after it.
    rec = trajforge.Recorder(store_url, spool_dir=spool, flush_interval_s=60)
    ids = [f"t{i}" for i in range(6)]
    for i, tid in enumerate(ids):
        record(rec, tid, agent=POISON if i == 2 else "a")
    assert rec.flush(30)
    rec.close()
    stats = rec.stats
    good = [t for i, t in enumerate(ids) if i != 2]
    assert (stats["written"], stats["rejected"], stats["lost"]) == (25, 5, 0), stats
    assert rejected_ids(spool) == ["t2"]
    store = open_store(store_url)
    try:
        assert_complete(store, good)
        assert store.count(TrajectoryFilter()) == 5
    finally:
        store.close()


def test_a_spooled_batch_the_store_refuses_on_replay_is_split_and_counted(tmp_path: Path) -> None:
    """Spooled while the store was unavailable, replayed once it is back into a store that refuses
    one trajectory: that one is rejected, the rest replayed, each counted in submitted records."""
    url = str(tmp_path / "later.db")
    Path(url).mkdir()  # not a database yet: opening fails, as when the store is down
    spool = tmp_path / "spool"
    rec = trajforge.Recorder(url, spool_dir=spool, flush_interval_s=60)
    for i in range(4):
        record(rec, f"s{i}", agent=POISON if i == 1 else "a")
    assert rec.flush(30)
    assert rec.stats["spilled"] == 20 and not rec.stats["healthy"], rec.stats
    built = str(tmp_path / "built.db")
    refuse_agent(built)  # made aside, then moved in: the recorder never sees it without the trigger
    Path(url).rmdir()
    os.rename(built, url)
    deadline = time.monotonic() + 30
    while not rec.stats["healthy"]:
        assert time.monotonic() < deadline, rec.stats
        time.sleep(0.05)
    rec.close()
    stats = rec.stats
    assert (stats["replayed"], stats["rejected"], stats["lost"], stats["written"]) == (15, 5, 0, 0), stats
    assert rejected_ids(spool) == ["s1"]
    store = open_store(url)
    try:
        assert_complete(store, ["s0", "s2", "s3"])
        assert store.count(TrajectoryFilter()) == 3
    finally:
        store.close()


def test_http_sdk_keeps_capturing_past_a_batch_the_store_refuses(store_url: str, tmp_path: Path) -> None:
    """On main the server answered 500 to the batch, the SDK retried it forever in order, and
    nothing recorded after it was ever stored."""
    refuse_agent(store_url)
    port = free_port()
    server = start_server(port, store_url, tmp_path / "server.log")
    spool = tmp_path / "spool"
    try:
        rec = trajforge.Recorder(f"http://127.0.0.1:{port}", token="e2e-token", spool_dir=spool)
        record(rec, "early", agent="a")
        record(rec, "bad", agent=POISON)
        assert rec.flush(30)
        later = [f"later-{i}" for i in range(20)]
        for tid in later:
            record(rec, tid)
        assert rec.flush(30)
        stats = rec.stats
        rec.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    assert stats["healthy"] and stats["rejected"] == 5 and stats["lost"] == 0, stats
    assert stats["written"] == 21 * RECORDS_PER_TRAJECTORY, stats
    assert rejected_ids(spool) == ["bad"]
    store = open_store(store_url)
    try:
        assert_complete(store, ["early", *later])
        assert store.count(TrajectoryFilter()) == 21
    finally:
        store.close()


class _Ingest(http.server.BaseHTTPRequestHandler):
    """The ingest endpoint's protocol, with a server error for one trajectory for good (a bug no
    real store triggers on demand), a 422 for another (a value the validator refuses) and, while
    ``outage`` > 0, 503s (the store down)."""

    server: _IngestServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(200, {"enabled": True})

    def do_POST(self) -> None:
        import gzip

        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        ids = [t["id"] for t in json.loads(raw)["trajectories"]]
        srv = self.server
        with srv.lock:
            srv.posts.append(ids)
            if srv.outage > 0:
                srv.outage -= 1
                self._answer(503, {"error": {"code": "store_unavailable"}})
                return
            if POISON in ids:
                self._answer(500, {"error": {"code": "internal"}})
                return
            if INVALID in ids:
                self._answer(422, {"error": {"code": "invalid", "field": "trajectories[0].totalReward"}})
                return
            srv.stored.update(ids)
        self._answer(200, {"received": {}, "stored": {}})

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _IngestServer(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Ingest)
        self.lock = threading.Lock()
        self.posts: list[list[str]] = []
        self.stored: set[str] = set()
        self.outage = 0


@pytest.fixture
def ingest_server() -> Iterator[_IngestServer]:
    srv = _IngestServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_server_error_that_repeats_ends_as_rejected_and_outages_still_spool(
    ingest_server: _IngestServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    url = f"http://127.0.0.1:{ingest_server.server_address[1]}"
    rec = trajforge.Recorder(url, spool_dir=spool, flush_interval_s=60)
    for tid in ("a", POISON, "b", INVALID):
        record(rec, tid, agent=tid)
    assert rec.flush(60)  # bounded: retried with backoff, then split, then given up
    with ingest_server.lock:
        ingest_server.outage = 3  # then the store is "down": these must wait, not be rejected
    for tid in ("c", "d"):
        record(rec, tid)
    assert rec.flush(30)
    deadline = time.monotonic() + 30
    while not rec.stats["healthy"]:
        assert time.monotonic() < deadline, rec.stats
        time.sleep(0.05)
    rec.close()
    stats = rec.stats
    assert ingest_server.stored == {"a", "b", "c", "d"}
    assert rejected_ids(spool) == [INVALID, POISON]
    assert (stats["rejected"], stats["lost"]) == (10, 0), stats
    assert stats["spilled"] == stats["replayed"] == 10 and stats["written"] == 10, stats
    first_batch = [p for p in ingest_server.posts if POISON in p]
    assert len(first_batch) == 6  # the whole batch 4 times (backoff), then the half and quarter with it


# --- kill -9 -------------------------------------------------------------------------------------

_HTTP_CLIENT = """
import json, sys, time
import trajforge
url, k, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rec = trajforge.Recorder(url)
for i in range(n):
    with rec.trajectory(agent_id=f"client-{k}", trajectory_id=f"c{k}-{i}") as t, t.step() as s:
        s.llm_call(model="m", user_prompt=f"question {k}.{i}", response="answer", prompt_tokens=3)
        s.action("REPLY", reward=0.5)
    time.sleep(0.05)
assert rec.flush(120)
deadline = time.monotonic() + 120
while not (rec.stats["healthy"] and rec.stats["pending"] == 0) and time.monotonic() < deadline:
    time.sleep(0.05)
rec.close()
with open(out, "w") as fh:
    json.dump(rec.stats, fh)
"""


@pytest.fixture(params=["sqlite", "postgres"])
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "server.db")
        return
    url = pg_url()
    yield url
    drop_pg_schema(url)


def test_server_killed_twice_while_four_clients_share_one_spool_dir(server_db: str, tmp_path: Path) -> None:
    """4 client processes, the default spool dir ($TRAJFORGE_HOME/spool, shared), the server
    SIGKILLed twice mid-run. On main, writers took each other's spool files and renamed them back
    over newer ones: 2-4 trajectories of 4x300 vanished with nothing counted lost."""
    clients, n = 4, 150
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "TRAJFORGE_API_TOKEN": "e2e-token", "TRAJFORGE_HOME": str(tmp_path / "home")}
    server = start_server(port, server_db, log)
    outs = [tmp_path / f"client-{k}.json" for k in range(clients)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HTTP_CLIENT, f"http://127.0.0.1:{port}", str(k), str(n), str(outs[k])],
            env=env,
        )
        for k in range(clients)
    ]
    watch = open_store(server_db)  # the server made it before it answered
    try:
        seen = 0
        for _ in range(2):
            # Each kill waits until the clients are posting to this server: after a fixed sleep, on a
            # loaded machine both kills could land before the clients had started, spooling nothing.
            deadline = time.monotonic() + 120
            while (stored := watch.count(TrajectoryFilter())) <= seen:
                assert time.monotonic() < deadline, "the clients stored nothing on this server"
                time.sleep(0.05)
            seen = stored
            server.send_signal(signal.SIGKILL)  # no goodbye, possibly mid-transaction
            server.wait(10)
            time.sleep(0.5)
            server = start_server(port, server_db, log)
        for p in procs:
            assert p.wait(180) == 0
    finally:
        watch.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    stats = [json.loads(o.read_text()) for o in outs]
    store = open_store(server_db)
    try:
        assert_complete(store, [f"c{k}-{i}" for k in range(clients) for i in range(n)])
        assert store.count(TrajectoryFilter()) == clients * n
        assert store.stats()["totalLlmCalls"] == clients * n  # nothing twice
    finally:
        store.close()
    for s in stats:
        assert s["submitted"] == n * RECORDS_PER_TRAJECTORY, s
        assert s["written"] + s["replayed"] == s["submitted"], s
        assert s["spilled"] == s["replayed"] and s["rejected"] == s["lost"] == 0, s
    assert sum(s["spilled"] for s in stats) > 0  # the kills did land mid-run
    assert not list((tmp_path / "home" / "spool").glob("*.jsonl"))


_DIRECT_CLIENT = """
import json, os, sys, time
import trajforge
url, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rec = trajforge.Recorder(url)
for i in range(100000):
    with rec.trajectory(agent_id=f"direct-{k}", trajectory_id=f"d{k}-{i}") as t, t.step() as s:
        s.llm_call(model="m", user_prompt=f"question {k}.{i}", response="answer", prompt_tokens=3)
        s.action("REPLY", reward=0.5)
    if i % 10 == 9:
        assert rec.flush(60)
        with open(out, "a") as fh:  # what this process says happened to everything up to i
            fh.write(json.dumps({"flushed": i + 1, "stats": rec.stats}) + "\\n")
            fh.flush()
            os.fsync(fh.fileno())
    time.sleep(0.005)
"""


def _reports(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _run_until_reported(url: str, k: int, out: Path, env: dict[str, str], reports: int) -> dict[str, Any]:
    """Start a direct SDK process, SIGKILL it after ``reports`` reports; its last report."""
    proc = subprocess.Popen([sys.executable, "-c", _DIRECT_CLIENT, url, str(k), str(out)], env=env)
    try:
        deadline = time.monotonic() + 90
        while len(_reports(out)) < reports:
            assert proc.poll() is None, "the SDK process died by itself"
            assert time.monotonic() < deadline, "the SDK process made no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return _reports(out)[-1]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_killed_direct_sdk_process_loses_nothing_it_reported(backend: str, tmp_path: Path) -> None:
    """Process 1 records while its store is unavailable (everything goes to the spool) and is
    SIGKILLed; process 2, once the store is back, takes over process 1's spool, writes its own
    directly, and is SIGKILLed too; a third process closes the books."""
    env = {**os.environ, "TRAJFORGE_HOME": str(tmp_path / "home")}
    created_db = None
    if backend == "sqlite":
        url = str(tmp_path / "direct.db")
        Path(url).mkdir()  # the store's path is not a database yet: opening it fails, as when down
    else:
        pg_url()  # skips without PostgreSQL
        created_db = f"tft_down_{uuid.uuid4().hex[:10]}"
        url = PG_BASE.rsplit("/", 1)[0] + f"/{created_db}"  # a database that does not exist yet
    try:
        first = _run_until_reported(url, 1, tmp_path / "p1.jsonl", env, reports=3)
        assert first["stats"]["written"] == 0 and first["stats"]["lost"] == 0, first
        assert first["stats"]["spilled"] == first["flushed"] * RECORDS_PER_TRAJECTORY, first
        if backend == "sqlite":
            Path(url).rmdir()
        else:
            with psycopg.connect(PG_BASE, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{created_db}"')
        second = _run_until_reported(url, 2, tmp_path / "p2.jsonl", env, reports=3)
        s2 = second["stats"]
        assert s2["replayed"] >= first["stats"]["spilled"] and s2["lost"] == 0, second
        assert s2["written"] == second["flushed"] * RECORDS_PER_TRAJECTORY, second
        third = trajforge.Recorder(url)
        assert third.close()
        assert third.stats["lost"] == 0 and third.stats["rejected"] == 0, third.stats
        assert not list((tmp_path / "home" / "spool").glob("*.jsonl"))
        store = open_store(url)
        try:
            reported = [f"d1-{i}" for i in range(first["flushed"])]
            reported += [f"d2-{i}" for i in range(second["flushed"])]
            assert_complete(store, reported)
            stored = [t for t in store.iter_trajectories(TrajectoryFilter())]
            # Only what the processes recorded, each at most once (the ones recorded after a
            # process's last report may be partial: they were in its memory when it was killed).
            assert all(t.id[:3] in ("d1-", "d2-") and t.llm_call_count <= 1 for t in stored)
            assert store.stats()["totalLlmCalls"] == sum(t.llm_call_count for t in stored)
        finally:
            store.close()
    finally:
        if created_db is not None:
            with psycopg.connect(PG_BASE, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{created_db}" WITH (FORCE)')
