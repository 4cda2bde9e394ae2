"""Every row of every build (and every ``art`` export line) loads in the consumer it is made for.

OpenAI fine-tuning rows go through the checks of OpenAI's cookbook ("Data preparation and analysis
for chat model fine-tuning", brought up to the tools API: roles, content, ``tool_calls``,
``weight``; and for DPO ``input``/``preferred_output``/``non_preferred_output``), through the
official ``openai`` package's message types, and through the tool-call id check: each tool
message answers an assistant ``tool_calls[].id`` earlier in the same row.

ART rows go through ART's own pydantic models (``art.Trajectory``, ``art.TrajectoryGroup``) when
``openpipe-art`` is installed. Its base install pulls litellm, weave, polars and more, so it is
not in the ``dev`` extra: the Makefile's dev install adds it with ``pip install --no-deps`` (the
models need only ``openai`` and ``pydantic``, which are there), and under CI its absence fails the
real-model tests instead of skipping them; they are loaded from ART's
source without running ``art/__init__`` (which imports those heavy dependencies). Without it the
same rows still go through ``trajforge.formats.art``'s checks, which state ART's model rules.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import TypeAdapter

from tests.helpers import make_support_corpus
from trajforge import datasets, export
from trajforge.datasets import FORMATS, BuildRequest, check_row
from trajforge.formats import art as art_format
from trajforge.formats import openai as openai_format
from trajforge.records import LlmCall, Score, Step, Trajectory, WriteBatch
from trajforge.store import Store, TrajectoryFilter, open_store

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look an order up",
            "parameters": {"type": "object", "properties": {"orderId": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "refund", "parameters": {"type": "object", "properties": {}}},
    },
]
SYSTEM = "You are the support desk. Look orders up before answering."


def _openai_turns(sc: int, attempt: int, with_ids: bool) -> list[LlmCall]:
    """An agent loop as an OpenAI-style client records it: a call that asks for two tools (parallel
    calls), then a call whose prompt carries the tool results and that answers."""
    user = f"Where is my order A-20{sc}? I'm buyer{sc}@example.com."
    ids = [f"call_{sc}{attempt}x", f"call_{sc}{attempt}y"] if with_ids else [None, None]
    calls = []
    for i, name in enumerate(("get_order", "refund")):
        tc: dict[str, Any] = {
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"orderId": f"A-20{sc}"} if i == 0 else {})},
        }
        if ids[i]:
            tc["id"] = ids[i]
        calls.append(tc)
    results = []
    for i, name in enumerate(("get_order", "refund")):
        msg: dict[str, Any] = {"role": "tool", "name": name, "content": f'{{"status": "shipped {attempt}"}}'}
        if ids[i]:
            msg["tool_call_id"] = ids[i]
        results.append(msg)
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return [
        LlmCall(
            model="m-1",
            messages=first,
            response=None,
            tool_calls=calls,
            tools=TOOLS,
            purpose="action",
            action_type="lookup",
        ),
        LlmCall(
            model="m-1",
            messages=[*first, {"role": "assistant", "content": None, "tool_calls": calls}, *results],
            response=["It shipped.", "It is on its way, sorry for the wait.", "No idea."][attempt],
            tools=TOOLS,
            purpose="action",
            action_type="lookup",
        ),
    ]


def _anthropic_turns(sc: int, attempt: int) -> list[LlmCall]:
    """Tool use recorded in Anthropic's shape (``{"id", "name", "input"}``), answered in the next call."""
    user = f"Refund order A-30{sc}, please."
    call = {"id": f"toolu_{sc}{attempt}", "name": "refund", "input": {"orderId": f"A-30{sc}"}}
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return [
        LlmCall(model="m-2", messages=first, response="Checking.", tool_calls=[call], purpose="action"),
        LlmCall(
            model="m-2",
            messages=[
                *first,
                {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": f"toolu_{sc}{attempt}", "content": "refunded"},
            ],
            response=["Refunded.", "Done, refunded.", "Cannot."][attempt],
            purpose="action",
        ),
    ]


def make_tool_corpus(scenarios: int = 3) -> list[Trajectory]:
    """Tool-calling agents, three attempts per scenario with rewards 1, 0.5, 0: recorded call ids
    (OpenAI's and Anthropic's shapes), recorded calls without ids (generated ones must still
    match), and metadata with nested values and missing metrics (for ART)."""
    out = []
    base = 1_710_000_000_000
    for sc in range(scenarios):
        for attempt, reward in enumerate((1.0, 0.5, 0.0)):
            kind = sc % 3
            if kind == 2:
                calls = _anthropic_turns(sc, attempt)
            else:
                calls = _openai_turns(sc, attempt, with_ids=kind == 0)
            start = base + (sc * 10 + attempt) * 1000
            t = Trajectory(
                agent_id="desk-bot",
                source="api",
                status="completed",
                start_time=start,
                scenario_id=f"tools-{sc}",
                total_reward=reward,
                metadata={"customer": {"tier": "gold", "tags": ["vip", sc]}, "channel": "chat", "n": sc},
            )
            for i, call in enumerate(calls):
                call.timestamp = start + i + 1
            t.steps.append(Step(step_number=0, timestamp=start, llm_calls=calls))
            out.append(t)
    return out


def _fill(store: Store) -> list[Trajectory]:
    written = [*make_support_corpus(4), *make_tool_corpus(6)]
    for t in written:
        store.write(WriteBatch.from_trajectory(t))
    store.add_scores([Score(t.id, "judge", 0.75, source="judge") for t in written[::2]])
    return written


def _rows(folder: Path) -> list[dict[str, Any]]:
    out = []
    for name in ("train.jsonl", "eval.jsonl"):
        out += [json.loads(line) for line in (folder / name).read_text().splitlines()]
    return out


BUILDS: list[dict[str, Any]] = [
    *({"format": f} for f in FORMATS),
    {"format": "openai_dpo", "pair_by": "scenario"},
    {"format": "art", "reward_score": "judge"},
    {"format": "openai", "task": "lookup"},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One store of both corpora, and every build of it: {"trajectories", "builds": [(request, rows)]}."""
    root = tmp_path_factory.mktemp("consumers")
    store = open_store(f"sqlite:///{root / 'store.db'}")
    try:
        written = _fill(store)
        builds = []
        for i, kw in enumerate(BUILDS):
            ds = datasets.build(store, BuildRequest(eval_fraction=0.3, **kw), root=root / f"build-{i}")
            rows = _rows(Path(ds.path))
            assert rows, kw
            builds.append((kw, rows))
        art_lines = b"".join(export.stream(store, "art", TrajectoryFilter(), workers=1))
        full = {t.id: store.get_trajectory(t.id) for t in written}
    finally:
        store.close()
    return {"written": written, "builds": builds, "art_export": art_lines, "full": full}


def _of(built: dict[str, Any], fmt: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    return [(kw, rows) for kw, rows in built["builds"] if kw["format"] == fmt]


# --- OpenAI ------------------------------------------------------------------------------------

_SDK_MESSAGES = TypeAdapter(list[ChatCompletionMessageParam])
_SDK_TOOLS = TypeAdapter(list[ChatCompletionToolParam])


def _sdk_accepts(messages: list[dict[str, Any]], tools: Any = None) -> None:
    """The official SDK's request types accept the messages (``weight`` is the fine-tuning file's
    own key; tool calls are validated as they are read, hence the list())."""
    for m in _SDK_MESSAGES.validate_python([{k: v for k, v in m.items() if k != "weight"} for m in messages]):
        list(m.get("tool_calls") or [])
    if tools:
        _SDK_TOOLS.validate_python(tools)


def _answered_in_order(messages: list[dict[str, Any]]) -> bool:
    """Each tool message's tool_call_id is the id of a tool call made earlier in the row."""
    made: set[str] = set()
    for m in messages:
        made.update(tc["id"] for tc in m.get("tool_calls") or [])
        if m["role"] == "tool" and m.get("tool_call_id") not in made:
            return False
    return True


def test_every_row_of_every_build_passes_its_check(built: dict[str, Any]) -> None:
    for kw, rows in built["builds"]:
        for row in rows:
            assert check_row(kw["format"], row) is None, (kw, row)


def test_openai_rows_pass_the_fine_tuning_checks_and_keep_recorded_ids(built: dict[str, Any]) -> None:
    seen_ids: set[str] = set()
    for kw, rows in _of(built, "openai"):
        for row in rows:
            assert openai_format.check_sft(row) is None, (kw, row)
            _sdk_accepts(row["messages"], row.get("tools"))
            assert _answered_in_order(row["messages"]), row
            seen_ids.update(tc["id"] for m in row["messages"] for tc in m.get("tool_calls") or [])
    for kw, rows in _of(built, "openai_dpo"):
        for row in rows:
            assert openai_format.check_dpo(row) is None, (kw, row)
            for key in ("preferred_output", "non_preferred_output"):
                conversation = row["input"]["messages"] + row[key]
                _sdk_accepts(conversation, row["input"]["tools"])
                assert _answered_in_order(conversation), row
    # The ids the clients recorded (OpenAI's and Anthropic's) are the ids in the rows ...
    assert {"call_00x", "call_00y", "call_31x", "toolu_20", "call_a"} <= seen_ids
    # ... and calls recorded without one get made-up ids that their answers use (checked above).
    assert {"call_1", "call_2"} <= seen_ids


def test_openai_checks_catch_what_consumers_reject() -> None:
    good = {
        "messages": [
            {"role": "user", "content": "where is A-1?"},
            {"role": "assistant", "content": None, "weight": 0, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_order", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
            {"role": "assistant", "content": "It shipped.", "weight": 1},
        ]
    }  # fmt: skip
    assert openai_format.check_sft(good) is None
    _sdk_accepts(good["messages"])

    def bad(path: str, value: Any) -> dict[str, Any]:
        row = json.loads(json.dumps(good))
        *keys, last = path.split(".")
        target: Any = row
        for k in keys:
            target = target[int(k)] if k.isdigit() else target[k]
        target[last] = value
        return row

    # The shape builds wrote before: the tool message named its tool instead of the call's id.
    assert "answers no tool call" in (
        openai_format.check_sft(bad("messages.2.tool_call_id", "call_get_order")) or ""
    )
    assert "JSON string" in (
        openai_format.check_sft(bad("messages.1.tool_calls.0.function.arguments", {})) or ""
    )
    assert "weight" in (openai_format.check_sft(bad("messages.3.weight", 2)) or "")
    assert "role" in (openai_format.check_sft(bad("messages.0.role", "function")) or "")
    assert "nothing in it" in (openai_format.check_sft(bad("messages.3.content", "")) or "")
    assert openai_format.check_sft(bad("messages.0.extra", 1)) is not None
    dpo = {
        "input": {
            "messages": [{k: v for k, v in m.items() if k != "weight"} for m in good["messages"][:3]],
            "tools": [],
        },
        "preferred_output": [{"role": "assistant", "content": "It shipped."}],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }
    assert openai_format.check_dpo(dpo) is None
    assert openai_format.check_dpo({**dpo, "preferred_output": [{"role": "user", "content": "x"}]})
    assert openai_format.check_dpo({**dpo, "non_preferred_output": dpo["preferred_output"]})
    with pytest.raises(ValueError):  # pydantic's ValidationError: the SDK rejects it too
        _sdk_accepts(bad("messages.2.tool_call_id", None)["messages"])


def test_tool_call_ids_recorded_or_made_up_stay_consistent() -> None:
    conv = openai_format.Conversation([["call_1", None], None, "call_1"])
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "a", "arguments": {}}},
        {"type": "function", "function": {"name": "b", "arguments": {"x": 1}}},
    ]}  # fmt: skip
    out = [
        conv.add(call, ["call_1", None]),
        conv.add({"role": "tool", "name": "b", "content": "B"}),  # no id recorded: answers b
        conv.add({"role": "tool", "name": "a", "content": "A"}, "call_1"),
        conv.add({"role": "tool", "name": "a", "content": "late"}, "call_zz"),  # answers nothing left
    ]
    made_up = out[0]["tool_calls"][1]["id"]
    assert out[0]["tool_calls"][0]["id"] == "call_1" and made_up not in ("call_1", "")
    assert out[0]["content"] is None and out[0]["tool_calls"][1]["function"]["arguments"] == '{"x":1}'
    assert out[1] == {"role": "tool", "content": "B", "tool_call_id": made_up}
    assert out[2]["tool_call_id"] == "call_1"
    # A result that answers no call the row holds stays as context, in a message OpenAI takes.
    assert out[3] == {"role": "user", "content": "late"}


