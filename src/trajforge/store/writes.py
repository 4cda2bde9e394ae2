"""The write path: a batch of trajectories, steps, calls, accesses and scores, in one transaction.

A batch is reduced to rows first (:meth:`TrajectoryWrites._prepare`, outside the transaction, to
keep it short), then applied in named steps (:meth:`TrajectoryWrites._apply`). The write path knows
nothing of what else a write should update: other parts of the store register steps in
``after_write``, run at the end of each write in its own transaction (the training records count
completed trajectories per task there, so a count is never lost or doubled).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trajforge import jsonutil
from trajforge.records import (
    LlmCall,
    Score,
    StepHeader,
    TrajectoryHeader,
    WriteBatch,
    now_ms,
    to_wire,
)
from trajforge.store.assembly import AssemblyWrites
from trajforge.store.base import WriteResult
from trajforge.store.sqlbase import (
    CALL_TEXT_SLOTS,
    SCORE_COLS,
)
from trajforge.store.stats import add_to_rollup

AfterWrite = Callable[[Any, WriteResult, int], None]
"""A step run at the end of every write, in its transaction: ``(cursor, what the write changed, now)``."""


def text_hash(body: str) -> tuple[int, str]:
    """The 64-bit content hash that finds a stored text, and the text as stored.

    Lone surrogates cannot be stored as UTF-8 by either database, so they are replaced here, once,
    rather than failing the whole batch later.
    """
    try:
        raw = body.encode()
    except UnicodeEncodeError:
        raw = body.encode("utf-8", "replace")
        body = raw.decode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True), body


def _opt_json(value: Any) -> str | None:
    return None if value is None else jsonutil.dumps(value)


@dataclass(slots=True)
class _Prepared:
    """A batch reduced to rows, computed outside the write transaction to keep it short."""

    headers: dict[str, TrajectoryHeader]
    # Keyed by (trajectory id, the user's id): the user's ids are unique only within a trajectory.
    steps: dict[tuple[str, str], StepHeader]
    calls: dict[tuple[str, str], tuple[tuple[Any, ...], list[tuple[int, str, bool]], str, LlmCall]]
    accesses: dict[tuple[str, str], tuple[tuple[Any, ...], list[tuple[int, str, bool]], str]]
    scores: list[Score]
    first_seen: dict[str, int]
    assemble: bool = False
    """The batch's :attr:`~trajforge.records.WriteBatch.assemble` mode."""
    traces: dict[str, str] = field(default_factory=dict)


_IDENTITY = frozenset({"id", "trajectory_id", "step_id"})


def _merge(into: Any, new: Any) -> None:
    """Later non-None fields win (identity fields are the key, never merged); an ``active`` header
    never reopens a finished trajectory."""
    for name in new.__slots__:
        value = getattr(new, name)
        if value is None or name in _IDENTITY:
            continue
        if name == "status" and value == "active" and getattr(into, name) not in (None, "active"):
            continue
        setattr(into, name, value)


@dataclass(slots=True)
class _Write:
    """What the steps of one write hand on to each other inside its transaction."""

    now: int
    ids: list[str]
    """Every trajectory the batch touches, sorted: the order all its row locks are taken in."""
    result: WriteResult = field(default_factory=WriteResult)
    texts: dict[int, tuple[str, bool]] = field(default_factory=dict)
    """Hash → (body, searchable) of every text the new rows use."""
    links: dict[tuple[int, str], bool] = field(default_factory=dict)
    """(text hash, trajectory id) → searchable, for ``trajectory_texts``."""
    deltas: defaultdict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0, 0]))
    """Per trajectory: new steps, calls, accesses, prompt tokens, completion tokens."""
    rollup: dict[tuple[int, str, int], list[float]] = field(default_factory=dict)

    def use(self, tid: str, items: list[tuple[int, str, bool]]) -> None:
        """Note that trajectory ``tid`` uses these ``(hash, body, searchable)`` texts."""
        for text_key, body, fts in items:
            prev = self.texts.get(text_key)
            if prev is None or (fts and not prev[1]):
                self.texts[text_key] = (body, fts)
            self.links[(text_key, tid)] = fts or self.links.get((text_key, tid), False)

    def users(self) -> dict[int, str | None]:
        """Per text hash, the one trajectory of this batch that uses it (``None``: several do)."""
        users: dict[int, str | None] = {}
        for text_key, tid in self.links:
            users[text_key] = tid if users.get(text_key, tid) == tid else None
        return users


