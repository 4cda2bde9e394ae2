"""Export formats in detail, and the export → import round trip (a property test)."""

from __future__ import annotations

import collections
import io
import json
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import make_trajectory
from trajforge import export, jsonutil
from trajforge import privacy as privacy_module
from trajforge.importer import import_file
from trajforge.records import (
    ActionResult,
    LlmCall,
    ProviderAccess,
    Score,
    Step,
    Trajectory,
    WriteBatch,
    to_wire,
)
from trajforge.store import Store, TrajectoryFilter, open_store


def test_zip_folders_are_safe_for_hostile_ids() -> None:
    ids = ["../../etc/passwd", "..", "a/b\\c", "same", "same", "x" * 500, "émoji🙂", ""]
    trajectories = [make_trajectory(n_steps=1) for _ in ids]
    for t, tid in zip(trajectories, ids, strict=True):
        t.id = tid
    data = b"".join(export.iter_zip(trajectories))
    z = zipfile.ZipFile(io.BytesIO(data))
    assert z.testzip() is None
    folders = [e["folder"] for e in json.loads(z.read("manifest.json"))["trajectories"]]
    assert len(set(folders)) == len(ids)
    for name in z.namelist():
        assert not name.startswith(("/", "..")) and "/../" not in name and "\\" not in name
        assert len(name.split("/")[0]) <= 104
    assert [e["trajectoryId"] for e in json.loads(z.read("manifest.json"))["trajectories"]] == ids


def test_art_sends_the_system_message_only_when_it_changes() -> None:
    t = Trajectory(total_reward=0.5)
    for system in ("A", "A", "B", "B", "A"):
        t.steps.append(
            Step(llm_calls=[LlmCall(model="m", system_prompt=system, user_prompt="u", response="r")])
        )
    t.steps[0].action = ActionResult(action_type="X", success=True)
    t.steps[1].action = ActionResult(action_type="X", success=False)
    record = export.art_record(t)
    systems = [m["content"] for m in record["messages"] if m["role"] == "system"]
    assert systems == ["A", "B", "A"]
    assert record["reward"] == 0.5 and record["metrics"]["actionSuccessRate"] == 0.5
    assert record["metadata"]["format"] == export.ART_FORMAT_VERSION


def test_unknown_format_is_an_error_not_a_fallback() -> None:
    import pytest

    from trajforge.errors import InvalidInput

    with pytest.raises(InvalidInput) as exc:
        export.exporter("arrow")
    assert exc.value.field == "format"


def test_seed_shaped_jsonl_is_rebuilt_into_trajectories(tmp_path: Path) -> None:
    rows = [
        {
            "trajectoryId": "t-1",
            "stepId": f"s-{i // 2}",
            "callId": f"c-{i}",
            "purpose": "action",
            "actionType": "REPLY",
            "model": "gpt-x",
            "timestamp": 1_700_000_000_000 + i,
            "request": {
                "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}]
            },
            "response": {"text": f"a{i}"},
            "usage": {"prompt_tokens": 10, "completion_tokens": 2},
        }
        for i in range(4)
    ]
    rows.append({**rows[0], "trajectoryId": "t-2", "callId": "c-x", "request": {"prompt": "plain prompt"}})
    path = tmp_path / "seed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    store = open_store(str(tmp_path / "s.db"))
    counts = import_file(store, path)
    assert counts["trajectories"] == 2 and counts["llmCalls"] == 5
    t = store.get_trajectory("t-1")
    assert t is not None and t.step_count == 2 and t.llm_call_count == 4 and t.total_prompt_tokens == 40
    call = t.steps[1].llm_calls[1]
    assert (call.system_prompt, call.user_prompt, call.response, call.model) == ("sys", "q3", "a3", "gpt-x")
    assert store.get_trajectory("t-2").steps[0].llm_calls[0].user_prompt == "plain prompt"  # type: ignore[union-attr]
    again = import_file(store, path)
    assert again["newTrajectories"] == 0 and again["newLlmCalls"] == 0
    store.close()


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)


