"""The capture SDK through a real store."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

import trajforge
import trajforge.errors
from trajforge.capture.transport import StoreSink, TransientError
from trajforge.capture.writer import BackgroundWriter
from trajforge.records import WriteBatch
from trajforge.store import Store, TrajectoryFilter, open_store


def test_the_readme_example_runs_as_written(store_url: str) -> None:
    markets = [{"id": "btc", "price": 100}]
    sp, up, r, th, res = (
        "system prompt",
        "which market should I buy?",
        '{"buy": "btc"}',
        "btc is cheap",
        {"ok": 1},
    )
    rec = trajforge.Recorder(store_url)
    with rec.trajectory(agent_id="a1", source="chat", scenario_id="s1") as t:
        with t.step() as s:
            s.provider("market_data", data=markets, purpose="find opportunities", query={"q": "btc"})
            s.llm_call(model="m", system_prompt=sp, user_prompt=up, response=r, reasoning=th,
                       purpose="action", action_type="BUY", latency_ms=812, prompt_tokens=900,
                       completion_tokens=120, temperature=0.2, max_tokens=256)  # fmt: skip
            s.action("BUY", params={"amount": 5}, result=res, success=True, reward=0.1)
        t.reward(0.8)
    rec.flush()
    rec.close()
    store = open_store(store_url)
    try:
        got = store.get_trajectory(t.id)
        assert got is not None
        assert (got.agent_id, got.source, got.status, got.scenario_id, got.total_reward) == (
            "a1",
            "chat",
            "completed",
            "s1",
            0.8,
        )
        assert (got.step_count, got.llm_call_count, got.provider_access_count) == (1, 1, 1)
        assert (got.total_prompt_tokens, got.total_completion_tokens) == (900, 120)
        step = got.steps[0]
        call = step.llm_calls[0]
        assert (call.system_prompt, call.user_prompt, call.response, call.reasoning) == (sp, up, r, th)
        assert (call.latency_ms, call.temperature, call.max_tokens, call.action_type) == (
            812,
            0.2,
            256,
            "BUY",
        )
        assert step.provider_accesses[0].data == markets and step.provider_accesses[0].query == {"q": "btc"}
        assert (
            step.action is not None and step.action.parameters == {"amount": 5} and step.action.result == res
        )
        assert step.action.immediate_reward == 0.1
        assert trajforge.validate_trajectory(got).valid
        assert got.end_time is not None and got.end_time >= got.start_time
    finally:
        store.close()


def read(store_url: str) -> tuple[Store, list[trajforge.Trajectory]]:
    store = open_store(store_url)
    return store, list(store.iter_trajectories(TrajectoryFilter()))


def test_wrap_action_sync_and_async(tmp_path: Path) -> None:
    url = str(tmp_path / "w.db")
    rec = trajforge.Recorder(url)

    @rec.wrap_action("BUY_SHARES")
    def buy(market: str, amount: int = 1) -> dict:
        if amount > 10:
            raise ValueError("too much")
        return {"bought": amount}

    @rec.wrap_action("SELL", reward_on_success=1.0, reward_on_error=-1.0)
    async def sell(amount: int) -> int:
        if amount < 0:
            raise RuntimeError("negative")
        return amount

    with rec.trajectory(agent_id="a", source="autonomy") as t:
        with t.step():
            assert buy("btc", amount=3) == {"bought": 3}
        with pytest.raises(ValueError, match="too much"):
            buy("eth", 11)  # opens its own step inside the trajectory
        assert asyncio.run(sell(2)) == 2
    with pytest.raises(RuntimeError):
        asyncio.run(sell(-1))  # outside any trajectory: a trajectory of its own, marked error
    rec.close()
    store, got = read(url)
    by_source = {x.source: x for x in got}
    main = store.get_trajectory(t.id)
    assert main is not None and main.status == "completed"
    actions = [s.action for s in main.steps]
    assert [(a.action_type, a.success, a.immediate_reward) for a in actions if a] == [
        ("BUY_SHARES", True, 0.1),
        ("BUY_SHARES", False, -0.1),
        ("SELL", True, 1.0),
    ]
    assert actions[0] is not None and actions[0].parameters == {"market": "btc", "amount": 3}
    assert actions[1] is not None and actions[1].error == "ValueError: too much"
    assert main.total_reward == pytest.approx(0.1 - 0.1 + 1.0)
    own = store.get_trajectory(by_source["api"].id)
    assert own is not None and own.status == "error" and own.steps[0].action.immediate_reward == -1.0  # type: ignore[union-attr]
    store.close()


def test_context_is_per_thread_and_per_task(tmp_path: Path) -> None:
    url = str(tmp_path / "ctx.db")
    rec = trajforge.Recorder(url)

    def agent(name: str) -> None:
        with rec.trajectory(agent_id=name) as t, t.step() as s:
            for i in range(20):
                assert trajforge.current_step() is s
                s.llm_call(model="m", user_prompt=f"{name} {i}")
                time.sleep(0.001)

    threads = [threading.Thread(target=agent, args=(f"thread-{k}",)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    async def task(name: str) -> None:
        async with rec.trajectory(agent_id=name) as t, t.step() as s:
            for i in range(10):
                assert trajforge.current_step() is s
                s.llm_call(model="m", user_prompt=f"{name} {i}")
                await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(task(f"task-{k}") for k in range(3)))

    asyncio.run(main())
    assert trajforge.current_trajectory() is None
    rec.close()
    store, got = read(url)
    assert len(got) == 7
    for t in got:
        prompts = [c.user_prompt or "" for s in t.steps for c in s.llm_calls]
        assert prompts and all(p.startswith(t.agent_id + " ") for p in prompts)
    store.close()


def test_exception_marks_error_and_propagates(tmp_path: Path) -> None:
    url = str(tmp_path / "e.db")
    rec = trajforge.Recorder(url)
    with pytest.raises(KeyError), rec.trajectory(agent_id="x") as t, t.step() as s:
        s.llm_call(model="m", user_prompt="p")
        raise KeyError("boom")
    rec.close()
    store, (got,) = read(url)
    assert got.status == "error" and "KeyError" in got.metadata["error"]
    store.close()


def test_sdk_never_raises_on_its_own_failures(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = trajforge.Recorder(str(tmp_path / "n.db"))
    with caplog.at_level(logging.ERROR, logger="trajforge.capture"), rec.trajectory() as t, t.step() as s:
        assert s.llm_call(model="m", not_a_field=1) is None  # logged, not raised
        s.provider("p", data={1, 2, 3})  # a set is not JSON: stored as a list
        s.llm_call(model="m", user_prompt="bad surrogate \ud800 here")
    assert "llm_call failed" in caplog.text
    rec.close()
    store, (got,) = read(str(tmp_path / "n.db"))
    calls = got.steps[0].llm_calls
    assert len(calls) == 1 and calls[0].user_prompt == "bad surrogate ? here"
    assert sorted(got.steps[0].provider_accesses[0].data) == [1, 2, 3]
    store.close()


def test_logging_can_be_disabled_by_env_and_by_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "d.db")
    monkeypatch.setenv("TRAJFORGE_DISABLE_LOGGING", "1")
    rec = trajforge.Recorder(url)
    with rec.trajectory() as t, t.step() as s:
        s.llm_call(model="m")
    calls = []

    @rec.wrap_action("X")
    def act() -> int:
        calls.append(1)
        return 1

    assert act() == 1 and calls == [1]
    rec.close()
    monkeypatch.delenv("TRAJFORGE_DISABLE_LOGGING")
    store = open_store(url)
    assert store.count(TrajectoryFilter()) == 0
    store.set_setting("logging_enabled", False)
    rec = trajforge.Recorder(url)
    # The writer reads the setting on its first cycle, in its own thread: however late that is.
    deadline = time.monotonic() + 10
    while rec.enabled:
        assert time.monotonic() < deadline, "the recorder never read logging_enabled=False from its store"
        time.sleep(0.02)
    with rec.trajectory() as t, t.step() as s:
        s.llm_call(model="m")
    store.set_setting("logging_enabled", True)
    rec._writer.settings_refresh_s = 0.0  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while not rec.enabled:
        assert time.monotonic() < deadline, "the recorder never read logging_enabled=True again"
        time.sleep(0.02)
    with rec.trajectory(agent_id="on") as t, t.step() as s:
        s.llm_call(model="m")
    rec.close()
    assert [x.agent_id for x in store.iter_trajectories(TrajectoryFilter())] == ["on"]
    store.close()


class FlakySink(StoreSink):
    """A real store behind a switch: while ``down`` every write fails as an outage would."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, owns_store=False)
        self.down = False
        self.delay_s = 0.0

    def write(self, batch: WriteBatch) -> None:
        if self.down:
            raise TransientError("store is down")
        if self.delay_s:
            time.sleep(self.delay_s)
        super().write(batch)


