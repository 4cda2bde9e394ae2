"""Ingest throughput: the SDK into SQLite (and PostgreSQL) against plain sqlite3 in the same run.

    python benchmarks/ingest.py [--n 2000] [--pg postgresql://postgres@127.0.0.1:5432/test]

Baseline: the same rows inserted with plain ``sqlite3`` ``executemany`` in batched WAL
transactions (100 trajectories each), with an FTS5 index over the same text fields (system prompt,
user prompt, response, reasoning). Prints trajectories/s for both, the ratio, and the SDK's cost on
the calling thread per ``llm_call`` (p50, p99).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import trajforge
from generator import Generator, TrajectorySpec


def sdk_ingest(url: str, specs: list[TrajectorySpec], spool: Path) -> tuple[float, list[int]]:
    rec = trajforge.Recorder(url, spool_dir=spool)
    costs: list[int] = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for spec in specs:
        with rec.trajectory(agent_id=spec.agent_id, source="autonomy", scenario_id=spec.scenario_id) as t:
            for st in spec.steps:
                with t.step() as s:
                    s.provider("market", data=st.payload, purpose="context")
                    for c in st.calls:
                        a = clock()
                        s.llm_call(
                            model=c.model,
                            system_prompt=c.system,
                            user_prompt=c.user,
                            response=c.response,
                            reasoning=c.reasoning,
                            latency_ms=c.latency_ms,
                            prompt_tokens=c.prompt_tokens,
                            completion_tokens=c.completion_tokens,
                            purpose="action",
                            action_type=st.action,
                        )
                        costs.append(clock() - a)
                    s.action(st.action, params={"n": 1}, reward=st.reward)
            t.reward(spec.reward)
    assert rec.flush(600), "flush timed out"
    elapsed = time.perf_counter() - started
    stats = rec.stats
    rec.close()
    assert stats["lost"] == 0 and stats["rejected"] == 0, stats
    return elapsed, costs


BASELINE_SCHEMA = """
CREATE TABLE trajectories (id TEXT PRIMARY KEY, agent_id TEXT, source TEXT, status TEXT, start_time INTEGER,
  end_time INTEGER, scenario_id TEXT, total_reward REAL, metadata TEXT);
CREATE TABLE steps (step_id TEXT PRIMARY KEY, trajectory_id TEXT, step_number INTEGER, timestamp INTEGER, action TEXT, reward REAL);
CREATE TABLE llm_calls (rowid INTEGER PRIMARY KEY, call_id TEXT UNIQUE, trajectory_id TEXT, step_id TEXT, timestamp INTEGER,
  model TEXT, system_prompt TEXT, user_prompt TEXT, response TEXT, reasoning TEXT, latency_ms REAL, prompt_tokens INTEGER,
  completion_tokens INTEGER, purpose TEXT, action_type TEXT);
CREATE TABLE provider_accesses (access_id TEXT PRIMARY KEY, trajectory_id TEXT, step_id TEXT, timestamp INTEGER,
  provider_name TEXT, purpose TEXT, data TEXT);
CREATE INDEX ix_calls_traj ON llm_calls (trajectory_id);
CREATE INDEX ix_steps_traj ON steps (trajectory_id);
CREATE INDEX ix_access_traj ON provider_accesses (trajectory_id);
CREATE VIRTUAL TABLE calls_fts USING fts5(system_prompt, user_prompt, response, reasoning, content='llm_calls', content_rowid='rowid');
"""


def baseline_ingest(path: Path, specs: list[TrajectorySpec], batch: int = 100) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.executescript(BASELINE_SCHEMA)
    rowid = 0
    started = time.perf_counter()
    for i in range(0, len(specs), batch):
        trajs, steps, calls, accesses, fts = [], [], [], [], []
        for spec in specs[i : i + batch]:
            tid = uuid.uuid4().hex
            now = time.time_ns() // 1_000_000
            trajs.append(
                (tid, spec.agent_id, "autonomy", "completed", now, now, spec.scenario_id, spec.reward, "{}")
            )
            for n, st in enumerate(spec.steps):
                sid = uuid.uuid4().hex
                steps.append((sid, tid, n, now, json.dumps({"actionType": st.action}), st.reward))
                accesses.append(
                    (uuid.uuid4().hex, tid, sid, now, "market", "context", json.dumps(st.payload))
                )
                for c in st.calls:
                    rowid += 1
                    calls.append(
                        (rowid, uuid.uuid4().hex, tid, sid, now, c.model, c.system, c.user, c.response, c.reasoning,
                         c.latency_ms, c.prompt_tokens, c.completion_tokens, "action", st.action)
                    )  # fmt: skip
                    fts.append((rowid, c.system, c.user, c.response, c.reasoning))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO trajectories VALUES (?,?,?,?,?,?,?,?,?)", trajs)
        conn.executemany("INSERT INTO steps VALUES (?,?,?,?,?,?)", steps)
        conn.executemany("INSERT INTO provider_accesses VALUES (?,?,?,?,?,?,?)", accesses)
        conn.executemany(f"INSERT INTO llm_calls VALUES ({','.join('?' * 15)})", calls)
        conn.executemany(
            "INSERT INTO calls_fts (rowid, system_prompt, user_prompt, response, reasoning) VALUES (?,?,?,?,?)",
            fts,
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="trajectories per run")
    parser.add_argument(
        "--pg", default=os.environ.get("TRAJFORGE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    gen = Generator()
    specs = list(gen.trajectories(args.n))
    calls = args.n * 10
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        base_s = baseline_ingest(tmpdir / "baseline.db", specs)
        sdk_s, costs = sdk_ingest(str(tmpdir / "sdk.db"), specs, tmpdir / "spool")
        base_size = sum(p.stat().st_size for p in tmpdir.glob("baseline.db*"))
        sdk_size = sum(p.stat().st_size for p in tmpdir.glob("sdk.db*"))
        print(f"workload: {args.n} trajectories, {calls} LLM calls, {args.n * 5} provider accesses")
        print(
            f"baseline sqlite3 executemany + FTS5: {args.n / base_s:8.1f} trajectories/s  ({base_s:.2f} s, {base_size / 1e6:.0f} MB)"
        )
        print(
            f"SDK -> SQLite:                       {args.n / sdk_s:8.1f} trajectories/s  ({sdk_s:.2f} s, {sdk_size / 1e6:.0f} MB)"
        )
        print(f"ratio SDK / baseline:                {base_s / sdk_s:8.2f}x")
        print(
            f"SDK llm_call cost on calling thread: p50 {pct(costs, 0.5):.1f} us, p99 {pct(costs, 0.99):.1f} us"
        )
        if not args.no_pg:
            from trajforge.store import open_store

            schema = f"bench_{uuid.uuid4().hex[:8]}"
            url = f"{args.pg}?schema={schema}"
            try:
                pg_s, pg_costs = sdk_ingest(url, specs, tmpdir / "spool-pg")
                print(
                    f"SDK -> PostgreSQL:                   {args.n / pg_s:8.1f} trajectories/s  ({pg_s:.2f} s)"
                )
                print(
                    f"  llm_call cost on calling thread:   p50 {pct(pg_costs, 0.5):.1f} us, p99 {pct(pg_costs, 0.99):.1f} us"
                )
            finally:
                store = open_store(url)
                store.drop_schema()  # type: ignore[attr-defined]
                store.close()


if __name__ == "__main__":
    main()
