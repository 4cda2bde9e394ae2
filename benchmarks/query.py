"""Query latency and export throughput over HTTP on loopback, with 100,000 stored trajectories
(1M LLM calls, the ingest benchmark's generator).

    python benchmarks/query.py [--size 100000,400000] [--db PATH_OR_URL]

Builds the store once (reused by later runs; a store that holds fewer trajectories grows to the
next size), starts ``trajforge serve`` on a free loopback port, and measures at each size: the list
page (50 newest), a filtered list, a full-text search for a word in ~1% of prompts and one for a
word in most trajectories, one full trajectory, stats, the dashboard's trajectories page; export
throughput for jsonl and parquet, raw and privacy-filtered in alternation; and the bytes on disk
per trajectory against the raw sqlite3+FTS5 baseline of the ingest benchmark. One table at the end
holds every figure at every size.
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


def disk_bytes(url: str) -> int:
    """What the store occupies on disk: the SQLite file and its WAL, or every relation of the
    PostgreSQL schema (tables, TOAST, indexes)."""
    if not url.startswith("postgres"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    import psycopg

    from trajforge.store.postgres import split_url

    conninfo, schema = split_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'm')",
            [schema or "public"],
        ).fetchone()
    return int(row[0]) if row else 0


def baseline_bytes_per_trajectory(n: int = 2000) -> float:
    """Bytes per trajectory of the ingest benchmark's raw baseline (plain sqlite3 + FTS5 over every
    call's texts) for this workload: it grows linearly, so a small one tells."""
    from ingest import baseline_ingest

    specs = list(GrowingGenerator(seed=7).trajectories(n))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "baseline.db"
        baseline_ingest(path, specs)
        return disk_bytes(str(path)) / n


def common_word(gen: GrowingGenerator) -> str:
    """A word of the first agent's system prompt that the other two lack: it sits in a third of
    the trajectories through their system prompt, and in ~40% of the rest through the words drawn
    for prompts and responses (~60% of all)."""
    others = set(gen.systems[1].split()) | set(gen.systems[2].split())
    return max((w for w in gen.systems[0].split() if w not in others), key=lambda w: (len(w), w))


class _Printed(dict[str, str]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: str, value: str) -> None:
        print(f"  {self.size:,}  {key}: {value}", flush=True)
        super().__setitem__(key, value)


def measure(url: str, size: int, args: argparse.Namespace, word: str) -> dict[str, str]:
    """Every query figure for the store at ``url`` (holding ``size`` trajectories), each printed as
    soon as it is measured."""
    out: dict[str, str] = _Printed(size)
    store = open_store(url)
    ids = [
        t.id
        for t in store.list_trajectories(TrajectoryFilter(), limit=500, offset=min(5000, size // 2)).items
    ]
    # Each term's matches, counted exactly (a search page may count a common word only in part).
    hits, common_hits = (store.count(TrajectoryFilter(search=term)) for term in (MARKER, word))
    store.close()
    on_disk = disk_bytes(url)
    out["disk, bytes per trajectory"] = f"{on_disk / size:,.0f} ({on_disk / 1e9:.1f} GB)"
    port = free_port()
    proc = serve(url, port)
    rng = random.Random(1)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            total = c.get("/api/trajectories", params={"limit": 1}).json()["total"]
            base = f"http://127.0.0.1:{port}"
            # A first full read, before anything is timed: the store may come from disk (this kind of
            # machine pages cold page cache out in the background), and every figure after it is
            # the warm state of a server in use. Its own rate is printed too.
            if not args.queries_only:
                out["first full read (jsonl, curl)"] = export_rate_curl(base, "jsonl", total)
            rounds = args.requests
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
            common = timed(
                c, [("GET", "/api/trajectories", {"params": {"search": word, "limit": 50}})] * rounds
            )
            detail = timed(c, [("GET", f"/api/trajectories/{rng.choice(ids)}", {}) for _ in range(rounds)])
            stats = timed(c, [("GET", "/api/trajectories/stats", {})] * 10, warmup=1)
            dashboard = timed(c, [("GET", "/trajectories", {})] * 10, warmup=1)
            out["list page (50 newest)"] = pcts(listing)
            out["filtered list (source+status)"] = pcts(filtered)
            out[f"rare-term search ({hits:,} hits)"] = pcts(searches)
            out[f"common-term search '{word}' ({common_hits:,} hits)"] = pcts(common)
            out["one full trajectory"] = pcts(detail)
            out["stats"] = pcts(stats)
            out["dashboard trajectories page"] = pcts(dashboard)
            # Several rounds: on this kind of machine one export's rate moves by 10-20% from run to
            # run (the VM reclaims page cache in the background); the median is the figure. Raw and
            # privacy-filtered alternate, so their ratio comes from the same minutes.
            for fmt in () if args.queries_only else ("jsonl", "parquet"):
                raw, private = [], []
                for _ in range(args.rounds):
                    raw.append(float(export_rate_curl(base, fmt, total).split()[0]))
                    if not args.skip_private:
                        private.append(float(export_rate_curl(base, fmt, total, True).split()[0]))
                out[f"export {fmt}, raw (median of {args.rounds})"] = (
                    f"{statistics.median(raw):,.0f} traj/s {raw}"
                )
                if private:
                    ratio = statistics.median(private) / statistics.median(raw)
                    out[f"export {fmt}, privacy filter on"] = (
                        f"{statistics.median(private):,.0f} traj/s {private} = {ratio:.2f}x raw"
                    )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--size",
        default="100000",
        help="store sizes to measure, comma-separated, ascending (e.g. 100000,400000): the store grows "
        "from one to the next, so every size comes from this one command",
    )
    parser.add_argument("--db", help="SQLite path or postgresql:// URL (default: a file under the temp dir)")
    parser.add_argument("--skip-private", action="store_true", help="skip the privacy-filtered exports")
    parser.add_argument(
        "--rounds", type=int, default=3, help="curl exports per format and mode (median reported)"
    )
    parser.add_argument("--requests", type=int, default=50, help="timed requests per query")
    parser.add_argument(
        "--queries-only",
        action="store_true",
        help="skip the first full read and the exports (minutes at 400k)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the raw sqlite3+FTS5 disk baseline")
    args = parser.parse_args()
    sizes = sorted(int(x) for x in args.size.split(","))
    url = args.db or str(Path(tempfile.gettempdir()) / "trajforge-query-bench.db")
    from ingest import machine

    print(f"machine: {machine()}")
    print(f"store: {url}")
    word = common_word(GrowingGenerator(seed=7))
    results: dict[int, dict[str, str]] = {}
    for size in sizes:
        t0 = time.perf_counter()
        build(url, size)
        analyze(url)
        print(f"build/check to {size:,}: {time.perf_counter() - t0:.0f} s", flush=True)
        results[size] = measure(url, size, args, word)
    if not args.no_baseline:
        base = baseline_bytes_per_trajectory()
        print(f"raw sqlite3+FTS5 baseline: {base:,.0f} bytes per trajectory")
        for size in sizes:
            mine = float(results[size]["disk, bytes per trajectory"].split()[0].replace(",", ""))
            results[size]["disk vs raw sqlite3+FTS5 baseline"] = f"{mine / base:.2f}x"
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print()
    print("| measure | " + " | ".join(f"{s:,}" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for k in keys:
        print(f"| {k} | " + " | ".join(results[s].get(k, "") for s in sizes) + " |")


if __name__ == "__main__":
    main()
