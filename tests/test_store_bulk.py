"""Batches big enough for the bulk insert path (PostgreSQL: binary COPY through staging tables),
against both backends: stored whole, idempotent by ids, exact under concurrent writers."""

from __future__ import annotations

import threading

from tests.helpers import make_trajectory
from trajforge.records import CallRow, LlmCall, StepHeader, TrajectoryHeader, WriteBatch
from trajforge.store import Store, TrajectoryFilter, open_store
from trajforge.store.pgcopy import MIN_ROWS


def _batch(n: int, tag: str) -> tuple[list, WriteBatch]:
    trajectories = [make_trajectory(n_steps=2, prompt=f"{tag} customer {i} word{tag}{i}x") for i in range(n)]
    batch = WriteBatch()
    for t in trajectories:
        batch.extend(WriteBatch.from_trajectory(t))
    return trajectories, batch


def _totals(store: Store) -> tuple[int, int, int, int]:
    s = store.stats()
    return s["totalTrajectories"], s["totalSteps"], s["totalLlmCalls"], s["totalProviderAccesses"]


def test_a_big_batch_is_stored_whole_and_a_resend_changes_nothing(store: Store) -> None:
    trajectories, batch = _batch(40, "big")
    assert min(len(batch.calls), len(batch.steps), len(batch.accesses)) >= MIN_ROWS
    first = store.write(batch)
    assert (first.new_trajectories, first.new_steps, first.new_calls, first.new_accesses) == (40, 80, 160, 80)
    again = store.write(batch)
    assert (again.new_trajectories, again.new_steps, again.new_calls, again.new_accesses) == (0, 0, 0, 0)
    assert _totals(store) == (40, 80, 160, 80)
    for t in trajectories[::13]:
        got = store.get_trajectory(t.id)
        assert got is not None and got.llm_call_count == 4 and got.step_count == 2
        calls = [c for s in got.steps for c in s.llm_calls]
        want = [c for s in t.steps for c in s.llm_calls]
        assert [(c.call_id, c.user_prompt, c.system_prompt, c.response) for c in calls] == [
            (c.call_id, c.user_prompt, c.system_prompt, c.response) for c in want
        ]
        assert got.steps[0].provider_accesses[0].data == {"orderId": "A-1042", "total": 42.5}
    # Every prompt is searchable, each by the word only its trajectory carries.
    page = store.list_trajectories(TrajectoryFilter(search="wordbig17x"))
    assert [t.id for t in page.items] == [trajectories[17].id] and page.total == 1
    assert store.count(TrajectoryFilter(search="customer")) == 40


def test_a_big_batch_half_of_which_is_stored_counts_only_the_new_half(store: Store) -> None:
    trajectories, batch = _batch(40, "half")
    half = WriteBatch()
    for t in trajectories[:20]:
        half.extend(WriteBatch.from_trajectory(t))
    store.write(half)
    rest = store.write(batch)
    assert (rest.new_trajectories, rest.new_steps, rest.new_calls) == (20, 40, 80)
    assert _totals(store) == (40, 80, 160, 80)
    assert store.stats()["totalPromptTokens"] == 160 * 100


def test_odd_values_in_a_big_batch_are_stored_as_the_small_path_stores_them(store: Store) -> None:
    # Records are typed but not enforced: a float timestamp, an int temperature, a NUL in a text.
    tid = "traj-odd"
    calls = [
        CallRow(
            tid,
            "s1",
            LlmCall(
                call_id=f"c{i}",
                timestamp=1_700_000_000_000.0 + i,  # type: ignore[arg-type]
                model="m\x00x",
                user_prompt=f"nul\x00inside {i}",
                temperature=1,  # type: ignore[arg-type]
                prompt_tokens=3,
            ),
        )
        for i in range(MIN_ROWS + 6)
    ]
    store.write(
        WriteBatch(
            trajectories=[TrajectoryHeader(id=tid, status="completed")],
            steps=[StepHeader(tid, "s1", step_number=0, timestamp=1_700_000_000_000)],
            calls=calls,
        )
    )
    got = store.get_trajectory(tid)
    assert got is not None and got.llm_call_count == MIN_ROWS + 6
    by_id = {c.call_id: c for s in got.steps for c in s.llm_calls}
    c5 = by_id["c5"]
    assert c5.timestamp == 1_700_000_000_005 and c5.temperature == 1.0
    assert c5.user_prompt in ("nul\x00inside 5", "nul\ufffdinside 5")  # PostgreSQL text holds no NUL
    assert c5.model in ("m\x00x", "m\ufffdx")


def test_concurrent_writers_of_the_same_big_batches_lose_and_duplicate_nothing(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    batches = [_batch(20, f"w{k}")[1] for k in range(4)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            start.wait()
            # Each batch is written by two writers at once: its own and the next one's.
            stores[k].write(batches[k])
            stores[k].write(batches[(k + 1) % 4])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert _totals(stores[0]) == (80, 160, 320, 160)
        assert stores[0].stats()["totalPromptTokens"] == 320 * 100
        assert stores[0].count(TrajectoryFilter(search="customer")) == 80
    finally:
        for st in stores:
            st.close()