@st.composite
def trajectories(draw: st.DrawFn) -> Trajectory:
    start = draw(st.integers(1_600_000_000_000, 1_800_000_000_000))
    t = Trajectory(
        agent_id=draw(texts),
        source=draw(st.sampled_from(["chat", "api", "telegram", "custom"])),
        status=draw(st.sampled_from(["active", "completed", "error", "timeout"])),
        start_time=start,
        end_time=draw(st.none() | st.integers(start, start + 10**7)),
        scenario_id=draw(st.none() | texts),
        batch_id=draw(st.none() | texts),
        group_index=draw(st.none() | st.integers(0, 100)),
        is_training_data=draw(st.booleans()),
        metadata=draw(st.dictionaries(texts, json_values, max_size=3)),
        total_reward=draw(st.none() | st.floats(-10, 10, allow_nan=False)),
    )
    for n in range(draw(st.integers(0, 3))):
        step = Step(
            step_number=n, timestamp=start + n, reward=draw(st.none() | st.floats(-1, 1, allow_nan=False))
        )
        for k in range(draw(st.integers(0, 2))):
            step.llm_calls.append(
                LlmCall(
                    timestamp=start + n * 10 + k,
                    model=draw(texts),
                    system_prompt=draw(st.none() | texts),
                    user_prompt=draw(st.none() | texts),
                    response=draw(st.none() | texts),
                    reasoning=draw(st.none() | texts),
                    messages=draw(
                        st.none()
                        | st.lists(
                            st.fixed_dictionaries({"role": st.just("user"), "content": texts}), max_size=2
                        )
                    ),
                    latency_ms=draw(st.none() | st.floats(0, 1e5)),
                    prompt_tokens=draw(st.none() | st.integers(0, 10**6)),
                    completion_tokens=draw(st.none() | st.integers(0, 10**6)),
                    purpose=draw(st.sampled_from(["action", "reasoning", "other"])),
                )
            )
        if draw(st.booleans()):
            step.provider_accesses.append(
                ProviderAccess(timestamp=start + n, provider_name=draw(texts), data=draw(json_values))
            )
        if draw(st.booleans()):
            step.action = ActionResult(
                action_type=draw(texts),
                parameters=draw(json_values),
                success=draw(st.booleans()),
                immediate_reward=0.1,
            )
        t.steps.append(step)
    if draw(st.booleans()):
        t.scores.append(
            Score(t.id, draw(texts) or "s", draw(st.floats(-1, 1, allow_nan=False)), source="outcome")
        )
    return t


def _first_diff(a: object, b: object, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_diff(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_diff(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} != {b!r}"


def _comparable(t: Trajectory) -> dict:
    wire = to_wire(t)
    for key in ("createdAt", "updatedAt"):
        wire.pop(key)
    return wire


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(trajectories(), min_size=1, max_size=4), fmt=st.sampled_from(["json", "jsonl"]))
def test_export_then_import_round_trips(tmp_path: Path, items: list[Trajectory], fmt: str) -> None:
    # A fresh folder per example: hypothesis reuses tmp_path, and id(items) repeats once freed.
    folder = Path(tempfile.mkdtemp(prefix="rt-", dir=tmp_path))
    src = open_store(str(folder / "src.db"))
    dst = open_store(str(folder / "dst.db"))
    try:
        for t in items:
            src.write(WriteBatch.from_trajectory(t))
        path = folder / f"out.{fmt}"
        with open(path, "wb") as fh:  # the database-assembled fast path
            for chunk in export.stream(src, fmt, TrajectoryFilter()):
                fh.write(chunk)
        records = b"".join(export.exporter(fmt)(src.iter_trajectories(TrajectoryFilter()), True))
        fast = [json.loads(x) for x in path.read_bytes().splitlines()]
        slow = [json.loads(x) for x in records.splitlines()]
        assert slow == fast, _first_diff(slow, fast)
        import_file(dst, path)
        before = [_comparable(t) for t in src.iter_trajectories(TrajectoryFilter())]
        after = [_comparable(t) for t in dst.iter_trajectories(TrajectoryFilter())]
        assert after == before
    finally:
        src.close()
        dst.close()


def test_exports_rendered_by_worker_processes_equal_the_in_process_ones(store: Store) -> None:
    """Paged exports give the same bytes (parquet: the same rows) whether their pages are rendered
    in this process or by two forked workers, raw or privacy-filtered, with or without prompts,
    with a limit that cuts a page."""
    import pyarrow.parquet as pq

    from trajforge import privacy

    ts = [
        make_trajectory(start_time=1_700_000_000_000 + i, prompt=f"mail me at user{i}@example.com", n_steps=1)
        for i in range(11)
    ]
    for t in ts:
        store.write(WriteBatch.from_trajectory(t))
    pf = privacy.for_store(store)
    for fmt in ("jsonl", "json", "art", "parquet"):
        for kw in ({}, {"privacy": pf}, {"include_prompts": False}, {"limit": 7}):
            runs = [
                b"".join(export.stream(store, fmt, TrajectoryFilter(), workers=w, page=3, **kw))
                for w in (1, 2)
            ]
            if fmt == "parquet":
                tables = [pq.read_table(io.BytesIO(r)) for r in runs]
                assert tables[0].equals(tables[1]), kw
                assert tables[0].num_rows == 2 * (7 if "limit" in kw else 11)
            else:
                assert runs[0] == runs[1], (fmt, kw)
            if "privacy" in kw:
                assert b"user3@example.com" not in runs[1]
    docs = json.loads(b"".join(export.stream(store, "json", TrajectoryFilter(), workers=2, page=3)))
    assert [d["id"] for d in docs] == [t.id for t in reversed(ts)]


def test_art_lines_carry_chat_completions_messages_as_builds_render_them() -> None:
    """The ``art`` export renders a trajectory as dataset builds do (``formats.art.messages``):
    ``developer`` becomes ``system``, recorded tool calls (here Anthropic-shaped) become Chat
    Completions calls with JSON-string arguments and their ids, and a tool result answers its call
    by id. Before, the export kept the role and the raw calls, which ART's tokenizer cannot read."""
    from trajforge.formats import art as art_format

    call = LlmCall(
        model="m",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Where is 7?"}],
        tool_calls=[{"id": "toolu_1", "name": "get_order", "input": {"orderId": "7"}}],
    )
    answer = LlmCall(
        model="m",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Where is 7?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "toolu_1", "name": "get_order", "input": {"orderId": "7"}}],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "shipped"},
        ],
        response="It shipped.",
    )
    t = Trajectory(total_reward=1.0, steps=[Step(llm_calls=[call]), Step(llm_calls=[answer])])
    messages = export.art_record(t)["messages"]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is 7?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_order", "arguments": '{"orderId":"7"}'},
                }
            ],
        },
        {"role": "tool", "content": "shipped", "tool_call_id": "toolu_1"},
        {"role": "assistant", "content": "It shipped."},
    ]
    assert art_format.check_chat(messages) is None


