"""A dry collection run over the benchmark store: time and peak memory at two store sizes, to show
the run finishes in ≤ 30 s at 100,000 trajectories (1M LLM calls) and that its memory does not grow
with the store (it reads SQL aggregates and a few sample trajectories per source, never every row).

    python benchmarks/collect.py [--sizes 20000,100000] [--db-dir DIR] [--postgres URL]

Each size's store is the query benchmark's (``benchmarks/query.py``: sources, statuses, rewards,
10 LLM calls per trajectory), built once under the temp dir and reused. Each run is a fresh process
(``trajforge collect run``'s library call), so its peak RSS is the run's own, imports included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from query import analyze, build

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
from trajforge import collect
from trajforge.store import open_store

import threading

def rss_anon_kb():
    # Anonymous memory only: SQLite reads its file through mmap, and file pages it maps count in
    # RSS though they are the page cache, not the process's own memory.
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0

peak_anon = [rss_anon_kb()]
done = threading.Event()

def sample():
    while not done.wait(0.005):
        peak_anon[0] = max(peak_anon[0], rss_anon_kb())

threading.Thread(target=sample, daemon=True).start()
url, out, cache_kb = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = open_store(url)
if cache_kb and hasattr(store, "_reader"):
    # SQLite's page cache is the one part of the run's memory that a bigger file fills further, up
    # to its configured cap (64 MB a connection): a small cap shows what the run itself holds.
    store._reader().execute(f"PRAGMA cache_size = -{cache_kb}")
steps = {}
started = time.perf_counter()
run = collect.run(store, collect.CollectRequest(output_dir=str(out)), on_step=lambda s: steps.__setitem__(s.id, round(s.seconds, 2)))
seconds = time.perf_counter() - started
done.set()
peak_anon[0] = max(peak_anon[0], rss_anon_kb())
store.close()
m = run.manifest
print(json.dumps({
    "seconds": round(seconds, 2),
    "peakRssMb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "peakAnonMb": round(peak_anon[0] / 1024, 1),
    "trajectories": next(s for s in m["steps"] if s["id"] == "trajectories")["result"]["total"],
    "readiness": m["readiness"]["status"],
    "steps": steps,
    "failed": [s["id"] for s in m["steps"] if s["status"] == "failed"],
}))
"""


def measure(url: str, workdir: Path, label: str, cache_kb: int = 0) -> dict[str, object]:
    out = workdir / f"run-{label}"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, url, str(out), str(cache_kb)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000", help="Comma-separated store sizes")
    parser.add_argument("--db-dir", default=tempfile.gettempdir(), help="Where the SQLite stores are kept")
    parser.add_argument("--postgres", help="Also measure a PostgreSQL store at this URL (largest size)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tf-collect-bench-"))
    rows = []
    for n in sizes:
        # The query benchmark's store file name: a store built by either benchmark is reused.
        url = str(Path(args.db_dir) / f"trajforge-query-bench-{n}.db")
        build(url, n)
        for attempt in range(2):  # the first run also warms the OS's file cache
            r = measure(url, work, f"sqlite-{n}-{attempt}")
        r["cappedAnonMb"] = measure(url, work, f"sqlite-{n}-capped", cache_kb=2000)["peakAnonMb"]
        rows.append(("sqlite", n, r))
    if args.postgres:
        build(args.postgres, sizes[-1])
        analyze(args.postgres)
        for attempt in range(2):
            r = measure(args.postgres, work, f"pg-{attempt}")
        rows.append(("postgres", sizes[-1], r))
    print(
        "| backend | trajectories | dry run (s) | peak RSS (MB) | peak anonymous RSS (MB) "
        "| … with SQLite's page cache capped at 2 MB | slowest steps (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend, n, r in rows:
        steps = sorted(r["steps"].items(), key=lambda kv: -kv[1])[:3]  # type: ignore[attr-defined]
        print(
            f"| {backend} | {n:,} | {r['seconds']} | {r['peakRssMb']} | {r['peakAnonMb']} "
            f"| {r.get('cappedAnonMb', '–')} | " + ", ".join(f"{k} {v}" for k, v in steps) + " |"
        )
        if r["failed"]:
            print(f"  failed steps: {r['failed']}")


if __name__ == "__main__":
    main()
