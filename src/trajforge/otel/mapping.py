"""Span attributes to trajforge records: one table per convention.

Three conventions reach us (``Mapped.convention`` says which one a span used):

- ``gen_ai``: the current OpenTelemetry GenAI semantic conventions (``gen_ai.operation.name``,
  ``gen_ai.input.messages`` …), emitted by ``opentelemetry-instrumentation-openai-v2`` and, since
  0.4x, by OpenLLMetry too;
- ``openllmetry``: the older Traceloop form (``gen_ai.prompt.N.role``, ``llm.request.type``,
  ``traceloop.*``), still sent by older OpenLLMetry/Traceloop SDKs;
- ``openinference``: Arize Phoenix's (``openinference.span.kind``, ``llm.input_messages.N.*``).

Every table maps attributes onto record fields and consumes only what landed in a field; the rest
stays in ``Mapped.metadata`` under its original key. Values are untrusted: a wrong type, bad JSON
or an out-of-range number is left in the metadata, never raised on. Messages come out in the
OpenAI chat shape ``capture/openai.py`` records, so a dataset treats an OTel call and an
SDK-captured call alike. The README's "Capture from any language" has the tables in prose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from trajforge.capture.openai import prompts
from trajforge.otel import values as v
from trajforge.otel.conventions import LEGACY, map_openinference, map_openllmetry
from trajforge.otel.genai import (
    CONTENT_ABSENT_TAG,
    DETAILS_EVENT,
    MESSAGE_EVENTS,
    event_name,
    map_event,
    map_gen_ai,
)
from trajforge.otel.spans import STATUS_ERROR, LogEvent, Mapped, Span
from trajforge.otel.values import Bag
from trajforge.records import LlmCall

__all__ = ["CONTENT_ABSENT_TAG", "apply_logs", "convention_of", "map_log", "map_span"]


def map_span(span: Span) -> Mapped:
    """What ``span`` means: an LLM call, a tool result, a provider access, an agent, or other."""
    try:
        return _map_span(span)
    except Exception:  # noqa: BLE001 - a table bug must not lose the span: keep it all as metadata
        return Mapped("other", metadata=dict(span.attributes) if isinstance(span.attributes, dict) else {})


def map_log(event: LogEvent) -> Mapped | None:
    """What a GenAI log event says on its own about the call of its span (``event.span_id``):
    ``gen_ai.client.inference.operation.details`` carries the same content attributes as a span.
    None for any other event, including the older per-message events (``gen_ai.user.message`` …,
    ``gen_ai.choice``): one message alone is a broken conversation, so those only count all
    together, through :func:`apply_logs`."""
    part = _safe_log(event)
    return part if part is not None and event_name(event) == DETAILS_EVENT else None


def _safe_log(event: LogEvent) -> Mapped | None:
    try:
        return map_event(event)
    except Exception:  # noqa: BLE001 - an event we cannot read is one we do not use
        return None


def apply_logs(call: LlmCall, events: Sequence[LogEvent]) -> LlmCall:
    """``call`` (mapped from a span) completed by the log events of the same span, as a new call.

    A pure function of its inputs, so the assembler can rebuild a call whenever more of its events
    arrive and a re-sent batch changes nothing, provided it passes each log record once, in the
    order emitted (per-message events often carry no timestamp). Fields the span already has win;
    the messages of per-message events are used only when the span and the details events carry
    none, in the order given (``gen_ai.choice`` gives the response)."""
    out = dataclasses.replace(call, messages=list(call.messages) if call.messages else None)
    per_message: list[dict[str, Any]] = []
    for event in events:
        part = _safe_log(event)
        if part is None or part.call is None:
            continue
        if event_name(event) in MESSAGE_EVENTS:
            per_message.extend(part.call.messages or [])
            continue
        _fill(out, part.call)
    if out.messages is None and per_message:
        out.messages = per_message
    if out.messages or out.response is not None or out.tool_calls:
        out.tags = [t for t in out.tags or [] if t != CONTENT_ABSENT_TAG] or None
        if out.messages:
            out.system_prompt, out.user_prompt = prompts(out.messages)
    return out


def _fill(into: LlmCall, part: LlmCall) -> None:
    for name in LlmCall.__slots__:
        if name in ("call_id", "timestamp", "purpose", "latency_ms", "tags"):
            continue
        if getattr(into, name) in (None, "") and getattr(part, name) not in (None, ""):
            setattr(into, name, getattr(part, name))


# --- dispatch ------------------------------------------------------------------------------------


def convention_of(attrs: dict[str, Any]) -> str:
    """Which convention a span's attributes use (``""``: none we know)."""
    attrs = {k: None for k in attrs if isinstance(k, str)}
    if "openinference.span.kind" in attrs or any(
        k.startswith(("llm.input_messages.", "llm.output_messages.")) for k in attrs
    ):
        return "openinference"
    if "llm.request.type" in attrs or any(LEGACY.match(k) for k in attrs):
        return "openllmetry"
    if (
        "gen_ai.operation.name" in attrs
        or "gen_ai.input.messages" in attrs
        or "gen_ai.output.messages" in attrs
    ):
        return "gen_ai"  # the current form, also from OpenLLMetry (with traceloop.* context keys)
    if any(k.startswith("traceloop.") for k in attrs):
        return "openllmetry"
    if any(k.startswith("gen_ai.") for k in attrs):
        return "gen_ai"
    return ""


