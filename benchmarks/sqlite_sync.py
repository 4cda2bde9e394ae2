"""What ``TRAJFORGE_SQLITE_SYNC=full`` costs: the ingest benchmark's SDK -> SQLite workload under
``normal`` (the default) and ``full``, in the same run.

    python benchmarks/sqlite_sync.py [--n 1000] [--rounds 5] [--dir DIR]

The workload and its timing are ``ingest.py``'s (``sdk_ingest``: the SDK recording into a fresh
SQLite file, timed to a returned ``flush()``). The modes alternate round by round, each on a fresh
file, after one warm-up round of each; the medians are printed with their ratio. ``--dir`` puts the
files on the disk to measure (the default temp dir must not be a tmpfs: a sync there is free).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from generator import Generator
from ingest import machine, sdk_ingest
from trajforge import settings

MODES = ("normal", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="trajectories per round")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per mode")
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files go")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    specs = list(Generator().trajectories(args.n))
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"files in {tmp}; workload: {args.n} trajectories, {args.n * 10} LLM calls per round")
        for round_no in range(args.rounds + 1):  # round 0 warms both up and is not counted
            order = MODES if round_no % 2 == 0 else MODES[::-1]
            for mode in order:
                os.environ[settings.SQLITE_SYNC] = mode
                run = Path(tmp) / f"{mode}-{round_no}"
                seconds, _ = sdk_ingest(str(run / "sdk.db"), specs, run / "spool")
                if round_no:
                    rates[mode].append(args.n / seconds)
        os.environ.pop(settings.SQLITE_SYNC, None)
    medians = {m: statistics.median(r) for m, r in rates.items()}
    for mode in MODES:
        runs = ", ".join(f"{r:.0f}" for r in rates[mode])
        print(f"SDK -> SQLite, synchronous={mode:6s}: {medians[mode]:8.1f} trajectories/s (median; {runs})")
    print(f"ratio full / normal:                {medians['full'] / medians['normal']:8.2f}x")


if __name__ == "__main__":
    main()
