"""What the proxy records: the grouping headers (checked as the untrusted input they are), a call's
request and bounded answer copy turned into an :class:`LlmCall` by the SDK's own conversions, and
the trajectory, step and call records handed to the background writer."""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from trajforge.capture.openai import CONVERSIONS
from trajforge.capture.writer import BackgroundWriter, Item
from trajforge.errors import InvalidInput
from trajforge.limits import MAX_ID_CHARS, MAX_INT, MAX_NAME_CHARS, check_id, check_str
from trajforge.records import CallRow, LlmCall, StepHeader, TrajectoryHeader, new_id, now_ms
from trajforge.validation import check_item

if TYPE_CHECKING:
    from starlette.datastructures import Headers

    from trajforge.store import Store

log = logging.getLogger("trajforge.proxy")

GROUPING_HEADERS = (
    "x-trajforge-trajectory",
    "x-trajforge-agent",
    "x-trajforge-source",
    "x-trajforge-scenario",
    "x-trajforge-step",
    "x-trajforge-end",
    "helicone-session-id",
)
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


NO_GROUPING = Grouping()


def parse_grouping(headers: Headers) -> Grouping:
    """The grouping headers, or :class:`InvalidInput` naming the first bad one: a header value is
    untrusted input like any body field, and becomes an id or a name in the store."""
    if not any(name in headers for name in GROUPING_HEADERS):
        return NO_GROUPING
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

    g.trajectory_id = text("x-trajforge-trajectory", MAX_ID_CHARS, True)
    helicone = text("helicone-session-id", MAX_ID_CHARS, True)
    g.trajectory_id = g.trajectory_id or helicone
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


class Exchange:
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

    def stream_ended(self) -> bool:
        """Whether the kept copy of a stream holds its last event (``data: [DONE]``, or a
        Responses stream's final ``response.*`` event): a client that leaves after it, before the
        upstream's end of body reaches the proxy, has cut nothing."""
        if not self.chunks:
            return False
        data = b"".join(self.chunks)
        if _DONE.search(data):
            return True
        events = sse_events(data)
        return bool(events) and events[-1].get("type") in _FINAL_RESPONSE_EVENTS

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
            acc = accumulator(call, self.started, _ignore)
            for event in sse_events(data):
                acc.add(event)
            acc.finish(cut=self.cut)
            return call
        if self.cut:
            return _incomplete(call, self.started, "incomplete")
        try:
            result = orjson.loads(data)
        except orjson.JSONDecodeError:  # a 200 that is not JSON: the request is still worth keeping
            return _incomplete(call, self.started, "unreadable_response")
        finish(call, result, self.started)
        return call


def _ignore(call: LlmCall) -> None:
    return None


def _incomplete(call: LlmCall, started: float, tag: str) -> LlmCall:
    call.latency_ms = (time.perf_counter() - started) * 1000
    call.finish_reason = "incomplete"
    call.tags = [tag]
    return call


_DONE = re.compile(rb"(?m)^data: ?\[DONE\]\r?$")
_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def sse_events(data: bytes) -> list[dict[str, Any]]:
    """The JSON events of a server-sent event stream (``[DONE]``, comments and a partial last
    event are skipped)."""
    events: list[dict[str, Any]] = []
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    blocks = text.split("\n\n")
    for block in blocks if text.endswith("\n\n") else blocks[:-1]:
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


class Grouper:
    """Turns exchanges into the records of their trajectories: one of its own per ungrouped call,
    else the named trajectory with one step per call (numbered in the order this process sees
    them) or the step ``X-Trajforge-Step`` names."""

    def __init__(self, remember: int = 100_000) -> None:
        self._steps: OrderedDict[str, int] = OrderedDict()  # trajectory id → next step number
        self._remember = remember

    def items(self, ex: Exchange) -> list[Item]:
        llm = ex.to_llm_call()
        try:
            check_item(CallRow("t", "s", llm))
        except InvalidInput as exc:
            # Over the limits (a message nested too deep, a huge number): keep the call's outline
            # rather than lose it, and say what was left out.
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
        g = ex.grouping
        own = g.trajectory_id is None
        tid = g.trajectory_id or new_id()
        first = own or tid not in self._steps
        step_id = f"{tid}:step:{g.step}" if g.step is not None else new_id()
        number = 0 if own else self._next_step(tid)  # also remembers the trajectory as seen
        if g.step is not None:
            number = g.step
        items: list[Item] = [
            TrajectoryHeader(
                id=tid,
                # A named trajectory may exist already (written by an SDK, another proxy process, or
                # this one before a restart): only what the headers say is written over it. A new
                # one starts at its first call (the store's default for a new row).
                agent_id=g.agent_id,
                # "proxy" the first time this process sees the trajectory (the one field a proxy
                # labels on a named trajectory); later calls that do not say leave it.
                source=g.source if g.source is not None else ("proxy" if first else None),
                status="active",
                start_time=ex.started_ms if own else None,
                scenario_id=g.scenario_id,
                metadata={"capture": "proxy"} if own else None,
            ),
            StepHeader(tid, step_id, step_number=number, timestamp=ex.started_ms),
            CallRow(tid, step_id, llm),
        ]
        if own or g.end:
            status = "error" if llm.finish_reason == "error" and own else "completed"
            items.append(TrajectoryHeader(id=tid, status=status, end_time=now_ms()))
        return items

    def _next_step(self, tid: str) -> int:
        number = self._steps.pop(tid, 0)
        self._steps[tid] = number + 1
        if len(self._steps) > self._remember:  # bounded: the oldest trajectories are forgotten first
            self._steps.popitem(last=False)
        return number


# Both writers spool a record at once when their queue is full (``put_timeout_s=0``): waiting for
# room, as an agent's thread does, would stall the event loop and every call relayed on it.


def store_writer(store: Store) -> BackgroundWriter:
    """The writer of a proxy mounted on ``trajforge serve``: into the server's own store."""
    from trajforge import settings
    from trajforge.capture.transport import StoreSink

    return BackgroundWriter(StoreSink(store, owns_store=False), settings.home() / "spool", put_timeout_s=0.0)


def proxy_writer(target: str | None, spool_dir: str | None = None) -> BackgroundWriter:
    """The writer a standalone proxy records through: into ``target`` (a store URL or path, or a
    trajforge server's ``http(s)://`` URL; default the configured store), spooling under
    ``$TRAJFORGE_HOME/spool`` while it is unavailable."""
    from pathlib import Path

    from trajforge import settings
    from trajforge.capture.recorder import _make_sink

    sink = _make_sink(target, None)
    return BackgroundWriter(
        sink, Path(spool_dir) if spool_dir else settings.home() / "spool", put_timeout_s=0.0
    )
