"""The span → record mapping (``trajforge.otel.mapping``) with the three real OpenAI
instrumentations, each in its own subprocess, instrumenting the official ``openai`` client against
the loopback fake: every LLM call they report must map to what the fake served, and to the very
record our own SDK capture makes of the same calls; and what a dataset build makes of calls whose
content was not captured. Each table with hand-made spans: ``test_otel_mapping_tables.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import trajforge
from tests import otel_emit
from tests.fakes.openai_server import FakeOpenAI, fake_openai
from trajforge.datasets.curation import NO_CONTENT
from trajforge.otel.mapping import CONTENT_ABSENT_TAG, apply_logs, map_log, map_span
from trajforge.otel.spans import LogEvent, Mapped, Span
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
    call id that links it to the call that asked, and the agent span carries the conversation."""
    spans, _ = emitted("openai-v2", otel_emit.AGENT_SCENARIO, fake.base_url)
    mapped = [(s, map_span(s)) for s in spans]
    kinds = [m.kind for _, m in mapped]
    assert sorted(kinds) == ["agent", "llm", "llm", "tool"]
    root = next(s for s, m in mapped if m.kind == "agent")
    assert all(s.parent_span_id == root.span_id for s, m in mapped if m.kind != "agent")
    # util-genai 1.1 puts the conversation on the agent span only (1.2+ also on the chat spans);
    # the other spans join it by their trace when assembled.
    assert {m.conversation_id for _, m in mapped if m.kind == "agent"} == {otel_emit.CONVERSATION}
    assert {m.conversation_id for _, m in mapped} <= {otel_emit.CONVERSATION, None}
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
