"""The proxy as a plain ASGI app: routes, auth, relaying (plain answers and server-sent events),
and handing each finished exchange to the recorder."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from trajforge import settings
from trajforge.capture.writer import BackgroundWriter
from trajforge.errors import InvalidInput
from trajforge.proxy.record import Exchange, Grouper, parse_grouping
from trajforge.proxy.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout

log = logging.getLogger("trajforge.proxy")

ROUTES: dict[tuple[str, str], str | None] = {
    ("POST", "chat/completions"): "chat",
    ("POST", "responses"): "responses",
    ("POST", "completions"): "completions",
    ("POST", "embeddings"): None,  # relayed, not recorded: no text was generated to learn from
    ("GET", "models"): None,
}
"""``(method, path under /v1/)`` → the conversion that records it (``None``: relayed only)."""

TOKEN_HEADER = "x-trajforge-token"

# Hop-by-hop headers (RFC 9110 §7.6.1), and those the upstream client sets itself.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
# Accept-Encoding becomes identity: the recorded copy is then read as relayed, with no decoder (or
# decompression bomb) in between; over loopback, compression gains the client nothing.
_NOT_FORWARDED = _HOP | {b"host", b"content-length", b"accept-encoding"}
# The server in front of the client adds its own Date and Server: two of each would confuse it.
_NOT_RETURNED = _HOP | {b"date", b"server"}


_MODEL_PATH = re.compile(r"models/(?!\.{1,2}(?:/|$))[\w.:@+=-]+(?:/(?!\.{1,2}(?:/|$))[\w.:@+=-]+)*", re.ASCII)
"""``models/<id>``; ids such as ``ft:gpt-4o:org::x1`` or ``meta-llama/Llama-3-8B``. Nothing that
could leave the models path upstream (``..``) or break the request line (blanks, decoded ``%xx``)."""


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    """An OpenAI-shaped error (``error.message``/``type``/``param``/``code``), which every OpenAI
    client already knows how to show; ``field`` as in trajforge's own errors."""
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    body: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    if param is not None:
        body["field"] = param
    return orjson.dumps({"error": body})


