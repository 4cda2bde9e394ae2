"""The OpenAI-compatible capture proxy: an agent in any language changes its ``base_url`` and every
model call it makes is relayed to the real endpoint and recorded as a trajectory.

``trajforge proxy --upstream http://127.0.0.1:11434/v1`` serves :class:`ProxyApp` on its own;
``trajforge serve --upstream URL`` mounts the same app under ``/proxy``. A request to ``/v1/X`` goes
to ``<upstream>/X`` (``ROUTES``): its body, query and headers unchanged but for hop-by-hop headers
and ours (``X-Trajforge-*``), which are not forwarded; the answer comes back unchanged (status,
headers, error bodies), and a ``text/event-stream`` answer is relayed chunk by chunk as it arrives.

Grouping, by optional request headers (``GROUPING_HEADERS``): ``X-Trajforge-Trajectory`` (or
``Helicone-Session-Id``) puts the call in that trajectory, one step per call unless
``X-Trajforge-Step: N`` names the step; ``X-Trajforge-Agent``, ``-Source``, ``-Scenario`` describe
it; ``X-Trajforge-End: true`` completes it after this call. Without them each call is a trajectory
of its own (source ``proxy``).

Recording never delays or breaks a call. The client's bytes are sent first; the record is built
from a copy afterwards (with :data:`trajforge.capture.openai.CONVERSIONS`, the same conversion the
SDK instrumentation uses) and handed to a :class:`BackgroundWriter`, which spools it while the store
is down. The caller's credentials (``Authorization``, ``api-key``...) go to the upstream and nowhere
else: no header is recorded or logged. trajforge's own token, when set, is sent as
``X-Trajforge-Token`` since ``Authorization`` belongs to the upstream.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from trajforge.capture.openai import CONVERSIONS
from trajforge.capture.writer import BackgroundWriter, Item
from trajforge.errors import InvalidInput
from trajforge.limits import MAX_ID_CHARS, MAX_INT, MAX_NAME_CHARS, check_id, check_str
from trajforge.records import CallRow, LlmCall, StepHeader, TrajectoryHeader, new_id, now_ms
from trajforge.validation import check_item

if TYPE_CHECKING:
    from trajforge.store import Store

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
GROUPING_HEADERS = (
    "x-trajforge-trajectory",
    "x-trajforge-agent",
    "x-trajforge-source",
    "x-trajforge-scenario",
    "x-trajforge-step",
    "x-trajforge-end",
    "helicone-session-id",
)

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones httpx sets from the request itself.
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
_NOT_FORWARDED = _HOP | {b"host", b"content-length", b"accept-encoding"}
# The server in front of the client adds its own Date and Server: two of each would confuse it.
_NOT_RETURNED = _HOP | {b"date", b"server"}
_SAFE_TEXT = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
"""A header value usable as an id or a name: printable ASCII, no control characters, no
surrounding blanks (a value that differs only by them would name another trajectory)."""

_STATUS_ERRORS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
"""The ``openai`` client's exception for a status: an error call is tagged as the SDK
instrumentation tags the same failure, so both paths make the same record."""


@dataclass(slots=True)
class Grouping:
    """What the ``X-Trajforge-*`` headers of one request say (each already checked)."""

    trajectory_id: str | None = None
    agent_id: str | None = None
    source: str | None = None
    scenario_id: str | None = None
    step: int | None = None
    end: bool = False


def parse_grouping(headers: Headers) -> Grouping:
    """The grouping headers, or :class:`InvalidInput` naming the first bad one: a header value is
    untrusted input like any body field, and becomes an id or a name in the store."""
    g = Grouping()

    def text(name: str, limit: int, ident: bool) -> str | None:
        value = headers.get(name)
        if value is None:
            return None
        problem = check_id(value, limit) if ident else check_str(value, limit)
        if problem is None and not _SAFE_TEXT.fullmatch(value):
            problem = "must be printable ASCII without control characters or surrounding blanks"
        if problem is not None:
            raise InvalidInput(f"header {_title(name)} {problem}", _title(name))
        return value

    g.trajectory_id = text("x-trajforge-trajectory", MAX_ID_CHARS, True) or text(
        "helicone-session-id", MAX_ID_CHARS, True
    )
    g.agent_id = text("x-trajforge-agent", MAX_NAME_CHARS, False)
    g.source = text("x-trajforge-source", MAX_NAME_CHARS, False)
    g.scenario_id = text("x-trajforge-scenario", MAX_NAME_CHARS, False)
    step = headers.get("x-trajforge-step")
    if step is not None:
        if not (step.isascii() and step.isdigit() and len(step) <= 10 and int(step) <= MAX_INT):
            raise InvalidInput(
                f"header X-Trajforge-Step must be a step number from 0 to {MAX_INT}", "X-Trajforge-Step"
            )
        g.step = int(step)
    end = headers.get("x-trajforge-end")
    if end is not None:
        if end.lower() not in ("true", "false", "1", "0"):
            raise InvalidInput("header X-Trajforge-End must be true or false", "X-Trajforge-End")
        g.end = end.lower() in ("true", "1")
    return g


def _title(name: str) -> str:
    return "-".join(p.capitalize() for p in name.split("-"))


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


class ProxyApp:
    """The proxy as a plain ASGI app (no framework between the two sockets: its cost is the
    added latency), over ``upstream`` (an OpenAI base URL), recording through ``writer``.

    ``token``: when set, every request must carry it in ``X-Trajforge-Token``. ``max_body``:
    request bodies over it are refused (413); ``max_record``: a response copy over it is not kept
    (the call is still relayed whole, and recorded without its response, marked incomplete).
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
        self.writer = writer
        self.token = token
        self.max_body = max_body
        self.max_record = max_record
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self._steps: OrderedDict[str, int] = OrderedDict()  # trajectory id → next step number

    # --- lifecycle -------------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        """One pooled client for every call (made on first use, in the serving event loop)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=10.0),
                # Well over 50 concurrent agents, each keeping its upstream connection warm.
                limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=256),
                follow_redirects=False,
                trust_env=False,  # the upstream is the one given, not a proxy from the environment
            )
        return self._client

    async def aclose(self) -> None:
        """Close the upstream pool and flush the writer (what is unwritten stays spooled)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
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
        call = _Call(kind, grouping, body) if kind is not None and self._recording() else None
        await self._forward(scope, receive, send, rest, body, call)

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

    def _recording(self) -> bool:
        return self.writer is not None and self.writer.enabled

    # --- relaying --------------------------------------------------------------------------------

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, rest: str, body: bytes, call: _Call | None
    ) -> None:
        url = f"{self.upstream}/{rest}"
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        out = [
            (k, v)
            for k, v in scope["headers"]
            if k not in _NOT_FORWARDED and not k.startswith(b"x-trajforge-")
        ]
        # Identity: the recorded copy is then read as relayed, without a decoder (or a
        # decompression bomb) in between; over loopback compression gains the client nothing.
        out.append((b"accept-encoding", b"identity"))
        client = self.client()
        request = client.build_request(scope["method"], url, headers=out, content=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            await self._unreachable(
                send, call, 504, f"the upstream {public_url(self.upstream)} timed out", exc
            )
            return
        except httpx.HTTPError as exc:
            message = f"the upstream {public_url(self.upstream)} could not be reached ({type(exc).__name__})"
            await self._unreachable(send, call, 502, message, exc)
            return
        headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _NOT_RETURNED]
        if call is not None:
            call.status = response.status_code
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            if call is not None:
                call.streamed = True
            await self._relay_stream(receive, send, response, call)
        else:
            await self._relay_body(send, response, call)

    async def _unreachable(
        self, send: Send, call: _Call | None, status: int, message: str, exc: BaseException
    ) -> None:
        await _send_error(send, status, message, "upstream_unreachable")
        if call is not None:
            call.status = status
            call.error = "APITimeoutError" if status == 504 else "APIConnectionError"
            self._record(call)

    async def _relay_body(self, send: Send, response: httpx.Response, call: _Call | None) -> None:
        """A plain answer: relayed one chunk behind, so a small body (almost every JSON answer)
        goes to the client in one message; the copy is kept for the record."""
        held: bytes | None = None
        try:
            async for chunk in response.aiter_raw():
                if held is not None:
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                held = chunk
                if call is not None:
                    call.keep(chunk, self.max_record)
        except httpx.HTTPError:
            if call is not None:
                call.cut = True
                self._record(call)
            raise  # the server drops the connection: the client sees a broken body, not a short one
        finally:
            await response.aclose()
        await send({"type": "http.response.body", "body": held or b""})
        if call is not None:
            self._record(call)

    async def _relay_stream(
        self, receive: Receive, send: Send, response: httpx.Response, call: _Call | None
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
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if call is not None:
                    call.keep(chunk, self.max_record)
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            if relay is not None:
                relay.uncancel()
            if call is not None:
                call.cut = True
        except httpx.HTTPError as exc:
            failed = exc
            if call is not None:
                call.cut = True
        finally:
            state["finished"] = True
            watcher.cancel()
            await response.aclose()
        if call is not None:
            self._record(call)
        if failed is not None:
            raise failed  # the server drops the connection: the client sees the stream broken
        if not state["gone"]:
            await send({"type": "http.response.body", "body": b""})

    # --- recording -------------------------------------------------------------------------------

    def _record(self, call: _Call) -> None:
        """Build the record from the copy and queue it; never raises into the relay."""
        writer = self.writer
        if writer is None:
            return
        try:
            items = self._items(call)
        except Exception:
            log.exception("trajforge proxy: building the record of a call failed (the call went through)")
            return
        for item in items:
            writer.submit(item)

    def _items(self, c: _Call) -> list[Item]:
        llm = c.to_llm_call()
        try:
            check_item(CallRow("t", "s", llm))
        except InvalidInput as exc:
            # Over the limits (a message nested too deep, a huge number): keep the call's
            # outline rather than lose it, and say what was left out.
            log.warning("trajforge proxy: a call's content was not recorded: %s", exc.field)
            llm = LlmCall(
                call_id=llm.call_id,
                timestamp=llm.timestamp,
                model=llm.model[:MAX_NAME_CHARS],
                finish_reason=llm.finish_reason,
                latency_ms=llm.latency_ms,
                purpose=llm.purpose,
                tags=[f"unrecorded:{exc.field}"],
            )
        g = c.grouping
        own = g.trajectory_id is None
        tid = g.trajectory_id or new_id()
        first = own or tid not in self._steps
        step_id = f"{tid}:step:{g.step}" if g.step is not None else new_id()
        if own:
            number = 0
        else:
            number = self._next_step(tid)  # also remembers the trajectory as seen
            if g.step is not None:
                number = g.step
        items: list[Item] = [
            TrajectoryHeader(
                id=tid,
                agent_id=g.agent_id if g.agent_id is not None else ("" if first else None),
                # "proxy" the first time this process sees the trajectory; later calls that do not
                # say leave what an earlier one set.
                source=g.source if g.source is not None else ("proxy" if first else None),
                status="active",
                start_time=c.started_ms if first else None,
                scenario_id=g.scenario_id,
                metadata={"capture": "proxy"} if first else None,
            ),
            StepHeader(tid, step_id, step_number=number, timestamp=c.started_ms),
            CallRow(tid, step_id, llm),
        ]
        if own or g.end:
            status = "error" if llm.finish_reason == "error" and own else "completed"
            items.append(TrajectoryHeader(id=tid, status=status, end_time=now_ms()))
        return items

    def _next_step(self, tid: str) -> int:
        number = self._steps.pop(tid, 0)
        self._steps[tid] = number + 1
        if len(self._steps) > 100_000:  # bounded: the oldest trajectories are forgotten first
            self._steps.popitem(last=False)
        return number


class _Call:
    """One recorded call on its way through: the request, and a bounded copy of the answer."""

    __slots__ = (
        "body",
        "chunks",
        "cut",
        "error",
        "grouping",
        "kind",
        "size",
        "started",
        "started_ms",
        "status",
        "streamed",
    )

    def __init__(self, kind: str, grouping: Grouping, body: bytes) -> None:
        self.kind = kind
        self.grouping = grouping
        self.body = body
        self.started = time.perf_counter()
        self.started_ms = now_ms()
        self.chunks: list[bytes] | None = []
        self.size = 0
        self.status = 0
        self.cut = False
        self.error: str | None = None
        self.streamed = False

    def keep(self, chunk: bytes, limit: int) -> None:
        if self.chunks is None:
            return
        self.size += len(chunk)
        if self.size > limit:
            self.chunks = None  # too big to record: the call is kept without its answer
        else:
            self.chunks.append(chunk)

    def to_llm_call(self) -> LlmCall:
        build, finish, accumulator = CONVERSIONS[self.kind]
        try:
            request = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            request = None
        call = build(request if isinstance(request, dict) else {})
        call.timestamp = self.started_ms
        if self.error is None and not 200 <= self.status < 300:
            self.error = _STATUS_ERRORS.get(self.status) or (
                "InternalServerError" if self.status >= 500 else "APIStatusError"
            )
        if self.error is not None:
            call.latency_ms = (time.perf_counter() - self.started) * 1000
            call.finish_reason = "error"
            call.tags = [f"error:{self.error}", f"http_status:{self.status}"]
            return call
        if self.chunks is None:
            return _incomplete(call, self.started, "response_too_large")
        data = b"".join(self.chunks)
        if self.streamed:
            acc = accumulator(call, self.started, lambda _: None)
            for event in sse_events(data):
                acc.add(event)
            acc.finish(cut=self.cut)
            return call
        if self.cut:
            return _incomplete(call, self.started, "incomplete")
        finish(call, orjson.loads(data), self.started)
        return call


def _incomplete(call: LlmCall, started: float, tag: str) -> LlmCall:
    call.latency_ms = (time.perf_counter() - started) * 1000
    call.finish_reason = "incomplete"
    call.tags = [tag]
    return call


def sse_events(data: bytes) -> list[dict[str, Any]]:
    """The JSON events of a server-sent event stream (``[DONE]``, comments and a partial last
    event are skipped)."""
    events: list[dict[str, Any]] = []
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    blocks = text.split("\n\n")
    for block in blocks[:-1] if not text.endswith("\n\n") else blocks:
        lines = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        payload = "\n".join(lines)
        if not payload or payload == "[DONE]":
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


async def _send_json(send: Send, status: int, value: Any) -> None:
    body = orjson.dumps(value)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def check_upstream(url: str) -> str:
    """The upstream base URL without its trailing slash; :class:`InvalidInput` for one that is
    not an ``http(s)://host[:port][/path]`` URL."""
    parts = httpx.URL(url) if "://" in url else None
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
    return url.rstrip("/")


def public_url(url: str) -> str:
    """``url`` without credentials in it (``https://user:key@host``), for messages and logs."""
    try:
        parts = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<an unreadable URL>"
    return str(parts.copy_with(username=None, password=None)) if parts.userinfo else url


def store_writer(store: Store) -> BackgroundWriter:
    """The writer of a proxy mounted on ``trajforge serve``: into the server's own store."""
    from pathlib import Path  # noqa: F401 - settings.home() returns one

    from trajforge import settings
    from trajforge.capture.transport import StoreSink

    return BackgroundWriter(StoreSink(store, owns_store=False), settings.home() / "spool")


def proxy_writer(target: str | None, spool_dir: str | None = None) -> BackgroundWriter:
    """The writer a standalone proxy records through: into ``target`` (a store URL or path, or a
    trajforge server's ``http(s)://`` URL; default the configured store), spooling under
    ``$TRAJFORGE_HOME/spool`` while it is unavailable."""
    from pathlib import Path

    from trajforge import settings
    from trajforge.capture.recorder import _make_sink

    sink = _make_sink(target, None)
    return BackgroundWriter(sink, Path(spool_dir) if spool_dir else settings.home() / "spool")
