"""What ``TRAJFORGE_SQLITE_SYNC=full`` costs: the ingest benchmark's SDK -> SQLite workload under
``normal`` (the default) and ``full``, in the same run.

    python benchmarks/sqlite_sync.py [--n 1000] [--flushed 100] [--rounds 5] [--dir DIR]

Two workloads: ``ingest.py``'s (``sdk_ingest``: the SDK recording ``--n`` trajectories into a
fresh SQLite file, timed to one returned ``flush()``; the writer commits in batches), and the
worst case for ``full``: ``--flushed`` of the same trajectories with a ``flush()`` after each (one
commit, one sync per trajectory). The modes alternate round by round, each on a fresh file, after
one warm-up round of each; the medians are printed with their ratio. ``--dir`` puts the files on
the disk to measure (the default temp dir must not be a tmpfs: a sync there is free).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import trajforge
from generator import Generator
from ingest import machine, sdk_ingest
from trajforge import settings

MODES = ("normal", "full")


def flushed_ingest(url: str, specs: list[Any], spool: Path) -> float:
    """Seconds to record ``specs`` with a ``flush()`` after each trajectory."""
    rec = trajforge.Recorder(url, spool_dir=spool)
    assert rec.flush(600), "the store did not open"  # not timed: opening the new file
    started = time.perf_counter()
    for spec in specs:
        with rec.trajectory(agent_id=spec.agent_id, source="autonomy", scenario_id=spec.scenario_id) as t:
            for st in spec.steps:
                with t.step() as s:
                    for c in st.calls:
                        s.llm_call(
                            model=c.model, system_prompt=c.system, user_prompt=c.user, response=c.response
                        )
                    s.action(st.action, reward=st.reward)
        assert rec.flush(600), "flush timed out"
    elapsed = time.perf_counter() - started
    assert rec.close() and rec.stats["lost"] == 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="trajectories per round")
    parser.add_argument("--flushed", type=int, default=100, help="trajectories flushed one by one per round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per mode")
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    specs = list(Generator().trajectories(args.n))
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    flushed: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(
            f"files in {tmp}; per round: {args.n} trajectories ({args.n * 10} LLM calls) flushed once, "
            f"then {args.flushed} flushed one by one"
        )
        for round_no in range(args.rounds + 1):  # round 0 warms both up and is not counted
            order = MODES if round_no % 2 == 0 else MODES[::-1]
            for mode in order:
                os.environ[settings.SQLITE_SYNC] = mode
                run = Path(tmp) / f"{mode}-{round_no}"
                seconds, _ = sdk_ingest(str(run / "sdk.db"), specs, run / "spool")
                one_by_one = flushed_ingest(str(run / "flushed.db"), specs[: args.flushed], run / "spool-f")
                if round_no:
                    rates[mode].append(args.n / seconds)
                    flushed[mode].append(args.flushed / one_by_one)
        os.environ.pop(settings.SQLITE_SYNC, None)
    for label, table in (("batched", rates), ("flush() each", flushed)):
        medians = {m: statistics.median(r) for m, r in table.items()}
        for mode in MODES:
            runs = ", ".join(f"{r:.0f}" for r in table[mode])
            print(f"{label:12s} synchronous={mode:6s}: {medians[mode]:8.1f} trajectories/s (median; {runs})")
        print(f"{label:12s} ratio full / normal: {medians['full'] / medians['normal']:8.2f}x")


if __name__ == "__main__":
    main()
