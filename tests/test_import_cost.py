"""What an agent that only records pays at start: ``import trajforge`` and recording into SQLite load
no database driver for another backend, no HTTP client, no web framework, no pydantic, no torch.

Each costs tens to hundreds of milliseconds of every agent process's start (psycopg ~0.1 s, httpx
~0.1 s, pydantic ~0.1 s), and a module-level import anywhere on the path brings it back, so the
check runs the path end to end in a fresh interpreter. The same script is timed by
``benchmarks/import_time.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.import_time import HEAVY, RECORD

import trajforge


def _run(script: str, *args: str, home: Path) -> dict:
    src = str(Path(trajforge.__file__).parents[1])  # the trajforge under test, wherever it is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env["TRAJFORGE_HOME"] = str(home)
    env.pop("TRAJFORGE_DISABLE_LOGGING", None)
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_import_trajforge_loads_none_of_the_heavy_modules(tmp_path: Path) -> None:
    script = "import json, sys, trajforge; print(json.dumps({'loaded': sorted(sys.modules)}))"
    loaded = {m.split(".")[0] for m in _run(script, home=tmp_path)["loaded"]}
    assert not loaded.intersection(HEAVY), f"import trajforge loads {sorted(loaded.intersection(HEAVY))}"


def test_recording_into_sqlite_loads_none_of_the_heavy_modules(tmp_path: Path) -> None:
    got = _run(RECORD, str(tmp_path / "agent.db"), str(tmp_path / "spool"), home=tmp_path)
    stats = got["stats"]
    assert stats["written"] == stats["submitted"] == 5 and stats["lost"] == 0, stats  # it did record
    loaded = set(got["loaded"])
    assert "sqlite3" in loaded  # the check sees the write path's own imports
    assert not loaded.intersection(HEAVY), f"recording loads {sorted(loaded.intersection(HEAVY))}"


def test_public_names_load_on_first_use() -> None:
    for name in trajforge.__all__:
        assert getattr(trajforge, name) is not None, name
    assert set(trajforge.__all__) <= set(dir(trajforge))


def test_without_fcntl_trajforge_imports_and_records(tmp_path: Path) -> None:
    """As on Windows, where fcntl does not exist: only the spool and the bundled model's conversion
    need it, and they import it when they run."""
    no_fcntl = (
        "import sys\nsys.modules['fcntl'] = None  # import fcntl raises ImportError\nimport trajforge.lm\n"
    )
    got = _run(no_fcntl + RECORD, str(tmp_path / "agent.db"), str(tmp_path / "spool"), home=tmp_path)
    assert got["stats"]["written"] == got["stats"]["submitted"] == 5, got["stats"]
