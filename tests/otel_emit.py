"""Real OpenTelemetry GenAI emitters, for tests: one of three OpenAI instrumentations records the
official ``openai`` client calling a (fake) OpenAI server, and hands back the spans and log records
exactly as an OTLP exporter would send them (serialized ``ExportTraceServiceRequest`` /
``ExportLogsServiceRequest`` bodies, encoded by the SDK's own encoder).

Each emission runs in a subprocess of its own: every instrumentation patches ``openai`` for the
whole process, and the ``OTEL_*``/``TRACELOOP_*`` variables are read when they are imported.

``emit(instrumentation, scenario, base_url)`` returns the trace body (POST it to ``/v1/traces``);
``emit_both`` returns the trace and log bodies. ``spans_of``/``logs_of`` turn those bodies into our
``Span``/``LogEvent`` records through the server's own decoder.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any

from trajforge.otel.decode import PROTOBUF, decode_logs, decode_traces
from trajforge.otel.spans import LogEvent, Span

INSTRUMENTATIONS = ("openai-v2", "openinference", "openllmetry")
EVENT_MODES = ("openllmetry-events",)
"""OpenLLMetry with ``use_attributes=False``: content as per-message log events, not on the span."""
SCENARIOS = ("chat", "stream", "tools", "stream_tools", "async", "responses", "completion", "error")
"""``error``: a chat call whose server refuses the connection (the call fails, the agent goes on)."""
AGENT_SCENARIO = "agent"
"""The ``tools`` round trip inside an ``invoke_agent`` span, the tool run in an ``execute_tool``
span (opentelemetry-util-genai's own handler, as agent frameworks emit them); openai-v2 only."""
AGENT, CONVERSATION = "weather-bot", "conv-42"
"""``responses``: the Responses API (``client.responses.create``), which openai-v2 does not trace."""

MODEL = "gpt-test"
SYSTEM = "You are terse."
QUESTION = "What is the weather in Paris?"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}
TOOL_RESULT = "sunny, 21C"

# What each instrumentation needs in its environment to put message content on its spans.
ENV: dict[str, dict[str, str]] = {
    "openai-v2": {
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_AND_EVENT",
        "OTEL_INSTRUMENTATION_GENAI_EMIT_EVENT": "true",
    },
    "openinference": {},
    "openllmetry": {"TRACELOOP_TRACE_CONTENT": "true"},
    "openllmetry-events": {"TRACELOOP_TRACE_CONTENT": "true"},
}


def emit_many(
    instrumentation: str, scenarios: tuple[str, ...], base_url: str, env: dict[str, str] | None = None
) -> dict[str, tuple[bytes, bytes]]:
    """Run ``scenarios`` one after the other under ``instrumentation`` in one fresh interpreter;
    per scenario, the serialized OTLP trace and log export requests it produced (each scenario's
    own: the exporters are emptied in between). ``env`` overrides the instrumentation's variables
    (e.g. content capture off)."""
    known = (*SCENARIOS, AGENT_SCENARIO)
    if instrumentation not in INSTRUMENTATIONS + EVENT_MODES or not set(scenarios) <= set(known):
        raise ValueError(f"unknown instrumentation/scenario: {instrumentation}/{scenarios}")
    child_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "TRACELOOP_", "OPENINFERENCE_", "OPENAI_"))
    }
    child_env.update(ENV[instrumentation])
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run(
        [sys.executable, "-m", "tests.otel_emit", instrumentation, ",".join(scenarios), base_url],
        env=child_env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"emitter {instrumentation}/{scenarios} failed:\n{done.stderr.decode()[-4000:]}")
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return {
        name: (base64.b64decode(bodies["traces"]), base64.b64decode(bodies["logs"]))
        for name, bodies in out.items()
    }


def emit_both(
    instrumentation: str, scenario: str, base_url: str, env: dict[str, str] | None = None
) -> tuple[bytes, bytes]:
    """The serialized OTLP trace and log export requests of ``scenario`` under ``instrumentation``."""
    return emit_many(instrumentation, (scenario,), base_url, env)[scenario]


