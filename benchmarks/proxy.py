"""The capture proxy's added latency: the same calls to a loopback upstream, direct and through
``trajforge proxy`` (recording into SQLite), in alternating A/B rounds.

    python benchmarks/proxy.py [--rounds 7] [--clients 50] [--requests 1000] [--think-ms 100]

Upstream: a tiny ASGI app on uvicorn (httptools, uvloop) in its own process, answering a canned
chat completion at once (non-streamed) or as 10 server-sent events 2 ms apart (streamed): the
test fake (a ``ThreadingHTTPServer``) would be the bottleneck and hide the proxy's own cost.

- **Non-streamed, concurrent**: ``--clients`` clients, each on its own keep-alive connection,
  send ``--requests`` calls in all, each waiting a random 0-2×``--think-ms`` between its calls
  (agents think between model calls; ``--think-ms 0`` saturates the machine and measures
  queueing instead). Latency: request written → whole response read. p50 and p99 per phase.
- **Time to first streamed byte**: one client, ``--streams`` streamed calls per phase, request
  written → first chunk of the body. Median per phase.

Each round runs both targets (the order alternates); the added latency is proxy minus direct
within a round, and the figure printed is the median over rounds. The client is a raw asyncio
HTTP/1.1 client (no HTTP library's cost in the figures). After the run, every proxied call is
checked to be in the store: recorded / sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ingest import machine

CHAT = (
    b'{"id":"chatcmpl-b","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"The order A-1042 ships tomorrow; here is the tracking link."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":14,"total_tokens":56}}'
)
CHUNK = (
    b'data: {"id":"chatcmpl-b","object":"chat.completion.chunk","created":0,"model":"bench",'
    b'"choices":[{"index":0,"delta":{"content":"word "}}]}\n\n'
)
LAST = (
    b'data: {"id":"chatcmpl-b","object":"chat.completion.chunk","created":0,"model":"bench",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
)
MESSAGES = (
    b'"messages":[{"role":"system","content":"You are a support agent. Answer briefly."},'
    b'{"role":"user","content":"Where is my order A-1042? It was due on Monday."}]'
)
BODY = b'{"model":"bench",' + MESSAGES + b"}"
STREAM_BODY = b'{"model":"bench","stream":true,' + MESSAGES + b"}"


# --- the upstream ---------------------------------------------------------------------------------


async def upstream_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if b'"stream":true' not in body:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(CHAT)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": CHAT})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    for _ in range(9):
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await asyncio.sleep(0.002)
    await send({"type": "http.response.body", "body": LAST})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        upstream_app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


# --- the client -----------------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection that posts a prepared request and reads the answer."""

    def __init__(self, port: int, path: bytes) -> None:
        self.port, self.path = port, path

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, body: bytes) -> bytes:
        return (
            b"POST " + self.path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer sk-bench\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    async def call(self, request: bytes) -> tuple[float, float]:
        """(seconds to the first body byte, seconds to the whole response)."""
        started = time.perf_counter()
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head[9:12]
        if status != b"200":
            raise SystemExit(f"HTTP {status.decode()}: {head.decode(errors='replace')}")
        lower = head.lower()
        if b"content-length:" in lower:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            await self.reader.readexactly(length)
            done = time.perf_counter() - started
            return done, done
        first = 0.0
        while True:  # chunked
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return first, time.perf_counter() - started
            await self.reader.readexactly(size + 2)
            if not first:
                first = time.perf_counter() - started

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def concurrent_phase(
    port: int, path: bytes, clients: int, requests: int, think_s: float
) -> list[float]:
    conns = [Conn(port, path) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    latencies: list[float] = []
    left = [requests]

    async def client(conn: Conn, rng: random.Random) -> None:
        request = conn.request(BODY)
        await asyncio.sleep(rng.uniform(0, 2 * think_s))  # spread the starts
        while left[0] > 0:
            left[0] -= 1
            latencies.append((await conn.call(request))[1])
            if think_s:
                await asyncio.sleep(rng.uniform(0, 2 * think_s))

    await asyncio.gather(*(client(c, random.Random(i)) for i, c in enumerate(conns)))
    await asyncio.gather(*(c.close() for c in conns))
    return latencies


async def ttfb_phase(port: int, path: bytes, n: int) -> list[float]:
    conn = Conn(port, path)
    await conn.open()
    request = conn.request(STREAM_BODY)
    firsts = [(await conn.call(request))[0] for _ in range(n)]
    await conn.close()
    return firsts


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- the run --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


def stored_calls(db: Path) -> int:
    from trajforge.store import open_store
    from trajforge.store.filter import TrajectoryFilter

    store = open_store(str(db))
    try:
        return sum(t.llm_call_count for t in store.iter_trajectories(TrajectoryFilter(), full=False))
    finally:
        store.close()


async def run(
    args: argparse.Namespace, direct: int, proxied: int
) -> tuple[list[float], list[float], list[float], int]:
    added_p50, added_p99, added_ttfb = [], [], []
    sent = 0
    targets = {"direct": (direct, b"/v1/chat/completions"), "proxy": (proxied, b"/v1/chat/completions")}
    for warm in targets.values():  # connections, code paths and the store's first write
        await concurrent_phase(*warm, min(args.clients, 10), 200, 0.0)
        await ttfb_phase(*warm, 10)
    sent += 200 + 10
    for r in range(args.rounds):
        order = ["direct", "proxy"] if r % 2 == 0 else ["proxy", "direct"]
        lat: dict[str, list[float]] = {}
        first: dict[str, list[float]] = {}
        rate: dict[str, float] = {}
        for name in order:
            started = time.perf_counter()
            lat[name] = await concurrent_phase(
                *targets[name], args.clients, args.requests, args.think_ms / 1000
            )
            rate[name] = args.requests / (time.perf_counter() - started)
            first[name] = await ttfb_phase(*targets[name], args.streams)
        sent += args.requests + args.streams
        p = {n: (pct(v, 0.5) * 1000, pct(v, 0.99) * 1000) for n, v in lat.items()}
        t = {n: statistics.median(v) * 1000 for n, v in first.items()}
        added_p50.append(p["proxy"][0] - p["direct"][0])
        added_p99.append(p["proxy"][1] - p["direct"][1])
        added_ttfb.append(t["proxy"] - t["direct"])
        print(
            f"round {r + 1}: direct p50 {p['direct'][0]:.2f} / p99 {p['direct'][1]:.2f} ms "
            f"({rate['direct']:.0f} calls/s), proxy p50 {p['proxy'][0]:.2f} / p99 {p['proxy'][1]:.2f} ms "
            f"({rate['proxy']:.0f} calls/s); "
            f"TTFB direct {t['direct']:.2f} ms, proxy {t['proxy']:.2f} ms"
        )
    return added_p50, added_p99, added_ttfb, sent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000, help="non-streamed calls per phase")
    parser.add_argument("--streams", type=int, default=50, help="streamed calls per TTFB phase")
    parser.add_argument("--think-ms", type=float, default=100.0, help="mean pause of a client between calls")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    print(f"machine: {machine()}")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up_port, proxy_port = free_port(), free_port()
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(up_port)]))
            wait_port(up_port, procs[-1], "the upstream")
            db = Path(tmp) / "proxy.db"
            env = {**os.environ, "TRAJFORGE_HOME": tmp}
            env.pop("TRAJFORGE_API_TOKEN", None)
            trajforge = str(Path(sys.executable).with_name("trajforge"))
            upstream = f"http://127.0.0.1:{up_port}/v1"
            cmd = [trajforge, "proxy", "--upstream", upstream, "--port", str(proxy_port), "--db", str(db)]
            procs.append(subprocess.Popen(cmd, env=env))
            wait_port(proxy_port, procs[-1], "trajforge proxy")
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            print(
                f"workload: {args.clients} clients, {args.requests} non-streamed calls per phase "
                f"(pause 0-{2 * args.think_ms:g} ms between a client's calls), {args.streams} streamed "
                f"calls per TTFB phase, {args.rounds} rounds alternating direct/proxy"
            )
            p50, p99, ttfb, sent = asyncio.run(run(args, up_port, proxy_port))
            print(f"added latency, median of rounds: p50 {statistics.median(p50):+.3f} ms (target <= 1 ms)")
            print(f"                                 p99 {statistics.median(p99):+.3f} ms (target <= 5 ms)")
            print(
                f"added time to first streamed byte:   {statistics.median(ttfb):+.3f} ms (target within 1 ms)"
            )
            procs[-1].send_signal(signal.SIGTERM)  # the proxy flushes its writer on the way out
            procs[-1].wait(60)
            print(f"recorded: {stored_calls(db)} of {sent} proxied calls")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)


if __name__ == "__main__":
    main()
