"""Soak: 8 client processes record through the HTTP SDK for minutes while the server is SIGKILLed
at random; then every trajectory must be stored once.

    python benchmarks/soak.py [--seconds 180] [--backend sqlite|postgres|both] [--clients 8]
                              [--pg postgresql://postgres@127.0.0.1:5432/test] [--seed 1]

``--pg`` defaults to ``$TRAJFORGE_BENCH_PG`` (as in ``ingest.py``), else the local server.

Each client is a real process with ``trajforge.Recorder("http://127.0.0.1:PORT")``; all share the
default spool dir (``$TRAJFORGE_HOME/spool``). The server is a real ``trajforge serve``, killed
every 3-12 s and restarted after 0.2-2 s. Prints attempted / stored / lost / duplicated, the sum
of the clients' ``rec.stats`` and how many kills landed. Exit status 1 if anything was lost or
duplicated or the counters do not add up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from trajforge.store import TrajectoryFilter, open_store

TOKEN = "soak-token"
RECORDS_PER_TRAJECTORY = 6  # start header, step, provider access, call, step close, end header

CLIENT = """
import json, sys, time
import trajforge
url, k, until, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rec = trajforge.Recorder(url)
n = 0
while time.time() < until:
    with rec.trajectory(agent_id=f"soak-{k}", trajectory_id=f"c{k}-{n}") as t, t.step() as s:
        s.provider("kb", data={"k": k, "n": n})
        s.llm_call(model="m", user_prompt=f"question {k}.{n}", response="answer", prompt_tokens=3)
    n += 1
    time.sleep(0.02)
ok = rec.flush(300)
deadline = time.monotonic() + 300
while not (rec.stats["healthy"] and rec.stats["pending"] == 0) and time.monotonic() < deadline:
    time.sleep(0.1)
rec.close()
with open(out, "w") as fh:
    json.dump({"attempted": n, "flushed": ok, "stats": rec.stats}, fh)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, db: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trajforge.cli", "serve", "--port", str(port), "--db", db],
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited: " + log.read_text()[-2000:])
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start: " + log.read_text()[-2000:])


def soak(backend: str, seconds: float, clients: int, pg: str, rng: random.Random) -> bool:
    work = Path(tempfile.mkdtemp(prefix=f"trajforge-soak-{backend}-"))
    schema = None
    if backend == "sqlite":
        db = str(work / "server.db")
    else:
        schema = f"soak_{uuid.uuid4().hex[:10]}"
        db = f"{pg}?schema={schema}"
    env = {**os.environ, "TRAJFORGE_API_TOKEN": TOKEN, "TRAJFORGE_HOME": str(work / "home")}
    port = free_port()
    log = work / "server.log"
    server = start_server(port, db, log, env)
    until = time.time() + seconds
    outs = [work / f"client-{k}.json" for k in range(clients)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}", str(k), str(until), str(outs[k])],
            env=env,
            stderr=open(work / f"client-{k}.log", "ab"),  # noqa: SIM115 - the child owns it
        )
        for k in range(clients)
    ]
    kills = 0
    started = time.monotonic()
    try:
        while time.time() < until - 3:
            time.sleep(min(rng.uniform(3, 12), max(0.0, until - time.time())))
            if time.time() >= until:
                break
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            kills += 1
            time.sleep(rng.uniform(0.2, 2.0))
            server = start_server(port, db, log, env)
        for p in procs:
            p.wait(900)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    elapsed = time.monotonic() - started
    results = [json.loads(o.read_text()) for o in outs]
    attempted = sum(r["attempted"] for r in results)
    totals: dict[str, int] = {}
    for r in results:
        for key, value in r["stats"].items():
            if isinstance(value, bool):
                continue
            totals[key] = totals.get(key, 0) + int(value)
    store = open_store(db)
    try:
        complete = 0
        duplicated = 0
        stored = 0
        for t in store.iter_trajectories(TrajectoryFilter()):
            stored += 1
            if (t.status, t.step_count, t.llm_call_count, t.provider_access_count) == ("completed", 1, 1, 1):
                complete += 1
            elif t.step_count > 1 or t.llm_call_count > 1 or t.provider_access_count > 1:
                duplicated += 1
        expected = {f"c{k}-{i}" for k, r in enumerate(results) for i in range(r["attempted"])}
        ids = {t.id for t in store.iter_trajectories(TrajectoryFilter())}
        lost = len(expected - ids) + (stored - complete - duplicated)
        phantoms = len(ids - expected)
    finally:
        store.close()
        if schema is not None:
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    counted = totals["written"] + totals["replayed"]
    books = (
        totals["submitted"] == attempted * RECORDS_PER_TRAJECTORY == counted
        and totals["spilled"] == totals["replayed"]
        and totals["lost"] == totals["rejected"] == 0
    )
    print(
        f"{backend}: {clients} clients, {elapsed:.0f} s, {kills} server kills (SIGKILL), "
        f"{attempted / elapsed:.0f} trajectories/s attempted"
    )
    print(
        f"  attempted {attempted}  stored {complete}  lost {lost}  duplicated {duplicated}  "
        f"phantoms {phantoms}"
    )
    print(
        "  rec.stats total: "
        + "  ".join(f"{k} {totals.get(k, 0)}" for k in ("submitted", "written", "spilled", "replayed"))
        + "  "
        + "  ".join(f"{k} {totals.get(k, 0)}" for k in ("rejected", "lost", "write_errors"))
    )
    print(
        f"  counters add up to what was stored: {'yes' if books and counted == complete * RECORDS_PER_TRAJECTORY else 'NO'}"
    )
    return lost == duplicated == phantoms == 0 and books and counted == complete * RECORDS_PER_TRAJECTORY


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the clients record")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--pg", default=os.environ.get("TRAJFORGE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill times")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    ok = all([soak(b, args.seconds, args.clients, args.pg, rng) for b in backends])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