def test_outage_spools_in_order_and_replays(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "o.db"))
    sink = FlakySink(store)
    rec = trajforge.Recorder(sink=sink, spool_dir=tmp_path / "spool")
    with rec.trajectory(agent_id="before") as t, t.step() as s:
        s.llm_call(model="m")
    assert rec.flush()
    sink.down = True
    ids = []
    for i in range(5):
        with rec.trajectory(agent_id=f"during-{i}") as t, t.step() as s:
            s.llm_call(model="m", user_prompt=f"p{i}")
            ids.append(t.id)
    assert rec.flush()
    assert rec.stats["spilled"] > 0 and store.count(TrajectoryFilter()) == 1
    assert any((tmp_path / "spool").glob("*.jsonl"))
    sink.down = False
    deadline = time.monotonic() + 10
    while store.count(TrajectoryFilter(status="completed")) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    rec.close()
    assert store.count(TrajectoryFilter(status="completed")) == 6
    assert all(store.get_trajectory(i).llm_call_count == 1 for i in ids)  # type: ignore[union-attr]
    stats = rec.stats  # still readable after close
    assert stats["spilled"] > 0 and stats["replayed"] >= stats["spilled"] and stats["lost"] == 0
    assert not list((tmp_path / "spool").glob("*.jsonl*"))
    store.close()


