"""Dataset build throughput: an ``sft`` build of 100,000 trajectories (1M LLM calls) with the privacy
filter on, against the baseline of reading the same call rows and writing them as JSONL.

    python benchmarks/dataset_build.py [--n 100000] [--db PATH_OR_URL]

Prints, from one run on one store: the baseline (rows read → ``orjson`` JSONL, no filter), the
build with the filter, and the build with the filter replaced by a pass-through (so the filter's
own cost is the difference). Calls/s count every LLM call read. The store is built once with the
generator's ``pii`` mode (numbers in every prompt, personal data in ~5%) and reused.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))

from generator import CALLS_PER_STEP, STEPS, Generator
from query import analyze, build
from trajforge import datasets
from trajforge.datasets import builder
from trajforge.privacy import PrivacyFilter
from trajforge.store import TrajectoryFilter, open_store


class PassThrough(PrivacyFilter):
    """The filter's interface with no work behind it: isolates the filter's cost."""

    def text(self, s: str) -> str:
        return s

    def value(self, obj: Any) -> Any:
        return obj


def baseline(url: str, out: Path) -> tuple[float, int]:
    store = open_store(url)
    started = time.perf_counter()
    n = 0
    with open(out, "wb") as fh:
        for row in store.iter_call_rows(TrajectoryFilter()):
            fh.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE, default=tuple))
            n += 1
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed, n


def timed_build(url: str, root: Path, n: int) -> tuple[float, Any]:
    store = open_store(url)
    started = time.perf_counter()
    ds = datasets.build(store, datasets.BuildRequest(format="sft", limit=n, name="bench"), root=root)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed, ds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    url = args.db or str(Path(tempfile.gettempdir()) / f"trajforge-datasets-{args.n}.db")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    build(url, args.n, Generator(seed=11, pii=True))
    analyze(url)
    calls = args.n * STEPS * CALLS_PER_STEP
    with tempfile.TemporaryDirectory() as tmp:
        base_s, rows = baseline(url, Path(tmp) / "rows.jsonl")
        assert rows == calls, (rows, calls)
        print(f"baseline (read rows → JSONL, no filter): {base_s:.1f} s, {calls / base_s:,.0f} calls/s")
        real = builder.PrivacyFilter
        builder.PrivacyFilter = PassThrough  # type: ignore[misc]
        try:
            pass_s, _ = timed_build(url, Path(tmp) / "pass", args.n)
        finally:
            builder.PrivacyFilter = real  # type: ignore[misc]
        print(f"build sft, pass-through filter: {pass_s:.1f} s, {calls / pass_s:,.0f} calls/s")
        build_s, ds = timed_build(url, Path(tmp) / "real", args.n)
        p = ds.manifest["privacy"]
        print(
            f"build sft, privacy filter on:   {build_s:.1f} s, {calls / build_s:,.0f} calls/s (goal ≥ 20,000)"
        )
        print(f"  rows {ds.row_count:,}, redactions {p['redactions']}")
        print(
            f"  filter's own cost {build_s - pass_s:.1f} s = {(build_s - pass_s) / base_s:.2f}× the baseline (goal ≤ 2×)"
        )
        print(f"  whole build = {build_s / base_s:.2f}× the baseline")


if __name__ == "__main__":
    main()
