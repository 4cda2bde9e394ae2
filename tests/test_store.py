"""The Store suite: every test runs against SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import make_trajectory
from trajforge.errors import InvalidInput, InvalidQuery
from trajforge.records import (
    CallRow,
    LlmCall,
    Score,
    StepHeader,
    TrajectoryHeader,
    WriteBatch,
    now_ms,
)
from trajforge.store import Store, TrajectoryFilter, open_store
from trajforge.store.stats import bucket_value, latency_bucket


def put(store: Store, *trajectories):
    for t in trajectories:
        store.write(WriteBatch.from_trajectory(t))
    return trajectories


def test_migrations_are_recorded_and_not_reapplied(store: Store, store_url: str) -> None:
    from trajforge.store.migrations import MIGRATIONS

    names = [m.name for m in MIGRATIONS]
    assert store.migrations() == names and names[0] == "0001_trajectories"
    again = open_store(store_url)
    try:
        assert again.migrations() == names
    finally:
        again.close()


def test_write_and_read_back_everything(store: Store) -> None:
    (t,) = put(store, make_trajectory(n_steps=3, calls_per_step=2, metadata={"k": [1, 2], "ü": "é"}))
    got = store.get_trajectory(t.id)
    assert got is not None
    assert (got.step_count, got.llm_call_count, got.provider_access_count) == (3, 6, 3)
    assert (got.total_prompt_tokens, got.total_completion_tokens) == (600, 120)
    assert got.metadata == {"k": [1, 2], "ü": "é"}
    assert got.status == "completed" and got.total_reward == 1.0 and got.duration_ms == 1000
    assert [s.step_number for s in got.steps] == [0, 1, 2]
    call = got.steps[1].llm_calls[1]
    orig = t.steps[1].llm_calls[1]
    assert call.call_id == orig.call_id
    assert (call.system_prompt, call.user_prompt, call.response, call.reasoning) == (
        orig.system_prompt,
        orig.user_prompt,
        orig.response,
        orig.reasoning,
    )
    assert got.steps[0].provider_accesses[0].data == {"orderId": "A-1042", "total": 42.5}
    assert got.steps[0].action is not None and got.steps[0].action.parameters == {"orderId": "A-1042"}
    assert store.get_trajectory("nope") is None


def test_resending_the_same_ids_never_duplicates(store: Store) -> None:
    t = make_trajectory()
    batch = WriteBatch.from_trajectory(t)
    first = store.write(batch)
    second = store.write(batch)
    assert (first.new_trajectories, first.new_steps, first.new_calls) == (1, 2, 4)
    assert (second.new_trajectories, second.new_steps, second.new_calls) == (0, 0, 0)
    got = store.get_trajectory(t.id)
    assert got is not None and got.llm_call_count == 4 and got.step_count == 2
    assert sum(len(s.llm_calls) for s in got.steps) == 4
    assert store.stats()["totalLlmCalls"] == 4


def test_incremental_writes_keep_counters_and_never_reopen(store: Store) -> None:
    tid = "traj-incremental"
    store.write(
        WriteBatch(trajectories=[TrajectoryHeader(id=tid, agent_id="a", source="chat", status="active")])
    )
    store.write(
        WriteBatch(
            steps=[StepHeader(tid, "s1", step_number=0, timestamp=now_ms())],
            calls=[CallRow(tid, "s1", LlmCall(model="m", user_prompt="hi there", prompt_tokens=5))],
        )
    )
    store.write(
        WriteBatch(trajectories=[TrajectoryHeader(id=tid, status="completed", end_time=now_ms() + 5)])
    )
    # A late replay of the opening header must not reopen it.
    store.write(WriteBatch(trajectories=[TrajectoryHeader(id=tid, status="active")]))
    got = store.get_trajectory(tid)
    assert got is not None
    assert got.status == "completed" and got.agent_id == "a" and got.llm_call_count == 1
    assert got.total_prompt_tokens == 5 and got.duration_ms is not None


def test_calls_for_an_unknown_trajectory_are_kept(store: Store) -> None:
    store.write(WriteBatch(calls=[CallRow("orphan", "s", LlmCall(model="m", user_prompt="kept"))]))
    got = store.get_trajectory("orphan")
    assert got is not None and got.llm_call_count == 1 and got.steps[0].llm_calls[0].user_prompt == "kept"


def test_list_filters_and_pagination(store: Store) -> None:
    base = 1_700_000_000_000
    put(
        store,
        *[
            make_trajectory(
                start_time=base + i * 1000,
                source="chat" if i % 2 else "telegram",
                status="completed" if i % 3 else "error",
                agent_id=f"agent-{i % 2}",
                scenario_id=f"sc-{i % 4}",
                batch_id="b1" if i < 5 else "b2",
                reward=i / 10,
                is_training_data=i == 3,
            )
            for i in range(12)
        ],
    )
    page = store.list_trajectories(TrajectoryFilter(), limit=5)
    assert page.total == 12 and len(page.items) == 5
    assert [t.start_time for t in page.items] == sorted((t.start_time for t in page.items), reverse=True)
    rest = store.list_trajectories(TrajectoryFilter(), limit=5, offset=10)
    assert len(rest.items) == 2 and rest.total == 12

    def total(**kw):
        return store.list_trajectories(TrajectoryFilter(**kw)).total

    assert total(source="chat") == 6
    assert total(status="error") == 4
    assert total(agent_id="agent-0") == 6
    assert total(scenario_id="sc-1") == 3
    assert total(batch_id="b1") == 5
    assert total(is_training_data=True) == 1
    assert total(min_reward=0.5) == 7
    assert total(max_reward=0.25) == 3
    assert total(start_date=base + 3000, end_date=base + 5000) == 3
    assert total(source="chat", status="completed", batch_id="b2") == 3
    assert store.count(TrajectoryFilter(source="telegram")) == 6
    ids = [t.id for t in page.items[:2]]
    assert {t.id for t in store.list_trajectories(TrajectoryFilter(trajectory_ids=ids)).items} == set(ids)
    assert total(trajectory_ids=[]) == 0


def test_filter_validation_names_the_field() -> None:
    with pytest.raises(InvalidInput) as exc:
        TrajectoryFilter(status="finished")
    assert exc.value.field == "status"
    with pytest.raises(InvalidInput) as exc:
        TrajectoryFilter(start_date=10, end_date=5)
    assert exc.value.field == "startDate"


def test_full_text_search(store: Store) -> None:
    a = make_trajectory(prompt="The parcel never arrived, send a replacement", metadata={"tier": "gold"})
    b = make_trajectory(prompt="Please cancel my subscription today", metadata={"tier": "silver"})
    c = make_trajectory(prompt="Where is my parcel?", metadata={"tier": "silver"})
    put(store, a, b, c)

    def hits(q: str) -> set[str]:
        return {t.id for t in store.list_trajectories(TrajectoryFilter(search=q)).items}

    assert hits("parcel") == {a.id, c.id}
    assert hits("PARCEL replacement") == {a.id}
    assert hits("parcel silver") == {c.id}  # terms may sit in different texts (prompt, metadata)
    assert hits('"never arrived"') == {a.id}
    assert hits('"arrived never"') == set()
    assert hits("subscr*") == {b.id}
    assert hits("replacement OR subscription") == {a.id, b.id}
    assert hits("parcel -replacement") == {c.id}
    assert hits("REFUND") == {a.id, b.id, c.id}  # responses are indexed
    assert hits("money") == {a.id, b.id, c.id}  # and reasoning
    assert hits("zzzunknown") == set()
    assert store.list_trajectories(TrajectoryFilter(search="parcel")).total == 2
    for bad in ['"unbalanced', "OR parcel", "-parcel", "parcel OR"]:
        with pytest.raises(InvalidQuery):
            store.list_trajectories(TrajectoryFilter(search=bad))
    # Characters that mean something to FTS5 or tsquery are just text.
    assert hits("parcel* : ' ^ ( ) {} \\ ;") == {a.id, c.id}


def test_a_text_stored_as_payload_becomes_searchable_when_used_as_prompt(store: Store) -> None:
    t1 = make_trajectory(n_steps=1, calls_per_step=1)
    t1.steps[0].llm_calls[0].messages = [{"role": "user", "content": "x"}]
    put(store, t1)
    # The same text as a (non-indexed) message list first, then as an indexed prompt.
    body = '[{"role":"user","content":"x"}]'
    t2 = make_trajectory(n_steps=1, calls_per_step=1, prompt=body)
    t2.steps[0].llm_calls[0].user_prompt = body
    put(store, t2)
    assert {t.id for t in store.list_trajectories(TrajectoryFilter(search='"role user content"')).items} == {
        t2.id
    }


def _owners(store: Store) -> tuple[dict[int, str | None], dict[int, set[str]]]:
    """Each text's recorded owner, and the trajectories that really link it."""
    with store._read_tx() as cur:  # type: ignore[attr-defined]
        owners = dict(store._ex(cur, "SELECT id, owner FROM texts").fetchall())  # type: ignore[attr-defined]
        users: dict[int, set[str]] = {}
        for text_id, tid in store._ex(cur, "SELECT text_id, trajectory_id FROM trajectory_texts"):  # type: ignore[attr-defined]
            users.setdefault(text_id, set()).add(tid)
    return owners, users


