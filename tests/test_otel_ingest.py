"""OTLP/HTTP ingest end to end: the real OpenTelemetry SDK and its OTLP/HTTP exporter against a
real ``trajforge serve``, hand-written OTLP/JSON bodies, and the store's assembly of spans that
arrive split and out of order (both backends)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.helpers import free_port, start_server
from tests.test_faults import refuse_agent
from trajforge import datasets
from trajforge.datasets import BuildRequest
from trajforge.otel import decode
from trajforge.otel.assemble import assemble_spans, write
from trajforge.records import ActionResult, CallRow, LlmCall, StepHeader, TrajectoryHeader, WriteBatch
from trajforge.store import Store, TrajectoryFilter, open_store

T0 = 1_760_000_000_000_000_000  # ns: explicit span times, so the order never depends on the clock
MS = 1_000_000


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}])


def emit_agent_trace(
    provider: TracerProvider, *, conversation: str | None = "conv-refund-1", base: int = T0, tag: str = ""
) -> None:
    """An agent → chat → tool → chat trace with current GenAI semconv attributes."""
    tracer = provider.get_tracer("test.agent")
    agent = tracer.start_span("invoke_agent support", start_time=base)
    agent.set_attributes(
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "support-bot",
            "gen_ai.agent.id": "agent-42",
            **({"gen_ai.conversation.id": conversation} if conversation else {}),
        }
    )
    from opentelemetry import trace as api

    ctx = api.set_span_in_context(agent)
    chat1 = tracer.start_span("chat gpt-4o-mini", context=ctx, start_time=base + 1 * MS)
    chat1.set_attributes(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 31,
            "gen_ai.usage.output_tokens": 7,
            "gen_ai.input.messages": _messages("user", f"Refund order A-1042 please {tag}"),
            "gen_ai.output.messages": json.dumps(
                [
                    {
                        "role": "assistant",
                        "parts": [
                            {"type": "text", "content": "Looking up the order."},
                            {
                                "type": "tool_call",
                                "id": "call_1",
                                "name": "lookup_order",
                                "arguments": {"orderId": "A-1042"},
                            },
                        ],
                        "finish_reason": "tool_calls",
                    }
                ]
            ),
            "app.custom.flag": "kept-in-metadata",
        }
    )
    chat1.end(end_time=base + 20 * MS)
    tool = tracer.start_span("execute_tool lookup_order", context=ctx, start_time=base + 21 * MS)
    tool.set_attributes(
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "lookup_order",
            "gen_ai.tool.call.id": "call_1",
            "gen_ai.tool.call.arguments": json.dumps({"orderId": "A-1042"}),
            "gen_ai.tool.call.result": json.dumps({"status": "shipped", "total": 42.5}),
        }
    )
    tool.end(end_time=base + 25 * MS)
    chat2 = tracer.start_span("chat gpt-4o-mini", context=ctx, start_time=base + 26 * MS)
    chat2.set_attributes(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 60,
            "gen_ai.usage.output_tokens": 12,
            "gen_ai.input.messages": _messages("user", f"Refund order A-1042 please {tag}"),
            "gen_ai.output.messages": json.dumps(
                [{"role": "assistant", "parts": [{"type": "text", "content": "Refund issued for A-1042."}]}]
            ),
        }
    )
    chat2.end(end_time=base + 40 * MS)
    agent.end(end_time=base + 41 * MS)


def _provider(exporter: SpanExporter, batch: bool = True) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "refund-agent"}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    db = tmp_path / "otel.db"
    proc = start_server(port, db, tmp_path / "serve.log")
    yield f"http://127.0.0.1:{port}", db
    proc.terminate()
    proc.wait(30)


def _steps(t: Any) -> list[tuple[int, str | None, int]]:
    return [(s.step_number, s.action.action_type if s.action else None, len(s.llm_calls)) for s in t.steps]


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_exporter_into_a_real_server(server: tuple[str, Path], compression: Compression) -> None:
    url, db = server
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", compression=compression)
    provider = _provider(exporter)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    emit_agent_trace(provider)
    assert provider.force_flush(30_000)
    provider.shutdown()

    listed = httpx.get(f"{url}/api/trajectories").json()
    assert [t["id"] for t in listed["trajectories"]] == ["conv-refund-1"]
    item = listed["trajectories"][0]
    assert (item["source"], item["status"], item["agentId"]) == ("otel", "completed", "support-bot")
    assert (item["llmCallCount"], item["totalPromptTokens"], item["totalCompletionTokens"]) == (2, 91, 19)
    assert item["durationMs"] == 41
    detail = httpx.get(f"{url}/api/trajectories/conv-refund-1").json()["trajectory"]
    steps = detail["steps"]
    assert [s["stepNumber"] for s in steps] == [0, 1, 2]
    assert [len(s["llmCalls"]) for s in steps] == [1, 0, 1]
    assert steps[1]["action"]["actionType"] == "lookup_order"
    assert steps[1]["action"]["result"] == {"status": "shipped", "total": 42.5}
    assert steps[0]["metadata"]["otel"]["attributes"]["app.custom.flag"] == "kept-in-metadata"
    if steps[0]["llmCalls"][0]["toolCalls"]:  # the tool answers the call that asked for it
        assert steps[1]["action"]["llmCallId"] == steps[0]["llmCalls"][0]["callId"]
    assert detail["metadata"]["resource"]["service.name"] == "refund-agent"
    assert detail["metadata"]["agentName"] == "support-bot"
    found = httpx.get(f"{url}/api/trajectories", params={"search": "Refund issued"}).json()
    assert [t["id"] for t in found["trajectories"]] == ["conv-refund-1"]

    # The same spans sent again change nothing.
    store = open_store(str(db))
    try:
        before = _counts(store)
        again = OTLPSpanExporter(endpoint=f"{url}/v1/traces", compression=compression)
        assert again.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS
        assert _counts(store) == before
    finally:
        store.close()


def _counts(store: Store) -> tuple[int, int, int, int]:
    ts = list(store.iter_trajectories(TrajectoryFilter()))
    return (
        len(ts),
        sum(len(t.steps) for t in ts),
        sum(len(s.llm_calls) for t in ts for s in t.steps),
        sum(t.llm_call_count for t in ts),
    )


def test_token_beyond_loopback_and_otel_exporter_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    env = {**os.environ, "TRAJFORGE_API_TOKEN": "s3cret-token"}
    proc = start_server(port, tmp_path / "t.db", tmp_path / "serve.log", env=env)
    try:
        url = f"http://127.0.0.1:{port}/v1/traces"
        body = _json_body([_json_span("ab" * 16, "cd" * 8, None, "chat", 1, 2)])
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 401
        r = httpx.post(
            url, content=body, headers={"Content-Type": "application/json", "Authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        # The exporter reads its headers from the environment (URL-encoded, as the spec says).
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20s3cret-token")
        exporter = OTLPSpanExporter(endpoint=url)
        memory = InMemorySpanExporter()
        provider = _provider(memory, batch=False)
        emit_agent_trace(provider)
        assert exporter.export(memory.get_finished_spans()) == SpanExportResult.SUCCESS
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20wrong")
        assert OTLPSpanExporter(endpoint=url).export(memory.get_finished_spans()) == SpanExportResult.FAILURE
        listed = httpx.get(
            f"http://127.0.0.1:{port}/api/trajectories", headers={"Authorization": "Bearer s3cret-token"}
        ).json()
        assert listed["total"] == 1
    finally:
        proc.terminate()
        proc.wait(30)


# --- hand-written OTLP/JSON -----------------------------------------------------------------------


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # int64 as a string, as OTLP/JSON allows
    return {"key": key, "value": {"stringValue": value}}


def _json_span(
    trace: str, span: str, parent: str | None, op: str, start_ms: int, end_ms: int, **attrs: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": trace,
        "spanId": span,
        "name": attrs.pop("name", f"{op} thing"),
        "kind": "SPAN_KIND_CLIENT",  # enums by name ...
        "startTimeUnixNano": str(T0 + start_ms * MS),
        "endTimeUnixNano": str(T0 + end_ms * MS),
        "attributes": [_attr("gen_ai.operation.name", op)] + [_attr(k, v) for k, v in attrs.items()],
        "status": {"code": 1},  # ... or by number
    }
    if parent:
        out["parentSpanId"] = parent
    return out


def _json_body(spans: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [_attr("service.name", "json-agent")]},
                    "scopeSpans": [{"scope": {"name": "hand"}, "spans": spans}],
                }
            ]
        }
    ).encode()


TRACE = "5b8efff798038103d269b633813fc60c"
ROOT, CHAT1, TOOL, CHAT2 = "eee19b7ec3c1b174", "eee19b7ec3c1b173", "eee19b7ec3c1b172", "eee19b7ec3c1b171"


def _trace_spans(trace: str = TRACE) -> dict[str, dict[str, Any]]:
    return {
        "root": _json_span(trace, ROOT, None, "invoke_agent", 0, 50, **{"gen_ai.agent.name": "json-bot"}),
        "chat1": _json_span(
            trace,
            CHAT1,
            ROOT,
            "chat",
            1,
            10,
            **{
                "gen_ai.request.model": "m-json",
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 5,
                "gen_ai.input.messages": _messages("user", "what is the weather"),
                "gen_ai.output.messages": _messages("assistant", "calling the weather tool"),
                "gen_ai.conversation.id": "conv-json",
            },
        ),
        "tool": _json_span(
            trace,
            TOOL,
            ROOT,
            "execute_tool",
            11,
            12,
            **{"gen_ai.tool.name": "weather", "gen_ai.tool.call.id": "c1"},
        ),
        "chat2": _json_span(
            trace,
            CHAT2,
            ROOT,
            "chat",
            13,
            20,
            **{
                "gen_ai.request.model": "m-json",
                "gen_ai.usage.input_tokens": 20,
                "gen_ai.usage.output_tokens": 6,
                "gen_ai.output.messages": _messages("assistant", "sunny and warm"),
            },
        ),
    }


@pytest.fixture
def client(store: Store) -> Iterator[httpx.Client]:
    from fastapi.testclient import TestClient

    from trajforge.server.app import create_app

    with TestClient(create_app(store), base_url="http://127.0.0.1") as c:
        yield c


def _post(client: Any, body: bytes, ctype: str = "application/json", **headers: str) -> Any:
    return client.post("/v1/traces", content=body, headers={"Content-Type": ctype, **headers})


def test_json_split_out_of_order_resent(client: Any, store: Store) -> None:
    spans = _trace_spans()
    # Only the first chat carries the conversation id; the last chat and the tool come first.
    for part in (["chat2", "tool"], ["root"], ["chat1"]):
        r = _post(client, _json_body([spans[k] for k in part]))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
    # The trace went to a trajectory of its own until the conversation id came; then it moved.
    assert store.get_trajectory(TRACE) is None
    t = store.get_trajectory("conv-json")
    assert t is not None
    assert [s.step_id for s in t.steps] == [CHAT1, TOOL, CHAT2]
    assert [s.step_number for s in t.steps] == [0, 1, 2]
    assert (t.status, t.agent_id, t.source) == ("completed", "json-bot", "otel")
    assert (t.llm_call_count, t.total_prompt_tokens, t.total_completion_tokens) == (2, 30, 11)
    assert t.start_time == T0 // MS and t.end_time == T0 // MS + 50
    before = _counts(store)
    r = _post(client, _json_body(list(spans.values())))
    assert r.status_code == 200 and _counts(store) == before == (1, 3, 2, 2)


def _turn(trace: str, i: int, *, failed: bool = False) -> list[dict[str, Any]]:
    """Turn ``i`` of the conversation: its own trace, ``i`` seconds after the first."""
    spans = _trace_spans(trace)
    for s in spans.values():
        s["spanId"] = f"{i + 1:02x}" + s["spanId"][2:]
        if "parentSpanId" in s:
            s["parentSpanId"] = f"{i + 1:02x}" + s["parentSpanId"][2:]
        s["startTimeUnixNano"] = str(int(s["startTimeUnixNano"]) + i * 1000 * MS)
        s["endTimeUnixNano"] = str(int(s["endTimeUnixNano"]) + i * 1000 * MS)
    if failed:
        spans["root"]["status"] = {"code": 2, "message": "turn failed"}
    return list(spans.values())


def test_conversation_groups_traces(client: Any, store: Store) -> None:
    # The later turn first: the trajectory still starts with the first and ends with the last.
    for i, trace in reversed(list(enumerate(["a1" * 16, "b2" * 16]))):
        assert _post(client, _json_body(_turn(trace, i))).status_code == 200
    t = store.get_trajectory("conv-json")
    assert t is not None and len(t.steps) == 6 and [s.step_number for s in t.steps] == list(range(6))
    assert store.count(TrajectoryFilter()) == 1
    assert (t.start_time, t.end_time, t.duration_ms) == (T0 // MS, T0 // MS + 1050, 1050)


def test_roots_in_any_order_and_resent_change_no_status_or_count(client: Any, store: Store) -> None:
    """A conversation completes once: a later failed turn does not take it back, a re-sent or
    earlier root changes neither the status nor the end, and the auto-training counters count it
    once (found by review: a re-sent OK root after a failed one counted it twice)."""
    ok, failed = _turn("a1" * 16, 0), _turn("b2" * 16, 1, failed=True)
    assert _post(client, _json_body(ok)).status_code == 200
    assert _post(client, _json_body(failed)).status_code == 200
    t = store.get_trajectory("conv-json")
    assert t is not None and t.status == "completed" and t.end_time == T0 // MS + 1050
    assert _post(client, _json_body(ok)).status_code == 200  # re-sent: the earlier root
    t = store.get_trajectory("conv-json")
    assert t is not None and (t.status, t.end_time, t.start_time) == ("completed", T0 // MS + 1050, T0 // MS)
    assert sum(c["completed"] for c in store.task_counters()) == 1, store.task_counters()


def test_a_trace_whose_span_ids_the_conversation_has_stays_apart(client: Any, store: Store) -> None:
    """Span ids are unique within a trace only. A trace that learns its conversation late, holding
    a span id the conversation already has, stays a trajectory of its own instead of failing every
    later batch (found by review: a 500 on each, so the exporter dropped them)."""
    conv = {"gen_ai.conversation.id": "conv-x", "gen_ai.request.model": "m"}
    a, b = "a1" * 16, "b2" * 16
    assert _post(client, _json_body([_json_span(a, "01" * 8, None, "chat", 0, 5, **conv)])).status_code == 200
    assert _post(client, _json_body([_json_span(b, "01" * 8, None, "chat", 10, 15)])).status_code == 200
    for _ in range(2):  # the same trace, now naming the conversation; twice
        r = _post(client, _json_body([_json_span(b, "02" * 8, None, "chat", 20, 25, **conv)]))
        assert r.status_code == 200, r.text
    assert sorted(t.id for t in store.list_trajectories(TrajectoryFilter()).items) == sorted([b, "conv-x"])
    assert [s.step_id for s in store.get_trajectory(b).steps] == ["01" * 8, "02" * 8]  # type: ignore[union-attr]
    assert [s.step_id for s in store.get_trajectory("conv-x").steps] == ["01" * 8]  # type: ignore[union-attr]


def test_trace_joins_its_conversation_later(client: Any, store: Store) -> None:
    """A second trace of the conversation whose first spans carry no conversation id: its own
    trajectory first, then merged into the conversation's with exact counters and search."""
    first = _trace_spans()
    assert _post(client, _json_body(list(first.values()))).status_code == 200
    second = _trace_spans("d4" * 16)
    for s in second.values():
        s["spanId"] = "99" + s["spanId"][2:]
        if "parentSpanId" in s:
            s["parentSpanId"] = "99" + s["parentSpanId"][2:]
        s["startTimeUnixNano"] = str(int(s["startTimeUnixNano"]) + 1000 * MS)
        s["endTimeUnixNano"] = str(int(s["endTimeUnixNano"]) + 1000 * MS)
    second["chat2"]["attributes"].append(
        _attr("gen_ai.output.messages", _messages("assistant", "xylophonic"))
    )
    assert _post(client, _json_body([second["chat2"], second["tool"], second["root"]])).status_code == 200
    assert store.count(TrajectoryFilter()) == 2
    assert _post(client, _json_body([second["chat1"]])).status_code == 200
    assert store.count(TrajectoryFilter()) == 1
    t = store.get_trajectory("conv-json")
    assert t is not None and [s.step_number for s in t.steps] == list(range(6))
    assert (t.step_count, t.llm_call_count, t.total_prompt_tokens, t.total_completion_tokens) == (
        6,
        4,
        60,
        22,
    )
    assert t.start_time == T0 // MS and t.end_time == T0 // MS + 1050 and t.duration_ms == 1050
    assert [x.id for x in store.list_trajectories(TrajectoryFilter(search="xylophonic")).items] == [
        "conv-json"
    ]
    stats = store.stats()
    assert (stats["totalTrajectories"], stats["totalLlmCalls"], stats["totalPromptTokens"]) == (1, 4, 60)
    before = _counts(store)
    assert _post(client, _json_body(list(second.values()))).status_code == 200
    assert _counts(store) == before