class TrajectoryWrites(AssemblyWrites):
    """Writes batches; mixed into :class:`~trajforge.store.sql.SqlStore`."""

    after_write: list[AfterWrite]
    """Steps other parts of the store run at the end of each write (set up by the store)."""

    def _texts_of(self, items: Iterable[tuple[str | None, bool]]) -> list[tuple[int, str, bool]]:
        out = []
        for body, fts in items:
            if body is not None:
                tid, clean = text_hash(self._clean_text(body))
                out.append((tid, clean, fts))
        return out

    def _prepare(self, batch: WriteBatch) -> _Prepared:
        headers: dict[str, TrajectoryHeader] = {}
        for h in batch.trajectories:
            _merge(headers.setdefault(h.id, TrajectoryHeader(id=h.id)), h)
        steps: dict[tuple[str, str], StepHeader] = {}
        for s in batch.steps:
            key = (s.trajectory_id, s.step_id)
            _merge(steps.setdefault(key, StepHeader(trajectory_id=s.trajectory_id, step_id=s.step_id)), s)
        first_seen: dict[str, int] = {}

        def seen(tid: str, ts: int | None) -> None:
            ts = ts if ts is not None else now_ms()
            if tid not in first_seen or ts < first_seen[tid]:
                first_seen[tid] = ts

        for h in headers.values():
            seen(h.id, h.start_time)
            if batch.assemble:
                # The earliest time wins, not the latest write: see _assemble_headers.
                h.start_time = None
        for s in steps.values():
            seen(s.trajectory_id, s.timestamp)
        calls: dict[tuple[str, str], Any] = {}
        for row in batch.calls:
            c = row.call
            if (row.trajectory_id, c.call_id) in calls:
                continue
            seen(row.trajectory_id, c.timestamp)
            fields = (
                (c.system_prompt, True),
                (c.user_prompt, True),
                (c.response, True),
                (c.reasoning, True),
                (None if c.messages is None else jsonutil.dumps(c.messages), False),
                (None if c.tools is None else jsonutil.dumps(c.tools), False),
            )
            texts = self._texts_of(fields)
            # One slot per field: the text's hash, or None where the field is empty.
            hashes = iter(t[0] for t in texts)
            slots = [None if body is None else next(hashes) for body, _ in fields]
            values = (
                c.call_id,
                row.trajectory_id,
                row.step_id,
                c.timestamp,
                c.model or "",
                c.model_version,
                *slots,
                _opt_json(c.tool_calls),
                c.finish_reason,
                c.temperature,
                c.max_tokens,
                c.top_p,
                c.purpose or "other",
                c.action_type,
                c.latency_ms,
                c.prompt_tokens,
                c.completion_tokens,
                c.cache_read_input_tokens,
                c.cache_creation_input_tokens,
                _opt_json(c.tags),
            )
            calls[(row.trajectory_id, c.call_id)] = (values, texts, row.trajectory_id, c)
        accesses: dict[tuple[str, str], Any] = {}
        for arow in batch.accesses:
            a = arow.access
            if (arow.trajectory_id, a.access_id) in accesses:
                continue
            seen(arow.trajectory_id, a.timestamp)
            texts = self._texts_of([(None if a.data is None else jsonutil.dumps(a.data), False)])
            values = (
                a.access_id,
                arow.trajectory_id,
                arow.step_id,
                a.timestamp,
                a.provider_id,
                a.provider_name or "",
                a.purpose or "",
                _opt_json(a.query),
                texts[0][0] if texts else None,
            )
            accesses[(arow.trajectory_id, a.access_id)] = (values, texts, arow.trajectory_id)
        for sc in batch.scores:
            seen(sc.trajectory_id, sc.created_at)
        return _Prepared(
            headers, steps, calls, accesses, list(batch.scores), first_seen, batch.assemble, batch.traces
        )

    def write(self, batch: WriteBatch) -> WriteResult:
        if not len(batch):
            return WriteResult()
        prepared = self._prepare(batch)
        with self._write_tx() as cur:
            return self._apply(cur, prepared)

    def _apply(self, cur: Any, p: _Prepared) -> WriteResult:
        """Write a prepared batch in the open transaction ``cur``, step by step.

        Every step writes its rows in a fixed order (sorted ids and keys), so concurrent writers on
        PostgreSQL take row locks in the same order and never deadlock; every insert is keyed by the
        user's ids (re-sent ids change nothing), and the counters and rollups grow only by what is
        new, so they stay exact. The steps registered in ``after_write`` run last, in the same
        transaction.
        """
        w = _Write(now=now_ms(), ids=sorted(p.first_seen))
        if p.traces:
            self._check_traces(cur, p.traces)
        old_status = self._insert_trajectories(cur, p, w)
        counted_before: dict[str, set[str]] = {}
        if p.assemble:
            # Lock the batch's trajectories (PostgreSQL; SQLite has one writer), then read what
            # they count for: the counters move by the difference at the end (see count_task_changes).
            self._lock_trajectories(cur, w.ids)
            counted_before = self.counted_tasks(cur, w.ids)  # type: ignore[attr-defined]
            self._assemble_headers(cur, p, old_status)
        self._update_headers(cur, p, w, old_status)
        if p.assemble:
            self._link_tool_steps(cur, p)
        self._write_steps(cur, p, w)
        if p.assemble:
            self._renumber_steps(cur, [tid for tid, d in sorted(w.deltas.items()) if d[0]])
        new_calls, new_accesses = self._new_calls_and_accesses(cur, p, w)
        fills = self._plan_fills(cur, p, w, new_calls) if p.assemble else []
        ids_by_hash = self._store_texts(cur, w.texts, w.users())
        self._insert_calls_and_accesses(cur, new_calls, new_accesses, ids_by_hash, w.result)
        self._apply_fills(cur, fills, ids_by_hash)
        if p.assemble:
            self._link_stored_tools(cur, p, new_calls)
        self._link_texts(cur, w.links, ids_by_hash)
        self._count_rows(cur, w)
        self._add_call_rollup(cur, w.rollup)
        self._upsert_scores(cur, p.scores)
        w.result.scores = len(p.scores)
        if p.assemble:
            after = self.counted_tasks(cur, w.ids)  # type: ignore[attr-defined]
            self.count_task_changes(cur, counted_before, after, w.now)  # type: ignore[attr-defined]
            w.result.tasks_counted = True
        for step in self.after_write:
            step(cur, w.result, w.now)
        return w.result

    def _insert_trajectories(self, cur: Any, p: _Prepared, w: _Write) -> dict[str, str]:
        """Create the trajectories the store does not hold yet; returns the status of those it held.

        A trajectory first seen through a step or call (its header comes later, or never) starts
        ``active`` at the earliest time the batch shows for it."""
        old_status = dict(
            self._select_in(cur, "SELECT id, status FROM trajectories WHERE id IN ({marks})", w.ids)
        )
        new_rows = []
        for tid in w.ids:
            if tid in old_status:
                continue
            h = p.headers.get(tid) or TrajectoryHeader(id=tid)
            new_rows.append(
                (
                    tid,
                    h.agent_id or "",
                    h.source or "api",
                    h.status or "active",
                    h.start_time if h.start_time is not None else p.first_seen[tid],
                    h.is_training_data or False,
                    w.now,
                    w.now,
                )
            )
        w.result.new_trajectories = len(new_rows)
        self._exmany(
            cur,
            "INSERT INTO trajectories (id, agent_id, source, status, start_time, is_training_data, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
            new_rows,
        )
        return old_status

    def _update_headers(self, cur: Any, p: _Prepared, w: _Write, old_status: dict[str, str]) -> None:
        """Apply the headers' given fields (an ``active`` header never reopens a finished
        trajectory) and note the trajectories that became ``completed`` in this write."""
        header_rows = []
        for tid in sorted(p.headers):
            h = p.headers[tid]
            meta_json = None
            if h.metadata is not None:
                meta_json = jsonutil.dumps(h.metadata)
                w.use(tid, self._texts_of([(meta_json, True)]))
            header_rows.append(
                (
                    h.agent_id,
                    h.source,
                    h.status,
                    h.status,
                    h.status,
                    h.start_time,
                    h.end_time,
                    h.end_time,
                    h.start_time,
                    h.scenario_id,
                    h.batch_id,
                    h.group_index,
                    h.is_training_data,
                    meta_json,
                    h.total_reward,
                    tid,
                )
            )
            if h.status == "completed" and old_status.get(tid) != "completed":
                w.result.completed.append(tid)
        self._exmany(
            cur,
            """UPDATE trajectories SET
                agent_id = COALESCE(?, agent_id),
                source = COALESCE(?, source),
                status = CASE WHEN CAST(? AS TEXT) IS NULL THEN status
                              WHEN CAST(? AS TEXT) = 'active' AND status <> 'active' THEN status
                              ELSE CAST(? AS TEXT) END,
                start_time = COALESCE(?, start_time),
                end_time = COALESCE(?, end_time),
                duration_ms = COALESCE(?, end_time) - COALESCE(?, start_time),
                scenario_id = COALESCE(?, scenario_id),
                batch_id = COALESCE(?, batch_id),
                group_index = COALESCE(?, group_index),
                is_training_data = COALESCE(?, is_training_data),
                metadata = COALESCE(?, metadata),
                total_reward = COALESCE(?, total_reward)
            WHERE id = ?""",
            header_rows,
        )

    def _write_steps(self, cur: Any, p: _Prepared, w: _Write) -> None:
        """Insert the new steps and complete the known ones (a step may arrive before its
        outcome: later non-empty fields fill it in)."""
        step_keys = sorted(p.steps)
        known_steps = self._known(cur, "steps", "step_id", step_keys)
        step_inserts, step_updates = [], []
        for key in step_keys:
            s = p.steps[key]
            action = None if s.action is None else jsonutil.dumps(to_wire(s.action))
            if key in known_steps:
                step_updates.append(
                    (
                        s.step_number,
                        s.timestamp,
                        action,
                        s.reward,
                        s.done,
                        _opt_json(s.observation),
                        _opt_json(s.metadata),
                        s.trajectory_id,
                        s.step_id,
                    )
                )
            else:
                step_inserts.append(
                    (
                        s.step_id,
                        s.trajectory_id,
                        s.step_number or 0,
                        s.timestamp if s.timestamp is not None else w.now,
                        action,
                        s.reward,
                        s.done,
                        _opt_json(s.observation),
                        _opt_json(s.metadata),
                    )
                )
                w.deltas[s.trajectory_id][0] += 1
        w.result.new_steps = len(step_inserts)
        self._insert_rows(
            cur,
            "steps",
            "trajectory_id, step_id",
            step_inserts,
            "ON CONFLICT (trajectory_id, step_id) DO NOTHING",
        )
        self._exmany(
            cur,
            """UPDATE steps SET step_number = COALESCE(?, step_number), timestamp = COALESCE(?, timestamp),
               action = COALESCE(?, action), reward = COALESCE(?, reward), done = COALESCE(?, done),
               observation = COALESCE(?, observation), metadata = COALESCE(?, metadata)
               WHERE trajectory_id = ? AND step_id = ?""",
            step_updates,
        )

    def _new_calls_and_accesses(self, cur: Any, p: _Prepared, w: _Write) -> tuple[list[Any], list[Any]]:
        """The calls and accesses the store does not hold yet, with their texts, counters and
        rollup noted. They are immutable events: the first write wins, a re-sent one counts nothing."""
        call_keys = sorted(p.calls)
        known_calls = self._known(cur, "llm_calls", "call_id", call_keys)
        new_calls = [p.calls[k] for k in call_keys if k not in known_calls]
        access_keys = sorted(p.accesses)
        known_access = self._known(cur, "provider_accesses", "access_id", access_keys)
        new_accesses = [p.accesses[k] for k in access_keys if k not in known_access]
        for _, call_texts, tid, call in new_calls:
            w.use(tid, call_texts)
            d = w.deltas[tid]
            d[1] += 1
            d[3] += call.prompt_tokens or 0
            d[4] += call.completion_tokens or 0
            add_to_rollup(
                w.rollup,
                call.timestamp,
                call.model or "",
                call.latency_ms,
                call.prompt_tokens,
                call.completion_tokens,
            )
        for _, access_texts, tid in new_accesses:
            w.use(tid, access_texts)
            w.deltas[tid][2] += 1
        return new_calls, new_accesses

    def _insert_calls_and_accesses(
        self,
        cur: Any,
        new_calls: list[Any],
        new_accesses: list[Any],
        ids_by_hash: dict[int, int],
        result: WriteResult,
    ) -> None:
        """Insert the new calls and accesses, their texts' hashes swapped for the stored ids."""

        def mapped(values: tuple[Any, ...], first: int, last: int) -> tuple[Any, ...]:
            return (
                *values[:first],
                *(None if h is None else ids_by_hash[h] for h in values[first:last]),
                *values[last:],
            )

        result.new_calls = len(new_calls)
        self._insert_rows(
            cur,
            "llm_calls",
            "trajectory_id, call_id",
            [mapped(values, *CALL_TEXT_SLOTS) for values, _, _, _ in new_calls],
            "ON CONFLICT (trajectory_id, call_id) DO NOTHING",
        )
        result.new_accesses = len(new_accesses)
        self._insert_rows(
            cur,
            "provider_accesses",
            "trajectory_id, access_id",
            [mapped(values, 8, 9) for values, _, _ in new_accesses],
            "ON CONFLICT (trajectory_id, access_id) DO NOTHING",
        )

    def _link_texts(self, cur: Any, links: dict[tuple[int, str], bool], ids_by_hash: dict[int, int]) -> None:
        """Link each text to the trajectories that use it (search, and garbage collection on
        delete); a link is searchable once any use of it is."""
        self._insert_rows(
            cur,
            "trajectory_texts",
            "text_id, trajectory_id",
            sorted((ids_by_hash[h], tid, fts) for (h, tid), fts in links.items()),
            "ON CONFLICT (text_id, trajectory_id) DO UPDATE SET fts = trajectory_texts.fts OR excluded.fts",
        )

    def _count_rows(self, cur: Any, w: _Write) -> None:
        """Add the new rows to their trajectories' counters, and mark every trajectory the batch
        touched as written now (what the timeout sweep reads)."""
        counter_rows = [(*w.deltas[tid], w.now, tid) for tid in sorted(w.deltas)]
        touched = [(w.now, tid) for tid in w.ids if tid not in w.deltas]
        self._exmany(
            cur,
            """UPDATE trajectories SET step_count = step_count + ?, llm_call_count = llm_call_count + ?,
               provider_access_count = provider_access_count + ?,
               total_prompt_tokens = total_prompt_tokens + ?,
               total_completion_tokens = total_completion_tokens + ?, updated_at = ? WHERE id = ?""",
            counter_rows,
        )
        self._exmany(cur, "UPDATE trajectories SET updated_at = ? WHERE id = ?", touched)

    def _add_call_rollup(self, cur: Any, rollup: dict[tuple[int, str, int], list[float]]) -> None:
        """Add the new calls to the per day/model/latency bucket rollup that stats read."""
        self._exmany(
            cur,
            """INSERT INTO llm_rollup (day, model, bucket, calls, prompt_tokens, completion_tokens, latency_sum)
               VALUES (?,?,?,?,?,?,?) ON CONFLICT (day, model, bucket) DO UPDATE SET
               calls = llm_rollup.calls + excluded.calls,
               prompt_tokens = llm_rollup.prompt_tokens + excluded.prompt_tokens,
               completion_tokens = llm_rollup.completion_tokens + excluded.completion_tokens,
               latency_sum = llm_rollup.latency_sum + excluded.latency_sum""",
            [(*k, int(v[0]), int(v[1]), int(v[2]), v[3]) for k, v in sorted(rollup.items())],
        )

    def _store_texts(
        self, cur: Any, texts: dict[int, tuple[str, bool]], users: dict[int, str | None]
    ) -> dict[int, int]:
        """Store each distinct text once; returns hash → id for every text given.

        New texts get ascending ids in one go (FTS5 indexes ascending rowids fastest); a text first
        stored as a payload and later used as a prompt is flagged and indexed then. ``users`` names,
        per hash, the one trajectory of this batch that uses the text (``None``: several do). A
        text keeps the trajectory that stored it as its ``owner`` until another one uses it; from
        then on ``owner`` is NULL for good ("ask trajectory_texts"), so a search can map the
        matching texts used by one trajectory (nearly every prompt and response) straight to it.
        """
        hashes = sorted(texts)
        sql = "SELECT hash, id, fts, owner FROM texts WHERE hash IN ({marks})"
        known = {r[0]: (r[1], bool(r[2]), r[3]) for r in self._select_in(cur, sql, hashes)}
        fresh = [h for h in hashes if h not in known]
        ids = {h: i for h, (i, _, _) in known.items()}
        to_index: list[tuple[int, str]] = []
        for r in self._insert_texts(cur, [(h, texts[h][0], texts[h][1], users[h]) for h in fresh]):
            ids[r[0]] = r[1]
            if texts[r[0]][1] and r[2]:
                to_index.append((r[1], texts[r[0]][0]))
            if (texts[r[0]][1] and not r[2]) or r[3] != users[r[0]]:
                # A concurrent writer stored it first: unflagged, or for another trajectory.
                known[r[0]] = (r[1], bool(r[2]), r[3])
        changes = []  # (id, flag for search, now shared): one pass, in id order (deadlock-free)
        flip: list[tuple[int, str]] = []  # the newly flagged, to index
        for h, (i, fts, owner) in known.items():
            flag = texts[h][1] and not fts
            shared = owner is not None and owner != users[h]
            if flag or shared:
                changes.append((i, flag, shared))
            if flag:
                flip.append((i, texts[h][0]))
        changes.sort()
        self._exmany(
            cur,
            "UPDATE texts SET fts = (fts OR ?), owner = CASE WHEN ? THEN NULL ELSE owner END WHERE id = ?",
            [(flag, shared, i) for i, flag, shared in changes],
        )
        self._index_texts(cur, sorted(to_index) + sorted(flip))
        return ids

    def _upsert_scores(self, cur: Any, scores: Sequence[Score]) -> None:
        # One score per (trajectory, name, source): a re-sent or corrected outcome replaces the old.
        self._exmany(
            cur,
            f"""INSERT INTO scores ({SCORE_COLS}) VALUES (?,?,?,?,?,?,?)
                ON CONFLICT (trajectory_id, name, source) DO UPDATE SET
                value = excluded.value, comment = excluded.comment, created_at = excluded.created_at""",
            [
                (s.score_id, s.trajectory_id, s.name, float(s.value), s.comment, s.source, s.created_at)
                for s in sorted(scores, key=lambda s: (s.trajectory_id, s.name, s.source))
            ],
        )

    def add_scores(self, scores: Sequence[Score]) -> None:
        if scores:
            self.write(WriteBatch(scores=list(scores)))