def _check_owners(store: Store) -> None:
    owners, users = _owners(store)
    for text_id, owner in owners.items():
        # The invariant search relies on: an owner is the one trajectory using the text.
        assert owner is None or users.get(text_id) == {owner}, (text_id, owner, users.get(text_id))


def test_a_text_keeps_its_one_owner_until_another_trajectory_uses_it(store: Store) -> None:
    # Shared within one batch, then across batches, then re-sent and deleted: every search finds
    # every trajectory that uses a matching text, however the text came to be shared.
    a = make_trajectory(prompt="alpha ownedword")
    b = make_trajectory(prompt="beta")
    b.steps[0].llm_calls[0].user_prompt = a.steps[0].llm_calls[0].user_prompt  # "alpha ownedword ..."
    batch = WriteBatch.from_trajectory(a)
    batch.extend(WriteBatch.from_trajectory(b))
    store.write(batch)
    c = make_trajectory(prompt="gamma")
    c.steps[1].llm_calls[1].response = a.steps[1].llm_calls[0].user_prompt  # shared by a later batch
    put(store, c)
    put(store, a)  # re-sent: still its own texts' owner
    _check_owners(store)
    owners, users = _owners(store)
    # Texts used by one trajectory have it as owner (that is what makes the search fast).
    assert all(owners[i] == next(iter(u)) for i, u in users.items() if len(u) == 1)

    def hits(q: str) -> set[str]:
        return {t.id for t in store.list_trajectories(TrajectoryFilter(search=q)).items}

    def counted(q: str) -> int:
        return store.count(TrajectoryFilter(search=q))

    assert hits('"alpha ownedword step 0 call 0"') == {a.id, b.id}
    assert hits('"alpha ownedword step 1 call 0"') == {a.id, c.id}
    assert hits("ownedword") == {a.id, b.id, c.id} and counted("ownedword") == 3
    assert hits("ownedword beta") == {b.id} and hits("ownedword -gamma") == {a.id, b.id}
    assert {t.id for t in store.iter_trajectories(TrajectoryFilter(search="gamma"), full=False)} == {c.id}
    assert store.delete([a.id]) == 1
    _check_owners(store)
    assert hits("ownedword") == {b.id, c.id} and counted("ownedword") == 2