def test_partial_rejection(client: Any, store: Store) -> None:
    spans = _trace_spans()
    bad = [
        {**spans["chat1"], "spanId": "0000000000000000"},
        {**spans["chat1"], "traceId": "zz" * 16, "spanId": "1111111111111111"},
        {**spans["chat1"], "spanId": "2222222222222222", "endTimeUnixNano": str(T0 - 1)},
        {**spans["chat1"], "spanId": "3333333333333333", "startTimeUnixNano": "0"},
        {**spans["chat1"], "spanId": "4444444444444444", "endTimeUnixNano": str(2**63)},
    ]
    r = _post(client, _json_body([*bad, spans["chat1"], spans["chat2"]]))
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 5
    assert "spanId" in partial["errorMessage"] and "ends before it starts" in partial["errorMessage"]
    t = store.get_trajectory("conv-json")
    assert t is not None and [s.step_id for s in t.steps] == [CHAT1, CHAT2]
    # The same in protobuf: the response is protobuf too.
    req = ExportTraceServiceRequest()
    from google.protobuf import json_format

    body = json.loads(_json_body([bad[0], spans["tool"]]))
    decode._hex_ids_to_base64(
        body, ("resourceSpans", "scopeSpans", "spans"), ("traceId", "spanId", "parentSpanId")
    )
    json_format.ParseDict(body, req)
    r = _post(client, req.SerializeToString(), "application/x-protobuf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    resp = ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 1


def test_bad_bodies(client: Any, store: Store) -> None:
    r = _post(client, b"\xff\x00garbage", "application/x-protobuf")
    assert r.status_code == 400
    assert b"not a valid ExportTraceServiceRequest" in r.content
    r = _post(client, b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = _post(client, b'{"resourceSpans": "nope"}')
    assert r.status_code == 400 and r.json()["message"]
    # Wrong types where the ids are converted (once a 500: found by review).
    for links in (5, True, "x", {"a": 1}):
        span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "links": links}
        r = _post(client, json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode())
        assert r.status_code == 400 and r.json()["message"], links
    r = _post(client, b"{}", "text/plain")
    assert r.status_code == 415
    r = _post(client, b"not gzip", "application/json", **{"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["message"]
    limit = client.app.state.max_ingest_bytes
    bomb = gzip.compress(b"\x00" * (limit + 1024))
    r = _post(client, bomb, "application/x-protobuf", **{"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert store.count(TrajectoryFilter()) == 0


def test_tokenless_server_answers_loopback_names_only(client: Any, store: Store) -> None:
    body = _json_body(list(_trace_spans().values()))
    r = _post(client, body, Host="rebind.evil.example")
    assert r.status_code == 421
    assert store.count(TrajectoryFilter()) == 0
    assert _post(client, body, Host="localhost:4318").status_code == 200


def test_hostile_names_are_data(client: Any, store: Store) -> None:
    evil = "'; DROP TABLE trajectories; -- <script>alert(1)</script> {{7*7}} \u202e \x00"
    span = _json_span(
        TRACE,
        CHAT1,
        None,
        "chat",
        0,
        5,
        name=evil,
        **{
            "gen_ai.request.model": "m",
            evil: evil,
            "gen_ai.output.messages": _messages("assistant", "zebracorn answer"),
        },
    )
    assert _post(client, _json_body([span])).status_code == 200
    t = store.get_trajectory(TRACE)
    assert t is not None
    meta = t.steps[0].metadata
    assert meta is not None and meta["otel"]["name"] == evil and meta["otel"]["attributes"][evil] == evil
    assert store.list_trajectories(TrajectoryFilter(search="zebracorn")).total == 1
    r = client.get(f"/trajectories/{TRACE}")
    assert r.status_code == 200 and "<script>alert(1)</script>" not in r.text


def test_assembled_trajectory_builds_an_sft_dataset(client: Any, store: Store, tmp_path: Path) -> None:
    spans = _trace_spans()
    assert _post(client, _json_body(list(spans.values()))).status_code == 200
    ds = datasets.build(store, BuildRequest(format="sft", eval_fraction=0.0), root=tmp_path / "ds")
    assert ds.row_count >= 1


def test_refused_records_do_not_stop_the_rest(store_url: str, store: Store) -> None:
    """A trajectory the database itself refuses (here a constraint on its agent) is rejected
    alone, its spans counted in ``rejectedSpans``; the rest of the request is stored."""
    refuse_agent(store_url, "poison")
    body = _json_body(
        [
            _json_span("c3" * 16, "a1" * 8, None, "invoke_agent", 0, 9, **{"gen_ai.agent.name": "poison"}),
            _json_span("c3" * 16, CHAT1, "a1" * 8, "chat", 1, 5, **{"gen_ai.request.model": "m"}),
            _json_span(TRACE, CHAT2, None, "chat", 0, 5, **{"gen_ai.request.model": "fine"}),
        ]
    )
    decoded = decode.decode_traces(body, decode.JSON)
    batch = assemble_spans(decoded.spans, store, decoded)
    write(store, batch, decoded, lambda b: len(b.steps))
    assert decoded.rejected == 1 and "refused" in decoded.error_message
    assert [t.id for t in store.list_trajectories(TrajectoryFilter()).items] == [TRACE]


# --- kill -9 while an exporter sends ----------------------------------------------------------------


class _Counting(SpanExporter):
    """The real OTLP exporter, counting the spans it was told were stored."""

    def __init__(self, inner: OTLPSpanExporter) -> None:
        self.inner = inner
        self.ok: set[str] = set()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.ok.update(format(s.context.span_id, "016x") for s in spans if s.name.startswith("chat"))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def test_kill_9_while_exporting(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "kill.db"
    proc = start_server(port, db, tmp_path / "serve.log")
    memory = InMemorySpanExporter()
    provider = _provider(memory, batch=False)
    for i in range(200):
        emit_agent_trace(provider, conversation=f"conv-{i}", base=T0 + i * 100 * MS, tag=f"#{i}")
    spans = list(memory.get_finished_spans())
    sender = _Counting(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=60))
    sent = threading.Event()

    def send() -> None:
        for k in range(0, len(spans), 20):
            sender.export(spans[k : k + 20])
        sent.set()

    thread = threading.Thread(target=send)
    thread.start()
    while len(sender.ok) < 40 and thread.is_alive():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = start_server(port, db, tmp_path / "serve.log")
    try:
        thread.join(120)
        assert sent.is_set()
        store = open_store(str(db))
        try:
            stored = {
                c.call_id
                for t in store.iter_trajectories(TrajectoryFilter())
                for s in t.steps
                for c in s.llm_calls
            }
            counted = sum(t.llm_call_count for t in store.iter_trajectories(TrajectoryFilter()))
        finally:
            store.close()
        assert sender.ok <= stored  # nothing the exporter was told was stored is lost
        assert counted == len(stored)  # nothing counted twice
        assert len(sender.ok) == 400  # the exporter's retries got every batch through the restart
    finally:
        proc.terminate()
        proc.wait(30)


# --- a call's parts in either order (assemble mode of the write) -------------------------------------


def _part(tid: str, **fields: Any) -> WriteBatch:
    call = LlmCall(call_id="span-1", timestamp=1_760_000_000_000, **fields)
    return WriteBatch(
        trajectories=[TrajectoryHeader(id=tid, source="otel")],
        calls=[CallRow(tid, "span-1", call)],
        assemble=True,
    )


SPAN_PART = {"model": "m-span", "latency_ms": 900.0, "prompt_tokens": 40, "completion_tokens": 9}
LOG_PART = {
    "model": "m-log",
    "prompt_tokens": 999,
    "messages": [{"role": "user", "content": "where is my parcel"}],
    "response": "Your quokkaparcel arrives Tuesday.",
}


@pytest.mark.parametrize("order", ["span_first", "log_first"])
def test_later_write_fills_empty_fields_only(store: Store, tmp_path: Path, order: str) -> None:
    first, second = (SPAN_PART, LOG_PART) if order == "span_first" else (LOG_PART, SPAN_PART)
    store.write(_part("t-fill", **first))
    result = store.write(_part("t-fill", **second))
    assert result.new_calls == 0
    store.write(_part("t-fill", **second))  # re-sent: nothing moves
    t = store.get_trajectory("t-fill")
    assert t is not None
    (call,) = [c for s in t.steps for c in s.llm_calls]
    expected = {**second, **first}  # the first write's values stay; the second only fills
    assert (call.model, call.prompt_tokens, call.response) == (
        expected["model"],
        expected["prompt_tokens"],
        "Your quokkaparcel arrives Tuesday.",
    )
    assert call.latency_ms == 900.0 and call.completion_tokens == 9 and call.messages == LOG_PART["messages"]
    assert (t.llm_call_count, t.total_prompt_tokens, t.total_completion_tokens) == (
        1,
        expected["prompt_tokens"],
        9,
    )
    assert store.list_trajectories(TrajectoryFilter(search="quokkaparcel")).total == 1
    # The counters and the rollup equal those of the merged call written once.
    reference = open_store(str(tmp_path / "reference.db"))
    try:
        reference.write(_part("t-fill", **expected))
        got, want = store.stats(), reference.stats()
        for key in (
            "totalLlmCalls",
            "totalPromptTokens",
            "totalCompletionTokens",
            "byModel",
            "latencyMs",
            "perDay",
        ):
            assert got[key] == want[key], key
    finally:
        reference.close()


def test_root_error_and_failed_tool(client: Any, store: Store) -> None:
    spans = _trace_spans()
    spans["root"]["status"] = {"code": "STATUS_CODE_ERROR", "message": "agent crashed"}
    spans["tool"]["status"] = {"code": 2, "message": "weather service down"}
    assert _post(client, _json_body(list(spans.values()))).status_code == 200
    t = store.get_trajectory("conv-json")
    assert t is not None and t.status == "error"
    tool = t.steps[1]
    assert tool.action is not None and tool.action.success is False
    assert tool.action.error == "weather service down"
    assert tool.metadata is not None and tool.metadata["otel"]["error"] == "weather service down"


def test_logs_route(client: Any, store: Store) -> None:
    body = {
        "resourceLogs": [
            {
                "resource": {"attributes": [_attr("service.name", "json-agent")]},
                "scopeLogs": [
                    {
                        "scope": {"name": "hand"},
                        "logRecords": [
                            {
                                "timeUnixNano": str(T0),
                                "eventName": "gen_ai.client.inference.operation.details",
                                "traceId": TRACE,
                                "spanId": CHAT1,
                                "attributes": [_attr("gen_ai.output.messages", _messages("assistant", "hi"))],
                            },
                            {"timeUnixNano": str(T0), "traceId": "abc", "body": {"stringValue": "bad ids"}},
                        ],
                    }
                ],
            }
        ]
    }
    r = client.post("/v1/logs", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert int(r.json()["partialSuccess"]["rejectedLogRecords"]) == 1
    r = client.post("/v1/logs", content=b"\x01\x02", headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and b"ExportLogsServiceRequest" in r.content


def test_non_genai_traces_are_not_trajectories(client: Any, store: Store) -> None:
    http = _json_span("e5" * 16, "1234567890abcdef", None, "http", 0, 5, name="GET /health")
    assert _post(client, _json_body([http])).status_code == 200
    assert store.count(TrajectoryFilter()) == 0
    # A GenAI trace's non-GenAI root, coming after its children, still ends the trajectory.
    spans = _trace_spans()
    spans["root"] = _json_span(TRACE, ROOT, None, "http", 0, 50, name="POST /chat")
    assert _post(client, _json_body([spans["chat1"], spans["chat2"]])).status_code == 200
    assert store.get_trajectory("conv-json").status == "active"  # type: ignore[union-attr]
    assert _post(client, _json_body([spans["root"]])).status_code == 200
    t = store.get_trajectory("conv-json")
    assert t is not None and (t.status, t.end_time) == ("completed", T0 // MS + 50)


@pytest.mark.parametrize("order", ["call_first", "tool_first"])
def test_tool_links_to_its_call_across_requests(store: Store, order: str) -> None:
    tc = "call_9%_x"  # LIKE's wildcards in the id are data
    call = LlmCall(
        call_id="c-span",
        timestamp=1_760_000_000_000,
        model="m",
        tool_calls=[{"id": tc, "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    )
    asking = WriteBatch(calls=[CallRow("t-link", "c-span", call)], assemble=True)
    decoy = StepHeader(
        "t-link",
        "t-decoy",
        timestamp=1_760_000_000_001,
        action=ActionResult(action_type="f"),
        metadata={"otel": {"toolCallId": "call_9a_x"}},
    )
    tool = StepHeader(
        "t-link",
        "t-span",
        timestamp=1_760_000_000_002,
        action=ActionResult(action_type="f", result={"ok": True}),
        metadata={"otel": {"toolCallId": tc}},
    )
    answering = WriteBatch(steps=[decoy, tool], assemble=True)
    for batch in (asking, answering) if order == "call_first" else (answering, asking):
        store.write(batch)
    t = store.get_trajectory("t-link")
    assert t is not None
    actions = {s.step_id: s.action for s in t.steps if s.action is not None}
    assert actions["t-span"].llm_call_id == "c-span"
    assert actions["t-decoy"].llm_call_id is None


def test_store_down_is_503_and_the_exporter_retries(client: Any, store: Store) -> None:
    body = _json_body(list(_trace_spans().values()))
    store.close()
    r = _post(client, body)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "unavailable" in r.json()["message"]


# --- concurrent writers: two servers on one store, batches shuffled and re-sent ----------------------


def _conversation_spans(c: int) -> list[dict[str, Any]]:
    """Conversation ``c``: two traces (turns) of root, chat (naming the conversation), tool, chat
    (not naming it), each chat 10 + 5 tokens."""
    spans = []
    for turn in range(2):
        trace = f"{c:08x}{turn:08x}" + "ab" * 8
        sid = [f"{c + 1:06x}{turn + 1:02x}{k + 1:08x}" for k in range(4)]
        at = turn * 1000
        conv = {"gen_ai.conversation.id": f"conv-{c}"}
        usage = {
            "gen_ai.request.model": "m",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 5,
        }
        spans += [
            _json_span(trace, sid[0], None, "invoke_agent", at, at + 50, **{"gen_ai.agent.name": "bot"}),
            _json_span(trace, sid[1], sid[0], "chat", at + 1, at + 10, **conv, **usage),
            _json_span(trace, sid[2], sid[0], "execute_tool", at + 11, at + 20, **{"gen_ai.tool.name": "t"}),
            _json_span(trace, sid[3], sid[0], "chat", at + 21, at + 30, **usage),
        ]
    return spans


def test_two_servers_shuffled_and_resent_batches_lose_and_duplicate_nothing(
    store_url: str, tmp_path: Path
) -> None:
    """Spans of 30 two-turn conversations, shuffled into batches (children before their
    conversation's id, turns apart), posted by 4 threads to two ``trajforge serve`` on one store,
    a third of the batches sent twice: every conversation ends whole, once."""
    import random

    n = 30
    spans = [s for c in range(n) for s in _conversation_spans(c)]
    rng = random.Random(7)
    rng.shuffle(spans)
    batches = [spans[k : k + 7] for k in range(0, len(spans), 7)]
    sends = batches + rng.sample(batches, len(batches) // 3)
    rng.shuffle(sends)
    open_store(store_url).close()  # migrated once, before the servers race to it
    servers = []
    for i in range(2):
        port = free_port()
        servers.append(
            (start_server(port, store_url, tmp_path / f"serve-{i}.log"), f"http://127.0.0.1:{port}")
        )
    failures: list[str] = []

    def send(worker: int) -> None:
        with httpx.Client(timeout=60) as client:
            for k in range(worker, len(sends), 4):
                url = servers[k % 2][1]
                for _attempt in range(20):  # a 503 (store busy) is retried, as exporters do
                    r = client.post(
                        f"{url}/v1/traces",
                        content=_json_body(sends[k]),
                        headers={"Content-Type": "application/json"},
                    )
                    if r.status_code != 503:
                        break
                    time.sleep(0.05)
                if r.status_code != 200 or r.json().get("partialSuccess"):
                    failures.append(f"{r.status_code} {r.text[:300]}")

    try:
        threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(30)
    assert not failures, failures[:3]
    store = open_store(store_url)
    try:
        ts = {t.id: t for t in store.iter_trajectories(TrajectoryFilter())}
        assert sorted(ts) == sorted(f"conv-{c}" for c in range(n))
        for t in ts.values():
            # a step per chat and tool span (the agent roots name the agent, they are not steps)
            assert [s.step_number for s in t.steps] == list(range(6)), t.id
            assert (t.step_count, t.llm_call_count, t.total_prompt_tokens, t.total_completion_tokens) == (
                6,
                4,
                40,
                20,
            ), t.id
            assert sum(len(s.llm_calls) for s in t.steps) == 4 and t.status == "completed", t.id
        assert store.stats()["totalLlmCalls"] == 4 * n
        assert sum(c["completed"] for c in store.task_counters()) == n
    finally:
        store.close()
