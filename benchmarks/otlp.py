"""OTLP/HTTP ingest throughput: the ingest generator's workload as OpenTelemetry GenAI spans, sent
as OTLP protobuf requests of 512 spans (the SDK batch exporter's default) by 2 exporter processes
to a real ``trajforge serve`` on SQLite, against our SDK ingest of the same content in the same run.

    python benchmarks/otlp.py [--n 1000] [--runs 3]

Each trajectory of ``generator.py`` becomes one trace: an ``invoke_agent`` root, and per step a
``retrieval`` span (the provider access), two ``chat`` spans (system instructions, the user
message, the response and reasoning as GenAI content attributes, token usage) and an
``execute_tool`` span (the action): 21 spans. The spans are made by the real OpenTelemetry SDK and
encoded by its OTLP encoder before the clock starts; each exporter process POSTs its requests one
after another (as one BatchSpanProcessor does). Runs alternate OTLP and SDK, each into a fresh
database; medians are printed. Afterwards the store is counted (spans lost) and searched.

Targets (issue 18): >= 5,000 spans/s, 0 spans lost, search working, >= 0.5x the SDK.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from generator import Generator, TrajectorySpec
from ingest import machine, sdk_ingest

SPANS_PER_REQUEST = 512
SPANS_PER_TRAJECTORY = 1 + 5 * 4
MS = 1_000_000


def make_bodies(specs: list[TrajectorySpec]) -> list[bytes]:
    """The workload as encoded ``ExportTraceServiceRequest`` bodies of 512 spans, in end order."""
    from opentelemetry import trace as api
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    t = 1_760_000_000_000 * MS
    for spec in specs:
        root = tracer.start_span("invoke_agent", start_time=t)
        root.set_attributes({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": spec.agent_id})
        ctx = api.set_span_in_context(root)
        for st in spec.steps:
            acc = tracer.start_span("retrieval market", context=ctx, start_time=t + MS)
            acc.set_attributes({"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": "market"})
            acc.set_attribute("gen_ai.retrieval.documents", json.dumps(st.payload))
            acc.end(end_time=t + 2 * MS)
            t += 2 * MS
            for c in st.calls:
                chat = tracer.start_span(f"chat {c.model}", context=ctx, start_time=t)
                chat.set_attributes(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": c.model,
                        "gen_ai.usage.input_tokens": c.prompt_tokens,
                        "gen_ai.usage.output_tokens": c.completion_tokens,
                        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": c.system}]),
                        "gen_ai.input.messages": json.dumps(
                            [{"role": "user", "parts": [{"type": "text", "content": c.user}]}]
                        ),
                        "gen_ai.output.messages": json.dumps(
                            [
                                {
                                    "role": "assistant",
                                    "parts": [
                                        {"type": "reasoning", "content": c.reasoning},
                                        {"type": "text", "content": c.response},
                                    ],
                                    "finish_reason": "stop",
                                }
                            ]
                        ),
                    }
                )
                dur = int(c.latency_ms * MS)
                chat.end(end_time=t + dur)
                t += dur + MS
            tool = tracer.start_span(f"execute_tool {st.action}", context=ctx, start_time=t)
            tool.set_attributes(
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": st.action,
                    "gen_ai.tool.call.arguments": json.dumps({"n": 1}),
                }
            )
            tool.end(end_time=t + MS)
            t += 2 * MS
        root.end(end_time=t)
        t += MS
    spans = list(memory.get_finished_spans())
    return [
        encode_spans(spans[k : k + SPANS_PER_REQUEST]).SerializeToString()
        for k in range(0, len(spans), SPANS_PER_REQUEST)
    ]


def _exporter(url: str, bodies: list[bytes], ready: mp.Barrier, out: mp.Queue) -> None:  # type: ignore[type-arg]
    rejected = failed = 0
    with httpx.Client(timeout=120) as client:
        client.get(url.replace("/v1/traces", "/healthz"))  # connect before the clock starts
        ready.wait()
        for body in bodies:
            for attempt in range(10):  # the exporter's retry policy: 5xx and connection errors
                try:
                    r = client.post(url, content=body, headers={"Content-Type": "application/x-protobuf"})
                except httpx.HTTPError:
                    time.sleep(0.1 * 2**attempt)
                    continue
                if r.status_code in (429, 502, 503, 504):
                    time.sleep(0.1 * 2**attempt)
                    continue
                break
            if r.status_code != 200:
                failed += 1
                continue
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

            rejected += ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans
    out.put((time.perf_counter(), rejected, failed))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def otlp_run(tmp: Path, bodies: list[bytes], processes: int = 2) -> tuple[float, Path, int, int]:
    db = tmp / f"otlp-{time.monotonic_ns()}.db"
    port = _free_port()
    exe = str(Path(sys.executable).with_name("trajforge"))
    server = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--db", str(db)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("trajforge serve did not start")
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1/traces"
        ctx = mp.get_context("fork")
        ready = ctx.Barrier(processes + 1)
        out = ctx.Queue()
        # Interleaved: each process sends every other request, so both write the same time range.
        procs = [
            ctx.Process(target=_exporter, args=(url, bodies[k::processes], ready, out))
            for k in range(processes)
        ]
        for p in procs:
            p.start()
        ready.wait()
        started = time.perf_counter()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
        elapsed = max(r[0] for r in results) - started
        return elapsed, db, sum(r[1] for r in results), sum(r[2] for r in results)
    finally:
        server.terminate()
        server.wait(60)


def count_store(db: Path, n: int) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {
            "trajectories": conn.execute("SELECT COUNT(*) FROM trajectories").fetchone()[0],
            "calls": conn.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0],
            "actions": conn.execute("SELECT COUNT(*) FROM steps WHERE action IS NOT NULL").fetchone()[0],
            "accesses": conn.execute("SELECT COUNT(*) FROM provider_accesses").fetchone()[0],
            "completed": conn.execute(
                "SELECT COUNT(*) FROM trajectories WHERE status = 'completed'"
            ).fetchone()[0],
        }
    finally:
        conn.close()


def search_works(db: Path, specs: list[TrajectorySpec]) -> bool:
    """A response of the last trajectory, searched for, finds exactly its trajectory."""
    from trajforge.store import TrajectoryFilter, open_store

    store = open_store(str(db))
    try:
        words = specs[-1].steps[-1].calls[-1].response.split()[:4]
        page = store.list_trajectories(TrajectoryFilter(search=" ".join(words)), limit=5)
        return page.total >= 1 and any(t.agent_id == specs[-1].agent_id for t in page.items)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="trajectories per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (alternating); medians")
    parser.add_argument("--profile", action="store_true", help="profile the server (cProfile) in one run")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    specs = list(Generator().trajectories(args.n))
    spans = args.n * SPANS_PER_TRAJECTORY
    bodies = make_bodies(specs)
    print(
        f"workload: {args.n} trajectories, {spans} spans in {len(bodies)} requests of <= {SPANS_PER_REQUEST} "
        f"({sum(map(len, bodies)) / 1e6:.0f} MB protobuf), 2 exporter processes"
    )
    otlp_s: list[float] = []
    sdk_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        last: tuple[Path, int, int] | None = None
        for run in range(args.runs):
            elapsed, db, rejected, failed = otlp_run(tmp, bodies)
            otlp_s.append(elapsed)
            last = (db, rejected, failed)
            sdk_elapsed, _ = sdk_ingest(str(tmp / f"sdk-{run}.db"), specs, tmp / f"spool-{run}")
            sdk_s.append(sdk_elapsed)
            print(
                f"  run {run + 1}: OTLP {spans / elapsed:8.0f} spans/s   SDK {spans / sdk_elapsed:8.0f} spans/s"
            )
        assert last is not None
        db, rejected, failed = last
        counts = count_store(db, args.n)
        lost_calls = args.n * 10 - counts["calls"]
        lost_actions = args.n * 5 - counts["actions"]
        otlp_med, sdk_med = statistics.median(otlp_s), statistics.median(sdk_s)
        print(
            f"OTLP -> trajforge serve (SQLite): {spans / otlp_med:8.0f} spans/s  (median of {args.runs}, {otlp_med:.2f} s)"
        )
        print(f"SDK  -> SQLite, same content:     {spans / sdk_med:8.0f} spans/s  ({sdk_med:.2f} s)")
        print(f"ratio OTLP / SDK:                 {sdk_med / otlp_med:8.2f}x")
        print(
            f"stored (last OTLP run): {counts['trajectories']} trajectories ({counts['completed']} completed), "
            f"{counts['calls']} LLM calls, {counts['actions']} tool actions, {counts['accesses']} accesses; "
            f"rejected {rejected}, failed requests {failed}"
        )
        print(f"spans lost: LLM calls {lost_calls}, tool actions {lost_actions}")
        if counts["accesses"] != args.n * 5:
            print(
                f"  (retrieval spans stored as accesses: {counts['accesses']} of {args.n * 5}: the mapping's table)"
            )
        print(f"search works: {search_works(db, specs)}")
        if args.profile:
            profile(tmp, bodies)


def profile(tmp: Path, bodies: list[bytes]) -> None:
    """Where the server's time goes: the same requests through ``ingest`` in this process."""
    import cProfile
    import pstats

    from trajforge.server.otel import ingest
    from trajforge.store import open_store

    store = open_store(str(tmp / "profile.db"))
    prof = cProfile.Profile()
    prof.enable()
    for body in bodies:
        ingest(store, body, "application/x-protobuf", "traces")
    prof.disable()
    store.close()
    stats = pstats.Stats(prof).sort_stats("cumulative")
    stats.print_stats(25)
    stats.sort_stats("tottime").print_stats(15)
    stats.print_callers("check_json|check_record")


if __name__ == "__main__":
    os.environ.setdefault("TRAJFORGE_HOME", tempfile.mkdtemp(prefix="trajforge-bench-"))
    main()
