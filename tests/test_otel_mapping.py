"""The span → record mapping (``trajforge.otel.mapping``).

First the three real OpenAI instrumentations, each in its own subprocess, instrumenting the
official ``openai`` client against the loopback fake: every LLM call they report must map to what
the fake served, and to the very record our own SDK capture makes of the same calls. Then each
table with small hand-made spans, the older and odd forms, and random attributes (never raises,
nothing dropped).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trajforge
from tests import otel_emit
from tests.fakes.openai_server import FakeOpenAI, fake_openai
from trajforge.datasets.curation import NO_CONTENT
from trajforge.otel import mapping
from trajforge.otel.mapping import CONTENT_ABSENT_TAG, apply_logs, convention_of, map_log, map_span
from trajforge.otel.spans import STATUS_ERROR, LogEvent, Mapped, Span, SpanEvent
from trajforge.records import LlmCall, Step, Trajectory, WriteBatch
from trajforge.store import Store, TrajectoryFilter, open_store

ANSWER = f"echo: {otel_emit.QUESTION}"
ARGS = json.dumps({"q": otel_emit.QUESTION})
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
PROMPT = [{"role": "system", "content": otel_emit.SYSTEM}, {"role": "user", "content": otel_emit.QUESTION}]
FOLLOW_UP = [
    *PROMPT,
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": otel_emit.TOOL_RESULT},
]

# Which convention each instrumentation's spans use (OpenLLMetry ≥ 0.4x emits the current one).
CONVENTION = {"openai-v2": "gen_ai", "openinference": "openinference", "openllmetry": "gen_ai"}
# Request fields an instrumentation does not report at all, so they cannot be on its calls.
NOT_EMITTED: dict[tuple[str, str], set[str]] = {
    ("openai-v2", "*"): {"tools"},  # no gen_ai.tool.definitions from the chat wrapper
    ("openinference", "responses"): {"finish_reason"},  # no llm.finish_reason for Responses
}
UNTRACED = {("openai-v2", "responses"), ("openai-v2", "completion")}  # openai-v2: Chat Completions only
FAILING = ("error",)  # scenarios whose call fails: tested on their own
CASES = [
    pytest.param(i, s, id=f"{i}-{s}")
    for i in otel_emit.INSTRUMENTATIONS
    for s in otel_emit.SCENARIOS
    if (i, s) not in UNTRACED and s not in FAILING
]


def not_emitted(instrumentation: str, scenario: str) -> set[str]:
    return NOT_EMITTED.get((instrumentation, "*"), set()) | NOT_EMITTED.get(
        (instrumentation, scenario), set()
    )


COMPARED = (
    "model",
    "model_version",
    "system_prompt",
    "user_prompt",
    "messages",
    "response",
    "reasoning",
    "tool_calls",
    "tools",
    "finish_reason",
    "temperature",
    "max_tokens",
    "top_p",
    "prompt_tokens",
    "completion_tokens",
    "purpose",
)


TOKENS = {"responses": (13, 5), "completion": (9, 4)}  # what the fake reports (chat: 11/7)
NO_SYSTEM = {"completion"}  # scenarios without a system message


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai() as server:
        yield server


_emitted: dict[tuple[str, str], tuple[bytes, bytes]] = {}


def emitted(instrumentation: str, scenario: str, base_url: str) -> tuple[list[Span], list[LogEvent]]:
    """The spans and log events of ``scenario``; an instrumentation's first use runs all its
    scenarios in one subprocess (one interpreter start each, not one per scenario)."""
    if (instrumentation, scenario) not in _emitted:
        wanted = [
            s
            for s in (*otel_emit.SCENARIOS, otel_emit.AGENT_SCENARIO)
            if (instrumentation, s) not in UNTRACED
        ]
        if instrumentation != "openai-v2":
            wanted = [s for s in wanted if s != otel_emit.AGENT_SCENARIO]
        if scenario not in wanted:
            wanted = [scenario]
        for name, bodies in otel_emit.emit_many(instrumentation, tuple(wanted), base_url).items():
            _emitted[(instrumentation, name)] = bodies
    traces, logs = _emitted[(instrumentation, scenario)]
    return otel_emit.spans_of(traces), otel_emit.logs_of(logs)


def llm_calls(spans: list[Span]) -> list[Mapped]:
    return [m for m in map(map_span, spans) if m.kind == "llm"]


def sdk_calls(scenario: str, base_url: str, tmp: Path) -> list[LlmCall]:
    """The same scenario recorded by our own SDK capture (``instrument_openai``), in this process."""
    url = str(tmp / f"sdk-{scenario}.db")
    rec = trajforge.Recorder(url)
    undo = trajforge.instrument_openai(rec)
    try:
        otel_emit._run(scenario, base_url)
    finally:
        undo()
        rec.close()
    store = open_store(url)
    try:
        calls = [c for t in store.iter_trajectories(TrajectoryFilter()) for s in t.steps for c in s.llm_calls]
    finally:
        store.close()
    return sorted(calls, key=lambda c: c.timestamp)


EXPECTED: dict[str, list[dict[str, Any]]] = {
    "chat": [
        {
            "messages": PROMPT,
            "response": ANSWER,
            "finish_reason": "stop",
            "temperature": 0.5,
            "max_tokens": 50,
        }
    ],
    "stream": [{"messages": PROMPT, "response": ANSWER, "finish_reason": "stop"}],
    "async": [{"messages": PROMPT, "response": ANSWER, "finish_reason": "stop", "temperature": 0.5}],
    "responses": [{"messages": PROMPT, "response": ANSWER, "finish_reason": "stop", "temperature": 0.5}],
    "completion": [
        {
            "messages": [{"role": "user", "content": otel_emit.QUESTION}],
            "response": ANSWER,
            "finish_reason": "stop",
            "max_tokens": 20,
        }
    ],
    "stream_tools": [
        {"messages": PROMPT, "response": None, "tool_calls": [TOOL_CALL], "finish_reason": "tool_calls"}
    ],
    "tools": [
        {"messages": PROMPT, "response": None, "tool_calls": [TOOL_CALL], "finish_reason": "tool_calls"},
        {"messages": FOLLOW_UP, "response": ANSWER, "tool_calls": None, "finish_reason": "stop"},
    ],
}


@pytest.mark.parametrize(("instrumentation", "scenario"), CASES)
def test_real_instrumentation_maps_to_what_the_fake_served(
    instrumentation: str, scenario: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    spans, _ = emitted(instrumentation, scenario, fake.base_url)
    mapped = llm_calls(spans)
    expected = EXPECTED[scenario]
    assert len(mapped) == len(expected), [s.attributes for s in spans]
    for m, want in zip(mapped, expected, strict=True):
        assert m.convention == CONVENTION[instrumentation]
        assert not m.content_absent and m.error is None
        call = m.call
        assert call is not None
        assert call.model == otel_emit.MODEL and call.model_version == otel_emit.MODEL
        assert (call.prompt_tokens, call.completion_tokens) == TOKENS.get(scenario, (11, 7))
        assert call.user_prompt == otel_emit.QUESTION
        assert call.system_prompt == (None if scenario in NO_SYSTEM else otel_emit.SYSTEM)
        for name, value in want.items():
            if name not in not_emitted(instrumentation, scenario):
                assert getattr(call, name) == value, name
        assert call.latency_ms is not None and call.latency_ms > 0
        assert call.timestamp in {s.start_ns // 1_000_000 for s in spans}  # ms from the span's start
        assert call.tags is None
    if scenario in ("tools", "stream_tools") and "tools" not in not_emitted(instrumentation, scenario):
        assert mapped[0].call is not None and mapped[0].call.tools == [otel_emit.TOOL]


@pytest.mark.parametrize(("instrumentation", "scenario"), CASES)
def test_real_instrumentation_call_equals_the_sdk_capture_of_it(
    instrumentation: str, scenario: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A call heard over OTel is the record the SDK makes of it, field for field (except request
    fields the instrumentation never reports), so datasets cannot tell the two apart."""
    spans, _ = emitted(instrumentation, scenario, fake.base_url)
    otel = [m.call for m in llm_calls(spans)]
    sdk = sdk_calls(scenario, fake.base_url, tmp_path)
    assert len(otel) == len(sdk) > 0
    for o, s in zip(otel, sdk, strict=True):
        assert o is not None
        for name in COMPARED:
            if name in not_emitted(instrumentation, scenario):
                continue
            assert getattr(o, name) == getattr(s, name), (name, getattr(o, name), getattr(s, name))