def test_spool_of_a_dead_process_is_replayed_by_the_next(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "dead.db"))
    sink = FlakySink(store)
    sink.down = True
    rec = trajforge.Recorder(sink=sink, spool_dir=tmp_path / "spool")
    with rec.trajectory(agent_id="lost?") as t, t.step() as s:
        s.llm_call(model="m")
    rec.close()  # "dies" with everything in the spool
    assert store.count(TrajectoryFilter()) == 0
    rec2 = trajforge.Recorder(sink=FlakySink(store), spool_dir=tmp_path / "spool")
    rec2.flush()
    deadline = time.monotonic() + 5
    while store.count(TrajectoryFilter()) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    rec2.close()
    got = store.get_trajectory(t.id)
    assert got is not None and got.status == "completed" and got.llm_call_count == 1
    store.close()


def test_full_queue_waits_then_spills_and_nothing_is_lost(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "q.db"))
    sink = FlakySink(store)
    sink.delay_s = 0.05
    writer = BackgroundWriter(sink, tmp_path / "spool", max_pending=10, max_batch=5, put_timeout_s=0.001)
    rec = trajforge.Recorder(writer=writer)
    with rec.trajectory() as t, t.step() as s:
        for i in range(200):
            s.llm_call(model="m", user_prompt=f"call {i}")
    rec.flush()
    spilled = writer.counters()["spilled"]
    assert spilled > 0
    sink.delay_s = 0.0
    # Spilled records are replayed when the writer next retries its spool.
    writer._healthy = False
    deadline = time.monotonic() + 10
    while (got := store.get_trajectory(t.id)) is None or got.llm_call_count < 200:
        assert time.monotonic() < deadline, "spilled calls were not replayed"
        writer._wake.set()
        time.sleep(0.05)
    rec.close()
    assert writer.counters()["lost"] == 0
    store.close()


def test_a_writer_given_to_the_recorder_is_its_writer(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "w.db"))
    writer = BackgroundWriter(StoreSink(store, owns_store=False), tmp_path / "spool")
    with pytest.raises(trajforge.errors.InvalidInput):
        trajforge.Recorder(str(tmp_path / "other.db"), writer=writer)  # two destinations: refused
    rec = trajforge.Recorder(writer=writer)
    with rec.trajectory(agent_id="through-the-writer") as t, t.step() as s:
        s.llm_call(model="m")
    rec.close()
    stats = writer.counters()
    assert stats["written"] == stats["submitted"] == 5 and stats == rec.stats
    assert not writer._thread.is_alive()  # closed with the recorder
    got = store.get_trajectory(t.id)
    assert got is not None and got.agent_id == "through-the-writer" and got.llm_call_count == 1
    store.close()


def test_a_rejected_batch_is_kept_not_dropped(tmp_path: Path) -> None:
    class Rejecting(StoreSink):
        def write(self, batch: WriteBatch) -> None:
            raise ValueError("schema mismatch")

    store = open_store(str(tmp_path / "r.db"))
    rec = trajforge.Recorder(sink=Rejecting(store, owns_store=False), spool_dir=tmp_path / "spool")
    with rec.trajectory() as t, t.step() as s:
        s.llm_call(model="m")
    rec.flush()
    assert rec.stats["rejected"] > 0 and rec.stats["lost"] == 0
    assert list((tmp_path / "spool").glob("rejected-*.jsonl"))
    rec.close()
    store.close()


