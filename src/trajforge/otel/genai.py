"""The current OpenTelemetry GenAI semantic conventions (``gen_ai.*``) as trajforge records, the
GenAI log events, and the record builders every convention's table shares.

See :mod:`trajforge.otel.mapping` for the rules all tables follow (consume only what lands in a
field, never raise, OpenAI chat shape).
"""

from __future__ import annotations

import re
from typing import Any

from trajforge.capture.openai import prompts
from trajforge.otel import values as v
from trajforge.otel.spans import LogEvent, Mapped, Span
from trajforge.otel.values import Bag
from trajforge.records import ActionResult, LlmCall, ProviderAccess

CONTENT_ABSENT_TAG = "otel:content-absent"
"""The tag on an LLM call whose span carried no message content (the emitter's content capture was
off): the dataset builder counts these and says why they cannot become training rows."""

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
AGENT_OPERATIONS = frozenset({"invoke_agent", "create_agent"})
_MEMORY = re.compile(r"^[a-z_]+_memory(_store)?$")

DETAILS_EVENT = "gen_ai.client.inference.operation.details"
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
"""The per-message log events of the earlier GenAI conventions (openai-v2 before the
latest-experimental opt-in): one event per input message, ``gen_ai.choice`` per output."""

# --- record builders shared by the tables --------------------------------------------------------