def _map_span(span: Span) -> Mapped:
    attrs = span.attributes if isinstance(span.attributes, dict) else {}
    bag = Bag(attrs)
    convention = convention_of(attrs)
    table = {"gen_ai": map_gen_ai, "openllmetry": map_openllmetry, "openinference": map_openinference}.get(
        convention
    )
    mapped = table(span, bag) if table else Mapped("other")
    mapped.convention = convention
    _common(span, bag, mapped)
    events = _events(span)
    mapped.metadata = bag.rest()
    if events:
        mapped.metadata["otel.events"] = events
    return mapped


def _common(span: Span, bag: Bag, mapped: Mapped) -> None:
    """What every convention shares: grouping ids and the span's error."""
    mapped.conversation_id = mapped.conversation_id or bag.take_name("gen_ai.conversation.id")
    mapped.session_id = mapped.session_id or bag.first(
        "name", "session.id", "traceloop.association.properties.session_id"
    )
    mapped.user_id = mapped.user_id or bag.first(
        "name", "user.id", "enduser.id", "traceloop.association.properties.user_id"
    )
    error_type = v.as_name(bag.get("error.type"))
    if span.status_code == STATUS_ERROR:
        mapped.error = v.as_text(span.status_message) or error_type or _exception(span) or "error"
    elif error_type:
        mapped.error = error_type
    if mapped.error and error_type:
        bag.use("error.type")
    if mapped.error:
        if mapped.call is not None:
            # The SDK capture's tag: the exception class's bare name (``error:APIConnectionError``)
            kind = _bare_type(error_type or _exception_type(span))
            mapped.call.finish_reason = mapped.call.finish_reason or "error"
            mapped.call.tags = [*(mapped.call.tags or []), f"error:{kind or 'span'}"]
        if mapped.action is not None:
            mapped.action.success = False
            mapped.action.error = mapped.error


def _exception_type(span: Span) -> str | None:
    for event in span.events:
        if event.name == "exception" and isinstance(event.attributes, dict):
            return v.as_name(event.attributes.get("exception.type"))
    return None


def _bare_type(name: str | None) -> str | None:
    """``openai.APIConnectionError`` or ``<class 'openai.APIConnectionError'>`` → the class name."""
    if not name:
        return None
    name = name.removeprefix("<class '").removesuffix("'>")
    return name.rsplit(".", 1)[-1] or None


def _exception(span: Span) -> str | None:
    for event in span.events:
        if event.name == "exception" and isinstance(event.attributes, dict):
            kind = v.as_name(event.attributes.get("exception.type"))
            message = v.as_text(event.attributes.get("exception.message"))
            return ": ".join(x for x in (kind, message) if x) or None
    return None


def _events(span: Span) -> list[dict[str, Any]]:
    """Span events that carry data, kept in the metadata; attribute-less marker events (one per
    streamed chunk in OpenLLMetry) are counted by name instead of listed."""
    kept: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for event in span.events:
        if not isinstance(event.attributes, dict) or not event.attributes:
            counts[str(event.name)] = counts.get(str(event.name), 0) + 1
        else:  # exception events too: their stack trace is more than the error line says
            kept.append({"name": event.name, "timeNs": event.time_ns, "attributes": event.attributes})
    if counts:
        kept.append({"counts": counts})
    return kept