def test_every_filtered_path_redacts_the_same_fields(store: Store, tmp_path: Path) -> None:
    """One privacy policy (``privacy.py``): an address in every user-content field reaches no
    privacy-filtered export and no dataset. The scenario id is user content for exports too (it
    was redacted in datasets only); the same filter keeps ids, models and counters."""
    from trajforge import datasets, privacy

    secret = "buyer7@example.com"
    t = make_trajectory(n_steps=2, prompt=f"mail {secret}")
    t.agent_id = f"agent {secret}"
    t.scenario_id = f"scenario {secret}"
    t.metadata = {"customer": {"mail": secret}}
    step = t.steps[0]
    step.observation = {"seen": secret}
    step.metadata = {"note": secret}
    step.action = ActionResult(
        action_type="REPLY",
        action_name=f"reply {secret}",
        parameters={"to": secret},
        result=secret,
        error=secret,
    )
    step.provider_accesses.append(
        ProviderAccess(provider_name="crm", query={"q": secret}, data={"d": secret})
    )
    for c in step.llm_calls:
        c.system_prompt, c.response, c.reasoning = f"sys {secret}", f"ok {secret}", f"why {secret}"
        c.action_type = f"act {secret}"
        c.tool_calls = [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": secret}}}
        ]
        c.tools = [{"type": "function", "function": {"name": "f", "description": secret}}]
    t.scores.append(Score(t.id, "s", 1.0, comment=secret))
    store.write(WriteBatch.from_trajectory(t))
    pf = privacy.for_store(store)
    for fmt in export.FORMATS:
        data = b"".join(export.stream(store, fmt, TrajectoryFilter(), privacy=pf, workers=1))
        assert data and secret.encode() not in data, fmt
        if fmt == "zip":
            data = b"".join(
                zipfile.ZipFile(io.BytesIO(data)).read(n)
                for n in zipfile.ZipFile(io.BytesIO(data)).namelist()
            )
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            data = json.dumps(pq.read_table(io.BytesIO(data)).to_pylist()).encode()
        assert secret.encode() not in data, fmt
        if fmt in ("json", "jsonl", "csv", "parquet"):
            assert b"scenario [REDACTED_EMAIL]" in data, fmt
    for fmt in datasets.FORMATS:
        ds = datasets.build(
            store, datasets.BuildRequest(format=fmt, eval_fraction=0.0, name=fmt), root=tmp_path
        )
        for path in Path(ds.path).rglob("*.jsonl"):
            assert secret not in path.read_text(), (fmt, path)


class _CountingFilter(privacy_module.PrivacyFilter):
    """The store's filter, counting how often each string reaches it."""

    def __init__(self, salt: str) -> None:
        super().__init__(salt, environ={})
        self.seen: collections.Counter[str] = collections.Counter()

    def text(self, s: str) -> str:
        self.seen[s] += 1
        return super().text(s)


