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
SDK-captured call alike. ``docs/otel-mapping.md`` is the table in prose, for the README.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from trajforge.otel import values as v
from trajforge.otel.spans import STATUS_ERROR, LogEvent, Mapped, Span
from trajforge.otel.values import Bag
from trajforge.records import ActionResult, LlmCall, ProviderAccess

CONTENT_ABSENT_TAG = "otel:content-absent"
"""The tag on an LLM call whose span carried no message content (the emitter's content capture was
off): the dataset builder counts these and says why they cannot become training rows."""

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
AGENT_OPERATIONS = frozenset({"invoke_agent", "create_agent"})
_MEMORY = re.compile(r"^[a-z_]+_memory(_store)?$")
_LEGACY = re.compile(r"^gen_ai\.(prompt|completion)\.\d+\.")

DETAILS_EVENT = "gen_ai.client.inference.operation.details"
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
"""The per-message log events of the earlier GenAI conventions (openai-v2 before the
latest-experimental opt-in): one event per input message, ``gen_ai.choice`` per output."""


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
    return part if part is not None and event.event_name == DETAILS_EVENT else None


def _safe_log(event: LogEvent) -> Mapped | None:
    try:
        return _map_log(event)
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
        if event.event_name in MESSAGE_EVENTS:
            per_message.extend(part.call.messages or [])
            continue
        _fill(out, part.call)
    if out.messages is None and per_message:
        out.messages = per_message
    if out.messages or out.response is not None or out.tool_calls:
        out.tags = [t for t in out.tags or [] if t != CONTENT_ABSENT_TAG] or None
        if out.messages:
            out.system_prompt, out.user_prompt = v.prompts(out.messages)
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
    if "llm.request.type" in attrs or any(_LEGACY.match(k) for k in attrs):
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
    table = {"gen_ai": _gen_ai, "openllmetry": _openllmetry, "openinference": _openinference}.get(convention)
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


