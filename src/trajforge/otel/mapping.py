"""Span attributes to trajforge records: one table per convention.

A first cut that knows only the core of the current GenAI conventions; the full tables (GenAI
semconv, OpenLLMetry, OpenInference) replace it.
"""

from __future__ import annotations

import json
from typing import Any

from trajforge.otel.spans import STATUS_ERROR, LogEvent, Mapped, Span
from trajforge.records import ActionResult, LlmCall

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def map_span(span: Span) -> Mapped:
    """What ``span`` means: an LLM call, a tool result, a provider access, an agent, or other."""
    attrs = dict(span.attributes)
    op = attrs.pop("gen_ai.operation.name", None)
    error = span.status_message or None if span.status_code == STATUS_ERROR else None
    start_ms = span.start_ns // 1_000_000
    latency = (span.end_ns - span.start_ns) / 1e6
    conversation = attrs.pop("gen_ai.conversation.id", None)
    if op in LLM_OPERATIONS:
        call = LlmCall(
            timestamp=start_ms,
            model=str(attrs.pop("gen_ai.request.model", "") or ""),
            latency_ms=latency,
            prompt_tokens=attrs.pop("gen_ai.usage.input_tokens", None),
            completion_tokens=attrs.pop("gen_ai.usage.output_tokens", None),
        )
        messages = _json(attrs.pop("gen_ai.input.messages", None))
        output = _json(attrs.pop("gen_ai.output.messages", None))
        if isinstance(messages, list):
            call.messages = messages
        if isinstance(output, list) and output:
            parts = output[0].get("parts", []) if isinstance(output[0], dict) else []
            call.response = "".join(p.get("content", "") for p in parts if p.get("type") == "text")
        return Mapped(
            "llm",
            "gen_ai",
            call=call,
            conversation_id=conversation,
            content_absent=messages is None and output is None,
            error=error,
            metadata=attrs,
        )
    if op == "execute_tool":
        name = attrs.pop("gen_ai.tool.name", None)
        action = ActionResult(
            action_type=str(name or "tool"),
            action_name=name,
            parameters=_json(attrs.pop("gen_ai.tool.call.arguments", None)),
            result=_json(attrs.pop("gen_ai.tool.call.result", None)),
            success=error is None,
            error=error,
            timestamp=start_ms,
        )
        return Mapped(
            "tool",
            "gen_ai",
            action=action,
            tool_call_id=attrs.pop("gen_ai.tool.call.id", None),
            conversation_id=conversation,
            error=error,
            metadata=attrs,
        )
    if op in ("invoke_agent", "create_agent"):
        return Mapped(
            "agent",
            "gen_ai",
            agent_id=attrs.pop("gen_ai.agent.id", None),
            agent_name=attrs.pop("gen_ai.agent.name", None),
            conversation_id=conversation,
            error=error,
            metadata=attrs,
        )
    return Mapped("other", conversation_id=conversation, error=error, metadata=attrs)


def map_log(event: LogEvent) -> Mapped | None:
    """A GenAI log event's content for the call of its span, or None for an event we do not use."""
    return None
