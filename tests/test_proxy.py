"""The OpenAI-compatible capture proxy, end to end: a real ``trajforge proxy`` (and ``trajforge serve
--upstream``) process, the official ``openai`` client through it to the loopback fake, and the
records read back from the real store."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import TRAJFORGE, free_port, start_server, until
from trajforge.records import Trajectory
from trajforge.store import open_store
from trajforge.store.filter import TrajectoryFilter

SECRET = "sk-proxy-test-SECRET-4f1d9c"
ORG = "org-SECRET-7a2b"


class Proxy:
    def __init__(self, port: int, db: Path, log: Path, proc: subprocess.Popen[bytes], home: Path) -> None:
        self.port, self.db, self.log, self.proc, self.home = port, db, log, proc, home
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def client(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url, api_key=SECRET, organization=ORG, default_headers=headers, max_retries=0
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # uvicorn shuts down: the writer flushes
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_proxy(tmp_path: Path, upstream: str, db: Path | None = None, name: str = "proxy") -> Proxy:
    port = free_port()
    db = db or tmp_path / f"{name}.db"
    log = tmp_path / f"{name}.log"
    home = tmp_path / f"{name}-home"
    env = {**os.environ, "TRAJFORGE_HOME": str(home)}
    env.pop("TRAJFORGE_API_TOKEN", None)
    proc = subprocess.Popen(
        [TRAJFORGE, "proxy", "--upstream", upstream, "--port", str(port), "--db", str(db)],
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    proxy = Proxy(port, db, log, proc, home)

    def up() -> bool:
        assert proc.poll() is None, "trajforge proxy exited: " + log.read_text()[-4000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    until("trajforge proxy to answer", up)
    return proxy


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def proxy(tmp_path: Path, fake: FakeOpenAI) -> Iterator[Proxy]:
    p = start_proxy(tmp_path, fake.base_url)
    yield p
    p.stop()


def stored(db: Path, n: int, *, done: bool = True, n_calls: int | None = None) -> list[Trajectory]:
    """The ``n`` trajectories of the store at ``db``, oldest first, once they are all there (and
    finished, with ``done``) with ``n_calls`` calls (default: at least one each)."""
    store = open_store(str(db))
    try:

        def check() -> list[Trajectory] | None:
            got = list(store.iter_trajectories(TrajectoryFilter()))
            calls = sum(len(s.llm_calls) for t in got for s in t.steps)
            enough = calls == n_calls if n_calls is not None else calls >= n
            if len(got) == n and enough and (not done or all(t.status != "active" for t in got)):
                return sorted(got, key=lambda t: t.start_time)
            return None

        return list(until(f"{n} trajectories in {db.name}", check))
    finally:
        store.close()


def calls_of(t: Trajectory) -> list[Any]:
    return [c for s in sorted(t.steps, key=lambda s: s.step_number) for c in s.llm_calls]


def no_secret_in(*paths: Path) -> None:
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            data = f.read_bytes()
            assert SECRET.encode() not in data and ORG.encode() not in data, f"a credential is in {f}"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def test_sync_calls_grouped_by_headers_into_one_trajectory(proxy: Proxy, fake: FakeOpenAI) -> None:
    client = proxy.client(
        **{
            "X-Trajforge-Trajectory": "conv-42",
            "X-Trajforge-Agent": "support-bot",
            "X-Trajforge-Scenario": "s1",
        }
    )
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "where is my order"}]
    plain = client.chat.completions.create(model="m-1", messages=first, temperature=0.5, max_tokens=40)
    assert plain.choices[0].message.content == "echo: where is my order"
    tooled = client.chat.completions.create(model="m-1", messages=first, tools=TOOLS)
    tool_call = tooled.choices[0].message.tool_calls[0]
    streamed = client.chat.completions.create(
        model="m-1",
        messages=[{"role": "user", "content": "stream this answer please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "echo: stream this answer please"
    stream_tools = client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "tool stream"}], tools=TOOLS, stream=True
    )
    pieces = [
        c.choices[0].delta.tool_calls for c in stream_tools if c.choices and c.choices[0].delta.tool_calls
    ]
    assert "".join(p[0].function.arguments or "" for p in pieces) == json.dumps({"q": "tool stream"})
    client.chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": "bye"}], extra_headers={"X-Trajforge-End": "true"}
    )

    (t,) = stored(proxy.db, 1)
    assert (t.id, t.agent_id, t.source, t.scenario_id, t.status) == (
        "conv-42",
        "support-bot",
        "proxy",
        "s1",
        "completed",
    )
    assert [s.step_number for s in sorted(t.steps, key=lambda s: s.step_number)] == [0, 1, 2, 3, 4]
    c1, c2, c3, c4, c5 = calls_of(t)
    assert (c1.model, c1.messages, c1.system_prompt, c1.user_prompt) == (
        "m-1",
        first,
        "Be brief.",
        "where is my order",
    )
    assert (c1.response, c1.finish_reason, c1.prompt_tokens, c1.completion_tokens) == (
        "echo: where is my order",
        "stop",
        11,
        7,
    )
    assert (c1.temperature, c1.max_tokens, c1.model_version) == (0.5, 40, "m-1")
    assert c2.tools == TOOLS and c2.response is None and c2.finish_reason == "tool_calls"
    assert c2.tool_calls == [
        {
            "id": tool_call.id,
            "type": "function",
            "function": {"name": "lookup_order", "arguments": tool_call.function.arguments},
        }
    ]
    assert (c3.response, c3.finish_reason, c3.prompt_tokens, c3.completion_tokens) == (text, "stop", 11, 7)
    assert c4.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup_order", "arguments": json.dumps({"q": "tool stream"})},
        }
    ]
    assert c5.response == "echo: bye" and all(
        c.latency_ms is not None and c.latency_ms > 0 for c in (c1, c2, c3, c4, c5)
    )
    # What the fake received: the caller's credentials, and none of the proxy's own headers.
    sent = fake.headers[0]
    assert sent["authorization"] == f"Bearer {SECRET}" and sent["openai-organization"] == ORG
    assert not [h for h in sent if h.startswith("x-trajforge")]
    assert fake.requests[0]["messages"] == first
    proxy.stop()
    no_secret_in(proxy.db.parent, proxy.log)


def test_async_responses_completions_embeddings_and_models(proxy: Proxy, fake: FakeOpenAI) -> None:
    async def run() -> tuple[str, str, str, int, list[str]]:
        client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)
        plain = await client.responses.create(model="r-1", input="hello responses", instructions="Be kind.")
        events = await client.responses.create(model="r-1", input="stream responses", stream=True)
        streamed = "".join([e.delta async for e in events if e.type == "response.output_text.delta"])
        legacy = await client.completions.create(model="c-1", prompt="complete me", max_tokens=9)
        vectors = await client.embeddings.create(model="e-1", input=["a", "bb"])
        models = [m.id async for m in client.models.list()]
        with pytest.raises(openai.NotFoundError) as missing:  # the fake knows no model by id
            await client.models.retrieve("fake-model")
        assert missing.value.body == {"message": "not found"}  # its 404, relayed
        await client.close()
        return plain.output_text, streamed, legacy.choices[0].text, len(vectors.data), models

    plain, streamed, legacy, n_vectors, models = asyncio.run(run())
    assert (plain, streamed, legacy, n_vectors, models) == (
        "echo: hello responses",
        "echo: stream responses",
        "echo: complete me",
        2,
        ["fake-model"],
    )
    # Three model calls, each a trajectory of its own; embeddings and the model list are relayed only.
    r1, r2, c1 = (calls_of(t)[0] for t in stored(proxy.db, 3))
    assert (r1.model, r1.system_prompt, r1.user_prompt, r1.response) == (
        "r-1",
        "Be kind.",
        "hello responses",
        plain,
    )
    assert r1.messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hello responses"},
    ]
    assert (r1.prompt_tokens, r1.completion_tokens, r1.finish_reason) == (13, 5, "stop")
    assert (r2.response, r2.prompt_tokens, r2.completion_tokens, r2.finish_reason) == (
        streamed,
        13,
        5,
        "stop",
    )
    assert (c1.user_prompt, c1.response, c1.max_tokens, c1.prompt_tokens, c1.completion_tokens) == (
        "complete me",
        legacy,
        9,
        9,
        4,
    )
    assert [r["path"] for r in fake.requests] == [
        "/v1/responses",
        "/v1/responses",
        "/v1/completions",
        "/v1/embeddings",
    ]
    store = open_store(str(proxy.db))
    assert {t.source for t in store.iter_trajectories(TrajectoryFilter())} == {"proxy"}
    store.close()


def test_upstream_errors_pass_through_unchanged_and_are_recorded(
    proxy: Proxy, fake: FakeOpenAI, tmp_path: Path
) -> None:
    body = {
        "error": {
            "message": "Rate limit reached for m-1",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    fake.fail = (429, body, {"Retry-After": "7", "X-Ratelimit-Remaining-Requests": "0"})
    direct = httpx.post(f"{fake.base_url}/chat/completions", json={"model": "m-1", "messages": []})
    via = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m-1", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert (via.status_code, via.content) == (429, direct.content)
    assert via.headers["retry-after"] == "7" and via.headers["x-ratelimit-remaining-requests"] == "0"
    fake.fail = (500, {"error": {"message": "The server had an error", "type": "server_error"}}, {})
    with pytest.raises(openai.InternalServerError) as err:
        proxy.client().chat.completions.create(model="m-1", messages=[{"role": "user", "content": "again"}])
    assert err.value.status_code == 500 and err.value.body == {
        "message": "The server had an error",
        "type": "server_error",
    }
    t429, t500 = stored(proxy.db, 2)
    (c429,), (c500,) = calls_of(t429), calls_of(t500)
    assert (t429.status, c429.finish_reason, c429.response, c429.tags) == (
        "error",
        "error",
        None,
        ["error:RateLimitError", "http_status:429"],
    )
    assert c429.messages == [{"role": "user", "content": "hi"}] and c500.user_prompt == "again"
    assert (t500.status, c500.tags) == ("error", ["error:InternalServerError", "http_status:500"])

    # An upstream that does not answer at all: 502 with an OpenAI-shaped body, recorded too.
    gone = start_proxy(tmp_path, f"http://127.0.0.1:{free_port()}/v1", name="gone")
    try:
        with pytest.raises(openai.InternalServerError) as err502:
            gone.client().chat.completions.create(
                model="m-1", messages=[{"role": "user", "content": "anyone?"}]
            )
        assert err502.value.status_code == 502
        assert (
            err502.value.body["code"] == "upstream_unreachable"
            and "could not be reached" in err502.value.body["message"]
        )
        ((c502,),) = [calls_of(t) for t in stored(gone.db, 1)]
        assert (c502.user_prompt, c502.tags) == ("anyone?", ["error:APIConnectionError", "http_status:502"])
    finally:
        gone.stop()
    proxy.stop()
    no_secret_in(tmp_path)


def test_a_client_that_leaves_mid_stream_is_recorded_incomplete(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.stream_delay_s = 0.05
    words = "a long answer " * 20
    with proxy.client().chat.completions.create(
        model="m-1", messages=[{"role": "user", "content": words}], stream=True
    ) as stream:
        got = ""
        for chunk in stream:
            got += chunk.choices[0].delta.content or ""
            if len(got) >= 12:
                break  # leaving the with block closes the connection mid-stream
    (t,) = stored(proxy.db, 1)
    (call,) = calls_of(t)
    full = f"echo: {words}"
    assert call.finish_reason == "incomplete" and call.tags == ["incomplete"]
    assert (
        call.response is not None
        and full.startswith(call.response)
        and len(got) <= len(call.response) < len(full)
    )


def test_calls_succeed_while_the_store_is_down_and_are_stored_once_it_is_back(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    db = tmp_path / "later.db"
    db.mkdir()  # not a database: opening it fails, as when the store is down
    proxy = start_proxy(tmp_path, fake.base_url, db=db)
    try:
        client = proxy.client(**{"X-Trajforge-Trajectory": "down-1"})
        answers = [
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
            .choices[0]
            .message.content
            for i in range(5)
        ]
        answers.append(
            proxy.client()
            .chat.completions.create(model="m", messages=[{"role": "user", "content": "solo"}])
            .choices[0]
            .message.content
        )
        assert answers == [f"echo: q{i}" for i in range(5)] + ["echo: solo"]
        spool = proxy.home / "spool"
        until("the records to be spooled", lambda: any(p.stat().st_size for p in spool.rglob("*.jsonl")))
        shutil.rmtree(db)  # the store is back
        grouped, solo = sorted(stored(db, 2, done=False, n_calls=6), key=lambda t: t.id != "down-1")
        assert grouped.id == "down-1" and [c.user_prompt for c in calls_of(grouped)] == [
            f"q{i}" for i in range(5)
        ]
        assert [c.response for c in calls_of(solo)] == ["echo: solo"]
        calls = calls_of(grouped) + calls_of(solo)
        assert len({c.call_id for c in calls}) == len(calls) == 6  # nothing lost, nothing twice
    finally:
        proxy.stop()
    no_secret_in(tmp_path)


HOSTILE = [
    ("X-Trajforge-Trajectory", "t" * 201),
    ("X-Trajforge-Trajectory", "tab\there"),
    ("Helicone-Session-Id", "h" * 500),
    ("X-Trajforge-Agent", "caf\xe9"),
    ("X-Trajforge-Source", "s" * 201),
    ("X-Trajforge-Scenario", "two\x80bytes"),
    ("X-Trajforge-Step", "-1"),
    ("X-Trajforge-Step", "99999999999"),
    ("X-Trajforge-Step", "\u0661"),  # a digit to str.isdigit, not a step number
    ("X-Trajforge-End", "maybe"),
]


def test_a_hostile_header_is_refused_naming_it(proxy: Proxy, fake: FakeOpenAI) -> None:
    for header, value in HOSTILE:
        r = httpx.post(
            f"{proxy.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            headers={header: value.encode("utf-8" if ord(max(value)) > 255 else "latin-1")},  # type: ignore[dict-item]
        )
        assert r.status_code == 400, (header, r.text)
        error = r.json()["error"]
        assert error["param"] == header and header in error["message"], (header, error)
    assert fake.requests == []  # refused before anything went upstream
    assert stored_count(proxy.db) == 0
    # A model id that would leave the models path upstream, or break the request line, is not relayed.
    for path in ("models/%2e%2e/%2e%2e/admin", "models/a%20b", "models/x/%2e%2e/y"):
        assert httpx.get(f"{proxy.base_url}/{path}").status_code == 404
    assert fake.headers == []


def stored_count(db: Path) -> int:
    store = open_store(str(db))
    try:
        return store.count(TrajectoryFilter())
    finally:
        store.close()


def test_a_tokenless_proxy_answers_only_loopback_host_names(proxy: Proxy, fake: FakeOpenAI) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    rebound = httpx.post(
        f"{proxy.base_url}/chat/completions", json=body, headers={"Host": "rebind.evil.example"}
    )
    assert rebound.status_code == 421 and fake.requests == []  # a DNS-rebinding page gets nothing
    assert (
        httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers={"Host": "localhost"}).status_code
        == 200
    )


def test_proxy_on_trajforge_serve_with_a_token(tmp_path: Path, fake: FakeOpenAI) -> None:
    port = free_port()
    db = tmp_path / "served.db"
    env = {**os.environ, "TRAJFORGE_HOME": str(tmp_path / "home"), "TRAJFORGE_API_TOKEN": "tf-token"}
    proc = start_server(port, db, tmp_path / "serve.log", "--upstream", fake.base_url, "--no-jobs", env=env)
    try:
        base = f"http://127.0.0.1:{port}/proxy/v1"
        refused = httpx.post(
            f"{base}/chat/completions", json={"model": "m"}, headers={"Authorization": "Bearer tf-token"}
        )
        assert refused.status_code == 401 and refused.json()["error"]["param"] == "X-Trajforge-Token"
        client = openai.OpenAI(
            base_url=base, api_key=SECRET, default_headers={"X-Trajforge-Token": "tf-token"}, max_retries=0
        )
        answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "served"}])
        assert answer.choices[0].message.content == "echo: served"
        assert (
            fake.headers[-1]["authorization"] == f"Bearer {SECRET}"
            and "x-trajforge-token" not in fake.headers[-1]
        )
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer tf-token"})
        items = until("the call in the API", lambda: api.get("/api/trajectories").json()["trajectories"])
        (item,) = items
        detail = api.get(f"/api/trajectories/{item['id']}").json()
        assert item["source"] == "proxy" and "echo: served" in json.dumps(detail)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    no_secret_in(tmp_path)


def test_upstream_connections_are_reused_and_an_idle_close_is_survived(tmp_path: Path) -> None:
    with FakeOpenAI(keep_alive=True, idle_timeout_s=0.5) as fake:
        proxy = start_proxy(tmp_path, fake.base_url)
        try:
            client = proxy.client()

            def ask(text: str) -> str | None:
                return (
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
                    .choices[0]
                    .message.content
                )

            assert [ask(f"k{i}") for i in range(3)] == ["echo: k0", "echo: k1", "echo: k2"]
            assert fake.connections == 1  # one kept-alive upstream connection for the three
            until("the fake to close the idle connection", lambda: fake.closed_connections >= 1)
            # The pooled connection is dead now: the call goes out again on a new one, once.
            assert ask("after idle") == "echo: after idle"
            assert (
                fake.connections == 2
                and [r["messages"][0]["content"] for r in fake.requests][-1] == "after idle"
            )
            assert len(fake.requests) == 4
            streamed = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "kept stream"}], stream=True
            )
            assert (
                "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
                == "echo: kept stream"
            )
            assert ask("after stream") == "echo: after stream"
            calls = [calls_of(t)[0] for t in stored(proxy.db, 6)]
            assert [c.response for c in calls] == [
                "echo: k0",
                "echo: k1",
                "echo: k2",
                "echo: after idle",
                "echo: kept stream",
                "echo: after stream",
            ]
        finally:
            proxy.stop()


def test_explicit_steps_helicone_sessions_and_the_body_limit(proxy: Proxy, fake: FakeOpenAI) -> None:
    session = proxy.client(**{"Helicone-Session-Id": "helicone-7", "X-Trajforge-Source": "eliza"})
    for step, text in ((0, "plan"), (0, "plan again"), (1, "act")):
        session.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": text}],
            extra_headers={"X-Trajforge-Step": str(step)},
        )
    huge = httpx.post(
        f"{proxy.base_url}/chat/completions",
        content=b"x" * (32 * 1024 * 1024 + 1),
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]
    assert len(fake.requests) == 3  # the oversized body never went upstream
    (t,) = stored(proxy.db, 1, done=False, n_calls=3)
    assert (t.id, t.source, t.status) == ("helicone-7", "eliza", "active")
    steps = sorted(t.steps, key=lambda s: s.step_number)
    assert [[c.user_prompt for c in s.llm_calls] for s in steps] == [["plan", "plan again"], ["act"]]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "--upstream"),
        (["--upstream", "ftp://example.com/v1"], "--upstream"),
        (["--upstream", "http://user:key@127.0.0.1:1/v1"], "credentials"),
        (["--upstream", "http://127.0.0.1:1/v1", "--host", "0.0.0.0"], "TRAJFORGE_API_TOKEN"),
    ],
)
def test_the_command_refuses_a_bad_setup_naming_it(tmp_path: Path, args: list[str], said: str) -> None:
    from typer.testing import CliRunner

    from trajforge.cli import app

    env = {
        "COLUMNS": "250",
        "TRAJFORGE_HOME": str(tmp_path),
        "TRAJFORGE_PROXY_UPSTREAM": "",
        "TRAJFORGE_API_TOKEN": "",
    }
    result = CliRunner().invoke(app, ["proxy", "--db", str(tmp_path / "x.db"), *args], env=env)
    assert result.exit_code == 2 and said in result.output, result.output
    assert "key@" not in result.output


def test_the_sdk_instrumentation_and_the_proxy_make_the_same_record(
    proxy: Proxy, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """One conversion behind both ways in: the same calls, made once through the proxy and once
    with the instrumented client straight to the fake, are stored as the same calls."""
    import trajforge

    def make_calls(client: openai.OpenAI) -> None:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "same call"}]
        client.chat.completions.create(model="m", messages=messages, temperature=0.2)
        client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
        for _chunk in client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        ):
            pass
        client.responses.create(model="m", input="same response", instructions="Be kind.")
        client.completions.create(model="m", prompt="same completion", max_tokens=5)

    make_calls(proxy.client())
    url = str(tmp_path / "sdk.db")
    rec = trajforge.Recorder(url, spool_dir=tmp_path / "sdk-spool")
    undo = trajforge.instrument_openai(rec)
    try:
        make_calls(openai.OpenAI(base_url=fake.base_url, api_key=SECRET, max_retries=0))
    finally:
        undo()
        rec.close()

    def comparable(db: Path) -> list[dict[str, Any]]:
        from dataclasses import asdict

        skip = {"call_id", "timestamp", "latency_ms"}
        return [{k: v for k, v in asdict(calls_of(t)[0]).items() if k not in skip} for t in stored(db, 5)]

    via_proxy, via_sdk = comparable(proxy.db), comparable(Path(url))
    assert via_proxy == via_sdk
    assert [c["response"] for c in via_proxy] == [
        "echo: same call",
        None,
        "echo: same call",
        "echo: same response",
        "echo: same completion",
    ]


def test_an_https_upstream(tmp_path: Path) -> None:
    """Hosted APIs are HTTPS: the proxy verifies the upstream's certificate against the system's
    trust store (here one holding the test's own certificate, through SSL_CERT_FILE)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with FakeOpenAI(tls=(str(cert), str(key)), keep_alive=True) as fake:
        os.environ["SSL_CERT_FILE"] = str(cert)
        try:
            proxy = start_proxy(tmp_path, fake.base_url)
        finally:
            del os.environ["SSL_CERT_FILE"]
        try:
            client = proxy.client()
            for text in ("over tls", "and again"):
                answer = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": text}]
                )
                assert answer.choices[0].message.content == f"echo: {text}"
            assert fake.connections == 1
            assert [calls_of(t)[0].response for t in stored(proxy.db, 2)] == [
                "echo: over tls",
                "echo: and again",
            ]
        finally:
            proxy.stop()
    # Without the certificate trusted, the proxy refuses the upstream: a 502, never plain text.
    with FakeOpenAI(tls=(str(cert), str(key))) as fake:
        proxy = start_proxy(tmp_path, fake.base_url, name="untrusted")
        try:
            r = httpx.post(f"{proxy.base_url}/chat/completions", json={"model": "m", "messages": []})
            assert r.status_code == 502 and fake.requests == []
        finally:
            proxy.stop()