# --- ART ---------------------------------------------------------------------------------------


def _art_models() -> Any:
    """ART's real ``trajectories`` module, loaded from the installed openpipe-art without running
    ``art/__init__`` (which imports litellm, weave and the training backends)."""
    try:
        dist = importlib.metadata.distribution("openpipe-art")
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("openpipe-art is not installed (the Makefile's dev install adds it)")
        pytest.skip("openpipe-art is not installed (pip install --no-deps openpipe-art)")
    name = "_openpipe_art_models"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(Path(str(dist.locate_file("art/trajectories.py"))).parent)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.trajectories")


def _art_export_lines(built: dict[str, Any]) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in built["art_export"].splitlines()]
    assert len(lines) == len(built["written"])
    return lines


def _as_trajectory(line: dict[str, Any]) -> dict[str, Any]:
    """An export line as ART's Trajectory fields: the export names the transcript ``messages``
    (the seed's wire contract), ART ``messages_and_choices``."""
    return {"messages_and_choices" if k == "messages" else k: v for k, v in line.items()}


def test_art_rows_and_export_lines_follow_arts_model_rules(built: dict[str, Any]) -> None:
    """The rules of ART's models as ``formats.art`` states them; runs with or without ART."""
    groups = [row for _, rows in _of(built, "art") for row in rows]
    assert groups
    for row in groups:
        assert art_format.check_group(row) is None, row
        assert set(row) <= {"trajectories", "metadata"} and row["metadata"]["scenario_id"]
    for line in _art_export_lines(built):
        assert art_format.check_trajectory(_as_trajectory(line)) is None, line
    # Nested metadata arrives whole, as JSON text; missing metrics are left out, not None.
    by_id = {line["metadata"]["trajectoryId"]: line for line in _art_export_lines(built)}
    tool_t = next(t for t in built["written"] if t.scenario_id == "tools-0")
    line = by_id[tool_t.id]
    assert json.loads(line["metadata"]["customer"]) == {"tier": "gold", "tags": ["vip", 0]}
    assert line["metadata"]["channel"] == "chat" and "durationMs" not in line["metrics"]
    assert line["tools"] == TOOLS