def _call(span: Span) -> LlmCall:
    start = span.start_ns if isinstance(span.start_ns, int) else 0
    end = span.end_ns if isinstance(span.end_ns, int) else start
    latency = (end - start) / 1e6 if end >= start else None
    return LlmCall(timestamp=start // 1_000_000, latency_ms=latency, purpose="response")


def _llm(
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
        call.system_prompt, call.user_prompt = v.prompts(messages)
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


def _access(span: Span, provider: str, purpose: str, query: Any, data: Any) -> ProviderAccess:
    start = span.start_ns if isinstance(span.start_ns, int) else 0
    return ProviderAccess(
        timestamp=start // 1_000_000,
        provider_name=provider,
        purpose=purpose,
        query=query,
        data=data,
    )


def _action(span: Span, name: str | None, parameters: Any, result: Any) -> ActionResult:
    start = span.start_ns if isinstance(span.start_ns, int) else 0
    return ActionResult(
        action_type=name or "tool",
        action_name=name,
        parameters=parameters,
        result=result,
        timestamp=start // 1_000_000,
    )


# --- the current GenAI semantic conventions ------------------------------------------------------


def _gen_ai_usage(bag: Bag, call: LlmCall) -> None:
    call.prompt_tokens = bag.first("int", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    call.completion_tokens = bag.first("int", "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    call.cache_read_input_tokens = bag.first(
        "int", "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"
    )
    call.cache_creation_input_tokens = bag.first(
        "int", "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"
    )


def _gen_ai_request(bag: Bag, call: LlmCall) -> None:
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
    return _llm(call, messages, output, reasoning, system)


def _gen_ai(span: Span, bag: Bag) -> Mapped:
    op = v.as_name(bag.get("gen_ai.operation.name"))
    if op is None and ("gen_ai.input.messages" in bag or "gen_ai.output.messages" in bag):
        op = "chat"
    elif op in LLM_OPERATIONS or op in AGENT_OPERATIONS or op == "execute_tool" or _is_access(op):
        bag.use("gen_ai.operation.name")
    if op in LLM_OPERATIONS:
        call = _call(span)
        _gen_ai_request(bag, call)
        _gen_ai_usage(bag, call)
        present = gen_ai_content(bag, call)
        return Mapped("llm", call=call, content_absent=not present)
    if op == "execute_tool":
        name = bag.take_name("gen_ai.tool.name")
        action = _action(
            span, name, bag.take_json("gen_ai.tool.call.arguments"), bag.take_json("gen_ai.tool.call.result")
        )
        return Mapped("tool", action=action, tool_call_id=bag.take_name("gen_ai.tool.call.id"))
    if op in AGENT_OPERATIONS:
        return Mapped(
            "agent", agent_id=bag.take_name("gen_ai.agent.id"), agent_name=bag.take_name("gen_ai.agent.name")
        )
    if _is_access(op):
        provider = bag.first(
            "name", "gen_ai.data_source.id", "gen_ai.memory.store.name", "gen_ai.provider.name"
        )
        query = bag.first(
            "json", "gen_ai.retrieval.query.text", "gen_ai.memory.query.text", "gen_ai.memory.query"
        )
        data = bag.first(
            "json", "gen_ai.retrieval.documents", "gen_ai.memory.records", "gen_ai.memory.content"
        )
        access = _access(span, provider or v.as_name(span.name) or str(op), str(op), query, data)
        return Mapped("access", access=access)
    return Mapped("other")  # embeddings, invoke_workflow, plan…: context only


def _is_access(op: str | None) -> bool:
    return op == "retrieval" or (op is not None and _MEMORY.match(op) is not None)


# --- OpenLLMetry / Traceloop (the older flattened form) ------------------------------------------


def _indexed_calls(bag: Bag) -> list[dict[str, Any]]:
    calls = []
    for tc in bag.indexed("tool_calls"):
        name, arguments = tc.take("name"), tc.take("arguments")
        call_id = tc.take("id")
        calls.append(v.tool_call(call_id, name, arguments))
    if "function_call.name" in bag:  # the pre-tools OpenAI shape
        calls.append(v.tool_call(None, bag.take("function_call.name"), bag.take("function_call.arguments")))
    return calls


def _legacy_message(m: Bag, default_role: str) -> dict[str, Any]:
    role = m.take_name("role") or default_role
    content = m.get("content")
    if content is None and isinstance(m.get("user"), str):  # completions: gen_ai.prompt.0.user
        role, content = "user", m.take("user")
    parsed = v.parse_json(content)
    if isinstance(parsed, list) and all(isinstance(p, dict) and "type" in p for p in parsed):
        content = parsed  # multimodal content parts, sent as a JSON string
    if content is not None:
        m.use("content")
    msg: dict[str, Any] = {"role": role, "content": content}
    calls = _indexed_calls(m)
    if calls:
        msg["tool_calls"] = calls
    call_id = m.take_name("tool_call_id")
    if call_id:
        msg["tool_call_id"] = call_id
    name = m.take_name("name")
    if name:
        msg["name"] = name
    return msg


def _openllmetry(span: Span, bag: Bag) -> Mapped:
    kind = v.as_name(bag.get("traceloop.span.kind"))
    request_type = v.as_name(bag.get("llm.request.type"))
    legacy = any(isinstance(k, str) and _LEGACY.match(k) for k in bag.attrs)
    if request_type in ("chat", "completion") or (request_type is None and legacy):
        bag.use("llm.request.type")
        call = _call(span)
        _gen_ai_request(bag, call)
        call.prompt_tokens = bag.first("int", "gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens")
        call.completion_tokens = bag.first(
            "int", "gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens"
        )
        call.cache_read_input_tokens = bag.first(
            "int", "gen_ai.usage.cache_read_input_tokens", "gen_ai.usage.cache_read.input_tokens"
        )
        call.cache_creation_input_tokens = bag.first(
            "int", "gen_ai.usage.cache_creation_input_tokens", "gen_ai.usage.cache_creation.input_tokens"
        )
        prompts = [_legacy_message(m, "user") for m in bag.indexed("gen_ai.prompt")]
        completions = bag.indexed("gen_ai.completion")
        output = []
        if completions:
            first = completions[0]
            output = [_legacy_message(first, "assistant")]
            if not call.finish_reason:
                call.finish_reason = v.finish_reason(first.take_name("finish_reason"))
        tools = []
        for fn in bag.indexed("llm.request.functions"):
            function = {"name": fn.take("name"), "description": fn.take("description")}
            parameters = fn.take_json("parameters")
            if parameters is not None:
                function["parameters"] = parameters
            tools.append(
                {"type": "function", "function": {k: x for k, x in function.items() if x is not None}}
            )
        if tools:
            call.tools = tools
        present = _llm(call, prompts or None, output, None)
        if not present and "gen_ai.input.messages" in bag:  # a mixed emitter: current content attributes
            call.tags = None
            present = gen_ai_content(bag, call)
        return Mapped("llm", call=call, content_absent=not present)
    if kind == "tool":
        bag.use("traceloop.span.kind")
        name = bag.take_name("traceloop.entity.name")
        action = _action(
            span, name, bag.take_json("traceloop.entity.input"), bag.take_json("traceloop.entity.output")
        )
        return Mapped("tool", action=action)
    if kind == "agent":
        bag.use("traceloop.span.kind")
        return Mapped("agent", agent_name=bag.take_name("traceloop.entity.name"))
    if bag.get("gen_ai.operation.name") is not None:  # current attributes with traceloop.* context
        return _gen_ai(span, bag)
    return Mapped("other")


# --- OpenInference (Arize Phoenix) ---------------------------------------------------------------


def _oi_contents(m: Bag) -> tuple[Any, str | None]:
    """``message.contents.K.message_content.*`` as OpenAI content parts, and any reasoning text."""
    parts: list[dict[str, Any]] = []
    reasoning = []
    for c in m.indexed("message.contents"):
        kind = c.take_name("message_content.type") or "text"
        if kind == "text":
            parts.append({"type": "text", "text": c.take_text("message_content.text") or ""})
        elif kind == "image":
            url = c.take_text("message_content.image.image.url")
            parts.append({"type": "image_url", "image_url": {"url": url or ""}})
        elif kind in ("reasoning", "thinking"):
            reasoning.append(c.take_text("message_content.text") or "")
        else:
            c.used.discard(c.prefix + "message_content.type")
    if parts and all(p["type"] == "text" for p in parts) and len(parts) == 1:
        return parts[0]["text"], "\n".join(reasoning) or None
    return (parts or None), "\n".join(reasoning) or None


def _oi_message(m: Bag) -> tuple[dict[str, Any], str | None]:
    role = m.take_name("message.role") or "assistant"
    content = m.get("message.content")
    reasoning = None
    if content is not None:
        m.use("message.content")
    else:
        content, reasoning = _oi_contents(m)
    msg: dict[str, Any] = {"role": role, "content": content}
    calls = []
    for tc in m.indexed("message.tool_calls"):
        calls.append(
            v.tool_call(
                tc.take("tool_call.id"),
                tc.take("tool_call.function.name"),
                tc.take("tool_call.function.arguments"),
            )
        )
    if "message.function_call_name" in m:
        calls.append(
            v.tool_call(
                None, m.take("message.function_call_name"), m.take("message.function_call_arguments_json")
            )
        )
    if calls:
        msg["tool_calls"] = calls
    for key, name in (("message.tool_call_id", "tool_call_id"), ("message.name", "name")):
        value = m.take_name(key)
        if value:
            msg[name] = value
    return msg, reasoning


def _oi_params(bag: Bag, call: LlmCall) -> dict[str, Any]:
    params = bag.take_json("llm.invocation_parameters")
    if not isinstance(params, dict):
        if params is not None:
            bag.used.discard("llm.invocation_parameters")
        return {}
    call.temperature = v.as_float(params.get("temperature"))
    call.top_p = v.as_float(params.get("top_p"))
    call.max_tokens = v.as_int(params.get("max_completion_tokens", params.get("max_tokens")))
    mapped = {"model", "temperature", "top_p", "max_tokens", "max_completion_tokens"}
    if set(params) - mapped:  # keep it: it says more than the fields do
        bag.used.discard("llm.invocation_parameters")
    return params


def _oi_llm(span: Span, bag: Bag) -> Mapped:
    call = _call(span)
    params = _oi_params(bag, call)
    request_model = bag.take_name("llm.request.model_name") or v.as_name(params.get("model"))
    response_model = bag.first("name", "llm.response.model_name", "llm.model_name")
    call.model = request_model or response_model or ""
    call.model_version = response_model
    call.prompt_tokens = bag.take_int("llm.token_count.prompt")
    call.completion_tokens = bag.take_int("llm.token_count.completion")
    call.cache_read_input_tokens = bag.take_int("llm.token_count.prompt_details.cache_read")
    call.cache_creation_input_tokens = bag.take_int("llm.token_count.prompt_details.cache_write")
    call.finish_reason = v.finish_reason(bag.take_name("llm.finish_reason"))
    messages = [_oi_message(m)[0] for m in bag.indexed("llm.input_messages")] or None
    output: list[dict[str, Any]] = []
    reasoning = None
    outs = bag.indexed("llm.output_messages")
    if outs:
        first, reasoning = _oi_message(outs[0])
        output = [first]
    if messages is None and not output:
        messages, output = _oi_completion(bag)
    tools = [t.take_json("tool.json_schema") for t in bag.indexed("llm.tools")]
    if tools:
        call.tools = [t for t in tools if t is not None]
    request = v.parse_json(bag.get("input.value"))
    if messages is None and isinstance(request, dict) and isinstance(request.get("messages"), list):
        messages = [m for m in request["messages"] if isinstance(m, dict)]  # already OpenAI-shaped
        if call.tools is None and isinstance(request.get("tools"), list):
            call.tools = request["tools"]
    present = _llm(call, messages, output, reasoning)
    if present:  # the raw request/response: their content is now in the call's fields
        bag.use("input.value")
        bag.use("input.mime_type")
        if output:
            bag.use("output.value")
            bag.use("output.mime_type")
    return Mapped("llm", call=call, content_absent=not present)


def _oi_completion(bag: Bag) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """A (legacy) completions call: ``llm.prompts.N.prompt.text`` (or a list ``llm.prompts``) and
    ``llm.choices.0.completion.text``, as the SDK records one: a user message of the prompts
    joined by newlines, and the first choice's text."""
    prompts = [p.take_text("prompt.text") for p in bag.indexed("llm.prompts")]
    texts = [p for p in prompts if p is not None]
    listed = bag.get("llm.prompts")
    if not texts and isinstance(listed, list) and listed and all(isinstance(p, str) for p in listed):
        texts = bag.take("llm.prompts")
    messages = [{"role": "user", "content": "\n".join(texts)}] if texts else None
    choices = bag.indexed("llm.choices")
    text = choices[0].take_text("completion.text") if choices else None
    return messages, [{"role": "assistant", "content": text}] if text is not None else []


def _oi_documents(bag: Bag) -> list[dict[str, Any]]:
    docs = []
    for d in bag.indexed("retrieval.documents"):
        doc = {
            "id": d.take("document.id"),
            "content": d.take_text("document.content"),
            "score": d.take_float("document.score"),
            "metadata": d.take_json("document.metadata"),
        }
        docs.append({k: x for k, x in doc.items() if x is not None})
    return docs


def _openinference(span: Span, bag: Bag) -> Mapped:
    kind = (v.as_name(bag.get("openinference.span.kind")) or "").upper()
    if kind == "LLM" or (not kind and bag.has_prefix("llm.input_messages.")):
        bag.use("openinference.span.kind")
        mapped = _oi_llm(span, bag)
    elif kind == "TOOL":
        bag.use("openinference.span.kind")
        name = bag.take_name("tool.name")
        action = _action(span, name, bag.take_json("input.value"), bag.take_json("output.value"))
        mapped = Mapped("tool", action=action, tool_call_id=bag.first("name", "tool_call.id", "tool.id"))
    elif kind in ("RETRIEVER", "RERANKER"):
        bag.use("openinference.span.kind")
        docs = _oi_documents(bag) or bag.take_json("output.value")
        provider = v.as_name(span.name) or kind.lower()
        mapped = Mapped(
            "access", access=_access(span, provider, kind.lower(), bag.take_json("input.value"), docs)
        )
    elif kind == "AGENT":
        bag.use("openinference.span.kind")
        mapped = Mapped("agent", agent_name=bag.take_name("agent.name") or v.as_name(span.name))
    else:
        mapped = Mapped("other")
    mapped.session_id = bag.take_name("session.id")
    mapped.user_id = bag.take_name("user.id")
    return mapped


# --- log events ----------------------------------------------------------------------------------


def _map_log(event: LogEvent) -> Mapped | None:
    name = event.event_name if isinstance(event.event_name, str) else ""
    attrs = event.attributes if isinstance(event.attributes, dict) else {}
    if not name:
        name = v.as_name(attrs.get("event.name")) or ""
    call = LlmCall(
        timestamp=(event.time_ns if isinstance(event.time_ns, int) else 0) // 1_000_000, purpose="response"
    )
    bag = Bag(attrs)
    bag.use("event.name")
    if name == DETAILS_EVENT:
        _gen_ai_request(bag, call)
        _gen_ai_usage(bag, call)
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