def test_an_upstream_that_breaks_mid_stream_breaks_the_client_stream_too(tmp_path: Path) -> None:
    """A cut must not look like an end: the client's stream breaks as the upstream's did (never a
    clean, short answer), and the record keeps what arrived, marked incomplete."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    event = {
        "choices": [{"index": 0, "delta": {"content": "half an "}}],
        "model": "m",
        "object": "chat.completion.chunk",
    }
    payload = f"data: {json.dumps(event)}\n\n".encode()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                + f"{len(payload):x}\r\n".encode()
                + payload
                + b"\r\n"
                + b'40\r\ndata: {"cho'
            )  # then the connection drops in the middle of a chunk

    threading.Thread(target=serve, daemon=True).start()
    proxy = start_proxy(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
    try:
        got = []
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for chunk in proxy.client().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "go"}], stream=True
            ):
                got.append(chunk.choices[0].delta.content)
        assert got == ["half an "]
        ((call,),) = [calls_of(t) for t in stored(proxy.db, 1)]
        assert (call.response, call.finish_reason, call.tags) == ("half an ", "incomplete", ["incomplete"])
    finally:
        proxy.stop()
        listener.close()


def test_fifty_concurrent_clients_each_get_their_own_answers_and_all_are_recorded(tmp_path: Path) -> None:
    """Pooled upstream connections never mix two calls up, and nothing is lost or doubled."""
    with FakeOpenAI(keep_alive=True) as fake:
        proxy = start_proxy(tmp_path, fake.base_url)
        try:

            async def agent(i: int) -> list[tuple[str, str | None]]:
                client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)
                got = []
                for j in range(4):
                    text = f"agent {i} call {j}"
                    if j == 2:
                        stream = await client.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": text}], stream=True
                        )
                        answer = "".join(
                            [c.choices[0].delta.content or "" async for c in stream if c.choices]
                        )
                    else:
                        done = await client.chat.completions.create(
                            model="m",
                            messages=[{"role": "user", "content": text}],
                            extra_headers={"X-Trajforge-Trajectory": f"agent-{i}"},
                        )
                        answer = done.choices[0].message.content or ""
                    got.append((text, answer))
                await client.close()
                return got

            async def all_agents() -> list[list[tuple[str, str | None]]]:
                return await asyncio.gather(*(agent(i) for i in range(50)))

            results = asyncio.run(all_agents())
            assert all(answer == f"echo: {text}" for pairs in results for text, answer in pairs)
            # 50 grouped trajectories of 3 calls each, and the 50 streamed calls each alone
            trajectories = stored(proxy.db, 100, done=False, n_calls=200)
            calls = [c for t in trajectories for c in calls_of(t)]
            assert len(calls) == 200 and len({c.call_id for c in calls}) == 200
            assert all(c.response == f"echo: {c.user_prompt}" for c in calls)
            grouped = {
                t.id: [c.user_prompt for c in calls_of(t)] for t in trajectories if t.id.startswith("agent-")
            }
            assert grouped == {f"agent-{i}": [f"agent {i} call {j}" for j in (0, 1, 3)] for i in range(50)}
        finally:
            proxy.stop()


def test_a_named_trajectory_that_exists_keeps_what_the_headers_do_not_say(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    """A call naming a trajectory the SDK wrote (or another proxy process, or this one before a
    restart) adds its step and leaves the agent, start time and metadata alone (found by review:
    the first call a process saw overwrote them)."""
    import trajforge

    db = tmp_path / "shared.db"
    rec = trajforge.Recorder(str(db), spool_dir=tmp_path / "sdk-spool")
    with rec.trajectory("agent-A", trajectory_id="conv-1", metadata={"user": "keep me"}) as t, t.step() as s:
        s.llm_call(model="m", user_prompt="from the sdk", response="ok")
    rec.close()
    before = open_store(str(db)).get_trajectory("conv-1")
    assert before is not None and before.metadata.get("user") == "keep me"
    proxy = start_proxy(tmp_path, fake.base_url, db=db)
    try:
        client = proxy.client(**{"X-Trajforge-Trajectory": "conv-1"})
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "via the proxy"}])
        (after,) = stored(db, 1, done=False, n_calls=2)
    finally:
        proxy.stop()
    assert (after.agent_id, after.start_time, after.metadata) == (
        "agent-A",
        before.start_time,
        before.metadata,
    )
    assert [c.user_prompt for s in after.steps for c in s.llm_calls] == ["from the sdk", "via the proxy"]
