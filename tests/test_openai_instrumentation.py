"""instrument_openai with the real openai client against a loopback OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import trajforge
from tests.fakes.openai_server import FakeOpenAI, fake_openai
from trajforge.store import Store, TrajectoryFilter, open_store

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FakeOpenAI, trajforge.Recorder, str]]:
    url = str(tmp_path / "oai.db")
    rec = trajforge.Recorder(url)
    undo = trajforge.instrument_openai(rec)
    with fake_openai() as server:
        yield server, rec, url
    undo()
    rec.close()


def calls_of(url: str) -> tuple[Store, list[trajforge.Trajectory]]:
    store = open_store(url)
    return store, list(store.iter_trajectories(TrajectoryFilter()))


def test_chat_completions_plain_and_streamed_inside_a_trajectory(setup) -> None:
    server, rec, url = setup
    client = openai.OpenAI(base_url=server.base_url, api_key="test")
    with rec.trajectory(agent_id="bot") as t, t.step():
        r = client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
            temperature=0.3,
            max_tokens=50,
        )
        assert r.choices[0].message.content == "echo: hello there"
        stream = client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "streamed question"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "echo: streamed question"
        tool = client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "find A-1"}], tools=TOOLS, stream=True
        )
        for _ in tool:
            pass
    rec.flush()
    store, (got,) = calls_of(url)
    plain, streamed, tool_call = got.steps[0].llm_calls
    assert (plain.model, plain.system_prompt, plain.user_prompt, plain.response) == (
        "fake-model",
        "Be brief.",
        "hello there",
        "echo: hello there",
    )
    assert (plain.temperature, plain.max_tokens, plain.prompt_tokens, plain.completion_tokens) == (
        0.3,
        50,
        11,
        7,
    )
    assert plain.finish_reason == "stop" and plain.latency_ms is not None and plain.latency_ms > 0
    assert plain.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert (streamed.response, streamed.finish_reason, streamed.prompt_tokens) == (
        "echo: streamed question",
        "stop",
        11,
    )
    assert tool_call.finish_reason == "tool_calls" and tool_call.tools == TOOLS
    assert tool_call.tool_calls is not None
    fn = tool_call.tool_calls[0]["function"]
    assert fn["name"] == "lookup_order" and json.loads(fn["arguments"]) == {"q": "find A-1"}
    store.close()


def test_async_and_responses_api_and_calls_outside_a_trajectory(setup) -> None:
    server, rec, url = setup
    aclient = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
    client = openai.OpenAI(base_url=server.base_url, api_key="test")

    async def run() -> None:
        async with rec.trajectory(agent_id="async-bot") as t, t.step():
            r = await aclient.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "async q"}]
            )
            assert r.choices[0].message.content == "echo: async q"
            stream = await aclient.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "async s"}], stream=True
            )
            async for _ in stream:
                pass
            resp = await aclient.responses.create(model="fake-model", input="async responses")
            assert resp.output_text == "echo: async responses"

    asyncio.run(run())
    # Outside any trajectory: each call becomes a trajectory of its own, never dropped.
    resp = client.responses.create(model="fake-model", instructions="Sys.", input="lonely call")
    assert resp.output_text == "echo: lonely call"
    events = list(client.responses.create(model="fake-model", input="streamed lonely", stream=True))
    assert events[-1].type == "response.completed"
    rec.flush()
    store, got = calls_of(url)
    by_agent = {t.agent_id: t for t in got}
    inside = by_agent["async-bot"].steps[0].llm_calls
    assert [c.response for c in inside] == ["echo: async q", "echo: async s", "echo: async responses"]
    assert inside[2].prompt_tokens == 13 and inside[2].completion_tokens == 5
    lonely = sorted((t for t in got if t.source == "api"), key=lambda t: t.start_time)
    assert len(lonely) == 2 and all(t.status == "completed" for t in lonely)
    first = lonely[0].steps[0].llm_calls[0]
    assert (first.system_prompt, first.user_prompt, first.response) == (
        "Sys.",
        "lonely call",
        "echo: lonely call",
    )
    assert lonely[1].steps[0].llm_calls[0].response == "echo: streamed lonely"
    store.close()


def test_failed_calls_are_recorded_and_the_error_propagates(setup, tmp_path: Path) -> None:
    _, rec, url = setup
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="test", max_retries=0, timeout=2)
    with rec.trajectory(agent_id="down") as t, t.step(), pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    rec.flush()
    store, (got,) = calls_of(url)
    call = got.steps[0].llm_calls[0]
    assert call.finish_reason == "error" and call.tags == ["error:APIConnectionError"]
    store.close()
