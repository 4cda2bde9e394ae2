"""The two other conventions' tables: OpenLLMetry/Traceloop's older flattened form and
OpenInference (Arize Phoenix). See :mod:`trajforge.otel.mapping` for the rules all tables follow.
"""

from __future__ import annotations

import re
from typing import Any

from trajforge.otel import values as v
from trajforge.otel.genai import (
    fill_content,
    gen_ai_content,
    gen_ai_request,
    map_gen_ai,
    new_access,
    new_action,
    new_call,
)
from trajforge.otel.spans import Mapped, Span
from trajforge.otel.values import Bag
from trajforge.records import LlmCall

LEGACY = re.compile(r"^gen_ai\.(prompt|completion)\.\d+\.")
"""The flattened messages of the older OpenLLMetry form (``gen_ai.prompt.0.role``)."""


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


def map_openllmetry(span: Span, bag: Bag) -> Mapped:
    kind = v.as_name(bag.get("traceloop.span.kind"))
    request_type = v.as_name(bag.get("llm.request.type"))
    legacy = any(isinstance(k, str) and LEGACY.match(k) for k in bag.attrs)
    if request_type in ("chat", "completion") or (request_type is None and legacy):
        bag.use("llm.request.type")
        call = new_call(span)
        gen_ai_request(bag, call)
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
        present = fill_content(call, prompts or None, output, None)
        if not present and "gen_ai.input.messages" in bag:  # a mixed emitter: current content attributes
            call.tags = None
            present = gen_ai_content(bag, call)
        return Mapped("llm", call=call, content_absent=not present)
    if kind == "tool":
        bag.use("traceloop.span.kind")
        name = bag.take_name("traceloop.entity.name")
        action = new_action(
            span, name, bag.take_json("traceloop.entity.input"), bag.take_json("traceloop.entity.output")
        )
        return Mapped("tool", action=action)
    if kind == "agent":
        bag.use("traceloop.span.kind")
        return Mapped("agent", agent_name=bag.take_name("traceloop.entity.name"))
    if bag.get("gen_ai.operation.name") is not None:  # current attributes with traceloop.* context
        return map_gen_ai(span, bag)
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
    call = new_call(span)
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
    present = fill_content(call, messages, output, reasoning)
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


def map_openinference(span: Span, bag: Bag) -> Mapped:
    kind = (v.as_name(bag.get("openinference.span.kind")) or "").upper()
    if kind == "LLM" or (not kind and bag.has_prefix("llm.input_messages.")):
        bag.use("openinference.span.kind")
        mapped = _oi_llm(span, bag)
    elif kind == "TOOL":
        bag.use("openinference.span.kind")
        name = bag.take_name("tool.name")
        action = new_action(span, name, bag.take_json("input.value"), bag.take_json("output.value"))
        mapped = Mapped("tool", action=action, tool_call_id=bag.first("name", "tool_call.id", "tool.id"))
    elif kind in ("RETRIEVER", "RERANKER"):
        bag.use("openinference.span.kind")
        docs = _oi_documents(bag) or bag.take_json("output.value")
        provider = v.as_name(span.name) or kind.lower()
        mapped = Mapped(
            "access", access=new_access(span, provider, kind.lower(), bag.take_json("input.value"), docs)
        )
    elif kind == "AGENT":
        bag.use("openinference.span.kind")
        mapped = Mapped("agent", agent_name=bag.take_name("agent.name") or v.as_name(span.name))
    else:
        mapped = Mapped("other")
    mapped.session_id = bag.take_name("session.id")
    mapped.user_id = bag.take_name("user.id")
    return mapped