def emit(instrumentation: str, scenario: str, base_url: str, env: dict[str, str] | None = None) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``scenario`` run under ``instrumentation``."""
    return emit_both(instrumentation, scenario, base_url, env)[0]


# --- into our records: through the server's own decoder ---------------------------------------------


def spans_of(body: bytes) -> list[Span]:
    """The spans of a serialized trace export request, as ``/v1/traces`` decodes them, by start."""
    decoded = decode_traces(body, PROTOBUF)
    assert not decoded.rejected, decoded.error_message
    return sorted(decoded.spans, key=lambda s: s.start_ns)


def logs_of(body: bytes) -> list[LogEvent]:
    """The log records of a serialized logs export request, as ``/v1/logs`` decodes them."""
    decoded = decode_logs(body, PROTOBUF)
    assert not decoded.rejected, decoded.error_message
    return decoded.logs


# --- the child process ----------------------------------------------------------------------------


def _instrument(name: str, tracer_provider: Any, logger_provider: Any) -> None:
    if name == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2

        V2().instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    elif name == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor as OI

        OI().instrument(tracer_provider=tracer_provider)
    else:
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor as LL

        LL(use_attributes=name != "openllmetry-events").instrument(
            tracer_provider=tracer_provider, logger_provider=logger_provider
        )


def _agent(base_url: str, tracer_provider: Any, logger_provider: Any) -> None:
    import openai
    from opentelemetry.util.genai.handler import TelemetryHandler

    handler = TelemetryHandler(tracer_provider=tracer_provider, logger_provider=logger_provider)
    client = openai.OpenAI(base_url=base_url, api_key="test-key")
    messages: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    with handler.invoke_local_agent(agent_name=AGENT, request_model=MODEL) as agent:
        agent.conversation_id = CONVERSATION  # set on the span when the invocation ends
        first = client.chat.completions.create(model=MODEL, messages=messages, tools=[TOOL])
        call = first.choices[0].message.tool_calls[0]
        with handler.tool(call.function.name, tool_type="function") as tool:
            tool.tool_call_id = call.id
            tool.arguments = json.loads(call.function.arguments)
            tool.tool_result = TOOL_RESULT
        follow = [
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
            {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
        ]
        client.chat.completions.create(model=MODEL, messages=follow)


def _run(scenario: str, base_url: str) -> None:
    import openai

    messages: list[Any] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    if scenario == "async":
        import asyncio

        async def go() -> None:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="test-key")
            await client.chat.completions.create(
                model=MODEL, messages=messages, temperature=0.5, max_tokens=50
            )

        asyncio.run(go())
        return
    if scenario == "error":
        import socket

        with socket.socket() as closed:  # a port nobody listens on
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        refused = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test-key", max_retries=0)
        try:
            refused.chat.completions.create(model=MODEL, messages=messages)
        except openai.APIConnectionError:
            pass
        return
    client = openai.OpenAI(base_url=base_url, api_key="test-key")
    if scenario == "chat":
        client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0.5, max_tokens=50, top_p=0.9
        )
    elif scenario == "responses":
        client.responses.create(model=MODEL, instructions=SYSTEM, input=QUESTION, temperature=0.5)
    elif scenario == "completion":
        client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=20)
    elif scenario == "stream_tools":
        for _ in client.chat.completions.create(
            model=MODEL, messages=messages, tools=[TOOL], stream=True, stream_options={"include_usage": True}
        ):
            pass
    elif scenario == "stream":
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        for _ in stream:
            pass
    elif scenario == "tools":
        first = client.chat.completions.create(model=MODEL, messages=messages, tools=[TOOL])
        call = first.choices[0].message.tool_calls[0]
        follow = [
            *messages,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
        ]
        client.chat.completions.create(model=MODEL, messages=follow)


def _child(instrumentation: str, scenarios: str, base_url: str) -> None:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    resource = Resource.create({"service.name": f"emit-{instrumentation}"})
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    _instrument(instrumentation, tracer_provider, logger_provider)
    out = {}
    for scenario in scenarios.split(","):
        if scenario == AGENT_SCENARIO:
            _agent(base_url, tracer_provider, logger_provider)
        else:
            _run(scenario, base_url)
        tracer_provider.force_flush()
        logger_provider.force_flush()
        traces = encode_spans(spans.get_finished_spans()).SerializeToString()
        records = encode_logs(logs.get_finished_logs()).SerializeToString()
        spans.clear()
        logs.clear()
        out[scenario] = {
            "traces": base64.b64encode(traces).decode(),
            "logs": base64.b64encode(records).decode(),
        }
    sys.stdout.write("\n" + json.dumps(out) + "\n")


if __name__ == "__main__":
    _child(*sys.argv[1:4])