def new_call(span: Span) -> LlmCall:
    start = span.start_ns if isinstance(span.start_ns, int) else 0
    end = span.end_ns if isinstance(span.end_ns, int) else start
    latency = (end - start) / 1e6 if end >= start else None
    return LlmCall(timestamp=start // 1_000_000, latency_ms=latency, purpose="response")


def fill_content(
    call: LlmCall,
    messages: list[dict[str, Any]] | None,
    output: list[dict[str, Any]] | None,
    reasoning: str | None,
    system: str | None = None,
) -> bool:
    """Fill the call's content from its input and output messages (OpenAI shape); whether any
    content was there. The first output message is the response (a chat call's one choice)."""
    if system is not None and not any(m.get("role") in ("system", "developer") for m in messages or []):
        messages = [{"role": "system", "content": system}, *(messages or [])]
    if messages is not None:
        call.messages = messages
        call.system_prompt, call.user_prompt = prompts(messages)
    if output:
        first = output[0]
        content = first.get("content")
        call.response = content if isinstance(content, str) or content is None else v.to_json_text(content)
        if first.get("tool_calls"):
            call.tool_calls = first["tool_calls"]
    if reasoning:
        call.reasoning = reasoning
    present = messages is not None or bool(output) or bool(reasoning)
    if not present:
        call.tags = [*(call.tags or []), CONTENT_ABSENT_TAG]
    return present


def new_access(span: Span, provider: str, purpose: str, query: Any, data: Any) -> ProviderAccess:
    start = span.start_ns if isinstance(span.start_ns, int) else 0
    return ProviderAccess(
        timestamp=start // 1_000_000,
        provider_name=provider,
        purpose=purpose,
        query=query,
        data=data,
    )


def new_action(span: Span, name: str | None, parameters: Any, result: Any) -> ActionResult:
    start = span.start_ns if isinstance(span.start_ns, int) else 0
    return ActionResult(
        action_type=name or "tool",
        action_name=name,
        parameters=parameters,
        result=result,
        timestamp=start // 1_000_000,
    )


# --- the current GenAI semantic conventions ------------------------------------------------------


def gen_ai_usage(bag: Bag, call: LlmCall) -> None:
    call.prompt_tokens = bag.first("int", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    call.completion_tokens = bag.first("int", "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    call.cache_read_input_tokens = bag.first(
        "int", "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"
    )
    call.cache_creation_input_tokens = bag.first(
        "int", "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"
    )


def gen_ai_request(bag: Bag, call: LlmCall) -> None:
    call.model = bag.take_name("gen_ai.request.model") or v.as_name(bag.get("gen_ai.response.model")) or ""
    call.model_version = bag.take_name("gen_ai.response.model")
    call.temperature = bag.take_float("gen_ai.request.temperature")
    call.top_p = bag.take_float("gen_ai.request.top_p")
    call.max_tokens = bag.first("int", "gen_ai.request.max_tokens", "gen_ai.request.max_completion_tokens")
    reasons = bag.get("gen_ai.response.finish_reasons")
    call.finish_reason = v.finish_reason(
        reasons if reasons is not None else bag.get("gen_ai.response.finish_reason")
    )
    if call.finish_reason:
        bag.use("gen_ai.response.finish_reasons")
        bag.use("gen_ai.response.finish_reason")


def gen_ai_content(bag: Bag, call: LlmCall) -> bool:
    """The opt-in content attributes (JSON strings or structured values) onto ``call``."""
    system = v.instructions_text(bag.take_json("gen_ai.system_instructions", (list, dict, str)))
    inputs = bag.take_json("gen_ai.input.messages", list)
    outputs = bag.take_json("gen_ai.output.messages", list)
    messages = v.semconv_messages(inputs)
    output: list[dict[str, Any]] = []
    reasoning = None
    if isinstance(outputs, list) and outputs:
        if len(outputs) > 1:  # n > 1 choices: the call holds the first, the metadata keeps them all
            bag.used.discard("gen_ai.output.messages")
        output, reasoning = v.semconv_message(outputs[0])
        first = outputs[0]
        if not call.finish_reason and isinstance(first, dict):
            call.finish_reason = v.finish_reason(first.get("finish_reason"))
    tools = bag.take_json("gen_ai.tool.definitions", list)
    if isinstance(tools, list):
        call.tools = [v.semconv_tool(t) for t in tools]
    return fill_content(call, messages, output, reasoning, system)


def map_gen_ai(span: Span, bag: Bag) -> Mapped:
    op = v.as_name(bag.get("gen_ai.operation.name"))
    if op is None and ("gen_ai.input.messages" in bag or "gen_ai.output.messages" in bag):
        op = "chat"
    elif op in LLM_OPERATIONS or op in AGENT_OPERATIONS or op == "execute_tool" or is_access(op):
        bag.use("gen_ai.operation.name")
    if op in LLM_OPERATIONS:
        call = new_call(span)
        gen_ai_request(bag, call)
        gen_ai_usage(bag, call)
        present = gen_ai_content(bag, call)
        return Mapped("llm", call=call, content_absent=not present)
    if op == "execute_tool":
        name = bag.take_name("gen_ai.tool.name")
        action = new_action(
            span, name, bag.take_json("gen_ai.tool.call.arguments"), bag.take_json("gen_ai.tool.call.result")
        )
        return Mapped("tool", action=action, tool_call_id=bag.take_name("gen_ai.tool.call.id"))
    if op in AGENT_OPERATIONS:
        return Mapped(
            "agent", agent_id=bag.take_name("gen_ai.agent.id"), agent_name=bag.take_name("gen_ai.agent.name")
        )
    if is_access(op):
        provider = bag.first(
            "name", "gen_ai.data_source.id", "gen_ai.memory.store.name", "gen_ai.provider.name"
        )
        query = bag.first(
            "json", "gen_ai.retrieval.query.text", "gen_ai.memory.query.text", "gen_ai.memory.query"
        )
        data = bag.first(
            "json", "gen_ai.retrieval.documents", "gen_ai.memory.records", "gen_ai.memory.content"
        )
        access = new_access(span, provider or v.as_name(span.name) or str(op), str(op), query, data)
        return Mapped("access", access=access)
    return Mapped("other")  # embeddings, invoke_workflow, plan…: context only


def is_access(op: str | None) -> bool:
    return op == "retrieval" or (op is not None and _MEMORY.match(op) is not None)


# --- log events ----------------------------------------------------------------------------------


def event_name(event: LogEvent) -> str:
    """The record's ``event_name``, or its ``event.name`` attribute (how SDKs before the field
    existed named events)."""
    if isinstance(event.event_name, str) and event.event_name:
        return event.event_name
    attrs = event.attributes if isinstance(event.attributes, dict) else {}
    return v.as_name(attrs.get("event.name")) or ""


def map_event(event: LogEvent) -> Mapped | None:
    """One GenAI log event as the (partial) call of its span, or None for an event we do not use."""
    name = event_name(event)
    attrs = event.attributes if isinstance(event.attributes, dict) else {}
    call = LlmCall(
        timestamp=(event.time_ns if isinstance(event.time_ns, int) else 0) // 1_000_000, purpose="response"
    )
    bag = Bag(attrs)
    bag.use("event.name")
    if name == DETAILS_EVENT:
        gen_ai_request(bag, call)
        gen_ai_usage(bag, call)
        present = gen_ai_content(bag, call)
        mapped = Mapped("llm", "gen_ai", call=call, content_absent=not present)
        _common_log(bag, mapped)
        return mapped
    body = event.body if isinstance(event.body, dict) else {}
    if name in MESSAGE_EVENTS:
        msg: dict[str, Any] = {"role": MESSAGE_EVENTS[name], "content": body.get("content")}
        calls = body.get("tool_calls")
        if isinstance(calls, list):
            msg["tool_calls"] = [_event_call(c) for c in calls if isinstance(c, dict)]
        if name == "gen_ai.tool.message" and isinstance(body.get("id"), str):
            msg["tool_call_id"] = body["id"]
        call.messages = [msg]
    elif name == "gen_ai.choice":
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        content = message.get("content")
        call.response = content if isinstance(content, str) else None
        # openai-v2 (before the latest conventions) nests them in the message, OpenLLMetry not
        calls = message.get("tool_calls", body.get("tool_calls"))
        if isinstance(calls, list):
            call.tool_calls = [_event_call(c) for c in calls if isinstance(c, dict)] or None
        call.finish_reason = v.finish_reason(body.get("finish_reason"))
    else:
        return None
    mapped = Mapped("llm", "gen_ai", call=call)
    _common_log(bag, mapped)
    return mapped


def _event_call(c: dict[str, Any]) -> dict[str, Any]:
    function = c.get("function")
    function = function if isinstance(function, dict) else {}
    return v.tool_call(c.get("id"), function.get("name"), function.get("arguments"))


def _common_log(bag: Bag, mapped: Mapped) -> None:
    mapped.conversation_id = bag.take_name("gen_ai.conversation.id")
    bag.use("gen_ai.operation.name")
    mapped.metadata = bag.rest()
