"""Ingest throughput: the SDK into SQLite (and PostgreSQL) against plain sqlite3 in the same run.

    python benchmarks/ingest.py [--n 2000] [--rounds 3] [--pg postgresql://postgres@127.0.0.1:5432/test]
    python benchmarks/ingest.py --writers 4 [--n 1000]

Baseline: the same rows inserted with plain ``sqlite3`` ``executemany`` in batched WAL
transactions (100 trajectories each), with an FTS5 index over the same text fields (system prompt,
user prompt, response, reasoning). Prints trajectories/s for both, the ratio, and the SDK's cost on
the calling thread per ``llm_call`` (p50, p99); then the SDK into PostgreSQL and its ratio to the
SDK into SQLite. With ``--rounds R`` the three run one after the other R times (alternating, on a
shared machine) and the medians are printed too.

``--writers N``: N SDK processes (each its own ``--n`` trajectories, its own content) write into one
fresh PostgreSQL store at once, directly and through one ``trajforge serve`` with the HTTP SDK;
one writer of the same workload is measured first in each mode. Prints the aggregate
trajectories/s (all writers' trajectories over the time from a common start to the last flush),
its ratio to one writer, and attempted / stored / lost / duplicated trajectories and calls, counted
in the database.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import trajforge
from generator import Generator, TrajectorySpec


def sdk_ingest(url: str, specs: list[TrajectorySpec], spool: Path) -> tuple[float, list[int]]:
    rec = trajforge.Recorder(url, spool_dir=spool)
    started = time.perf_counter()
    costs = record(rec, specs)
    assert rec.flush(600), "flush timed out"
    elapsed = time.perf_counter() - started
    stats = rec.stats
    rec.close()
    assert stats["lost"] == 0 and stats["rejected"] == 0, stats
    return elapsed, costs


def record(rec: trajforge.Recorder, specs: list[TrajectorySpec]) -> list[int]:
    """The agent loop: the specs' trajectories through the SDK; returns each ``llm_call``'s cost (ns)."""
    costs: list[int] = []
    clock = time.perf_counter_ns
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
    return costs


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


# --- several writers (--writers N) ------------------------------------------------------------------


def _writer(url: str, n: int, seed: int, spool: str, ready: Any, go: Any, out: Any) -> None:
    """One writer process: its own content (seed), ready once its specs and Recorder exist, then the
    agent loop from the common start until its flush returns."""
    specs = list(Generator(seed=seed).trajectories(n))
    rec = trajforge.Recorder(url, spool_dir=Path(spool))
    ready.wait()
    go.wait()
    record(rec, specs)
    ok = rec.flush(1800)
    # flush() returns once everything is stored or safely spooled (a server that did not answer in
    # time); the clock stops when the spool is replayed too, i.e. when everything is in the store.
    deadline = time.monotonic() + 1800
    while (
        rec.stats["spilled"] > rec.stats["replayed"] + rec.stats["rejected"] and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    ended = time.time()
    stats = rec.stats
    rec.close()
    out.put((ended, ok, stats["lost"], stats["rejected"], stats["spilled"]))


def run_writers(url: str, writers: int, n: int, spool: Path) -> tuple[float, list[Any]]:
    """``writers`` processes at once into ``url``; returns (seconds from the common start to the
    last flush, each writer's (end, flushed, lost, rejected))."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Barrier(writers + 1), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(url, n, 1000 + k, str(spool / f"w{k}"), ready, go, out))
        for k in range(writers)
    ]
    for p in procs:
        p.start()
    ready.wait()
    started = time.time()
    go.set()
    results = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return max(r[0] for r in results) - started, results


def _counts(pg: str, schema: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(pg) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM trajectories), (SELECT COUNT(*) FROM llm_calls), "
            "(SELECT COUNT(*) FROM (SELECT DISTINCT trajectory_id, call_id FROM llm_calls) d), "
            "(SELECT COALESCE(SUM(llm_call_count), 0) FROM trajectories), "
            "(SELECT COUNT(*) FROM trajectories WHERE llm_call_count <> 10 OR step_count <> 5), "
            "(SELECT COALESCE(SUM(calls), 0) FROM llm_rollup)"
        ).fetchone()
    assert row is not None
    keys = ("trajectories", "calls", "distinct_calls", "counted_calls", "off_counters", "rollup_calls")
    return dict(zip(keys, (int(v) for v in row), strict=True))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trajforge.cli", "serve", "--port", str(port), "--db", url, "--no-jobs"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("trajforge serve did not start")


