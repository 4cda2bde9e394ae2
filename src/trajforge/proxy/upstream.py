"""A lean HTTP/1.1 client for the one upstream a proxy relays to: a pool of keep-alive connections,
responses read with ``httptools`` (uvicorn's own parser) and handed over chunk by chunk.

Why not httpx: profiled under the proxy, ``httpx.AsyncClient`` spent ~0.7 ms of CPU per call in
its request/response models and anyio layers, three quarters of all the proxy did, which alone
breaks the 1 ms added-latency budget (benchmarks/proxy.py). This client does only what a relay
needs: write the request as given, parse the status, headers and body framing (length, chunked,
or until close), and give the body back as it arrives. HTTPS upstreams use the stdlib's TLS.

A connection returns to the pool only after a complete response that allows keep-alive. A request
that finds its reused connection closed by the upstream before any byte of an answer (an idle
connection timing out) is sent once more on a new one, as HTTP clients do: the upstream never saw
it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import httptools

_READ_HIGH = 1 << 20
"""Bytes buffered from the upstream before it is paused (the client is slower than it)."""


class UpstreamError(Exception):
    """The upstream could not be reached or broke off (the proxy answers 502, or 504 on
    :class:`UpstreamTimeout`)."""


class UpstreamTimeout(UpstreamError):
    pass


class _Stale(UpstreamError):
    """A reused connection was closed before the answer began: safe to send again."""


class _Conn(asyncio.Protocol):
    """One connection; parses one response at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser: Any = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._complete = False
        self._got_bytes = False
        self._error: BaseException | None = None
        self.keep_alive = False

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the upstream sent a malformed response: {exc}"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is None or self._complete:
            return
        if self._headers_done and not self._framed:
            self._complete = True  # a body delimited by the connection closing (HTTP/1.0 style)
            self._wake()
        elif not self._got_bytes and self.reused:
            self._fail(_Stale("the upstream closed an idle connection"))
        else:
            self._fail(UpstreamError("the upstream closed the connection before the end of its answer"))

    def pause_writing(self) -> None:  # the upstream is slow to read the request: nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        names = {n for n, _ in self.headers}
        self._framed = (
            b"content-length" in names or b"transfer-encoding" in names or self.status in (204, 304)
        )
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(bytes(body))
        self._buffered += len(body)
        if self._buffered > _READ_HIGH and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._wake()

    # --- use -------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def _wait(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def start(self, request: bytes) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._chunks.clear()
        self._buffered = 0
        self.status, self.headers = 0, []
        self._headers_done = self._complete = self._got_bytes = False
        self._framed = True
        self._error = None
        assert self.transport is not None
        self.transport.write(request)

    async def head(self, timeout_s: float) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            if self.closed:
                raise UpstreamError("the upstream closed the connection")
            await self._wait(timeout_s)
        if self._error is not None:
            raise self._error

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _READ_HIGH // 2 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            if self.closed:
                raise UpstreamError("the upstream closed the connection before the end of its answer")
            await self._wait(timeout_s)


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("the upstream did not answer in time"))


class UpstreamResponse:
    """Status and headers of an answer; the body from :meth:`chunks`; :meth:`close` when done
    (returns the connection to the pool if the answer was read to its end)."""

    def __init__(self, pool: UpstreamPool, conn: _Conn) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    async def chunks(self) -> Any:
        conn = self._conn
        while conn is not None:
            chunk = await conn.next_chunk(self._pool.read_timeout_s)
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._pool._release(conn, reusable=conn._complete and conn.keep_alive and not conn.closed)


class UpstreamPool:
    """Keep-alive connections to one ``http(s)://host:port``; at most ``max_connections`` in use
    at once (others wait)."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        max_connections: int = 512,
        max_idle: int = 256,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
    ) -> None:
        self.host, self.port = host, port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if scheme == "https" else None
        default = 443 if scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host  # an IPv6 address is bracketed in Host
        self.host_header = (name if port == default else f"{name}:{port}").encode("ascii")
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Conn(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("connecting to the upstream timed out") from exc
        except OSError as exc:
            raise UpstreamError(f"the upstream could not be reached ({type(exc).__name__})") from exc
        return conn

    async def request(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Send ``method target`` with ``headers`` (Host and Content-Length are added) and
        ``body``; returns once the answer's status and headers are in."""
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), b"host: " + self.host_header + b"\r\n"]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        if body or method not in ("GET", "HEAD"):
            lines.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        lines.append(b"\r\n")
        request = b"".join(lines) + body
        await self._slots.acquire()
        try:
            for attempt in range(2):
                conn = self._take() if attempt == 0 else None  # the retry: a new connection
                if conn is None:
                    conn = await self._connect()
                conn.start(request)
                try:
                    await conn.head(self.read_timeout_s)
                except _Stale:
                    conn._close()
                    continue
                except BaseException:
                    conn._close()
                    raise
                return UpstreamResponse(self, conn)
            raise UpstreamError("the upstream closed the connection")
        except BaseException:
            self._slots.release()
            raise

    def _take(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def _release(self, conn: _Conn, reusable: bool) -> None:
        self._slots.release()
        if reusable and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn._close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn._close()