@pytest.mark.parametrize("instrumentation", otel_emit.INSTRUMENTATIONS)
def test_real_instrumentation_failed_call_is_an_error_call(
    instrumentation: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A call whose server refused the connection: the span's error becomes the call's, recorded as
    the SDK records a failed call (finish reason ``error``, tag ``error:<exception class>``)."""
    spans, _ = emitted(instrumentation, "error", fake.base_url)
    (m,) = llm_calls(spans)
    assert m.error and "Connection error" in m.error
    (sdk,) = sdk_calls("error", fake.base_url, tmp_path)
    assert m.call is not None and sdk.tags == ["error:APIConnectionError"]
    for name in (*COMPARED, "tags"):
        assert getattr(m.call, name) == getattr(sdk, name), name


def test_real_agent_tool_and_chat_spans(fake: FakeOpenAI) -> None:
    """An agent run as util-genai emits it (``invoke_agent`` around the chat calls and an
    ``execute_tool`` span): the agent names the trajectory, the tool span is the action with the
    call id that links it to the call that asked, and the agent and chat spans carry the conversation."""
    spans, _ = emitted("openai-v2", otel_emit.AGENT_SCENARIO, fake.base_url)
    mapped = [(s, map_span(s)) for s in spans]
    kinds = [m.kind for _, m in mapped]
    assert sorted(kinds) == ["agent", "llm", "llm", "tool"]
    root = next(s for s, m in mapped if m.kind == "agent")
    assert all(s.parent_span_id == root.span_id for s, m in mapped if m.kind != "agent")
    # util-genai puts the conversation on agent and chat spans (the tool span joins by its trace)
    assert {m.conversation_id for _, m in mapped if m.kind != "tool"} == {otel_emit.CONVERSATION}
    agent = next(m for _, m in mapped if m.kind == "agent")
    assert (agent.agent_name, agent.convention) == (otel_emit.AGENT, "gen_ai")
    tool = next(m for _, m in mapped if m.kind == "tool")
    assert tool.action is not None and tool.tool_call_id == "call_1"
    assert (tool.action.action_name, tool.action.parameters, tool.action.result) == (
        "get_weather",
        {"q": otel_emit.QUESTION},
        otel_emit.TOOL_RESULT,
    )
    assert tool.action.success and tool.error is None
    calls = [m.call for _, m in mapped if m.kind == "llm"]
    assert calls[0] is not None and calls[0].tool_calls == [TOOL_CALL]
    assert calls[1] is not None and calls[1].messages == FOLLOW_UP and calls[1].response == ANSWER


def test_openai_v2_log_events_carry_the_same_call(fake: FakeOpenAI) -> None:
    """``gen_ai.client.inference.operation.details`` log records map to the call of their span."""
    spans, logs = emitted("openai-v2", "tools", fake.base_url)
    details = [e for e in logs if e.event_name == "gen_ai.client.inference.operation.details"]
    assert len(details) == 2
    by_span = {s.span_id: map_span(s) for s in spans}
    for event in details:
        logged = map_log(event)
        assert logged is not None and logged.call is not None and logged.kind == "llm"
        assert event.span_id in by_span
        span_call = by_span[event.span_id].call
        assert span_call is not None
        for name in ("model", "messages", "response", "tool_calls", "finish_reason", "prompt_tokens"):
            assert getattr(logged.call, name) == getattr(span_call, name), name
        # content on both the span and its event (SPAN_AND_EVENT) is not doubled
        assert apply_logs(span_call, [event]) == span_call


@pytest.mark.parametrize("scenario", ["chat", "tools"])
def test_openllmetry_per_message_events_rebuild_the_call(scenario: str, fake: FakeOpenAI) -> None:
    """OpenLLMetry with ``use_attributes=False`` puts the content in per-message log events
    (``gen_ai.user.message`` … ``gen_ai.choice``): merged into their span's content-less call in
    the order they came, they give the same call as the attributes path."""
    spans, logs = emitted("openllmetry-events", scenario, fake.base_url)
    calls = []
    for s in spans:
        m = map_span(s)
        if m.kind != "llm" or m.call is None:
            continue
        assert m.content_absent
        mine = [e for e in logs if e.span_id == s.span_id]
        assert mine and all(map_log(e) is None for e in mine)  # not alone: only all together
        call = apply_logs(m.call, mine)
        assert apply_logs(m.call, mine) == call  # pure: rebuilding changes nothing
        calls.append(call)
    expected = EXPECTED[scenario]
    assert len(calls) == len(expected)
    for call, want in zip(calls, expected, strict=True):
        assert call.tags is None and call.system_prompt == otel_emit.SYSTEM
        for name, value in want.items():
            if name == "messages":  # OpenLLMetry's tool message event does not carry the call id
                value = [{k: x for k, x in m.items() if k != "tool_call_id"} for m in value]
            assert getattr(call, name) == value, name


def test_content_capture_off_maps_as_absent(fake: FakeOpenAI) -> None:
    traces, _logs = otel_emit.emit_both(
        "openai-v2",
        "chat",
        fake.base_url,
        env={"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "NO_CONTENT"},
    )
    (m,) = llm_calls(otel_emit.spans_of(traces))
    assert m.content_absent and m.call is not None
    assert m.call.messages is None and m.call.response is None
    assert m.call.tags == [CONTENT_ABSENT_TAG]
    assert (m.call.prompt_tokens, m.call.completion_tokens, m.call.model) == (11, 7, otel_emit.MODEL)


def test_dataset_build_says_why_content_less_calls_make_no_rows(
    fake: FakeOpenAI, store: Store, tmp_path: Path
) -> None:
    """Calls mapped from a real emitter with content capture off keep their tag through the store,
    and the build reports them (count, warning naming the setting, drop reason) instead of silently
    producing fewer rows; calls with content build into ``sft`` rows as usual."""
    from trajforge import datasets
    from trajforge.datasets import BuildRequest

    blind = otel_emit.emit(
        "openai-v2",
        "chat",
        fake.base_url,
        env={"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "NO_CONTENT"},
    )
    seen, _ = emitted("openai-v2", "tools", fake.base_url)
    trajectories = {}
    for name, spans in (("blind", otel_emit.spans_of(blind)), ("seen", seen)):
        calls = [m.call for m in llm_calls(spans) if m.call is not None]
        t = Trajectory(
            agent_id=f"otel-{name}", source="otel", status="completed", steps=[Step(llm_calls=calls)]
        )
        t.end_time = t.start_time + 1
        store.write(WriteBatch.from_trajectory(t))
        trajectories[name] = t.id
    stored = store.get_trajectory(trajectories["blind"])
    assert stored is not None and stored.steps[0].llm_calls[0].tags == [CONTENT_ABSENT_TAG]

    ds = datasets.build(store, BuildRequest(format="sft"), root=tmp_path / "ds")
    m = ds.manifest
    assert m["counts"]["callsWithoutContent"] == 1
    assert m["counts"]["rows"]["train"] + m["counts"]["rows"]["eval"] == 2
    assert any(
        "1 LLM calls had no message content" in w
        and "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in w
        for w in m["warnings"]
    )
    assert m["privacy"]["droppedByReason"] == {NO_CONTENT: 1}


def test_emit_gives_an_otlp_trace_body(fake: FakeOpenAI) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    body = otel_emit.emit("openinference", "chat", fake.base_url)
    request = ExportTraceServiceRequest.FromString(body)
    assert sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans) == 1


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
    log = mapping._map_log(
        LogEvent("gen_ai.client.inference.operation.details", 0, None, None, dict(attrs), attrs)
    )
    assert log is None or log.kind == "llm"
    for name in ("gen_ai.user.message", "gen_ai.choice"):
        mapping._map_log(LogEvent(name, 0, None, None, dict(attrs), attrs.get("input.value")))
