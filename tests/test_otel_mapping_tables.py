"""The span → record mapping's tables with small hand-made spans: each convention, the older and
odd forms (structured vs JSON-string content, missing content, bad values), the log events, and
random attributes (the tables never raise, nothing is dropped). The real instrumentations are in
``test_otel_mapping.py``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import otel_emit
from trajforge.otel import genai, mapping
from trajforge.otel.mapping import CONTENT_ABSENT_TAG, apply_logs, convention_of, map_log, map_span
from trajforge.otel.spans import STATUS_ERROR, LogEvent, Span, SpanEvent
from trajforge.records import LlmCall

# --- hand-made spans: each table -----------------------------------------------------------------


def span(attrs: dict[str, Any], **kw: Any) -> Span:
    base = {"trace_id": "ab" * 16, "span_id": "cd" * 8, "parent_span_id": None, "name": "s"}
    base.update(start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_250_000_000)
    base.update(kw)
    return Span(**base, attributes=attrs)


GEN_AI_CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "m1",
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.max_tokens": 99,
    "gen_ai.request.top_p": 0.8,
    "gen_ai.response.model": "m1-2025",
    "gen_ai.response.id": "r-1",
    "gen_ai.response.finish_reasons": ["tool_call"],
    "gen_ai.usage.input_tokens": 30,
    "gen_ai.usage.output_tokens": 4,
    "gen_ai.usage.cache_read.input_tokens": 20,
    "gen_ai.usage.reasoning.output_tokens": 2,
    "gen_ai.conversation.id": "conv-9",
    "gen_ai.system_instructions": [{"type": "text", "content": "Be kind."}],
    "gen_ai.input.messages": [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}, {"type": "text", "content": " there"}]},
    ],
    "gen_ai.output.messages": [
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "think"},
                {"type": "text", "content": "calling"},
                {"type": "tool_call", "id": "c1", "name": "f", "arguments": {"x": 1}},
            ],
            "finish_reason": "tool_call",
        }
    ],
    "gen_ai.tool.definitions": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
}


def test_gen_ai_chat_table() -> None:
    m = map_span(span(GEN_AI_CHAT))
    assert (m.kind, m.convention, m.conversation_id) == ("llm", "gen_ai", "conv-9")
    c = m.call
    assert c is not None
    assert (c.model, c.model_version, c.temperature, c.max_tokens, c.top_p) == ("m1", "m1-2025", 0.2, 99, 0.8)
    assert (c.prompt_tokens, c.completion_tokens, c.cache_read_input_tokens) == (30, 4, 20)
    assert c.timestamp == 1_700_000_000_000 and c.latency_ms == 250.0
    assert c.messages == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi there"}]
    assert (c.system_prompt, c.user_prompt) == ("Be kind.", "hi there")
    assert (c.response, c.reasoning, c.finish_reason) == ("calling", "think", "tool_calls")
    assert c.tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]
    assert c.tools == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    # unmapped attributes stay, by their original keys
    assert m.metadata == {
        "gen_ai.provider.name": "openai",
        "gen_ai.response.id": "r-1",
        "gen_ai.usage.reasoning.output_tokens": 2,
    }


def test_gen_ai_json_string_and_structured_content_map_alike() -> None:
    as_json = {
        k: json.dumps(v) if k.endswith(("messages", "definitions", "instructions")) else v
        for k, v in GEN_AI_CHAT.items()
    }
    a, b = map_span(span(GEN_AI_CHAT)), map_span(span(as_json))
    assert a.call is not None and b.call is not None and a.metadata == b.metadata
    for name in LlmCall.__slots__:
        if name != "call_id":
            assert getattr(a.call, name) == getattr(b.call, name), name


def test_gen_ai_tool_round_trip_messages() -> None:
    m = map_span(
        span(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "m",
                "gen_ai.input.messages": json.dumps(
                    [
                        {"role": "user", "parts": [{"type": "text", "content": "q"}]},
                        {
                            "role": "assistant",
                            "parts": [{"type": "tool_call", "id": "c", "name": "f", "arguments": "{}"}],
                        },
                        {
                            "role": "tool",
                            "parts": [
                                {"type": "tool_call_response", "id": "c", "response": {"ok": True}},
                                {"type": "tool_call_response", "id": "d", "response": "two"},
                            ],
                        },
                        {
                            "role": "user",
                            "parts": [{"type": "uri", "modality": "image", "uri": "http://x/i.png"}],
                        },
                    ]
                ),
            }
        )
    )
    assert m.call is not None and m.call.messages == [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": '{"ok": true}'},
        {"role": "tool", "tool_call_id": "d", "content": "two"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/i.png"}}]},
    ]
    assert m.call.response is None and not m.content_absent


def test_gen_ai_execute_tool_agent_and_retrieval() -> None:
    tool = map_span(
        span(
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "get_weather",
                "gen_ai.tool.call.id": "call_7",
                "gen_ai.tool.call.arguments": '{"q": "Paris"}',
                "gen_ai.tool.call.result": {"temp": 21},
                "gen_ai.tool.type": "function",
            }
        )
    )
    assert (tool.kind, tool.tool_call_id) == ("tool", "call_7")
    assert tool.action is not None
    assert (tool.action.action_name, tool.action.parameters, tool.action.result) == (
        "get_weather",
        {"q": "Paris"},
        {"temp": 21},
    )
    assert tool.action.success and tool.metadata == {"gen_ai.tool.type": "function"}

    agent = map_span(
        span(
            {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "a-1", "gen_ai.agent.name": "Helper"}
        )
    )
    assert (agent.kind, agent.agent_id, agent.agent_name) == ("agent", "a-1", "Helper")

    for op in ("retrieval", "search_memory", "update_memory"):
        access = map_span(
            span(
                {
                    "gen_ai.operation.name": op,
                    "gen_ai.data_source.id": "kb",
                    "gen_ai.retrieval.query.text": "refund policy",
                    "gen_ai.retrieval.documents": '[{"id": "d1", "score": 0.9}]',
                }
            )
        )
        assert access.kind == "access" and access.access is not None
        assert (access.access.provider_name, access.access.purpose) == ("kb", op)
        assert (access.access.query, access.access.data) == ("refund policy", [{"id": "d1", "score": 0.9}])

    embeddings = map_span(span({"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e"}))
    assert embeddings.kind == "other" and embeddings.metadata["gen_ai.operation.name"] == "embeddings"


def test_errors_from_status_error_type_and_exception_events() -> None:
    by_status = map_span(
        span(
            {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"},
            status_code=STATUS_ERROR,
            status_message="boom",
        )
    )
    assert by_status.error == "boom" and by_status.call is not None
    assert by_status.call.finish_reason == "error" and by_status.call.tags == [
        CONTENT_ABSENT_TAG,
        "error:span",
    ]

    by_type = map_span(
        span({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t", "error.type": "Timeout"})
    )
    assert by_type.error == "Timeout" and by_type.action is not None
    assert by_type.action.success is False and by_type.action.error == "Timeout"
    assert "error.type" not in by_type.metadata

    exc = SpanEvent("exception", 5, {"exception.type": "ValueError", "exception.message": "bad"})
    by_event = map_span(span({"gen_ai.operation.name": "chat"}, status_code=STATUS_ERROR, events=[exc]))
    assert by_event.error == "ValueError: bad"


def test_several_choices_and_span_events_are_kept() -> None:
    outputs = [
        {"role": "assistant", "parts": [{"type": "text", "content": "one"}]},
        {"role": "assistant", "parts": [{"type": "text", "content": "two"}]},
    ]
    exc = SpanEvent("exception", 7, {"exception.type": "E", "exception.stacktrace": "tb"})
    chunks = [SpanEvent("gen_ai.content.completion.chunk", i, {}) for i in range(3)]
    m = map_span(
        span(
            {"gen_ai.operation.name": "chat", "gen_ai.output.messages": outputs},
            status_code=STATUS_ERROR,
            events=[exc, *chunks],
        )
    )
    assert m.call is not None and m.call.response == "one"
    assert m.metadata["gen_ai.output.messages"] == outputs  # the other choice is not lost
    assert m.error == "E"
    assert m.metadata["otel.events"] == [
        {
            "name": "exception",
            "timeNs": 7,
            "attributes": {"exception.type": "E", "exception.stacktrace": "tb"},
        },
        {"counts": {"gen_ai.content.completion.chunk": 3}},
    ]


def test_content_absent_when_capture_is_off() -> None:
    m = map_span(
        span({"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 3})
    )
    assert m.content_absent and m.call is not None and m.call.tags == [CONTENT_ABSENT_TAG]
    assert m.call.prompt_tokens == 3


OPENLLMETRY_LEGACY = {
    "llm.request.type": "chat",
    "gen_ai.system": "OpenAI",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024",
    "gen_ai.request.temperature": 0.1,
    "gen_ai.prompt.0.role": "system",
    "gen_ai.prompt.0.content": "sys",
    "gen_ai.prompt.1.role": "user",
    "gen_ai.prompt.1.content": "what?",
    "gen_ai.prompt.2.role": "assistant",
    "gen_ai.prompt.2.tool_calls.0.id": "t0",
    "gen_ai.prompt.2.tool_calls.0.name": "f",
    "gen_ai.prompt.2.tool_calls.0.arguments": "{}",
    "gen_ai.prompt.3.role": "tool",
    "gen_ai.prompt.3.content": "res",
    "gen_ai.prompt.3.tool_call_id": "t0",
    "gen_ai.completion.0.role": "assistant",
    "gen_ai.completion.0.finish_reason": "tool_calls",
    "gen_ai.completion.0.tool_calls.0.id": "t1",
    "gen_ai.completion.0.tool_calls.0.name": "g",
    "gen_ai.completion.0.tool_calls.0.arguments": '{"a": 2}',
    "gen_ai.usage.prompt_tokens": 12,
    "gen_ai.usage.completion_tokens": 5,
    "llm.usage.total_tokens": 17,
    "llm.request.functions.0.name": "g",
    "llm.request.functions.0.description": "G.",
    "llm.request.functions.0.parameters": '{"type": "object"}',
    "traceloop.workflow.name": "wf",
}


def test_openllmetry_legacy_table() -> None:
    m = map_span(span(OPENLLMETRY_LEGACY))
    assert (m.kind, m.convention) == ("llm", "openllmetry")
    c = m.call
    assert c is not None
    assert (c.model, c.model_version, c.temperature) == ("gpt-4o", "gpt-4o-2024", 0.1)
    assert (c.prompt_tokens, c.completion_tokens, c.finish_reason) == (12, 5, "tool_calls")
    assert c.messages == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "what?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t0", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "res", "tool_call_id": "t0"},
    ]
    assert c.response is None
    assert c.tool_calls == [
        {"id": "t1", "type": "function", "function": {"name": "g", "arguments": '{"a": 2}'}}
    ]
    assert c.tools == [
        {"type": "function", "function": {"name": "g", "description": "G.", "parameters": {"type": "object"}}}
    ]
    assert m.metadata == {
        "gen_ai.system": "OpenAI",
        "llm.usage.total_tokens": 17,
        "traceloop.workflow.name": "wf",
    }


def test_openllmetry_legacy_completion() -> None:
    m = map_span(
        span(
            {
                "llm.request.type": "completion",
                "gen_ai.request.model": "davinci",
                "gen_ai.prompt.0.user": "Say hi",
                "gen_ai.completion.0.content": "hi",
                "gen_ai.completion.0.finish_reason": "stop",
            }
        )
    )
    assert m.call is not None and m.call.messages == [{"role": "user", "content": "Say hi"}]
    assert (m.call.user_prompt, m.call.response, m.call.finish_reason) == ("Say hi", "hi", "stop")
    assert m.metadata == {}


def test_openllmetry_tool_and_agent_spans() -> None:
    tool = map_span(
        span(
            {
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": "search",
                "traceloop.entity.input": '{"args": ["x"]}',
                "traceloop.entity.output": '"found"',
            }
        )
    )
    assert tool.kind == "tool" and tool.action is not None
    assert (tool.action.action_name, tool.action.parameters) == ("search", {"args": ["x"]})
    assert tool.action.result == '"found"'  # not an object/array: kept as the text it was
    agent = map_span(span({"traceloop.span.kind": "agent", "traceloop.entity.name": "planner"}))
    assert (agent.kind, agent.agent_name, agent.convention) == ("agent", "planner", "openllmetry")
    workflow = map_span(span({"traceloop.span.kind": "workflow", "traceloop.entity.name": "wf"}))
    assert workflow.kind == "other" and workflow.metadata["traceloop.entity.name"] == "wf"


OPENINFERENCE_LLM = {
    "openinference.span.kind": "LLM",
    "llm.model_name": "gpt-x-0613",
    "llm.invocation_parameters": '{"model": "gpt-x", "temperature": 0.3, "max_tokens": 40}',
    "llm.input_messages.0.message.role": "user",
    "llm.input_messages.0.message.contents.0.message_content.type": "text",
    "llm.input_messages.0.message.contents.0.message_content.text": "look",
    "llm.input_messages.0.message.contents.1.message_content.type": "image",
    "llm.input_messages.0.message.contents.1.message_content.image.image.url": "http://i",
    "llm.output_messages.0.message.role": "assistant",
    "llm.output_messages.0.message.content": "a cat",
    "llm.token_count.prompt": 8,
    "llm.token_count.completion": 2,
    "llm.token_count.prompt_details.cache_read": 4,
    "llm.token_count.total": 10,
    "llm.tools.0.tool.json_schema": json.dumps(otel_emit.TOOL),
    "session.id": "sess-1",
    "user.id": "u-1",
    "metadata": '{"k": "v"}',
}


def test_openinference_llm_table() -> None:
    m = map_span(span(OPENINFERENCE_LLM))
    assert (m.kind, m.convention, m.session_id, m.user_id) == ("llm", "openinference", "sess-1", "u-1")
    c = m.call
    assert c is not None
    assert (c.model, c.model_version, c.temperature, c.max_tokens) == ("gpt-x", "gpt-x-0613", 0.3, 40)
    assert (c.prompt_tokens, c.completion_tokens, c.cache_read_input_tokens) == (8, 2, 4)
    assert c.messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "http://i"}},
            ],
        }
    ]
    assert (c.response, c.user_prompt) == ("a cat", "look")
    assert c.tools == [otel_emit.TOOL]
    assert m.metadata == {"llm.token_count.total": 10, "metadata": '{"k": "v"}'}


def test_openinference_input_value_fallback_and_other_kinds() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "hey"}]}
    m = map_span(span({"openinference.span.kind": "LLM", "input.value": json.dumps(request)}))
    assert m.call is not None and m.call.messages == request["messages"] and not m.content_absent

    tool = map_span(
        span(
            {
                "openinference.span.kind": "TOOL",
                "tool.name": "calc",
                "input.value": '{"x": 1}',
                "output.value": "2",
                "tool_call.id": "tc-1",
            }
        )
    )
    assert tool.action is not None and (tool.action.action_name, tool.action.parameters) == ("calc", {"x": 1})
    assert (tool.action.result, tool.tool_call_id) == ("2", "tc-1")

    retriever = map_span(
        span(
            {
                "openinference.span.kind": "RETRIEVER",
                "input.value": "q?",
                "retrieval.documents.0.document.id": "d0",
                "retrieval.documents.0.document.content": "text",
                "retrieval.documents.0.document.score": 0.5,
            },
            name="vector-search",
        )
    )
    assert retriever.access is not None and retriever.access.provider_name == "vector-search"
    assert (retriever.access.query, retriever.access.data) == (
        "q?",
        [{"id": "d0", "content": "text", "score": 0.5}],
    )

    agent = map_span(span({"openinference.span.kind": "AGENT", "agent.name": "boss"}))
    assert (agent.kind, agent.agent_name) == ("agent", "boss")
    chain = map_span(span({"openinference.span.kind": "CHAIN", "input.value": "x", "session.id": "s"}))
    assert (chain.kind, chain.session_id) == ("other", "s")
    assert chain.metadata == {"openinference.span.kind": "CHAIN", "input.value": "x"}


def test_convention_detection() -> None:
    assert convention_of(GEN_AI_CHAT) == "gen_ai"
    assert convention_of(OPENLLMETRY_LEGACY) == "openllmetry"
    assert convention_of(OPENINFERENCE_LLM) == "openinference"
    assert convention_of({"http.method": "GET"}) == ""
    # OpenLLMetry's current spans under the Traceloop SDK: the current form, with context keys
    traceloop = {
        **GEN_AI_CHAT,
        "traceloop.workflow.name": "wf",
        "traceloop.association.properties.session_id": "s",
    }
    m = map_span(span(traceloop))
    assert (m.convention, m.kind, m.session_id) == ("gen_ai", "llm", "s")
    assert m.metadata["traceloop.workflow.name"] == "wf"
    assert map_span(span({"http.method": "GET"})).metadata == {"http.method": "GET"}


def test_bad_values_stay_in_metadata() -> None:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": ["not", "a", "string"],
        "gen_ai.request.temperature": "hot",
        "gen_ai.request.max_tokens": 2**40,
        "gen_ai.usage.input_tokens": True,
        "gen_ai.usage.output_tokens": "²",
        "gen_ai.request.top_p": "nan",
        "gen_ai.input.messages": "[{not json",
        "gen_ai.output.messages": 42,
    }
    m = map_span(span(attrs))
    assert m.kind == "llm" and m.call is not None
    assert (m.call.model, m.call.temperature, m.call.max_tokens, m.call.prompt_tokens) == (
        "",
        None,
        None,
        None,
    )
    assert m.content_absent
    assert m.metadata == {k: v for k, v in attrs.items() if k != "gen_ai.operation.name"}


def test_log_events_details_and_per_message() -> None:
    details = LogEvent(
        "gen_ai.client.inference.operation.details",
        2_000_000,
        "ab" * 16,
        "cd" * 8,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "m",
            "gen_ai.input.messages": [{"role": "user", "parts": [{"type": "text", "content": "hi"}]}],
            "gen_ai.output.messages": [
                {"role": "assistant", "parts": [{"type": "text", "content": "yo"}], "finish_reason": "stop"}
            ],
        },
    )
    m = map_log(details)
    assert m is not None and m.call is not None
    assert (m.call.messages, m.call.response, m.call.finish_reason) == (
        [{"role": "user", "content": "hi"}],
        "yo",
        "stop",
    )

    # the earlier per-message events, merged in time order into the span's (content-less) call
    target = map_span(span({"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"})).call
    assert target is not None and target.tags == [CONTENT_ABSENT_TAG]
    events = [
        LogEvent("gen_ai.system.message", 1, None, None, {}, {"content": "sys"}),
        LogEvent("gen_ai.user.message", 2, None, None, {}, {"content": "q"}),
        LogEvent(
            "gen_ai.choice",
            3,
            None,
            None,
            {},
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            },
        ),
    ]
    target = apply_logs(target, events)
    assert target.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    assert (target.system_prompt, target.user_prompt, target.finish_reason) == ("sys", "q", "tool_calls")
    assert target.tool_calls == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert target.tags is None
    assert map_log(LogEvent("some.other.event", 0, None, None)) is None
    # named by an ``event.name`` attribute (SDKs before the record field), not the field
    older = LogEvent("", 0, None, None, {**details.attributes, "event.name": details.event_name})
    by_attribute = map_log(older)
    assert by_attribute is not None and by_attribute.call is not None
    assert by_attribute.call.response == "yo" and by_attribute.metadata == {}


# --- anything at all -----------------------------------------------------------------------------

KEYS = [
    *GEN_AI_CHAT,
    *OPENLLMETRY_LEGACY,
    *OPENINFERENCE_LLM,
    "gen_ai.tool.call.arguments",
    "traceloop.span.kind",
    "error.type",
    "input.value",
    "output.value",
    "retrieval.documents.0.document.id",
    "gen_ai.prompt.99999999.role",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "[",
            "{}",
            "[1,2]",
            '{"a": [1]}',
            "chat",
            "execute_tool",
            "LLM",
            "TOOL",
            "retrieval",
            "²",
            "1e999",
            "12",
        ]
    ),
    st.binary(max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
flattened = st.builds(
    "{}.{}.{}".format,
    st.sampled_from(
        ["llm.input_messages", "llm.output_messages", "gen_ai.prompt", "gen_ai.completion", "llm.tools"]
    ),
    st.sampled_from(["0", "1", "01", "x", "999999"]),
    st.sampled_from(
        [
            "message.role",
            "message.content",
            "message.contents.0.message_content.type",
            "message.contents.0.message_content.text",
            "message.tool_calls.0.tool_call.function.arguments",
            "role",
            "content",
            "tool_calls.0.name",
            "tool.json_schema",
        ]
    ),
)
attributes = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), flattened, st.text(max_size=20)), values, max_size=12
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    attrs=attributes, status=st.sampled_from([0, 1, 2]), message=st.one_of(st.text(max_size=10), st.none())
)
def test_any_attributes_map_without_raising_and_nothing_is_dropped(
    attrs: dict[str, Any], status: int, message: Any
) -> None:
    s = span(dict(attrs), status_code=status, status_message=message)
    m = mapping._map_span(s)  # the tables themselves, not the safety net around them
    assert m.kind in ("llm", "tool", "access", "agent", "other")
    assert set(m.metadata) <= set(attrs) | {"otel.events"}
    # every key not in the metadata went into a record field
    consumed = set(attrs) - set(m.metadata)
    if consumed:
        assert m.kind != "other" or consumed <= {
            "gen_ai.conversation.id",
            "session.id",
            "user.id",
            "error.type",
            "traceloop.association.properties.session_id",
            "traceloop.association.properties.user_id",
            "enduser.id",
            "openinference.span.kind",
        }
    log = genai.map_event(
        LogEvent("gen_ai.client.inference.operation.details", 0, None, None, dict(attrs), attrs)
    )
    assert log is None or log.kind == "llm"
    for name in ("gen_ai.user.message", "gen_ai.choice"):
        genai.map_event(LogEvent(name, 0, None, None, dict(attrs), attrs.get("input.value")))
