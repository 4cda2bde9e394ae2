"""The store logic shared by SQLite and PostgreSQL.

Both backends speak the same SQL for everything but connections, placeholders and full-text
search, so the logic lives here once and each backend supplies those three hooks. SQL is written
with ``?`` placeholders; the PostgreSQL backend rewrites them to ``%s``.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from trajforge import jsonutil
from trajforge.records import (
    ActionResult,
    LlmCall,
    ProviderAccess,
    Score,
    Step,
    StepHeader,
    Trajectory,
    TrajectoryHeader,
    WriteBatch,
    camel,
    now_ms,
    to_wire,
)
from trajforge.store import search
from trajforge.store.base import Page, WriteResult
from trajforge.store.documents import DocumentReads
from trajforge.store.migrations import MIGRATIONS
from trajforge.store.training import TrainingRecords

if TYPE_CHECKING:  # the filter is built only in reads; the SDK's write path never imports it
    from trajforge.store.filter import TrajectoryFilter

CHUNK = 500  # ids per IN (...) list: well under both databases' parameter limits
DAY_MS = 86_400_000
LATENCY_BASE = 1.05  # histogram bucket ratio: percentiles are exact to within ~2.5%

TRAJ_COLS = (
    "id, agent_id, source, status, start_time, end_time, duration_ms, scenario_id, batch_id, "
    "group_index, is_training_data, metadata, total_reward, step_count, llm_call_count, "
    "provider_access_count, total_prompt_tokens, total_completion_tokens, created_at, updated_at"
)
CALL_COLS = (
    "call_id, trajectory_id, step_id, timestamp, model, model_version, system_text, user_text, "
    "response_text, reasoning_text, messages_text, tools_text, tool_calls, finish_reason, temperature, "
    "max_tokens, top_p, purpose, action_type, latency_ms, prompt_tokens, completion_tokens, "
    "cache_read_input_tokens, cache_creation_input_tokens, tags"
)
ACCESS_COLS = (
    "access_id, trajectory_id, step_id, timestamp, provider_id, provider_name, purpose, query, data_text"
)
_CALL_COL_NAMES = [c.strip() for c in CALL_COLS.split(",")]
CALL_TEXT_SLOTS = (_CALL_COL_NAMES.index("system_text"), _CALL_COL_NAMES.index("tools_text") + 1)
"""The span of CALL_COLS holding text ids (a write's values carry text hashes there until stored)."""
STEP_COLS = "step_id, trajectory_id, step_number, timestamp, action, reward, done, observation, metadata"
SCORE_COLS = "score_id, trajectory_id, name, value, comment, source, created_at"


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


def latency_bucket(latency_ms: float | None) -> int:
    if latency_ms is None or latency_ms < 0 or math.isnan(latency_ms):
        return -1
    return int(math.log(latency_ms + 1.0, LATENCY_BASE))


def bucket_value(bucket: int) -> float:
    """A bucket's representative latency: the geometric middle of its bounds."""
    return LATENCY_BASE ** (bucket + 0.5) - 1.0


def _opt_json(value: Any) -> str | None:
    return None if value is None else jsonutil.dumps(value)


def _opt_loads(value: str | None) -> Any:
    return None if value is None else jsonutil.loads(value)


def _chunks(seq: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


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


class SqlStore(DocumentReads, TrainingRecords):
    """Shared implementation; subclasses provide connections, placeholders and search."""

    url: str
    dialect: str

    # --- hooks -----------------------------------------------------------------------------------

    def _write_tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read_tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql

    def _text_match(self, terms: tuple[search.Term, ...]) -> tuple[str, list[Any]]:
        """A condition on ``tt.text_id``: the text matches any of ``terms``."""
        raise NotImplementedError

    def _search_ids(self, terms: tuple[search.Term, ...]) -> tuple[str, list[Any]]:
        """A SELECT of the ids (column ``id``, repeats allowed) of the trajectories with a
        searchable text matching any of ``terms``."""
        match, params = self._text_match(terms)
        return f"SELECT tt.trajectory_id AS id FROM trajectory_texts tt WHERE tt.fts AND {match}", params

    def _forget_texts(self, cur: Any, ids: Sequence[int]) -> None:
        """Remove texts from the full-text index before their rows are deleted (SQLite only)."""

    def _index_texts(self, cur: Any, rows: Sequence[tuple[int, str]]) -> None:
        """Add ``(id, body)`` texts to the full-text index (SQLite; PostgreSQL's GIN index is automatic)."""

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
        self._exmany(
            cur,
            "INSERT INTO texts (hash, body, fts, owner) VALUES (?,?,?,?) ON CONFLICT (hash) DO NOTHING",
            [(h, texts[h][0], texts[h][1], users[h]) for h in fresh],
        )
        ids = {h: i for h, (i, _, _) in known.items()}
        to_index: list[tuple[int, str]] = []
        for r in self._select_in(cur, sql, fresh):
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

    def _clean_text(self, body: str) -> str:
        return body

    def close(self) -> None:
        raise NotImplementedError

    # --- helpers ---------------------------------------------------------------------------------

    def _ex(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._q(sql), params)
        return cur

    def _exmany(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.executemany(self._q(sql), rows)

    def _select_in(self, cur: Any, sql: str, ids: Sequence[Any]) -> list[Any]:
        """Run ``sql`` (containing ``IN ({marks})``) for ``ids`` in chunks and concatenate the rows."""
        out: list[Any] = []
        for chunk in _chunks(list(ids)):
            self._ex(cur, sql.format(marks=_marks(len(chunk))), chunk)
            out.extend(cur.fetchall())
        return out

    def _select_pairs(self, cur: Any, sql: str, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """Run ``sql`` (containing ``IN ({pairs})``, rows of two values) for ``pairs`` in chunks.

        The pairs are wrapped in a sub-select: SQLite scans the table for a bare ``IN (VALUES ...)``
        of row values, but searches the key index for ``IN (SELECT ... FROM (VALUES ...))``."""
        out: list[Any] = []
        for chunk in _chunks(list(pairs), CHUNK // 2):
            rows = ",".join(["(?,?)"] * len(chunk))
            select = f"SELECT column1, column2 FROM (VALUES {rows}) AS v"
            self._ex(cur, sql.format(pairs=select), [v for pair in chunk for v in pair])
            out.extend(cur.fetchall())
        return out

    def _known(
        self, cur: Any, table: str, column: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which of the (trajectory id, ``column``) keys ``table`` already holds: one probe of the key
        index per key, whatever the trajectories already hold. (Matching the sub-ids as a filter on
        the trajectories' key ranges was faster for short trajectories, PostgreSQL 500 keys ~0.2-0.8
        ms against ~1-1.5 ms, but read a long live trajectory whole on every append: 24 ms at 50k
        calls, against 0.1 ms.)"""
        sql = f"SELECT trajectory_id, {column} FROM {table} WHERE (trajectory_id, {column}) IN ({{pairs}})"
        return {(r[0], r[1]) for r in self._select_pairs(cur, sql, keys)}

    def _text_bodies(self, cur: Any, ids: Sequence[int]) -> list[Any]:
        """``(id, body)`` of the texts with these ids (sorted ascending)."""
        return self._select_in(cur, "SELECT id, body FROM texts WHERE id IN ({marks})", ids)

    @staticmethod
    def _migrate(applied: set[str], apply: Any) -> None:
        for migration in MIGRATIONS:
            if migration.name not in applied:
                apply(migration)

    # --- writes ----------------------------------------------------------------------------------

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
        return _Prepared(headers, steps, calls, accesses, list(batch.scores), first_seen)

    def write(self, batch: WriteBatch) -> WriteResult:
        if not len(batch):
            return WriteResult()
        prepared = self._prepare(batch)
        with self._write_tx() as cur:
            return self._apply(cur, prepared)

    def _apply(self, cur: Any, p: _Prepared) -> WriteResult:
        result = WriteResult()
        now = now_ms()
        ids = sorted(p.first_seen)  # a fixed order keeps concurrent PostgreSQL writers deadlock-free
        old_status = dict(
            self._select_in(cur, "SELECT id, status FROM trajectories WHERE id IN ({marks})", ids)
        )
        new_rows = []
        for tid in ids:
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
                    now,
                    now,
                )
            )
        result.new_trajectories = len(new_rows)
        self._exmany(
            cur,
            "INSERT INTO trajectories (id, agent_id, source, status, start_time, is_training_data, "
            "created_at, updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
            new_rows,
        )
        texts: dict[int, tuple[str, bool]] = {}
        links: dict[tuple[int, str], bool] = {}

        def use(tid: str, items: list[tuple[int, str, bool]]) -> None:
            for text_key, body, fts in items:
                prev = texts.get(text_key)
                if prev is None or (fts and not prev[1]):
                    texts[text_key] = (body, fts)
                links[(text_key, tid)] = fts or links.get((text_key, tid), False)

        header_rows = []
        for tid in sorted(p.headers):
            h = p.headers[tid]
            meta_json = None
            if h.metadata is not None:
                meta_json = jsonutil.dumps(h.metadata)
                use(tid, self._texts_of([(meta_json, True)]))
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
                result.completed.append(tid)
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

        # Steps: insert the new ones, complete the known ones.
        step_keys = sorted(p.steps)
        known_steps = self._known(cur, "steps", "step_id", step_keys)
        deltas: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
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
                        s.timestamp if s.timestamp is not None else now,
                        action,
                        s.reward,
                        s.done,
                        _opt_json(s.observation),
                        _opt_json(s.metadata),
                    )
                )
                deltas[s.trajectory_id][0] += 1
        result.new_steps = len(step_inserts)
        self._exmany(
            cur,
            f"INSERT INTO steps ({STEP_COLS}) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (trajectory_id, step_id) DO NOTHING",
            step_inserts,
        )
        self._exmany(
            cur,
            """UPDATE steps SET step_number = COALESCE(?, step_number), timestamp = COALESCE(?, timestamp),
               action = COALESCE(?, action), reward = COALESCE(?, reward), done = COALESCE(?, done),
               observation = COALESCE(?, observation), metadata = COALESCE(?, metadata)
               WHERE trajectory_id = ? AND step_id = ?""",
            step_updates,
        )

        # LLM calls and provider accesses are immutable events: first write wins.
        call_keys = sorted(p.calls)
        known_calls = self._known(cur, "llm_calls", "call_id", call_keys)
        new_calls = [p.calls[k] for k in call_keys if k not in known_calls]
        access_keys = sorted(p.accesses)
        known_access = self._known(cur, "provider_accesses", "access_id", access_keys)
        new_accesses = [p.accesses[k] for k in access_keys if k not in known_access]
        rollup: dict[tuple[int, str, int], list[float]] = {}
        for _, call_texts, tid, call in new_calls:
            use(tid, call_texts)
            d = deltas[tid]
            d[1] += 1
            d[3] += call.prompt_tokens or 0
            d[4] += call.completion_tokens or 0
            add_to_rollup(
                rollup,
                call.timestamp,
                call.model or "",
                call.latency_ms,
                call.prompt_tokens,
                call.completion_tokens,
            )
        for _, access_texts, tid in new_accesses:
            use(tid, access_texts)
            deltas[tid][2] += 1

        users: dict[int, str | None] = {}
        for text_key, tid in links:
            users[text_key] = tid if users.get(text_key, tid) == tid else None
        ids_by_hash = self._store_texts(cur, texts, users)

        def mapped(values: tuple[Any, ...], first: int, last: int) -> tuple[Any, ...]:
            return (
                *values[:first],
                *(None if h is None else ids_by_hash[h] for h in values[first:last]),
                *values[last:],
            )

        result.new_calls = len(new_calls)
        self._exmany(
            cur,
            f"INSERT INTO llm_calls ({CALL_COLS}) VALUES ({_marks(25)}) "
            "ON CONFLICT (trajectory_id, call_id) DO NOTHING",
            [mapped(values, *CALL_TEXT_SLOTS) for values, _, _, _ in new_calls],
        )
        result.new_accesses = len(new_accesses)
        self._exmany(
            cur,
            f"INSERT INTO provider_accesses ({ACCESS_COLS}) VALUES ({_marks(9)}) "
            "ON CONFLICT (trajectory_id, access_id) DO NOTHING",
            [mapped(values, 8, 9) for values, _, _ in new_accesses],
        )
        self._exmany(
            cur,
            "INSERT INTO trajectory_texts (text_id, trajectory_id, fts) VALUES (?,?,?) "
            "ON CONFLICT (text_id, trajectory_id) DO UPDATE SET fts = trajectory_texts.fts OR excluded.fts",
            sorted((ids_by_hash[h], tid, fts) for (h, tid), fts in links.items()),
        )

        counter_rows = [(*deltas[tid], now, tid) for tid in sorted(deltas)]
        touched = [(now, tid) for tid in ids if tid not in deltas]
        self._exmany(
            cur,
            """UPDATE trajectories SET step_count = step_count + ?, llm_call_count = llm_call_count + ?,
               provider_access_count = provider_access_count + ?,
               total_prompt_tokens = total_prompt_tokens + ?,
               total_completion_tokens = total_completion_tokens + ?, updated_at = ? WHERE id = ?""",
            counter_rows,
        )
        self._exmany(cur, "UPDATE trajectories SET updated_at = ? WHERE id = ?", touched)
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
        self._upsert_scores(cur, p.scores)
        result.scores = len(p.scores)
        if result.completed:
            self._count_tasks(cur, result.completed, now)
        return result

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

    def get_scores(self, trajectory_ids: Sequence[str]) -> dict[str, list[Score]]:
        with self._read_tx() as cur:
            rows = self._select_in(
                cur,
                f"SELECT {SCORE_COLS} FROM scores WHERE trajectory_id IN ({{marks}}) ORDER BY created_at",
                trajectory_ids,
            )
        out: dict[str, list[Score]] = defaultdict(list)
        for r in rows:
            out[r[1]].append(_score(r))
        return dict(out)

    # --- reads -----------------------------------------------------------------------------------

    # How a search condition names the trajectory id in a page query. SQLite overrides it with
    # "+t.id": the unary plus stops it from driving the query through the id index, so it walks the
    # newest-first time index and stops after one page instead of sorting every hit.
    page_search_id = "t.id"

    def _where(self, flt: TrajectoryFilter, *, page: bool = False) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("source", flt.source),
            ("status", flt.status),
            ("agent_id", flt.agent_id),
            ("scenario_id", flt.scenario_id),
            ("batch_id", flt.batch_id),
        ):
            if value is not None:
                clauses.append(f"t.{column} = ?")
                params.append(value)
        if flt.is_training_data is not None:
            clauses.append("t.is_training_data = ?")
            params.append(bool(flt.is_training_data))
        if flt.start_date is not None:
            clauses.append("t.start_time >= ?")
            params.append(int(flt.start_date))
        if flt.end_date is not None:
            clauses.append("t.start_time <= ?")
            params.append(int(flt.end_date))
        if flt.min_reward is not None:
            clauses.append("t.total_reward >= ?")
            params.append(float(flt.min_reward))
        if flt.max_reward is not None:
            clauses.append("t.total_reward <= ?")
            params.append(float(flt.max_reward))
        if flt.trajectory_ids is not None:
            ids = list(flt.trajectory_ids)
            if not ids:
                clauses.append("1 = 0")
            else:
                clauses.append(f"t.id IN ({_marks(len(ids))})")
                params.extend(ids)
        if flt.search:
            query = search.parse(flt.search)
            for terms, op in [(g, "IN") for g in query.groups] + [((n,), "NOT IN") for n in query.negated]:
                hits, sparams = self._search_ids(terms)
                clauses.append(f"{self.page_search_id if page else 't.id'} {op} ({hits})")
                params.extend(sparams)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def count(self, flt: TrajectoryFilter) -> int:
        with self._read_tx() as cur:
            return self._count(cur, flt)

    def list_trajectories(self, flt: TrajectoryFilter, limit: int = 50, offset: int = 0) -> Page:
        page_where, page_params = self._where(flt, page=True)
        with self._read_tx() as cur:
            rows = self._ex(
                cur,
                f"SELECT {TRAJ_COLS} FROM trajectories t{page_where} ORDER BY t.start_time DESC, t.id DESC "
                "LIMIT ? OFFSET ?",
                [*page_params, int(limit), int(offset)],
            ).fetchall()
            # When the first page holds every match there is nothing left to count.
            total = len(rows) if offset == 0 and len(rows) < limit else self._count(cur, flt)
        return Page([_trajectory(r) for r in rows], total, limit, offset)

    def _count(self, cur: Any, flt: TrajectoryFilter) -> int:
        query = search.parse(flt.search) if flt.search else None
        only_search = query is not None and flt.is_empty(but=("search",))
        if only_search and query is not None and len(query.groups) == 1 and not query.negated:
            # A plain search with no other filter: count distinct trajectories straight from the
            # hits (links, or on PostgreSQL texts' owners), without visiting the trajectories table.
            hits, sparams = self._search_ids(query.groups[0])
            return int(self._ex(cur, f"SELECT COUNT(DISTINCT h.id) FROM ({hits}) h", sparams).fetchone()[0])
        rolled = _rollup_where(flt)
        if rolled is not None:
            sql = f"SELECT COALESCE(SUM(trajectories), 0) FROM traj_rollup{rolled[0]}"
            return int(self._ex(cur, sql, rolled[1]).fetchone()[0])
        where, params = self._where(flt)
        return int(self._ex(cur, f"SELECT COUNT(*) FROM trajectories t{where}", params).fetchone()[0])

    def get_trajectory(self, trajectory_id: str) -> Trajectory | None:
        with self._read_tx() as cur:
            row = self._ex(
                cur, f"SELECT {TRAJ_COLS} FROM trajectories WHERE id = ?", [trajectory_id]
            ).fetchone()
            if row is None:
                return None
            return self._load_full(cur, [row])[0]

    def _pages(self, flt: TrajectoryFilter, chunk: int) -> Iterator[list[Any]]:
        """Trajectory rows matching ``flt``, newest first, ``chunk`` per page (keyset pagination:
        constant cost per page however deep the export goes)."""
        where, params = self._where(flt)
        joiner = " AND " if where else " WHERE "
        cursor_key: tuple[int, str] | None = None
        while True:
            sql = f"SELECT {TRAJ_COLS} FROM trajectories t{where}"
            page_params = list(params)
            if cursor_key is not None:
                sql += joiner + "(t.start_time < ? OR (t.start_time = ? AND t.id < ?))"
                page_params += [cursor_key[0], cursor_key[0], cursor_key[1]]
            sql += " ORDER BY t.start_time DESC, t.id DESC LIMIT ?"
            page_params.append(chunk)
            with self._read_tx() as cur:
                rows = self._ex(cur, sql, page_params).fetchall()
            if not rows:
                return
            yield rows
            if len(rows) < chunk:
                return
            cursor_key = (rows[-1][4], rows[-1][0])

    def iter_ids(self, flt: TrajectoryFilter, chunk: int = 500) -> Iterator[list[str]]:
        for rows in self._pages(flt, chunk):
            yield [r[0] for r in rows]

    def iter_trajectories(
        self, flt: TrajectoryFilter, chunk: int = 500, *, full: bool = True
    ) -> Iterator[Trajectory]:
        for rows in self._pages(flt, chunk):
            if not full:
                yield from (_trajectory(r) for r in rows)
                continue
            with self._read_tx() as cur:
                page = self._load_full(cur, rows)
            yield from page

    def _load_full(self, cur: Any, rows: Sequence[Any]) -> list[Trajectory]:
        trajectories = [_trajectory(r) for r in rows]
        by_id = {t.id: t for t in trajectories}
        ids = list(by_id)
        steps: dict[tuple[str, str], Step] = {}
        for r in self._select_in(
            cur,
            f"SELECT {STEP_COLS} FROM steps WHERE trajectory_id IN ({{marks}}) ORDER BY step_number, timestamp",
            ids,
        ):
            step = Step(
                step_id=r[0],
                step_number=r[2],
                timestamp=r[3],
                action=None if r[4] is None else _action(jsonutil.loads(r[4])),
                reward=r[5],
                done=None if r[6] is None else bool(r[6]),
                observation=_opt_loads(r[7]),
                metadata=_opt_loads(r[8]),
            )
            steps[(r[1], step.step_id)] = step
            by_id[r[1]].steps.append(step)
        call_rows = self._select_in(
            cur,
            f"SELECT {CALL_COLS} FROM llm_calls WHERE trajectory_id IN ({{marks}}) ORDER BY timestamp, call_id",
            ids,
        )
        access_rows = self._select_in(
            cur,
            f"SELECT {ACCESS_COLS} FROM provider_accesses WHERE trajectory_id IN ({{marks}}) "
            "ORDER BY timestamp, access_id",
            ids,
        )
        wanted = {v for r in call_rows for v in r[6:12] if v is not None}
        wanted.update(r[8] for r in access_rows if r[8] is not None)
        bodies = dict(self._text_bodies(cur, sorted(wanted)))
        for r in call_rows:
            sys_t, user_t, resp_t, reas_t, msg_t, tools_t = (
                None if k is None else bodies.get(k) for k in r[6:12]
            )
            call = LlmCall(
                call_id=r[0],
                timestamp=r[3],
                model=r[4],
                model_version=r[5],
                system_prompt=sys_t,
                user_prompt=user_t,
                response=resp_t,
                reasoning=reas_t,
                messages=_opt_loads(msg_t),
                tools=_opt_loads(tools_t),
                tool_calls=_opt_loads(r[12]),
                finish_reason=r[13],
                temperature=r[14],
                max_tokens=r[15],
                top_p=r[16],
                purpose=r[17],
                action_type=r[18],
                latency_ms=r[19],
                prompt_tokens=r[20],
                completion_tokens=r[21],
                cache_read_input_tokens=r[22],
                cache_creation_input_tokens=r[23],
                tags=_opt_loads(r[24]),
            )
            _step_for(steps, by_id[r[1]], r[2]).llm_calls.append(call)
        for r in access_rows:
            access = ProviderAccess(
                access_id=r[0],
                timestamp=r[3],
                provider_id=r[4],
                provider_name=r[5],
                purpose=r[6],
                query=_opt_loads(r[7]),
                data=None if r[8] is None else _opt_loads(bodies.get(r[8])),
            )
            _step_for(steps, by_id[r[1]], r[2]).provider_accesses.append(access)
        for r in self._select_in(
            cur,
            f"SELECT {SCORE_COLS} FROM scores WHERE trajectory_id IN ({{marks}}) ORDER BY created_at",
            ids,
        ):
            by_id[r[1]].scores.append(_score(r))
        return trajectories

    # --- stats -----------------------------------------------------------------------------------

    def stats(self, flt: TrajectoryFilter | None = None) -> dict[str, Any]:
        if flt is None:
            from trajforge.store.filter import TrajectoryFilter

            flt = TrajectoryFilter()
        where, params = self._where(flt)
        rolled = _rollup_where(flt)
        with self._read_tx() as cur:
            if rolled is not None:
                # Sums and counts from the trajectory rollup (a few hundred rows); min and max reward
                # from its index.
                rows = self._ex(
                    cur,
                    "SELECT day, source, status, trajectories, steps, calls, accesses, prompt_tokens, "
                    f"completion_tokens, rewarded, reward_sum FROM traj_rollup{rolled[0]}",
                    rolled[1],
                ).fetchall()
                rows = [r for r in rows if r[3]]
                extremes = self._ex(
                    cur,
                    f"SELECT MIN(total_reward), MAX(total_reward) FROM trajectories t{where}",
                    params,
                ).fetchone()
                totals, by_source, by_status, per_day_traj = _rolled_totals(rows, extremes)
            else:
                totals = self._ex(
                    cur,
                    "SELECT COUNT(*), SUM(step_count), SUM(llm_call_count), SUM(provider_access_count), "
                    "SUM(total_prompt_tokens), SUM(total_completion_tokens), COUNT(total_reward), "
                    f"AVG(total_reward), MIN(total_reward), MAX(total_reward) FROM trajectories t{where}",
                    params,
                ).fetchone()
                by_source = self._ex(
                    cur, f"SELECT source, COUNT(*) FROM trajectories t{where} GROUP BY source", params
                ).fetchall()
                by_status = self._ex(
                    cur, f"SELECT status, COUNT(*) FROM trajectories t{where} GROUP BY status", params
                ).fetchall()
                per_day_traj = self._ex(
                    cur,
                    f"SELECT t.start_time / {DAY_MS}, COUNT(*) FROM trajectories t{where} "
                    f"GROUP BY t.start_time / {DAY_MS}",
                    params,
                ).fetchall()
            if flt.is_empty():
                rollup_rows = self._ex(
                    cur,
                    "SELECT day, model, bucket, calls, prompt_tokens, completion_tokens, latency_sum FROM llm_rollup",
                ).fetchall()
            else:
                # A filtered view has no precomputed rollup: build the same one from its calls.
                rollup: dict[tuple[int, str, int], list[float]] = {}
                rows = self._ex(
                    cur,
                    "SELECT timestamp, model, latency_ms, prompt_tokens, completion_tokens FROM llm_calls "
                    f"WHERE trajectory_id IN (SELECT t.id FROM trajectories t{where})",
                    params,
                ).fetchall()
                for r in rows:
                    add_to_rollup(rollup, *r)
                rollup_rows = [(*k, *v) for k, v in rollup.items()]
        return _stats_report(totals, by_source, by_status, per_day_traj, rollup_rows)

    # --- deletes, settings, sweep ----------------------------------------------------------------

    def delete(self, ids: Sequence[str] | None = None, *, all: bool = False) -> int:
        with self._write_tx() as cur:
            if all:
                n = int(self._ex(cur, "SELECT COUNT(*) FROM trajectories").fetchone()[0])
                self._delete_all(cur)
                return n
            if not ids:
                return 0
            unique = sorted(set(ids))
            present = [
                r[0]
                for r in self._select_in(cur, "SELECT id FROM trajectories WHERE id IN ({marks})", unique)
            ]
            if not present:
                return 0
            rollup: dict[tuple[int, str, int], list[float]] = {}
            for r in self._select_in(
                cur,
                "SELECT timestamp, model, latency_ms, prompt_tokens, completion_tokens FROM llm_calls "
                "WHERE trajectory_id IN ({marks})",
                present,
            ):
                add_to_rollup(rollup, *r)
            candidates = sorted(
                {
                    r[0]
                    for r in self._select_in(
                        cur, "SELECT text_id FROM trajectory_texts WHERE trajectory_id IN ({marks})", present
                    )
                }
            )
            for table in ("llm_calls", "provider_accesses", "steps", "scores", "trajectory_texts"):
                for chunk in _chunks(present):
                    self._ex(cur, f"DELETE FROM {table} WHERE trajectory_id IN ({_marks(len(chunk))})", chunk)
            for chunk in _chunks(present):
                self._ex(cur, f"DELETE FROM trajectories WHERE id IN ({_marks(len(chunk))})", chunk)
            self._exmany(
                cur,
                """UPDATE llm_rollup SET calls = calls - ?, prompt_tokens = prompt_tokens - ?,
                   completion_tokens = completion_tokens - ?, latency_sum = latency_sum - ?
                   WHERE day = ? AND model = ? AND bucket = ?""",
                [(int(v[0]), int(v[1]), int(v[2]), v[3], *k) for k, v in sorted(rollup.items())],
            )
            self._ex(cur, "DELETE FROM llm_rollup WHERE calls <= 0")
            orphans = [
                r[0]
                for r in self._select_in(
                    cur,
                    "SELECT id FROM texts x WHERE id IN ({marks}) AND NOT EXISTS "
                    "(SELECT 1 FROM trajectory_texts tt WHERE tt.text_id = x.id)",
                    candidates,
                )
            ]
            self._forget_texts(cur, orphans)
            for chunk in _chunks(orphans):
                self._ex(cur, f"DELETE FROM texts WHERE id IN ({_marks(len(chunk))})", chunk)
            return len(present)

    def _delete_all(self, cur: Any) -> None:
        for table in (
            "llm_calls",
            "provider_accesses",
            "steps",
            "scores",
            "trajectory_texts",
            "trajectories",
            "texts",
            "llm_rollup",
            "traj_rollup",
        ):
            self._ex(cur, f"DELETE FROM {table}")

    def get_setting(self, key: str, default: Any = None) -> Any:
        with self._read_tx() as cur:
            row = self._ex(cur, "SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return default if row is None else jsonutil.loads(row[0])

    def set_setting(self, key: str, value: Any) -> None:
        with self._write_tx() as cur:
            self._ex(
                cur,
                "INSERT INTO settings (key, value, updated_at) VALUES (?,?,?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value, updated_at = excluded.updated_at",
                [key, jsonutil.dumps(value), now_ms()],
            )

    def sweep_timeouts(self, older_than_ms: int) -> int:
        cutoff = now_ms() - int(older_than_ms)
        with self._write_tx() as cur:
            cur = self._ex(
                cur,
                "UPDATE trajectories SET status = 'timeout', end_time = updated_at, "
                "duration_ms = updated_at - start_time WHERE status = 'active' AND updated_at < ?",
                [cutoff],
            )
            return int(cur.rowcount or 0)

    def migrations(self) -> list[str]:
        with self._read_tx() as cur:
            return [
                r[0] for r in self._ex(cur, "SELECT name FROM schema_migrations ORDER BY name").fetchall()
            ]


# --- row mapping and stats ---------------------------------------------------------------------------


def add_to_rollup(
    rollup: dict[tuple[int, str, int], list[float]],
    timestamp: int,
    model: str,
    latency_ms: float | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> None:
    key = (int(timestamp) // DAY_MS, model or "", latency_bucket(latency_ms))
    acc = rollup.get(key)
    if acc is None:
        acc = rollup[key] = [0, 0, 0, 0.0]
    acc[0] += 1
    acc[1] += prompt_tokens or 0
    acc[2] += completion_tokens or 0
    if key[2] >= 0:
        acc[3] += float(latency_ms or 0.0)


def _day(day: int) -> str:
    try:
        return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return f"day {day}"  # a stored time outside the calendar must not break stats


def _percentiles(hist: dict[int, int]) -> dict[str, float | None]:
    total = sum(hist.values())
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
        if not total:
            out[name] = None
            continue
        need, cum = q * total, 0
        for bucket in sorted(hist):
            cum += hist[bucket]
            if cum >= need:
                out[name] = round(bucket_value(bucket), 1)
                break
    return out


def _rollup_where(flt: TrajectoryFilter) -> tuple[str, list[Any]] | None:
    """The condition on ``traj_rollup`` for a filter it can answer (none, source, status), else None."""
    if not flt.is_empty(but=("source", "status")):
        return None
    clauses, params = [], []
    for column, value in (("source", flt.source), ("status", flt.status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _rolled_totals(
    rows: Sequence[Any], extremes: Sequence[Any]
) -> tuple[tuple[Any, ...], list[tuple[str, int]], list[tuple[str, int]], list[tuple[int, int]]]:
    """Rollup rows (day, source, status, counts and sums...) as the totals, by-source, by-status and
    per-day rows the scan in ``stats`` returns."""
    sums = [0] * 6
    reward_sum = 0.0
    by_source: dict[str, int] = defaultdict(int)
    by_status: dict[str, int] = defaultdict(int)
    per_day: dict[int, int] = defaultdict(int)
    for day, source, status, n, *counts, reward in rows:
        for i, v in enumerate(counts):
            sums[i] += int(v)
        reward_sum += float(reward)
        by_source[source] += int(n)
        by_status[status] += int(n)
        per_day[int(day)] += int(n)
    total = sum(by_source.values())
    rewarded = sums[5]
    # The sum is kept by adding and subtracting floats: round away the last bits of drift.
    mean = round(reward_sum / rewarded, 12) if rewarded else None
    totals = (total, *sums[:5], rewarded, mean, extremes[0], extremes[1])
    return totals, list(by_source.items()), list(by_status.items()), list(per_day.items())


def _stats_report(
    totals: Sequence[Any],
    by_source: Sequence[Any],
    by_status: Sequence[Any],
    per_day_traj: Sequence[Any],
    rollup_rows: Sequence[Any],
) -> dict[str, Any]:
    by_model: dict[str, dict[str, Any]] = {}
    per_day: dict[int, dict[str, Any]] = {}
    hist: dict[int, int] = defaultdict(int)
    model_hist: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    latency_sum, latency_n = 0.0, 0
    for day, model, bucket, calls, pt, ct, lsum in rollup_rows:
        m = by_model.setdefault(
            model, {"model": model, "llmCalls": 0, "promptTokens": 0, "completionTokens": 0}
        )
        m["llmCalls"] += int(calls)
        m["promptTokens"] += int(pt)
        m["completionTokens"] += int(ct)
        d = per_day.setdefault(
            int(day), {"trajectories": 0, "llmCalls": 0, "promptTokens": 0, "completionTokens": 0}
        )
        d["llmCalls"] += int(calls)
        d["promptTokens"] += int(pt)
        d["completionTokens"] += int(ct)
        if bucket >= 0:
            hist[int(bucket)] += int(calls)
            model_hist[model][int(bucket)] += int(calls)
            latency_sum += float(lsum)
            latency_n += int(calls)
    for day, n in per_day_traj:
        per_day.setdefault(
            int(day), {"trajectories": 0, "llmCalls": 0, "promptTokens": 0, "completionTokens": 0}
        )["trajectories"] = int(n)
    for model, m in by_model.items():
        m["latencyMs"] = _percentiles(model_hist.get(model, {}))
    latency = _percentiles(hist)
    latency["mean"] = round(latency_sum / latency_n, 1) if latency_n else None
    return {
        "totalTrajectories": int(totals[0] or 0),
        "totalSteps": int(totals[1] or 0),
        "totalLlmCalls": int(totals[2] or 0),
        "totalProviderAccesses": int(totals[3] or 0),
        "totalPromptTokens": int(totals[4] or 0),
        "totalCompletionTokens": int(totals[5] or 0),
        "bySource": {r[0]: int(r[1]) for r in by_source},
        "byStatus": {r[0]: int(r[1]) for r in by_status},
        "byModel": sorted(by_model.values(), key=lambda m: -m["llmCalls"]),
        "latencyMs": latency,
        "reward": {
            "count": int(totals[6] or 0),
            "mean": None if totals[7] is None else float(totals[7]),
            "min": None if totals[8] is None else float(totals[8]),
            "max": None if totals[9] is None else float(totals[9]),
        },
        "perDay": [{"date": _day(day), **per_day[day]} for day in sorted(per_day)],
    }


def _trajectory(r: Sequence[Any]) -> Trajectory:
    return Trajectory(
        id=r[0],
        agent_id=r[1],
        source=r[2],
        status=r[3],
        start_time=r[4],
        end_time=r[5],
        duration_ms=r[6],
        scenario_id=r[7],
        batch_id=r[8],
        group_index=r[9],
        is_training_data=bool(r[10]),
        metadata=jsonutil.loads(r[11]) if r[11] else {},
        total_reward=r[12],
        step_count=r[13],
        llm_call_count=r[14],
        provider_access_count=r[15],
        total_prompt_tokens=r[16],
        total_completion_tokens=r[17],
        created_at=r[18],
        updated_at=r[19],
    )


def _score(r: Sequence[Any]) -> Score:
    return Score(
        score_id=r[0], trajectory_id=r[1], name=r[2], value=r[3], comment=r[4], source=r[5], created_at=r[6]
    )


# Stored in wire (camelCase) form; snake_case keys are read too, so no stored action is unreadable.
_ACTION_FIELDS = {
    **{name: name for name in ActionResult.__slots__},
    **{camel(n): n for n in ActionResult.__slots__},
}


def _action(d: dict[str, Any]) -> ActionResult:
    """An action from its stored (wire, camelCase) JSON."""
    return ActionResult(**{_ACTION_FIELDS[k]: v for k, v in d.items() if k in _ACTION_FIELDS})


def _step_for(steps: dict[tuple[str, str], Step], t: Trajectory, step_id: str) -> Step:
    """The step a call belongs to; a call whose step row never arrived still shows up."""
    step = steps.get((t.id, step_id))
    if step is None:
        step = steps[(t.id, step_id)] = Step(step_id=step_id, step_number=len(t.steps), timestamp=0)
        t.steps.append(step)
    return step