def test_art_rules_catch_what_art_rejects() -> None:
    t = {"messages_and_choices": [{"role": "user", "content": "hi"}], "reward": 1.0}
    assert art_format.check_trajectory(t) is None
    assert art_format.check_trajectory({**t, "metadata": {"customer": {"tier": "gold"}}})
    assert art_format.check_trajectory({**t, "metrics": {"durationMs": None}})
    assert art_format.check_trajectory({**t, "metrics": {"reward_score": "ruler"}})
    assert art_format.check_trajectory({**t, "messages": []})  # ART would drop it silently
    assert art_format.check_trajectory({**t, "tools": [{"type": "function", "name": "flat"}]})
    assert art_format.check_group({"trajectories": [t]}) is None
    # The shape builds wrote before: the scenario at the top level.
    assert art_format.check_group({"scenario_id": "s", "trajectories": [t]})


def test_art_rows_load_in_arts_own_models(built: dict[str, Any]) -> None:
    art = _art_models()
    groups = [row for _, rows in _of(built, "art") for row in rows]
    for row in groups:
        art.TrajectoryGroup(**row)  # the calls that raised on the old rows
        art.TrajectoryGroup.model_validate(row)
        trajectories = [art.Trajectory(**t) for t in row["trajectories"]]
        group = art.TrajectoryGroup(**{**row, "trajectories": trajectories})
        assert len(group) == len(row["trajectories"]) and group.metadata == row["metadata"]
        for t, loaded in zip(row["trajectories"], group.trajectories, strict=True):
            assert set(t) <= set(art.Trajectory.model_fields)  # nothing dropped on the way in
            assert loaded.messages_and_choices == t["messages_and_choices"]
            assert loaded.metadata == t["metadata"] and loaded.metrics == t["metrics"]
            assert loaded.reward == t["reward"] and loaded.tools == (t["tools"] or [])
            # What ART hands its tokenizer: Chat Completions messages, JSON-string arguments.
            _sdk_accepts(loaded.messages(), loaded.tools)


