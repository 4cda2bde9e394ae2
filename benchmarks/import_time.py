"""What an agent process pays at start: ``import trajforge``, and recording one trajectory into SQLite.

    python benchmarks/import_time.py [--runs 15] [--src DIR ...]

For each source tree (``--src``, repeatable, default this repo's ``src``; e.g. an older checkout
extracted with ``git archive <commit> src | tar -x -C /tmp/old`` to compare before/after), in fresh
interpreters, runs alternated between trees and each run paired with a bare ``python -c pass``
(the baseline: interpreter start-up, measured in the same moment):

- ``import``: trajforge's cumulative µs in ``python -X importtime -c "import trajforge"``;
- ``record``: wall time of a process that imports trajforge, records a trajectory with a step,
  an LLM call and an action into a new SQLite file, flushes and closes (minus nothing: compare it
  with ``pass``);
- the heavy modules that process loaded (psycopg, httpx, pydantic, ...).

Each is measured twice: with the package's bytecode compiled (an installed package) and compiled
from source on every start (``PYTHONDONTWRITEBYTECODE=1`` on a tree without ``__pycache__``, as in
a development checkout here). Prints medians over the runs.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("psycopg", "psycopg_pool", "httpx", "pydantic", "fastapi", "starlette", "torch", "transformers")
"""Modules an agent that records into SQLite must not load (``tests/test_import_cost.py``)."""

RECORD = """
import json, sys
import trajforge

rec = trajforge.Recorder(sys.argv[1], spool_dir=sys.argv[2])
with rec.trajectory(agent_id="a1") as t, t.step() as s:
    s.llm_call(model="m", user_prompt="which order?", response="A-1042")
    s.action("REFUND", params={"orderId": "A-1042"}, result={"ok": True})
rec.flush()
rec.close()
print(json.dumps({"stats": rec.stats, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""
"""Records into SQLite (``argv``: the database, the spool dir); prints its stats and the top-level
modules it loaded. Also what ``tests/test_import_cost.py`` runs."""


def _wall(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout + out.stderr


def _import_us(env: dict[str, str]) -> int:
    _, text = _wall([sys.executable, "-X", "importtime", "-c", "import trajforge"], env)
    line = next(x for x in text.splitlines() if x.rstrip().endswith("| trajforge"))
    return int(line.split("|")[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="runs per tree and mode (medians)")
    parser.add_argument("--src", action="append", type=Path, help="a source tree holding trajforge/")
    args = parser.parse_args()
    trees = args.src or [Path(__file__).resolve().parents[1] / "src"]
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus, {args.runs} runs"
    )
    with tempfile.TemporaryDirectory(prefix="tf-import-") as tmp_name:
        tmp = Path(tmp_name)
        copies = []
        for k, tree in enumerate(trees):
            # A copy without __pycache__, so "source" really compiles trajforge (and only trajforge).
            copy = tmp / f"tree{k}"
            shutil.copytree(
                tree / "trajforge", copy / "trajforge", ignore=shutil.ignore_patterns("__pycache__")
            )
            copies.append(copy)
        rows = []
        for mode in ("source", "compiled"):
            if mode == "compiled":
                for copy in copies:
                    compileall.compile_dir(copy, quiet=1)
            samples: list[dict[str, list[float]]] = [{"pass": [], "import": [], "record": []} for _ in copies]
            heavy: list[list[str]] = [[] for _ in copies]
            for run in range(args.runs):
                for k, copy in enumerate(copies):
                    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
                    env["TRAJFORGE_HOME"] = str(tmp / "home")
                    env.pop("TRAJFORGE_DISABLE_LOGGING", None)
                    env.pop("PYTHONPYCACHEPREFIX", None)
                    samples[k]["pass"].append(_wall([sys.executable, "-c", "pass"], env)[0])
                    samples[k]["import"].append(_import_us(env) / 1e6)
                    db, spool = tmp / f"r{k}-{mode}-{run}.db", tmp / f"spool-{k}"
                    wall, out = _wall([sys.executable, "-c", RECORD, str(db), str(spool)], env)
                    samples[k]["record"].append(wall)
                    got = json.loads(out.splitlines()[-1])
                    assert got["stats"]["written"] == got["stats"]["submitted"] == 5, got["stats"]
                    heavy[k] = sorted(set(got["loaded"]).intersection(HEAVY))
            for k, tree in enumerate(trees):
                med = {name: statistics.median(v) * 1000 for name, v in samples[k].items()}
                rows.append((str(tree), mode, med, heavy[k]))
    print(
        f"{'tree':<40} {'bytecode':<9} {'pass ms':>8} {'import ms':>10} {'record ms':>10}  heavy modules loaded"
    )
    for tree, mode, med, loaded in rows:
        print(
            f"{tree[-40:]:<40} {mode:<9} {med['pass']:>8.1f} {med['import']:>10.1f} {med['record']:>10.1f}"
            f"  {', '.join(loaded) or '-'}"
        )


if __name__ == "__main__":
    main()
