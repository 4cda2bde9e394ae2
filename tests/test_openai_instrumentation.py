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


# --- every public call path of the installed client ----------------------------------------------

RESOURCES = ("chat.completions", "responses", "completions")
WRAPPERS = ("with_raw_response", "with_streaming_response")


def _resolve(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def public_paths(client: object) -> set[tuple[str | None, str]]:
    """(wrapper, method path) of every public callable under the instrumented resources, found by
    introspection so a path a future client version adds shows up here."""
    found: set[tuple[str | None, str]] = set()

    def walk(obj: object, path: str, wrapper: str | None) -> None:
        assert path.count(".") < 8, f"{path}: the client's resources nest deeper than expected"
        for name in dir(obj):
            if name.startswith("_"):
                continue
            value = getattr(obj, name)
            if name in WRAPPERS:
                walk(value, path, name)
            elif callable(value):
                found.add((wrapper, f"{path}.{name}"))
            elif type(value).__module__.startswith("openai."):  # a sub-resource (`messages`)
                walk(value, f"{path}.{name}", wrapper)

    for resource in RESOURCES:
        walk(_resolve(client, resource), resource, None)
    return found


@pytest.mark.parametrize("client_cls", [openai.OpenAI, openai.AsyncOpenAI])
def test_every_public_path_is_recorded_or_listed_as_not_a_model_call(client_cls: type) -> None:
    from trajforge.capture.openai import NOT_RECORDED, RECORDED

    client = client_cls(base_url="http://127.0.0.1:9/v1", api_key="test")
    bases = {path for _, path in public_paths(client)}
    unknown = bases - set(RECORDED) - set(NOT_RECORDED)
    assert not unknown, f"openai {openai.__version__} has call paths trajforge neither records nor excludes"
    assert not (set(RECORDED) & set(NOT_RECORDED))
    assert set(RECORDED) | set(NOT_RECORDED) <= bases, "a listed path no longer exists: update the tables"


KWARGS = {
    "chat.completions": lambda q: {"model": "fake-model", "messages": [{"role": "user", "content": q}]},
    "responses": lambda q: {"model": "fake-model", "input": q},
    "completions": lambda q: {"model": "fake-model", "prompt": q},
}
USAGE = {"stream_options": {"include_usage": True}}


def recorded_variants(client: object) -> list[tuple[str | None, str, bool]]:
    """(wrapper, recorded method path, streamed) for every way the client offers a model call."""
    from trajforge.capture.openai import RECORDED

    out = []
    for wrapper, path in sorted(public_paths(client), key=str):
        if path not in RECORDED:
            continue
        method = path.rsplit(".", 1)[1]
        out.append((wrapper, path, False))
        if method == "create":
            out.append((wrapper, path, True))
    return out


def _request(path: str, streamed: bool, q: str) -> dict[str, object]:
    resource, method = path.rsplit(".", 1)
    kwargs = dict(KWARGS[resource](q))
    if streamed and resource != "responses":
        kwargs |= USAGE
    if method == "stream" and resource == "chat.completions":
        kwargs |= USAGE
    if streamed:
        kwargs["stream"] = True
    return kwargs


def _invoke_sync(client: openai.OpenAI, wrapper: str | None, path: str, streamed: bool, q: str) -> None:
    resource, method = path.rsplit(".", 1)
    target = _resolve(client, resource)
    fn = getattr(target if wrapper is None else getattr(target, wrapper), method)
    kwargs = _request(path, streamed, q)
    if method == "stream":
        with fn(**kwargs) as events:
            for _ in events:
                pass
        return
    if wrapper == "with_streaming_response":
        with fn(**kwargs) as raw:
            out = raw.parse()
            for _ in out if streamed else ():
                pass
        return
    out = fn(**kwargs)
    if wrapper == "with_raw_response":
        out = out.parse()
    for _ in out if streamed else ():
        pass


async def _invoke_async(
    client: openai.AsyncOpenAI, wrapper: str | None, path: str, streamed: bool, q: str
) -> None:
    resource, method = path.rsplit(".", 1)
    target = _resolve(client, resource)
    fn = getattr(target if wrapper is None else getattr(target, wrapper), method)
    kwargs = _request(path, streamed, q)
    if method == "stream":
        async with fn(**kwargs) as events:
            async for _ in events:
                pass
        return
    if wrapper == "with_streaming_response":
        async with fn(**kwargs) as raw:
            out = await raw.parse()
            if streamed:
                async for _ in out:
                    pass
        return
    out = await fn(**kwargs)
    if wrapper == "with_raw_response":
        out = out.parse()
    if streamed:
        async for _ in out:
            pass


def test_every_recorded_path_records_messages_response_tokens_and_finish_reason(setup) -> None:
    server, rec, url = setup
    client = openai.OpenAI(base_url=server.base_url, api_key="test")
    aclient = openai.AsyncOpenAI(base_url=server.base_url, api_key="test")
    labels: dict[str, str] = {}
    for wrapper, path, streamed in recorded_variants(client):
        label = f"sync {wrapper or ''} {path} stream={streamed}"
        labels[label] = q = f"q{len(labels)}"
        with rec.trajectory(agent_id=label) as t, t.step():
            _invoke_sync(client, wrapper, path, streamed, q)

    async def run() -> None:
        for wrapper, path, streamed in recorded_variants(aclient):
            label = f"async {wrapper or ''} {path} stream={streamed}"
            labels[label] = q = f"q{len(labels)}"
            async with rec.trajectory(agent_id=label) as t, t.step():
                await _invoke_async(aclient, wrapper, path, streamed, q)

    asyncio.run(run())
    rec.flush()
    store, got = calls_of(url)
    by_agent = {t.agent_id: t for t in got}
    # 7 paths x sync/async, each create also streamed, and the wrappers: at least 40 variants
    assert len(labels) >= 40 and set(by_agent) == set(labels)
    for label, q in labels.items():
        calls = [c for s in by_agent[label].steps for c in s.llm_calls]
        assert len(calls) == 1, label
        (call,) = calls
        assert call.messages and call.messages[-1]["content"] == q, label
        assert call.user_prompt == q and call.response == f"echo: {q}", label
        assert call.prompt_tokens and call.completion_tokens, label
        assert call.finish_reason == "stop", label
    store.close()


def test_a_streaming_response_closed_unread_is_still_recorded(setup) -> None:
    server, rec, url = setup
    client = openai.OpenAI(base_url=server.base_url, api_key="test")
    with rec.trajectory(agent_id="unread") as t, t.step():
        with client.chat.completions.with_streaming_response.create(
            model="fake-model", messages=[{"role": "user", "content": "never read"}]
        ) as raw:
            assert raw.http_response.status_code == 200
        raw = client.chat.completions.with_raw_response.create(
            model="fake-model", messages=[{"role": "user", "content": "headers only"}]
        )
        assert raw.headers["content-type"] == "application/json"
        # A stream closed before it is parsed: the request is kept, marked incomplete.
        with client.chat.completions.with_streaming_response.create(
            model="fake-model", messages=[{"role": "user", "content": "abandoned"}], stream=True
        ) as raw:
            pass
    rec.flush()
    store, (got,) = calls_of(url)
    calls = got.steps[0].llm_calls
    assert [(c.user_prompt, c.response, c.finish_reason) for c in calls] == [
        ("never read", "echo: never read", "stop"),
        ("headers only", "echo: headers only", "stop"),
        ("abandoned", None, "incomplete"),
    ]
    store.close()


def test_structured_parse_records_the_json_text(tmp_path: Path) -> None:
    import pydantic

    class City(pydantic.BaseModel):
        city: str

    def answer(messages: list[dict[str, object]], request: dict[str, object]) -> str:
        return '{"city": "Paris"}'

    url = str(tmp_path / "parse.db")
    rec = trajforge.Recorder(url)
    undo = trajforge.instrument_openai(rec)
    with fake_openai(answer) as server, rec.trajectory(agent_id="parse") as t, t.step():
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        chat = client.chat.completions.parse(
            model="fake-model", messages=[{"role": "user", "content": "where?"}], response_format=City
        )
        assert chat.choices[0].message.parsed == City(city="Paris")
        resp = client.responses.parse(model="fake-model", input="where?", text_format=City)
        assert resp.output_parsed == City(city="Paris")
    undo()
    rec.close()
    store, (got,) = calls_of(url)
    calls = got.steps[0].llm_calls
    assert [(c.response, c.finish_reason, c.prompt_tokens) for c in calls] == [
        ('{"city": "Paris"}', "stop", 11),
        ('{"city": "Paris"}', "stop", 13),
    ]
    store.close()