def test_search_pages_follow_the_list_order_for_many_and_few_hits(store: Store) -> None:
    # PostgreSQL pages many hits by walking the newest trajectories and few by fetching each hit:
    # both must give the list's order, totals and offsets (equal start times break ties by id).
    ts = [
        make_trajectory(
            prompt="common " + ("rareword" if i == 17 else "plain"),
            start_time=1_700_000_000_000 + (i // 3) * 1000,
            source="chat" if i % 2 else "api",
            n_steps=1,
            calls_per_step=1,
        )
        for i in range(30)
    ]
    put(store, *ts)
    newest = sorted(ts, key=lambda t: (t.start_time, t.id), reverse=True)
    for flt, expected in [
        (TrajectoryFilter(search="common"), newest),
        (TrajectoryFilter(search="rareword"), [ts[17]]),
        (TrajectoryFilter(search="common", source="chat"), [t for t in newest if t.source == "chat"]),
        (TrajectoryFilter(search="common -rareword"), [t for t in newest if t is not ts[17]]),
    ]:
        got = []
        for offset in range(0, 35, 7):
            page = store.list_trajectories(flt, limit=7, offset=offset)
            assert page.total == len(expected), flt
            got.extend(t.id for t in page.items)
        assert got == [t.id for t in expected], flt


def test_the_owner_migration_fills_in_owners_of_existing_texts(store: Store, store_url: str) -> None:
    a, _ = put(store, make_trajectory(prompt="alpha"), make_trajectory(prompt="beta"))
    expected, _ = _owners(store)
    # Back to the schema before migration 0008, then open again: the migration fills owners in.
    with store._write_tx() as cur:  # type: ignore[attr-defined]
        store._ex(cur, "ALTER TABLE texts DROP COLUMN owner")  # type: ignore[attr-defined]
        store._ex(cur, "DELETE FROM schema_migrations WHERE name = '0008_text_owner'")  # type: ignore[attr-defined]
    store.close()
    again = open_store(store_url)
    try:
        owners, _ = _owners(again)
        _check_owners(again)
        assert owners == expected and sum(o is not None for o in owners.values()) >= 8
        assert {t.id for t in again.list_trajectories(TrajectoryFilter(search="alpha")).items} == {a.id}
        assert again.count(TrajectoryFilter(search="refund")) == 2
    finally:
        again.close()


def test_texts_are_stored_once(store: Store) -> None:
    put(store, *[make_trajectory(prompt="same prompt") for _ in range(3)])
    with store._read_tx() as cur:  # type: ignore[attr-defined]
        n_texts = store._ex(cur, "SELECT COUNT(*) FROM texts").fetchone()[0]  # type: ignore[attr-defined]
    # 4 user prompts (step × call) + system + response + reasoning + metadata + provider payload
    assert n_texts == 4 + 5


def test_stats_match_filtered_and_rollup_paths(store: Store) -> None:
    day = 86_400_000
    put(
        store,
        make_trajectory(start_time=1_700_000_000_000, model="a", latency_ms=100, reward=1.0, source="chat"),
        make_trajectory(
            start_time=1_700_000_000_000 + day, model="b", latency_ms=1000, reward=0.0, source="api"
        ),
        make_trajectory(
            start_time=1_700_000_000_000 + day, model="b", latency_ms=1000, reward=None, status="error"
        ),
    )
    s = store.stats()
    assert s["totalTrajectories"] == 3 and s["totalLlmCalls"] == 12 and s["totalSteps"] == 6
    assert s["totalPromptTokens"] == 1200 and s["totalCompletionTokens"] == 240
    assert s["bySource"] == {"chat": 2, "api": 1}
    assert s["byStatus"] == {"completed": 2, "error": 1}
    assert {m["model"]: m["llmCalls"] for m in s["byModel"]} == {"a": 4, "b": 8}
    assert s["reward"] == {"count": 2, "mean": 0.5, "min": 0.0, "max": 1.0}
    assert [d["date"] for d in s["perDay"]] == ["2023-11-14", "2023-11-15"]
    assert [d["llmCalls"] for d in s["perDay"]] == [4, 8]
    assert [d["trajectories"] for d in s["perDay"]] == [1, 2]
    # Percentiles come from a log histogram: within 2.5% of the exact value.
    assert s["latencyMs"]["p50"] == pytest.approx(1000, rel=0.025)
    assert s["latencyMs"]["p99"] == pytest.approx(1000, rel=0.025)
    assert s["latencyMs"]["mean"] == pytest.approx((4 * 100 + 8 * 1000) / 12)
    # A filter that matches everything computes the same numbers from the calls themselves.
    everything = store.stats(TrajectoryFilter(start_date=0))
    assert {k: v for k, v in everything.items()} == s
    only_a = store.stats(TrajectoryFilter(source="chat", status="completed"))
    assert only_a["totalLlmCalls"] == 4 and [m["model"] for m in only_a["byModel"]] == ["a"]


def test_trajectory_rollup_follows_every_change(store: Store) -> None:
    """Totals, counts per source/status/day and reward sums kept by the rollup equal a scan of the
    trajectories after inserts, appended steps, status and reward changes, deletes and the sweep."""
    day = 86_400_000
    ts = [
        make_trajectory(
            start_time=1_700_000_000_000 + (i % 3) * day, source=("chat", "api")[i % 2], reward=i / 10
        )
        for i in range(9)
    ]
    put(store, *ts)
    grow = ts[0]
    grow.steps.append(make_trajectory(n_steps=1).steps[0])
    put(store, grow)  # an appended step: counts grow, the trajectory does not double
    store.write(WriteBatch(trajectories=[TrajectoryHeader(id=ts[1].id, status="error", total_reward=0.25)]))
    store.write(WriteBatch(trajectories=[TrajectoryHeader(id=ts[2].id, source="telegram", start_time=1)]))
    store.delete([ts[3].id, ts[4].id])
    put(store, make_trajectory(status="active", reward=None))
    store.sweep_timeouts(older_than_ms=-1000)

    def scanned(flt: TrajectoryFilter) -> TrajectoryFilter:
        return TrajectoryFilter(source=flt.source, status=flt.status, start_date=0)

    for flt in (TrajectoryFilter(), TrajectoryFilter(source="api"), TrajectoryFilter(status="error")):
        assert store.count(flt) == store.count(scanned(flt))
        rolled, scan = store.stats(flt), store.stats(scanned(flt))
        assert rolled["reward"]["mean"] == pytest.approx(scan["reward"]["mean"])
        rolled["reward"]["mean"] = scan["reward"]["mean"]
        assert rolled == scan
    s = store.stats()
    assert s["totalTrajectories"] == 8 and s["byStatus"] == {"completed": 6, "error": 1, "timeout": 1}
    assert s["bySource"] == {"chat": 4, "api": 3, "telegram": 1}
    store.delete(all=True)
    assert store.count(TrajectoryFilter()) == 0 and store.stats()["totalTrajectories"] == 0


def test_latency_buckets_are_accurate() -> None:
    for value in (0.4, 1, 7, 99, 812, 12_345, 1e6):
        assert bucket_value(latency_bucket(value)) == pytest.approx(value, rel=0.03, abs=0.6)
    assert latency_bucket(None) == -1


def test_delete_by_ids_removes_everything_and_keeps_shared_texts(store: Store) -> None:
    a, b = put(
        store, make_trajectory(prompt="alpha unique words"), make_trajectory(prompt="beta unique words")
    )
    assert store.delete([a.id, "missing"]) == 1
    assert store.get_trajectory(a.id) is None
    assert store.list_trajectories(TrajectoryFilter(search="alpha")).total == 0
    assert store.list_trajectories(TrajectoryFilter(search="beta")).total == 1
    kept = store.get_trajectory(b.id)
    assert (
        kept is not None and kept.steps[0].llm_calls[0].system_prompt == b.steps[0].llm_calls[0].system_prompt
    )
    s = store.stats()
    assert s["totalLlmCalls"] == 4 and sum(m["llmCalls"] for m in s["byModel"]) == 4
    with store._read_tx() as cur:  # type: ignore[attr-defined]
        bodies = [r[0] for r in store._ex(cur, "SELECT body FROM texts").fetchall()]  # type: ignore[attr-defined]
    assert not any("alpha" in body for body in bodies)
    assert store.delete([]) == 0


def test_delete_all(store: Store) -> None:
    put(store, make_trajectory(), make_trajectory())
    assert store.delete(all=True) == 2
    assert store.stats()["totalTrajectories"] == 0 and store.stats()["byModel"] == []
    assert store.list_trajectories(TrajectoryFilter(search="refund")).total == 0
    put(store, make_trajectory(prompt="after the wipe"))
    assert store.list_trajectories(TrajectoryFilter(search="wipe")).total == 1


def test_scores_upsert_by_name_and_source(store: Store) -> None:
    (t,) = put(store, make_trajectory())
    store.add_scores([Score(t.id, "csat", 0.5, source="outcome")])
    store.add_scores(
        [
            Score(t.id, "csat", 0.9, comment="updated", source="outcome"),
            Score(t.id, "csat", 0.1, source="judge"),
        ]
    )
    scores = store.get_scores([t.id])[t.id]
    assert sorted((s.source, s.value) for s in scores) == [("judge", 0.1), ("outcome", 0.9)]
    got = store.get_trajectory(t.id)
    assert got is not None and len(got.scores) == 2


def test_settings_roundtrip(store: Store) -> None:
    assert store.get_setting("logging_enabled", True) is True
    store.set_setting("logging_enabled", False)
    assert store.get_setting("logging_enabled") is False
    store.set_setting("auto", {"threshold": 5, "perTask": {"x": 1}})
    assert store.get_setting("auto") == {"threshold": 5, "perTask": {"x": 1}}


def test_sweep_marks_stale_active_trajectories(store: Store) -> None:
    stale = make_trajectory(status="active")
    put(store, stale)
    assert store.sweep_timeouts(older_than_ms=60_000) == 0
    assert store.sweep_timeouts(older_than_ms=-1000) == 1
    got = store.get_trajectory(stale.id)
    assert got is not None and got.status == "timeout" and got.end_time is not None
    # A late close from the agent still wins over the sweep.
    store.write(WriteBatch(trajectories=[TrajectoryHeader(id=stale.id, status="completed")]))
    assert store.get_trajectory(stale.id).status == "completed"  # type: ignore[union-attr]


def test_completed_transitions_are_reported_once(store: Store) -> None:
    t = make_trajectory(status="completed")
    assert store.write(WriteBatch.from_trajectory(t)).completed == [t.id]
    assert store.write(WriteBatch.from_trajectory(t)).completed == []


def test_iter_trajectories_streams_everything_in_order(store: Store) -> None:
    base = 1_700_000_000_000
    put(store, *[make_trajectory(start_time=base + (i // 3) * 1000, n_steps=1) for i in range(23)])
    got = list(store.iter_trajectories(TrajectoryFilter(), chunk=5))
    assert len(got) == 23 and len({t.id for t in got}) == 23
    keys = [(t.start_time, t.id) for t in got]
    assert keys == sorted(keys, reverse=True)
    assert all(len(t.steps) == 1 and len(t.steps[0].llm_calls) == 2 for t in got)


def test_concurrent_writers_lose_and_duplicate_nothing(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    trajectories = [make_trajectory(n_steps=2, prompt=f"writer {i}") for i in range(40)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for t in trajectories[k::4]:
                batch = WriteBatch.from_trajectory(t)
                stores[k].write(batch)
                stores[(k + 1) % 4].write(batch)  # the same ids again, from another writer
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    s = stores[0].stats()
    assert s["totalTrajectories"] == 40 and s["totalLlmCalls"] == 160 and s["totalSteps"] == 80
    for st in stores:
        st.close()


def test_database_assembled_documents_equal_the_record_path(store: Store) -> None:
    import orjson

    from trajforge import export
    from trajforge.records import to_wire

    t = make_trajectory(n_steps=3, metadata={"nested": {"list": [1, None, "x"]}, "ü": True})
    t.steps[0].llm_calls[0].messages = [{"role": "user", "content": 'with "quotes" and \n newline'}]
    t.steps[0].llm_calls[0].tool_calls = [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    t.steps[1].done = True
    t.steps[2].observation = {"seen": [1, 2]}
    t.scores.append(Score(t.id, "s", 0.25, source="judge"))
    put(store, t, make_trajectory(n_steps=1))
    docs = [orjson.loads(d) for d in store.iter_json_docs(TrajectoryFilter())]
    assert docs == [to_wire(x) for x in store.iter_trajectories(TrajectoryFilter())]
    rows = list(store.iter_call_rows(TrajectoryFilter()))
    expected = list(export.call_rows(store.iter_trajectories(TrajectoryFilter())))
    assert [r[:10] + r[11:] for r in rows] == [r[:10] + r[11:] for r in expected]
    assert [orjson.loads(r[10]) for r in rows] == [orjson.loads(r[10]) for r in expected]  # action JSON


def test_a_calls_task_is_the_same_in_python_and_in_sql() -> None:
    """``records.task_of`` and its SQL twin ``TASK_SQL`` (the store's task counters) agree, empty
    strings included."""
    import sqlite3

    from trajforge.records import TASK_SQL, task_of

    cases = [(a, p) for a in (None, "", "REPLY") for p in (None, "", "reasoning")]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE llm_calls (n INTEGER, action_type TEXT, purpose TEXT)")
    db.executemany("INSERT INTO llm_calls VALUES (?, ?, ?)", [(i, a, p) for i, (a, p) in enumerate(cases)])
    in_sql = [task for (task,) in db.execute(f"SELECT {TASK_SQL} FROM llm_calls ORDER BY n")]
    assert in_sql == [task_of(a, p) for a, p in cases]


def test_after_write_steps_run_at_the_end_of_the_write_in_its_transaction(store: Store) -> None:
    """The steps listed in ``after_write`` (the auto-training counters) see what the write changed;
    one that fails takes the whole write back with it."""
    from trajforge.store.sql import SqlStore

    assert isinstance(store, SqlStore)
    seen: list[list[str]] = []
    store.after_write.append(lambda cur, result, now: seen.append(list(result.completed)))
    (t,) = put(store, make_trajectory())
    assert seen == [[t.id]]

    def fail(cur: object, result: object, now: int) -> None:
        raise RuntimeError("a step failed")

    store.after_write.append(fail)
    later = make_trajectory()
    with pytest.raises(RuntimeError, match="a step failed"):
        put(store, later)
    assert store.get_trajectory(later.id) is None
    assert store.count(TrajectoryFilter()) == 1