def writers_run(pg: str, mode: str, writers: int, n: int, tmpdir: Path) -> float:
    """One measured run into a fresh schema; prints it and returns the aggregate trajectories/s."""
    from trajforge.store import open_store

    schema = f"bench_w_{uuid.uuid4().hex[:8]}"
    url = f"{pg}?schema={schema}"
    open_store(url).close()  # the schema and its migrations exist before the clock starts
    server = None
    try:
        target = url
        if mode == "http":
            server, target = serve(url)
        spool = tmpdir / f"spool-{schema}"
        elapsed, results = run_writers(target, writers, n, spool)
        counts = _counts(pg, schema)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        store = open_store(url)
        store.drop_schema()  # type: ignore[attr-defined]
        store.close()
    attempted, calls = writers * n, writers * n * 10
    lost = attempted - min(counts["trajectories"], attempted)
    duplicated = max(0, counts["calls"] - counts["distinct_calls"]) + max(0, counts["counted_calls"] - calls)
    flushed = all(r[1] for r in results) and not any(r[2] or r[3] for r in results)
    spilled = sum(r[4] for r in results)
    rate = attempted / elapsed
    print(
        f"  {mode:6s} {writers} writer{'s' if writers > 1 else ' '}: {rate:7.1f} trajectories/s ({elapsed:.1f} s)  "
        f"trajectories attempted {attempted} stored {counts['trajectories']} lost {lost}; calls attempted "
        f"{calls} stored {counts['calls']} counted {counts['counted_calls']} rollup {counts['rollup_calls']} "
        f"duplicated {duplicated}; counters off {counts['off_counters']}; all flushed {flushed}; "
        f"records spooled and replayed {spilled}"
    )
    return rate


def main_writers(args: argparse.Namespace) -> None:
    print(f"workload: per writer {args.n} trajectories ({args.n * 10} LLM calls), its own content")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("direct", "http"):
            singles, many, ratios = [], [], []
            for _ in range(args.rounds):
                one = writers_run(args.pg, mode, 1, args.n, Path(tmp))
                several = writers_run(args.pg, mode, args.writers, args.n, Path(tmp))
                singles.append(one)
                many.append(several)
                ratios.append(several / one)
            print(
                f"{mode}: 1 writer {statistics.median(singles):.1f}, {args.writers} writers "
                f"{statistics.median(many):.1f} trajectories/s; aggregate / one writer "
                f"{statistics.median(ratios):.2f}x (runs: {', '.join(f'{r:.2f}' for r in ratios)})"
            )


# --- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--n", type=int, default=2000, help="trajectories per run (per writer with --writers)"
    )
    parser.add_argument(
        "--pg", default=os.environ.get("TRAJFORGE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each measurement, alternating")
    parser.add_argument(
        "--writers", type=int, default=0, help="measure N writer processes into one PostgreSQL store instead"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.writers:
        main_writers(args)
        return
    gen = Generator()
    specs = list(gen.trajectories(args.n))
    calls = args.n * 10
    rows: list[tuple[float, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            tmpdir = Path(tmp) / f"round{rnd}"
            tmpdir.mkdir()
            rows.append(one_round(args, specs, calls, tmpdir))
    if args.rounds > 1:
        base, sdk, pg = (
            statistics.median(x) for x in zip(*[(r[0], r[1], r[2] or 0.0) for r in rows], strict=True)
        )
        print(
            f"medians of {args.rounds} rounds: baseline {base:.1f}, SDK -> SQLite {sdk:.1f} ({sdk / base:.2f}x)",
            end="",
        )
        if not args.no_pg:
            ratios = [r[2] / r[1] for r in rows if r[2]]
            print(
                f", SDK -> PostgreSQL {pg:.1f} trajectories/s; PostgreSQL / SQLite {statistics.median(ratios):.2f}x "
                f"(runs: {', '.join(f'{x:.2f}' for x in ratios)})"
            )
        else:
            print()


def one_round(
    args: argparse.Namespace, specs: list[TrajectorySpec], calls: int, tmpdir: Path
) -> tuple[float, float, float | None]:
    """Baseline, SDK -> SQLite, SDK -> PostgreSQL, one after the other; prints them, returns traj/s."""
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
    print(f"SDK llm_call cost on calling thread: p50 {pct(costs, 0.5):.1f} us, p99 {pct(costs, 0.99):.1f} us")
    if args.no_pg:
        return args.n / base_s, args.n / sdk_s, None
    from trajforge.store import open_store

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    url = f"{args.pg}?schema={schema}"
    try:
        pg_s, pg_costs = sdk_ingest(url, specs, tmpdir / "spool-pg")
        print(f"SDK -> PostgreSQL:                   {args.n / pg_s:8.1f} trajectories/s  ({pg_s:.2f} s)")
        print(f"ratio PostgreSQL / SQLite (SDK):     {sdk_s / pg_s:8.2f}x")
        print(
            f"  llm_call cost on calling thread:   p50 {pct(pg_costs, 0.5):.1f} us, p99 {pct(pg_costs, 0.99):.1f} us"
        )
    finally:
        store = open_store(url)
        store.drop_schema()  # type: ignore[attr-defined]
        store.close()
    return args.n / base_s, args.n / sdk_s, args.n / pg_s


if __name__ == "__main__":
    main()