def test_art_export_lines_load_in_arts_own_models(built: dict[str, Any]) -> None:
    art = _art_models()
    for line in _art_export_lines(built):
        art.Trajectory(**line)  # raised for nested metadata and missing metrics
        loaded = art.Trajectory(**_as_trajectory(line))
        assert loaded.metadata == line["metadata"] and loaded.metrics == line["metrics"]
        assert loaded.messages_and_choices == line["messages"] and loaded.tools == line.get("tools")


def test_art_export_lines_are_what_arts_tokenizer_reads(built: dict[str, Any]) -> None:
    """Export lines render their transcript as dataset builds do (``formats.art.messages``): Chat
    Completions messages with JSON-string arguments, each tool message answering an earlier call.
    Before, the export kept recorded tool calls raw (arguments as objects, no ids)."""
    art = _art_models()
    for line in _art_export_lines(built):
        assert art_format.check_chat(line["messages"]) is None, line
        assert _answered_in_order(line["messages"])
        _sdk_accepts(art.Trajectory(**_as_trajectory(line)).messages(), line.get("tools"))


def test_recorded_ids_go_through_the_privacy_filter_and_still_match(store: Store, tmp_path: Path) -> None:
    """Ids are user content like any other string: filtered, and a call and its answer alike."""
    t = make_tool_corpus(1)[0]
    secret = "call_for_buyer7@example.com"
    for call in t.steps[0].llm_calls:
        for tc in call.tool_calls or []:
            tc["id"] = secret if tc["function"]["name"] == "get_order" else tc["id"]
        for m in call.messages or []:
            if m.get("tool_call_id") == "call_00x":
                m["tool_call_id"] = secret
            for tc in m.get("tool_calls") or []:
                tc["id"] = secret if tc["function"]["name"] == "get_order" else tc["id"]
    store.write(WriteBatch.from_trajectory(t))
    for fmt in ("openai", "art"):
        ds = datasets.build(store, BuildRequest(format=fmt, eval_fraction=0), root=tmp_path / fmt)
        text = (Path(ds.path) / "train.jsonl").read_text()
        assert "buyer7@example.com" not in text and "[REDACTED_EMAIL]" in text, fmt
        for row in _rows(Path(ds.path)):
            assert check_row(fmt, row) is None, row
            conversations = [row["messages"]] if fmt == "openai" else [
                t["messages_and_choices"] for t in row["trajectories"]
            ]  # fmt: skip
            for messages in conversations:
                assert _answered_in_order(messages)
                assert any("REDACTED_EMAIL" in m.get("tool_call_id", "") for m in messages) or not any(
                    m["role"] == "tool" for m in messages
                )
