"""The HTTP SDK's wait for an ingest answer grows with the batch: a big batch a busy server takes
longer than the base timeout to store is delivered once, not timed out, spooled and sent again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import make_trajectory
from trajforge.capture.http import HttpSink
from trajforge.capture.transport import TransientError
from trajforge.records import WriteBatch

ANSWER_AFTER_S = 1.0


class _SlowIngest(BaseHTTPRequestHandler):
    """Reads the whole batch, then answers like /api/trajectories after ANSWER_AFTER_S."""

    posts: list[int] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.rfile.read(length)
        time.sleep(ANSWER_AFTER_S)
        self.posts.append(length)
        body = b'{"refused": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    _SlowIngest.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowIngest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _batch(n: int) -> WriteBatch:
    batch = WriteBatch()
    for i in range(n):
        batch.extend(WriteBatch.from_trajectory(make_trajectory(n_steps=2, prompt=f"case {i} " + "x" * 2000)))
    return batch


def test_a_big_batch_gets_time_for_its_size_and_a_small_one_does_not(slow_server: str) -> None:
    sink = HttpSink(slow_server, timeout_s=0.3)
    try:
        # ~40 kB per trajectory of JSON (before gzip): 60 of them give the server well over 1 s.
        big = _batch(60)
        assert sink.write(big) == []
        assert len(_SlowIngest.posts) == 1
        # A small batch gets the base timeout (plus a few ms): the same slow answer is an outage.
        with pytest.raises(TransientError):
            sink.write(_batch(1))
    finally:
        sink.close()
