"""Spans into trajectories: grouping, deterministic ids, and the write through the store.

Rules (issue 18):

* a trajectory is the conversation (``gen_ai.conversation.id``, else ``session.id``), else the
  trace. Spans of one trace arrive in many requests and out of order, and only some carry the
  conversation id, so the first decision for a trace is kept in the store
  (:meth:`~trajforge.store.base.TrajectoryStore.assign_traces`) and every later span of the trace
  joins it;
* one step per LLM, tool or provider-access span. Its step, call and access ids are the span id,
  so a re-sent span changes nothing; the store numbers the steps by start time (assemble mode of
  :class:`~trajforge.records.WriteBatch`) whatever order they arrive in;
* a tool span's action points to the LLM call whose ``tool_calls`` hold its tool call id (in the
  same request here; across requests, in either order, the store links them);
* an agent span names the trajectory's agent; the root span (no parent) ends the trajectory:
  ``completed``, or ``error`` when its status is ERROR. A trajectory whose root never comes is
  ended by the store's timeout sweep;
* a trace is a trajectory only once it has a GenAI span (LLM, tool, access, agent): a program that
  exports all its spans does not fill the store with its HTTP traces. Other spans of a known
  trace end it (its root) or are left out;
* attributes the mapping did not use go to the step's metadata (the span's) or the trajectory's
  (resource and agent attributes), bounded: a value over the limits is replaced by a note saying so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from trajforge import jsonutil, limits
from trajforge.capture.transport import (
    TransientError,
    _unavailable_is_transient,
    by_trajectory,
    reason_of,
)
from trajforge.otel.decode import Decoded
from trajforge.otel.mapping import map_log, map_span
from trajforge.otel.spans import STATUS_ERROR, LogEvent, Mapped, Span
from trajforge.records import (
    AccessRow,
    CallRow,
    StepHeader,
    TrajectoryHeader,
    WireError,
    WriteBatch,
)
from trajforge.store.assembly import TracesMoved, tool_call_ids
from trajforge.store.base import Store, WriteResult
from trajforge.validation import check_record

SOURCE = "otel"
MAX_META_CHARS = 64 * 1024
"""Most JSON characters of unmapped attributes kept per span (and per resource)."""


def conversation_trajectory(conversation: str) -> str:
    """The trajectory id of a conversation: the id itself when it is a valid trajectory id (what
    the user knows it by), else a stable digest of it."""
    if limits.check_id(conversation, limits.MAX_ID_CHARS) is None and conversation.strip():
        return conversation
    return "otel-conv-" + hashlib.sha256(conversation.encode("utf-8", "replace")).hexdigest()[:32]


def bounded(values: dict[str, Any], budget: int = MAX_META_CHARS) -> dict[str, Any]:
    """``values`` within the limits: a value the store could not hold, or past ``budget``
    characters of JSON in all, is replaced by a note naming why (never dropped silently)."""
    out: dict[str, Any] = {}
    used = 0
    for key, value in values.items():
        key = str(key)[: limits.MAX_NAME_CHARS]
        problem = limits.check_json(value)
        if problem is not None:
            out[key] = f"<not stored: {problem}>"
            continue
        size = len(jsonutil.dumps(value))
        if used + size > budget:
            out[key] = f"<not stored: {size} characters over the {budget} per span>"
            continue
        used += size
        out[key] = value
    return out


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _map(span: Span, decoded: Decoded) -> Mapped | None:
    try:
        return map_span(span)
    except Exception as exc:  # noqa: BLE001 - one span the mapping cannot read is rejected alone
        decoded.reject(f"span {span.name[:200]!r} ({span.span_id}): cannot be mapped: {reason_of(exc)}")
        return None


def assemble_spans(spans: list[Span], store: Store, decoded: Decoded) -> WriteBatch:
    """The write batch of ``spans`` (trajectories decided with the store); spans that cannot be
    stored are rejected into ``decoded``."""
    mapped: list[tuple[Span, Mapped]] = []
    for span in spans:
        m = _map(span, decoded)
        if m is not None:
            mapped.append((span, m))
    wanted: dict[str, str] = {}
    for span, m in mapped:
        conv = m.conversation_id or m.session_id
        if conv:
            wanted.setdefault(span.trace_id, conversation_trajectory(str(conv)))
    for span, m in mapped:
        if m.kind != "other":
            wanted.setdefault(span.trace_id, span.trace_id)
    # A trace with no GenAI span in this request (an HTTP root, a framework's chain) is not a
    # trajectory of its own: its spans only end or annotate one that its GenAI spans made.
    others = sorted({span.trace_id for span, _ in mapped} - wanted.keys())
    with _unavailable_is_transient():  # a locked or unreachable store: 503, the exporter retries
        home = store.assign_traces(wanted, others)

    batch = WriteBatch(assemble=True, traces=home)
    headers: dict[str, TrajectoryHeader] = {}
    tool_links: dict[tuple[str, str], str] = {}  # (trajectory, tool call id) -> call id

    def header(tid: str, span: Span) -> TrajectoryHeader:
        h = headers.get(tid)
        if h is None:
            meta: dict[str, Any] = {}
            if span.resource:
                meta["resource"] = bounded(span.resource)
            h = headers[tid] = TrajectoryHeader(id=tid, source=SOURCE, metadata=meta or None)
        return h

    pending_tools: list[tuple[str, StepHeader, str]] = []
    for span, m in mapped:
        tid = home.get(span.trace_id)
        if tid is None:
            continue  # only non-GenAI spans so far: nothing to assemble them into
        step = _step_of(span, m, tid, decoded, tool_links, pending_tools, batch)
        if step is None and m.kind in ("llm", "tool", "access"):
            continue  # rejected: it does not touch its trajectory either
        h = header(tid, span)
        if span.parent_span_id is None:
            h.status = "error" if span.status_code == STATUS_ERROR else "completed"
            h.start_time = _ms(span.start_ns)
            h.end_time = _ms(span.end_ns)
        if m.kind == "agent":
            agent = m.agent_name or m.agent_id
            if agent:
                h.agent_id = str(agent)[: limits.MAX_NAME_CHARS]
            extra = {"agentId": m.agent_id, "agentName": m.agent_name, "agentSpan": bounded(m.metadata)}
            h.metadata = {**(h.metadata or {}), **{k: v for k, v in extra.items() if v}}
    for tid, step, tc_id in pending_tools:
        call_id = tool_links.get((tid, tc_id))
        if call_id is not None and step.action is not None and step.action.llm_call_id is None:
            step.action.llm_call_id = call_id
    batch.trajectories.extend(headers.values())
    return batch


def _step_of(
    span: Span,
    m: Mapped,
    tid: str,
    decoded: Decoded,
    tool_links: dict[tuple[str, str], str],
    pending_tools: list[tuple[str, StepHeader, str]],
    batch: WriteBatch,
) -> StepHeader | None:
    """The step (and call or access) of an LLM, tool or access span, added to ``batch``; None for
    other spans, and for a span whose records the store could not hold (rejected)."""
    if m.kind not in ("llm", "tool", "access"):
        return None
    otel: dict[str, Any] = {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "parentSpanId": span.parent_span_id,
        "name": span.name,
        "scope": span.scope,
        "convention": m.convention,
    }
    if m.metadata:
        otel["attributes"] = bounded(m.metadata)
    if span.events:
        otel["events"] = bounded(
            {f"{i}:{e.name}": {"timeNs": e.time_ns, **e.attributes} for i, e in enumerate(span.events)}
        )
    if m.tool_call_id:
        otel["toolCallId"] = str(m.tool_call_id)  # the store links the call that asked, if later
    if m.error:
        otel["error"] = m.error
    if m.content_absent:
        otel["contentAbsent"] = True
    step = StepHeader(
        trajectory_id=tid, step_id=span.span_id, timestamp=_ms(span.start_ns), metadata={"otel": otel}
    )
    rows: list[Any] = [step]
    links: list[str] = []
    if m.kind == "llm" and m.call is not None:
        call = m.call
        call.call_id = span.span_id
        if m.error and call.finish_reason is None:
            call.finish_reason = "error"
        rows.append(CallRow(tid, span.span_id, call))
        links = tool_call_ids(call.tool_calls)
    elif m.kind == "tool" and m.action is not None:
        step.action = m.action
    elif m.kind == "access" and m.access is not None:
        m.access.access_id = span.span_id
        rows.append(AccessRow(tid, span.span_id, m.access))
    try:
        for row in rows:
            check_record(row, f"span {span.span_id}")
    except WireError as exc:
        decoded.reject(f"span {span.name[:200]!r} ({span.span_id}): {exc.field}: {exc}")
        return None
    for tc_id in links:
        tool_links[(tid, tc_id)] = span.span_id
    if step.action is not None and m.tool_call_id:
        pending_tools.append((tid, step, str(m.tool_call_id)))
    batch.steps.append(step)
    batch.calls.extend(r for r in rows if type(r) is CallRow)
    batch.accesses.extend(r for r in rows if type(r) is AccessRow)
    return step


def assemble_logs(events: list[LogEvent], store: Store, decoded: Decoded) -> WriteBatch:
    """The write batch of the GenAI events the mapping knows: each one's content goes to the LLM
    call of its span (created here when the span has not come yet; the span's write then fills in
    what the event did not say, and neither overwrites the other)."""
    found: list[tuple[LogEvent, Mapped]] = []
    for event in events:
        try:
            m = map_log(event)
        except Exception as exc:  # noqa: BLE001 - one event the mapping cannot read is rejected alone
            decoded.reject(f"log {event.event_name[:200]!r}: cannot be mapped: {reason_of(exc)}")
            continue
        if m is None or m.call is None:
            continue
        if event.trace_id is None or event.span_id is None:
            decoded.reject(f"log {event.event_name[:200]!r}: has no traceId/spanId to find its call by")
            continue
        found.append((event, m))
    wanted: dict[str, str] = {}
    for event, m in found:
        conv = m.conversation_id or m.session_id
        assert event.trace_id is not None
        wanted.setdefault(event.trace_id, conversation_trajectory(str(conv)) if conv else event.trace_id)
    with _unavailable_is_transient():
        home = store.assign_traces(wanted)
    batch = WriteBatch(assemble=True, traces=home)
    seen: set[str] = set()
    for event, m in found:
        assert event.trace_id is not None and event.span_id is not None and m.call is not None
        tid = home[event.trace_id]
        call = m.call
        call.call_id = event.span_id
        # No step header: the span's write brings the step (its time and metadata); until then
        # the call shows under a step of its own id.
        row = CallRow(tid, event.span_id, call)
        try:
            check_record(row, f"log of span {event.span_id}")
        except WireError as exc:
            decoded.reject(f"log {event.event_name[:200]!r}: {exc.field}: {exc}")
            continue
        if tid not in seen:
            seen.add(tid)
            batch.trajectories.append(TrajectoryHeader(id=tid, source=SOURCE))
        batch.calls.append(row)
    return batch


def write(
    store: Store, batch: WriteBatch, decoded: Decoded, count: Callable[[WriteBatch], int]
) -> WriteResult:
    """Write ``batch`` in one transaction; when the store refuses it, write each trajectory apart
    (still in assemble mode) and reject the records of those refused on their own. An outage
    (:class:`TransientError`) propagates: the caller answers 503 and the exporter retries; so does
    :class:`TracesMoved` (assemble again: see :func:`ingest`)."""

    def one(b: WriteBatch) -> WriteResult:
        with _unavailable_is_transient():
            return store.write(b)

    try:
        return one(batch)
    except (TransientError, TracesMoved):
        raise
    except Exception:  # noqa: BLE001 - some trajectory of the batch is refused: find which
        pass
    total = WriteResult()
    for tid, part in by_trajectory(batch).items():
        part.assemble, part.traces = True, batch.traces
        try:
            r = one(part)
        except (TransientError, TracesMoved):
            raise
        except Exception as exc:  # noqa: BLE001
            for _ in range(count(part)):
                decoded.reject(f"trajectory {tid!r} refused by the store: {reason_of(exc)}")
            continue
        total.new_trajectories += r.new_trajectories
        total.new_steps += r.new_steps
        total.new_calls += r.new_calls
        total.new_accesses += r.new_accesses
        total.completed.extend(r.completed)
    return total


def spans_in(batch: WriteBatch) -> int:
    """How many spans a batch's records stand for (one step each)."""
    return len(batch.steps)


ATTEMPTS = 5
"""Assemblies of one request at most, when its traces keep joining conversations meanwhile."""


def ingest(store: Store, decoded: Decoded, kind: str) -> None:
    """Assemble and write what ``decoded`` holds (``kind``: ``traces`` or ``logs``). A batch whose
    traces moved to their conversation while it was built is assembled again from the spans."""
    rejected, reasons = decoded.rejected, len(decoded.reasons)
    for _ in range(ATTEMPTS):
        if kind == "traces":
            batch = assemble_spans(decoded.spans, store, decoded)
        else:
            batch = assemble_logs(decoded.logs, store, decoded)
        try:
            if len(batch):
                write(store, batch, decoded, spans_in)
            return
        except TracesMoved:
            decoded.rejected, decoded.reasons[:] = rejected, decoded.reasons[:reasons]
    raise TransientError(f"the traces of this request kept moving after {ATTEMPTS} assemblies")