async def _send_error(send: Send, status: int, message: str, code: str, param: str | None = None) -> None:
    body = error_body(status, message, code, param)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="trajforge", header="X-Trajforge-Token"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, value: Any) -> None:
    body = orjson.dumps(value)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProxyApp:
    """The proxy over ``upstream`` (an OpenAI base URL), recording through ``writer`` (``None``:
    relay only). No framework sits between the two sockets: its cost is the added latency.

    ``token``: when set, every request must carry it in ``X-Trajforge-Token``. ``max_body``:
    request bodies over it are refused (413); ``max_record``: an answer over it is still relayed
    whole, and recorded without its response, marked incomplete.
    """

    def __init__(
        self,
        upstream: str,
        writer: BackgroundWriter | None,
        *,
        token: str | None = None,
        max_body: int = 32 * 1024 * 1024,
        max_record: int = 32 * 1024 * 1024,
        timeout_s: float = 600.0,
        max_connections: int = 512,
    ) -> None:
        self.upstream = check_upstream(upstream)
        url = httpx.URL(self.upstream)
        self._scheme, self._host = url.scheme, url.raw_host.decode("ascii")  # IDNA-encoded
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._base_path = url.raw_path.decode("ascii").rstrip("/")
        self.writer = writer
        self.token = token
        self.max_body = max_body
        self.max_record = max_record
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._pool: UpstreamPool | None = None
        self._grouper = Grouper()
        # Records are built off the event loop (parsing a long streamed answer takes a while, and
        # every other connection would wait), in one thread so each trajectory's calls keep their
        # order and the grouper's step numbers need no lock.
        self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trajforge-proxy-record")
        self._disabled = settings.logging_disabled()

    # --- lifecycle -------------------------------------------------------------------------------

    def pool(self) -> UpstreamPool:
        """One pool of keep-alive upstream connections (made on first use, in the serving loop),
        sized for well over 50 concurrent agents."""
        if self._pool is None:
            self._pool = UpstreamPool(
                self._scheme,
                self._host,
                self._port,
                max_connections=self.max_connections,
                read_timeout_s=self.timeout_s,
            )
        return self._pool

    async def aclose(self) -> None:
        """Close the upstream pool and flush the writer (what is unwritten stays spooled)."""
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        # Every record handed over so far reaches the writer before it closes.
        await asyncio.to_thread(self._recorder.shutdown, wait=True)
        if self.writer is not None:
            writer, self.writer = self.writer, None
            await asyncio.to_thread(writer.close, 30.0)
            await asyncio.to_thread(writer.sink.close)

    # --- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # mounted under /proxy: route on what follows
        if path == "/healthz":
            await _send_json(send, 200, {"ok": True, "upstream": public_url(self.upstream)})
            return
        method: str = scope["method"]
        rest = path[4:] if path.startswith("/v1/") else None
        kind = ROUTES.get((method, rest or ""), "?")
        if kind == "?" and method == "GET" and rest is not None and _MODEL_PATH.fullmatch(rest):
            kind = None  # one model's description (``client.models.retrieve``): relayed only
        if rest is None or kind == "?":
            if rest is not None and any(r == rest for _, r in ROUTES):
                await _send_error(send, 405, f"{method} is not allowed on {path}", "method_not_allowed")
            else:
                await _send_error(send, 404, f"the proxy does not serve {path}", "not_found")
            return
        headers = Headers(scope=scope)
        if self.token is not None:
            given = headers.get(TOKEN_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                await _send_error(
                    send,
                    401,
                    "a valid X-Trajforge-Token header is required",
                    "unauthorized",
                    "X-Trajforge-Token",
                )
                return
        try:
            grouping = parse_grouping(headers)
        except InvalidInput as exc:
            await _send_error(send, 400, exc.message, "invalid_header", exc.field)
            return
        try:
            body = await self._read_body(receive, headers)
        except StarletteHTTPException as exc:  # the server's body limit, on a chunked body
            await _send_error(send, exc.status_code, str(exc.detail), "too_large")
            return
        if body is None:
            await _send_error(send, 413, f"the body is over the {self.max_body} byte limit", "too_large")
            return
        recording = (
            kind is not None and self.writer is not None and self.writer.enabled and not self._disabled
        )
        ex = Exchange(kind, grouping, body) if recording and kind is not None else None
        await self._forward(scope, receive, send, rest, body, ex)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive, headers: Headers) -> bytes | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_body):
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- relaying --------------------------------------------------------------------------------

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, rest: str, body: bytes, ex: Exchange | None
    ) -> None:
        target = f"{self._base_path}/{rest}"
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        out = [
            (k, v)
            for k, v in scope["headers"]
            if k not in _NOT_FORWARDED and not k.startswith(b"x-trajforge-")
        ]
        out.append((b"accept-encoding", b"identity"))
        try:
            response = await self.pool().request(scope["method"], target, out, body)
        except UpstreamTimeout:
            await self._unreachable(send, ex, 504, f"the upstream {public_url(self.upstream)} timed out")
            return
        except UpstreamError as exc:
            await self._unreachable(send, ex, 502, f"{exc} ({public_url(self.upstream)})")
            return
        try:
            # The body is relayed as its framing decoded it: the same bytes, so the same length.
            headers = [(k, v) for k, v in response.headers if k not in _NOT_RETURNED]
            if ex is not None:
                ex.status = response.status
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            if (response.header(b"content-type") or b"").startswith(b"text/event-stream"):
                if ex is not None:
                    ex.streamed = True
                await self._relay_stream(receive, send, response, ex)
            else:
                await self._relay_body(send, response, ex)
        finally:
            response.close()  # whatever happened, the connection's pool slot is given back

    async def _unreachable(self, send: Send, ex: Exchange | None, status: int, message: str) -> None:
        await _send_error(send, status, message, "upstream_unreachable")
        if ex is not None:
            ex.status = status
            ex.error = "APITimeoutError" if status == 504 else "APIConnectionError"
            self._record(ex)

    async def _relay_body(self, send: Send, response: UpstreamResponse, ex: Exchange | None) -> None:
        """A plain answer: relayed one chunk behind, so a small body (almost every JSON answer)
        goes to the client in one message; the copy is kept for the record."""
        held: bytes | None = None
        try:
            async for chunk in response.chunks():
                if held is not None:
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                held = chunk
                if ex is not None:
                    ex.keep(chunk, self.max_record)
        except UpstreamError as exc:
            if ex is not None:
                ex.cut = True
                self._record(ex)
            _broken(exc)
            return  # unfinished: the server closes the connection, the client sees a broken body
        finally:
            response.close()
        await send({"type": "http.response.body", "body": held or b""})
        if ex is not None:
            self._record(ex)

    async def _relay_stream(
        self, receive: Receive, send: Send, response: UpstreamResponse, ex: Exchange | None
    ) -> None:
        """Server-sent events: each chunk goes to the client as it arrives. A watcher notices the
        client leaving (the server's ``send`` says nothing then) and ends the relay, so the
        upstream stops generating and the record says the stream was cut."""
        relay = asyncio.current_task()
        state = {"finished": False, "gone": False}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["finished"] and relay is not None:
                        state["gone"] = True
                        relay.cancel()
                    return

        watcher = asyncio.create_task(watch())
        failed: BaseException | None = None
        try:
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if ex is not None:
                    ex.keep(chunk, self.max_record)
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            if relay is not None:
                relay.uncancel()
            if ex is not None and not ex.stream_ended():
                ex.cut = True
        except UpstreamError as exc:
            failed = exc
            if ex is not None:
                ex.cut = True
        finally:
            state["finished"] = True
            watcher.cancel()
            response.close()  # unread to the end: the upstream connection is dropped
        if ex is not None:
            self._record(ex)
        if failed is not None:
            _broken(failed)
            return  # unfinished: the server closes the connection, the client sees the stream broken
        if not state["gone"]:
            await send({"type": "http.response.body", "body": b""})

    # --- recording -------------------------------------------------------------------------------

    def _record(self, ex: Exchange) -> None:
        """Hand the copy to the recording thread; never raises into the relay."""
        if self.writer is None:
            return
        try:
            self._recorder.submit(self._build_and_queue, ex)
        except RuntimeError:  # shut down: the server is stopping; the call itself went through
            log.warning("trajforge proxy: a call ended while the proxy stopped; it was not recorded")

    def _build_and_queue(self, ex: Exchange) -> None:
        """Build the records from the copy and queue them (on the recording thread)."""
        writer = self.writer
        if writer is None:
            return
        try:
            items = self._grouper.items(ex)
        except Exception:
            log.exception("trajforge proxy: building the record of a call failed (the call went through)")
            return
        for item in items:
            writer.submit(item)


def _broken(exc: BaseException) -> None:
    log.warning("trajforge proxy: %s; the client's connection is closed unfinished too", exc)


def check_upstream(url: str) -> str:
    """The upstream base URL without its trailing slash; :class:`InvalidInput` for one that is
    not an ``http(s)://host[:port][/path]`` URL."""
    try:
        parts = httpx.URL(url) if "://" in url else None
    except httpx.InvalidURL:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.host
        or parts.query
        or parts.fragment
    ):
        raise InvalidInput(
            f"the upstream must be an OpenAI base URL such as http://127.0.0.1:11434/v1, got {public_url(url)!r}",
            "upstream",
        )
    if parts.userinfo:
        raise InvalidInput("the upstream URL must not hold credentials: clients send their own", "upstream")
    return url.rstrip("/")


def public_url(url: str) -> str:
    """``url`` without credentials in it (``https://user:key@host``), for messages and logs."""
    try:
        parts = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<an unreadable URL>"
    return str(parts.copy_with(username=None, password=None)) if parts.userinfo else url
