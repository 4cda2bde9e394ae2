"""The records OTLP decoding produces, and what the mapping makes of one span.

Plain dataclasses with Python values (no protobuf types): the decoder is the only place that
knows the wire, the mapping the only place that knows attribute names, the assembler the only
place that knows the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from trajforge.records import ActionResult, LlmCall, ProviderAccess

STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
"""OTLP ``Status.code`` values."""


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    """One span, ids as lowercase hex (trace 32 chars, span 16), attribute values as Python
    values (``AnyValue``: str, bool, int, float, bytes, lists and dicts of those)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    kind: int = 0
    status_code: int = STATUS_UNSET
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    """The resource's attributes (``service.name`` and the like)."""
    scope: str = ""
    """The instrumentation scope's name (which library emitted the span)."""


@dataclass(slots=True)
class LogEvent:
    """One OTLP log record (a GenAI event such as ``gen_ai.client.inference.operation.details``)."""

    event_name: str
    time_ns: int
    trace_id: str | None
    span_id: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


SpanKind = Literal["llm", "tool", "access", "agent", "other"]


@dataclass(slots=True)
class Mapped:
    """What one span means to trajforge (built by :func:`trajforge.otel.mapping.map_span`).

    Exactly one of ``call``/``action``/``access`` is set for ``llm``/``tool``/``access`` spans; an
    ``agent`` span names the trajectory's agent; ``other`` spans (chains, HTTP, anything unknown)
    only contribute their metadata. Ids (call id, access id) are left to the assembler, which
    derives them from the span id so a re-sent span changes nothing.
    """

    kind: SpanKind
    convention: str = ""
    """``gen_ai`` (current semconv), ``openllmetry``, ``openinference``, or ``""``."""
    call: LlmCall | None = None
    action: ActionResult | None = None
    access: ProviderAccess | None = None
    conversation_id: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    tool_call_id: str | None = None
    """For a tool span: the id of the tool call it answers (links it to the LLM call that asked)."""
    content_absent: bool = False
    """An LLM span without message content (the emitter's content capture was off)."""
    error: str | None = None
    """The span's error (status ERROR message, ``error.type``, an exception event)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Every attribute the table did not map, by its original key: nothing sent is dropped."""