def _reference_filter(salt: str) -> privacy_module.PrivacyFilter:
    """The filter as it was before its shortcuts: every string and JSON value through every
    recogniser's gate (the shortcuts must never change a result)."""
    pf = privacy_module.PrivacyFilter(salt, environ={})
    pf._plain = None  # no single-pass shortcut for plain strings, none for unchanged JSON texts
    return pf


def _private_corpus_trajectories() -> list[Trajectory]:
    """Trajectories whose every user-content field holds a corpus text, clean or not, with texts
    repeated across calls, steps and trajectories (a system prompt in every call, one tool list, one
    payload in several steps), JSON values with and without anything to redact, and a few shapes
    the fast paths must not take (escapes, non-ASCII, an integer beyond 64 bits)."""
    from tests import privacy_corpus

    texts = [t for _, t, _ in privacy_corpus.POSITIVES[:40]] + privacy_corpus.NEGATIVES[:40]
    texts += ["plain lowercase words only here", "ascii but with a colon: here", 'a "quoted"\nline', "café °"]
    system = "you are a careful agent, reach the owner at ops@example.com or stay silent"
    tools = [{"type": "function", "function": {"name": "lookup", "description": texts[3]}}]
    shared_payload = {"records": [{"id": 1, "note": "nothing to see here at all"}], "big": 2**70}
    out = []
    for i in range(9):
        t = Trajectory(
            agent_id=f"agent {texts[i]}" if i % 3 else "agent-plain",
            scenario_id=texts[i + 1] if i % 2 else None,
            start_time=1_700_000_000_000 + i,
            metadata={"note": texts[i + 2], "n": i, "clean": "lowercase only"} if i % 4 else {},
        )
        for k in range(3):
            text = texts[(i * 3 + k) % len(texts)]
            step = Step(
                step_number=k,
                timestamp=t.start_time + k,
                observation={"seen": text} if k != 1 else "plain observation words",
                metadata={"k": k} if k else None,
            )
            step.llm_calls.append(
                LlmCall(
                    timestamp=t.start_time + k,
                    system_prompt=system,
                    user_prompt=text,
                    response=texts[(i + k + 7) % len(texts)],
                    reasoning="plain reasoning words" if k else None,
                    messages=[{"role": "user", "content": text}] if k == 2 else None,
                    tools=tools,
                    tool_calls=[{"id": "c1", "function": {"name": "lookup", "arguments": text}}]
                    if k
                    else None,
                    action_type="BUY" if k else "wait",
                )
            )
            step.provider_accesses.append(
                ProviderAccess(
                    timestamp=t.start_time + k,
                    provider_name="crm",
                    query={"q": text} if k else None,
                    data=shared_payload if k != 2 else {"row": texts[(i + 11) % len(texts)]},
                )
            )
            step.action = ActionResult(
                action_type="BUY" if k else "reply",
                parameters={"to": text} if k == 1 else None,
                reasoning="plain words" if k == 2 else None,
                timestamp=t.start_time,
            )
            t.steps.append(step)
        t.scores.append(
            Score(trajectory_id=t.id, name="judge", value=0.5, comment=texts[(i + 5) % len(texts)])
        )
        out.append(t)
    return out


def test_private_exports_filter_each_distinct_text_once_with_the_old_paths_bytes(store: Store) -> None:
    """The privacy-filtered documents and call rows, assembled from rows with each distinct text
    filtered once, are byte for byte what the records path gives with the filter before its
    shortcuts (filter each trajectory, then serialize it); and the system prompt every call
    repeats reaches the filter once per read."""
    for t in _private_corpus_trajectories():
        store.write(WriteBatch.from_trajectory(t))
    flt = TrajectoryFilter()
    salt = "test-salt"
    ref = _reference_filter(salt)
    expected = b"".join(
        jsonutil.dumps_bytes(to_wire(privacy_module.filter_trajectory(ref, t))) + b"\n"
        for t in store.iter_trajectories(flt)
    )
    fast = _CountingFilter(salt)
    got = b"".join(store.iter_json_docs(flt, chunk=2, newline=True, privacy=fast))
    assert got == expected
    assert b"ops@example.com" not in got
    system = "you are a careful agent, reach the owner at ops@example.com or stay silent"
    assert fast.seen[system] == 1

    ref_rows = list(export.call_rows(privacy_module.filter_trajectory(_reference_filter(salt), t)
                                     for t in store.iter_trajectories(flt)))  # fmt: skip
    fast = _CountingFilter(salt)
    rows = list(store.iter_call_rows(flt, chunk=2, privacy=fast))
    assert rows == ref_rows
    assert fast.seen[system] == 1
    # The page renderer (as export workers run it) takes these paths.
    pf = _CountingFilter(salt)
    lines = b"".join(export.stream(store, "jsonl", flt, privacy=pf, workers=1, page=2))
    assert lines == expected