def test_late_scores_through_the_recorder(tmp_path: Path) -> None:
    url = str(tmp_path / "s.db")
    rec = trajforge.Recorder(url)
    with rec.trajectory() as t, t.step() as s:
        s.llm_call(model="m")
    rec.score(t.id, "resolved", 1.0, comment="customer confirmed", source="outcome")
    rec.close()
    store = open_store(url)
    got = store.get_trajectory(t.id)
    assert got is not None and [(x.name, x.value, x.source) for x in got.scores] == [
        ("resolved", 1.0, "outcome")
    ]
    store.close()


def _process_writer(url: str, k: int, n: int) -> None:
    rec = trajforge.Recorder(url)
    for i in range(n):
        with rec.trajectory(agent_id=f"proc-{k}") as t, t.step() as s:
            s.llm_call(model="m", user_prompt=f"process {k} trajectory {i}")
            s.action("X", reward=1.0)
    rec.close()


def test_several_processes_write_one_store(store_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(store_url, k, 25)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = open_store(store_url)
    s = store.stats()
    assert s["totalTrajectories"] == 75 and s["totalLlmCalls"] == 75
    assert s["byStatus"] == {"completed": 75}
    store.close()


def test_validate_trajectory_reports_errors_and_warnings() -> None:
    t = trajforge.Trajectory(start_time=1000, end_time=500, status="completed")
    r = trajforge.validate_trajectory(t, require_reward=True)
    assert not r.valid
    assert "endTime: is before startTime" in r.errors
    assert "steps: the trajectory has no steps" in r.errors
    assert any(e.startswith("totalReward") for e in r.errors)
    step = trajforge.Step(timestamp=2000)
    t2 = trajforge.Trajectory(
        start_time=1000, status="completed", total_reward=1.0, steps=[step, trajforge.Step(timestamp=1500)]
    )
    step.llm_calls.append(trajforge.LlmCall(model="m", user_prompt="hi", response="", prompt_tokens=-1))
    r2 = trajforge.validate_trajectory(t2)
    assert "steps[1]: has no LLM calls" in r2.errors
    assert "steps[1].timestamp: is before the previous step's" in r2.errors
    assert "steps[0].llmCalls[0].prompt_tokens: must be a non-negative integer" in r2.errors
    assert any("prompt is very short" in w for w in r2.warnings)
    assert any("response is very short" in w for w in r2.warnings)


def test_a_store_down_at_start_spools_instead_of_raising(tmp_path: Path) -> None:
    rec = trajforge.Recorder("postgresql://postgres@127.0.0.1:1/test", spool_dir=tmp_path / "spool")
    with rec.trajectory(agent_id="early") as t, t.step() as s:
        s.llm_call(model="m")
    assert rec.flush(10)
    stats = rec.stats
    assert stats["spilled"] > 0 and stats["lost"] == 0 and not stats["healthy"]
    rec.close(timeout_s=5)
    assert list((tmp_path / "spool").glob("*.jsonl"))
    with pytest.raises(trajforge.errors.InvalidInput):
        trajforge.Recorder("sqlite://relative.db")  # a malformed URL is the caller's mistake: raised


def test_the_writer_sweeps_abandoned_trajectories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "sweep.db")
    rec = trajforge.Recorder(url)
    abandoned = rec.trajectory(agent_id="crashed")  # never ended: its process "died"
    abandoned.llm_call(model="m", user_prompt="half way")
    rec.close()
    monkeypatch.setenv("TRAJFORGE_ACTIVE_TIMEOUT_S", "0.2")
    time.sleep(0.3)
    rec2 = trajforge.Recorder(url)  # any later recorder on the store sweeps on its first cycle
    store = open_store(url)
    deadline = time.monotonic() + 5
    while (got := store.get_trajectory(abandoned.id)) is not None and got.status == "active":
        assert time.monotonic() < deadline, "the trajectory was never swept"
        time.sleep(0.05)
    assert got is not None and got.status == "timeout" and got.llm_call_count == 1
    rec2.close()
    store.close()


