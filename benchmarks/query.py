"""Query latency and export throughput over HTTP on loopback, with 100,000 stored trajectories
(1M LLM calls, the ingest benchmark's generator).

    python benchmarks/query.py [--n 100000] [--db PATH_OR_URL] [--keep]

Builds the store once (reused by later runs when it already holds N trajectories), starts
``trajforge serve`` on a free loopback port, and measures: the list page (50 newest), a filtered
list, a full-text search for a word in ~1% of prompts, one full trajectory, stats; then export
throughput for jsonl and parquet.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from generator import MARKER, Generator, TrajectorySpec
from trajforge.records import ActionResult, LlmCall, ProviderAccess, Step, Trajectory, WriteBatch
from trajforge.store import TrajectoryFilter, open_store

SOURCES = ("chat", "autonomy", "telegram", "discord", "api")
STATUSES = ("completed", "completed", "completed", "error", "timeout")


class GrowingGenerator(Generator):
    """The ingest generator's workload, drawn so that a store can grow: trajectory ``i`` comes from
    its own seed, so growing a store from 100k to 400k writes only the new 300k (the same store as
    one built to 400k at once). Words are drawn by numpy and each text cut where the ingest
    generator would stop (at the first word that reaches ``size``): the same distribution of words
    and lengths, without a Python call per word (one ``choice`` per word was most of a build's
    time on a busy 2-core machine: ~2,300 words a trajectory)."""

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed
        self._np = np.random.default_rng(seed)  # the agents' system prompts; then one per trajectory
        self._pool: list[str] = []
        self._ends: list[int] = []
        self._at = 0
        super().__init__(seed)

    @functools.cached_property
    def _arrays(self) -> tuple[Any, Any]:
        return np.array(self.words, dtype=object), np.array([len(w) + 1 for w in self.words])

    def _draw(self) -> None:
        """A pool of words for the next texts (a trajectory takes ~2,300) and the running sum of
        their widths (length + the space), so a text is one bisect and one join."""
        words, widths = self._arrays
        idx = self._np.integers(0, len(words), 4096)
        self._pool = words[idx].tolist()
        self._ends = np.cumsum(widths[idx]).tolist()
        self._at = 0

    def text(self, size: int) -> str:
        at = self._at
        if at >= len(self._pool) or self._ends[-1] - (self._ends[at - 1] if at else 0) < size:
            self._draw()
            at = 0
        before = self._ends[at - 1] if at else 0
        end = bisect.bisect_left(self._ends, before + size, at) + 1
        self._at = end
        return " ".join(self._pool[at:end])

    def trajectories(self, n: int, start: int = 0) -> Iterator[TrajectorySpec]:
        for i in range(start, n):
            self.rng = random.Random(self.seed * 1_000_003 + i)
            self._np = np.random.default_rng([self.seed, i])
            self._draw()
            yield self.trajectory(i)


def build(url: str, n: int, gen: Generator | None = None) -> None:
    """Fill the store at ``url`` up to ``n`` trajectories: a store that holds fewer (a smaller
    size of an earlier run) grows by the missing ones, one that holds ``n`` or more is reused."""
    store = open_store(url)
    have = store.count(TrajectoryFilter())
    if have >= n:
        print(f"store already holds {have} trajectories: reusing it")
        store.close()
        return
    gen = gen or GrowingGenerator(seed=7)
    base = 1_760_000_000_000
    started = time.perf_counter()
    batch = WriteBatch()
    for i, spec in enumerate(gen.trajectories(n, have), have):
        start = base + i * 25_000  # ~1 month of traffic
        t = Trajectory(
            agent_id=spec.agent_id,
            source=SOURCES[i % 5],
            status=STATUSES[(i // 5) % 5],
            start_time=start,
            end_time=start + 20_000,
            scenario_id=spec.scenario_id,
            batch_id=f"batch-{i // 1000}",
            total_reward=spec.reward,
            metadata={"run": i // 10_000},
        )
        for k, st in enumerate(spec.steps):
            step = Step(step_number=k, timestamp=start + k * 1000, reward=st.reward)
            step.provider_accesses.append(
                ProviderAccess(timestamp=start + k * 1000, provider_name="market", data=st.payload)
            )
            for j, c in enumerate(st.calls):
                step.llm_calls.append(
                    LlmCall(
                        timestamp=start + k * 1000 + j,
                        model=c.model,
                        system_prompt=c.system,
                        user_prompt=c.user,
                        response=c.response,
                        reasoning=c.reasoning,
                        latency_ms=c.latency_ms,
                        prompt_tokens=c.prompt_tokens,
                        completion_tokens=c.completion_tokens,
                        action_type=st.action,
                    )
                )
            step.action = ActionResult(action_type=st.action, immediate_reward=st.reward)
            t.steps.append(step)
        batch.extend(WriteBatch.from_trajectory(t))
        if len(batch.trajectories) >= 200:
            store.write(batch)
            batch = WriteBatch()
            if (i + 1) % 10_000 == 0:
                rate = (i + 1 - have) / (time.perf_counter() - started)
                print(f"  built {i + 1}/{n} ({rate:.0f} trajectories/s)", flush=True)
    store.write(batch)
    store.close()


def analyze(url: str) -> None:
    """Refresh PostgreSQL's planner statistics (autovacuum is off on some machines, including the
    one these figures come from; a production server would have run it on its own)."""
    if not url.startswith("postgres"):
        return
    import psycopg

    from trajforge.store.postgres import split_url

    conninfo, schema = split_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if schema:
            conn.execute(f'SET search_path TO "{schema}"')
        for table in ("trajectories", "texts", "trajectory_texts", "llm_calls", "steps", "provider_accesses"):
            conn.execute(f"VACUUM ANALYZE {table}")
        # Every write updates a few rollup rows, and without autovacuum their dead versions pile up:
        # the 450-row trajectory rollup had grown to 7,000 pages (15 ms to sum it). Autovacuum keeps
        # such small, hot tables at a few hundred pages at most; FULL gets them there after the fact.
        for table in ("traj_rollup", "llm_rollup"):
            conn.execute(f"VACUUM FULL ANALYZE {table}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(url: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        # --no-jobs: a query benchmark must not run the auto-training bootstrap (the store is full of
        # completed trajectories, so a job runner would start optimizing prompts beside the measurements).
        [sys.executable, "-m", "trajforge.cli", "serve", "--port", str(port), "--db", url, "--no-jobs"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def timed(client: httpx.Client, requests: list[tuple[str, str, dict]], warmup: int = 3) -> list[float]:
    for method, path, kw in requests[:warmup]:
        client.request(method, path, **kw).raise_for_status()
    out = []
    for method, path, kw in requests:
        a = time.perf_counter()
        r = client.request(method, path, **kw)
        out.append((time.perf_counter() - a) * 1000)
        r.raise_for_status()
    return out


def pcts(ms: list[float]) -> str:
    s = sorted(ms)
    p95 = s[min(len(s) - 1, int(0.95 * len(s)))]
    return f"p50 {statistics.median(s):7.1f} ms   p95 {p95:7.1f} ms   (n={len(s)})"


def export_rate_curl(base: str, fmt: str, n: int, private: bool = False) -> str:
    """The same export read by curl (a C client writing to /dev/null): on a 2-core machine httpx's
    pure-Python chunked decoding takes a core of its own away from the server it measures."""
    curl = shutil.which("curl")
    if curl is None:
        return "curl not installed"
    body = json.dumps({"format": fmt, "privacyFilter": private})
    a = time.perf_counter()
    out = subprocess.run(
        [curl, "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}", "-X", "POST",
         "-H", "Content-Type: application/json", "-d", body, f"{base}/api/trajectories/export"],
        capture_output=True, text=True, check=True, timeout=3600,
    )  # fmt: skip
    s = time.perf_counter() - a
    return f"{n / s:8.0f} trajectories/s  ({s:.1f} s, {int(out.stdout) / 1e6:.0f} MB)"


def export_rate(client: httpx.Client, fmt: str, n: int, private: bool = False) -> str:
    a = time.perf_counter()
    size = 0
    body = {"format": fmt, "privacyFilter": private}
    with client.stream("POST", "/api/trajectories/export", json=body, timeout=3600) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            size += len(chunk)
    s = time.perf_counter() - a
    return f"{n / s:8.0f} trajectories/s  ({s:.1f} s, {size / 1e6:.0f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--db", help="SQLite path or postgresql:// URL (default: a file under the temp dir)")
    parser.add_argument("--skip-private", action="store_true", help="skip the privacy-filtered exports")
    parser.add_argument("--rounds", type=int, default=3, help="raw curl exports per format (median reported)")
    args = parser.parse_args()
    url = args.db or str(Path(tempfile.gettempdir()) / f"trajforge-query-bench-{args.n}.db")
    print(f"store: {url}")
    t0 = time.perf_counter()
    build(url, args.n)
    analyze(url)
    print(f"build/check: {time.perf_counter() - t0:.0f} s")
    store = open_store(url)
    ids = [
        t.id
        for t in store.list_trajectories(TrajectoryFilter(), limit=500, offset=min(5000, args.n // 2)).items
    ]
    store.close()
    port = free_port()
    proc = serve(url, port)
    rng = random.Random(1)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            total = c.get("/api/trajectories", params={"limit": 1}).json()["total"]
            print(f"trajectories: {total}")
            base = f"http://127.0.0.1:{port}"
            # A first full read, before anything is timed: the store may come from disk (this kind of
            # machine pages cold page cache out in the background), and every figure after it is
            # the warm state of a server in use. Its own rate is printed too.
            print(f"export jsonl, raw, curl, first read: {export_rate_curl(base, 'jsonl', total)}")
            rounds = 50
            listing = timed(c, [("GET", "/api/trajectories", {"params": {"limit": 50}})] * rounds)
            filtered = timed(
                c,
                [
                    (
                        "GET",
                        "/api/trajectories",
                        {"params": {"source": SOURCES[i % 5], "status": "error", "limit": 50}},
                    )
                    for i in range(rounds)
                ],
            )
            searches = timed(
                c, [("GET", "/api/trajectories", {"params": {"search": MARKER, "limit": 50}})] * rounds
            )
            hits = c.get("/api/trajectories", params={"search": MARKER, "limit": 1}).json()["total"]
            detail = timed(c, [("GET", f"/api/trajectories/{rng.choice(ids)}", {}) for _ in range(rounds)])
            stats = timed(c, [("GET", "/api/trajectories/stats", {})] * 10, warmup=1)
            print(f"list page (50 newest):       {pcts(listing)}")
            print(f"filtered list (source+status): {pcts(filtered)}")
            print(f"full-text search ({hits} hits): {pcts(searches)}")
            print(f"one full trajectory:         {pcts(detail)}")
            print(f"stats:                       {pcts(stats)}")
            # Several rounds: on this kind of machine one export's rate moves by 10-20% from run to
            # run (the VM reclaims page cache in the background); the median is the figure.
            for fmt in ("jsonl", "parquet"):
                rates = [export_rate_curl(base, fmt, total) for _ in range(args.rounds)]
                for r in rates:
                    print(f"export {fmt}, raw, curl:  {r}")
                median = statistics.median(float(r.split()[0]) for r in rates)
                print(f"export {fmt}, raw, curl, median of {args.rounds}: {median:.0f} trajectories/s")
            print(f"export jsonl, raw, httpx:   {export_rate(c, 'jsonl', total)}")
            print(f"export parquet, raw, httpx: {export_rate(c, 'parquet', total)}")
            if not args.skip_private:
                print(
                    "export jsonl, privacy filter on (the API's default), curl:   "
                    f"{export_rate_curl(base, 'jsonl', total, True)}"
                )
                print(
                    "export parquet, privacy filter on (the API's default), curl: "
                    f"{export_rate_curl(base, 'parquet', total, True)}"
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


if __name__ == "__main__":
    main()
