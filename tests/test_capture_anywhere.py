"""Issue 18's "done when", end to end: one real ``trajforge serve --upstream`` (uvicorn on loopback)
hears an unmodified program instrumented by each of the three OpenTelemetry instrumentations
(their OTLP bodies POSTed to ``/v1/traces`` and ``/v1/logs`` as an exporter sends them) and an
unmodified ``openai`` client whose only change is its ``base_url`` (the capture proxy under
``/proxy/v1``). Every way ends in trajectories that the dashboard lists, search finds, and that build
into ``sft`` and ``preference`` datasets.

The fake model answers the same question alternately well and badly, so each program's two calls of
one prompt, once scored, make a preference pair.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests import otel_emit
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import free_port, start_server, until

pytestmark = pytest.mark.slow

GOOD, BAD = "Paris is sunny and mild today", "no idea, sorry"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    answers = itertools.cycle([GOOD, BAD])
    with FakeOpenAI(answer=lambda messages, request: next(answers)) as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path, fake: FakeOpenAI) -> Iterator[str]:
    port = free_port()
    proc = start_server(port, tmp_path / "store.db", tmp_path / "serve.log", "--upstream", fake.base_url)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def _feed_with_otel(base: str, instrumentation: str, fake: FakeOpenAI) -> None:
    bodies = otel_emit.emit_many(instrumentation, ("chat", "async"), fake.base_url)
    for traces, logs in bodies.values():
        r = httpx.post(
            f"{base}/v1/traces", content=traces, headers={"Content-Type": "application/x-protobuf"}
        )
        assert r.status_code == 200, r.text
        if logs:
            r = httpx.post(
                f"{base}/v1/logs", content=logs, headers={"Content-Type": "application/x-protobuf"}
            )
            assert r.status_code == 200, r.text


def _feed_through_the_proxy(base: str, fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=f"{base}/proxy/v1", api_key="sk-upstream", max_retries=0)
    messages: list[Any] = [
        {"role": "system", "content": otel_emit.SYSTEM},
        {"role": "user", "content": otel_emit.QUESTION},
    ]
    for _ in range(2):
        client.chat.completions.create(model=otel_emit.MODEL, messages=messages)


def _trajectories(base: str, n: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        got = httpx.get(f"{base}/api/trajectories", params={"limit": 50}).json()["trajectories"]
        return got if len(got) == n and all(t["llmCallCount"] == 1 for t in got) else None

    listed: list[dict[str, Any]] = until(f"{n} trajectories with their calls", ready)
    return listed


@pytest.mark.parametrize("way", [*otel_emit.INSTRUMENTATIONS, "proxy"])
def test_an_unmodified_program_feeds_search_dashboard_and_datasets(
    way: str, serve: str, fake: FakeOpenAI
) -> None:
    if way == "proxy":
        _feed_through_the_proxy(serve, fake)
    else:
        _feed_with_otel(serve, way, fake)
    listed = _trajectories(serve, 2)
    assert {t["source"] for t in listed} == {"proxy" if way == "proxy" else "otel"}

    # Search finds the answer text; the dashboard lists the trajectories.
    found = httpx.get(f"{serve}/api/trajectories", params={"search": "sunny"}).json()["trajectories"]
    assert len(found) == 1
    good = found[0]["id"]
    page = httpx.get(f"{serve}/trajectories").text
    assert all(t["id"] in page for t in listed)
    detail = httpx.get(f"{serve}/trajectories/{good}").text
    assert GOOD in detail and otel_emit.QUESTION in detail

    # A late outcome per trajectory, then both dataset formats.
    for t in listed:
        value = 1.0 if t["id"] == good else 0.0
        r = httpx.post(f"{serve}/api/trajectories/{t['id']}/scores", json={"name": "quality", "value": value})
        assert r.status_code in (200, 201), r.text
    sft = httpx.post(
        f"{serve}/api/training/datasets/build", json={"format": "sft", "evalFraction": 0}, timeout=60
    )
    assert sft.status_code == 201, sft.text
    assert sft.json()["dataset"]["rowCount"] == 2
    pref = httpx.post(
        f"{serve}/api/training/datasets/build",
        json={"format": "preference", "rewardScore": "quality", "evalFraction": 0},
        timeout=60,
    )
    assert pref.status_code == 201, pref.text
    ds = pref.json()["dataset"]
    assert ds["rowCount"] == 1
    rows = Path(ds["path"], "train.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    assert GOOD in json.dumps(row["chosen"]) and BAD in json.dumps(row["rejected"])
    assert otel_emit.QUESTION in json.dumps(row["prompt"])