def test_writers_sharing_a_spool_dir_never_take_each_others_files(tmp_path: Path) -> None:
    """Writer B starts while writer A (same destination, same spool dir) is spooling. B must not
    replay A's files: on main B took A's file, failed, and renamed it back over the file A had just
    started at the same path, so A's next batch vanished with nothing counted lost."""
    store = open_store(str(tmp_path / "shared.db"))
    spool = tmp_path / "spool"
    sink_a = FlakySink(store)
    sink_a.down = True
    rec_a = trajforge.Recorder(sink=sink_a, spool_dir=spool)
    writer_a = rec_a._writer
    assert writer_a is not None
    ids: list[str] = []

    def record_on_a(agent: str) -> None:
        with rec_a.trajectory(agent_id=agent) as t, t.step() as s:
            s.llm_call(model="m", user_prompt=agent)
        ids.append(t.id)
        assert rec_a.flush()

    record_on_a("a-1")
    writer_a._next_retry = time.monotonic() + 3600  # A waits; only B could touch A's spool now
    fired: list[bool] = []

    class Interleaving(FlakySink):
        """B's sink: the moment B sends a batch of A's, A spools another, then B's write fails."""

        def write(self, batch: WriteBatch) -> None:
            if not fired and any(h.id in ids for h in batch.trajectories):
                fired.append(True)
                record_on_a("a-2")
                raise TransientError("down again")
            super().write(batch)

    rec_b = trajforge.Recorder(sink=Interleaving(store), spool_dir=spool)
    assert rec_b.flush()  # B's start-up replay is over once its first flush returns
    rec_b.close()
    if not fired:
        record_on_a("a-2")
    assert writer_a.counters()["spilled"] == 10  # 2 trajectories x 5 records
    sink_a.down = False
    writer_a._next_retry = 0.0
    deadline = time.monotonic() + 10
    while store.count(TrajectoryFilter(status="completed")) < 2 and time.monotonic() < deadline:
        writer_a._wake.set()
        time.sleep(0.05)
    rec_a.close()
    assert {t.id for t in store.iter_trajectories(TrajectoryFilter(status="completed"))} == set(ids)
    stats = rec_a.stats
    assert (stats["spilled"], stats["replayed"], stats["lost"], stats["rejected"]) == (10, 10, 0, 0), stats
    assert not [p for p in spool.iterdir() if p.name.endswith(".jsonl")]
    store.close()


def test_a_sqlite_store_locked_at_start_neither_holds_up_nor_breaks_the_recorder(tmp_path: Path) -> None:
    """On main ``Recorder(url)`` opened the store itself: with another connection holding the write
    lock it waited out the 30 s busy timeout and raised ``database is locked`` into the agent."""
    import sqlite3

    url = str(tmp_path / "locked.db")
    open_store(url).close()
    holder = sqlite3.connect(url, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # e.g. a long import in another process
    try:
        rec = trajforge.Recorder(url, spool_dir=tmp_path / "spool")  # returns while still locked
        with rec.trajectory(agent_id="while-locked") as t, t.step() as s:
            s.llm_call(model="m", user_prompt="p")
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert rec.flush(90)
    rec.close()
    stats = rec.stats
    assert stats["written"] + stats["replayed"] == stats["submitted"] == 5 and stats["lost"] == 0, stats
    store = open_store(url)
    got = store.get_trajectory(t.id)
    assert got is not None and got.status == "completed" and got.llm_call_count == 1
    store.close()


def test_a_killed_writers_spool_is_adopted_and_a_live_ones_is_not(tmp_path: Path) -> None:
    """Ownership is the writer's lock, not its pid: a file whose owner's lock is free is taken over
    (renamed to a fresh name), one whose owner holds its lock is left alone; files of the format
    before segments are taken once their pid is gone."""
    from trajforge.capture.spool import Spool

    spool_dir = tmp_path / "spool"
    live, gone = Spool(spool_dir, "k"), Spool(spool_dir, "k")
    live.append(b'{"x": 1}\n')
    gone.append(b'{"x": 2}\n')
    gone.close()  # its lock is free now, as after kill -9
    legacy = spool_dir / "k-999999999-1.jsonl"  # a pid that cannot exist
    legacy.write_bytes(b'{"x": 3}\n')
    other = spool_dir / "other-1-1.000001.jsonl"  # another destination's file
    other.write_bytes(b"{}\n")
    me = Spool(spool_dir, "k")
    assert me.adopt_orphans() == 2
    mine = me.seal()
    assert sorted(p.read_bytes() for p in mine) == [b'{"x": 2}\n', b'{"x": 3}\n']
    assert live.seal()[0].read_bytes() == b'{"x": 1}\n' and other.exists() and not legacy.exists()
    assert Spool(spool_dir, "k").adopt_orphans() == 0  # nothing is taken twice
    live.close()
    me.close()


def test_every_way_of_naming_a_store_shares_one_spool_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On main a recorder whose SQLite store was down at start spooled under its path as given, and
    the next process (store up) looked under the store's own URL: the spool was never replayed."""
    monkeypatch.chdir(tmp_path)
    store = open_store("k.db")
    keys = {
        StoreSink(url="k.db").key,
        StoreSink(url=str(tmp_path / "k.db")).key,
        StoreSink(url=f"sqlite:///{tmp_path / 'k.db'}").key,
        StoreSink(store, owns_store=False).key,
    }
    store.close()
    assert len(keys) == 1
