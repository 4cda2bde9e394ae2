"""The assemble mode of the write path (:attr:`trajforge.records.WriteBatch.assemble`), used by
OTLP ingest only: the parts of one trajectory (spans, and the log events carrying a call's content)
arrive in many writes and out of order. Each step here runs inside the write's transaction, called
by :meth:`~trajforge.store.writes.TrajectoryWrites._apply` when the batch asks for it; other
writers never reach them. Also the trace → trajectory table OTLP assembly decides with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trajforge import jsonutil
from trajforge.records import now_ms
from trajforge.store.sqlbase import CALL_COLS, TRAJ_COLS, SqlHelpers, chunked, placeholders
from trajforge.store.stats import add_to_rollup

if TYPE_CHECKING:
    from trajforge.store.writes import _Prepared, _Write

_CALL_COL_NAMES = [c.strip() for c in CALL_COLS.split(",")]
_FILL_COLS = tuple(
    c for c in _CALL_COL_NAMES if c not in ("call_id", "trajectory_id", "step_id", "timestamp", "purpose")
)
"""The columns of a stored call that a later write in assemble mode may fill when empty."""
_FILL_INDEX = tuple(_CALL_COL_NAMES.index(c) for c in _FILL_COLS)
_FILL_TEXTS = frozenset(i for i, c in enumerate(_FILL_COLS) if c.endswith("_text"))

log = logging.getLogger("trajforge.store")


def tool_call_ids(tool_calls: Any) -> list[str]:
    """The ids of an LLM call's tool calls (OpenAI's ``id``, or the other spellings emitters use)."""
    ids = []
    for tc in tool_calls if isinstance(tool_calls, list) else ():
        if isinstance(tc, dict):
            for key in ("id", "call_id", "toolCallId", "tool_call_id"):
                if isinstance(tc.get(key), str):
                    ids.append(tc[key])
                    break
    return ids


def _like(text: str) -> str:
    """``text`` as a LIKE pattern that matches it anywhere, literally (ESCAPE '\\')."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _tool_call_id(metadata: Any) -> str | None:
    otel = metadata.get("otel") if isinstance(metadata, dict) else None
    value = otel.get("toolCallId") if isinstance(otel, dict) else None
    return value if isinstance(value, str) and value else None


class TracesMoved(Exception):
    """A trace's trajectory changed between the assembly of a batch and its write (the trace joined
    its conversation): assemble the spans again."""


class AssemblyWrites(SqlHelpers):
    """Assemble-mode steps and the trace table; mixed into the write path."""

    def _assemble_headers(self, cur: Any, p: _Prepared, old_status: dict[str, str]) -> None:
        """For trajectories already stored: merge the headers' metadata into the stored metadata
        (a later request's resource attributes add to, not replace, an earlier one's); let a root
        span decide the end and the status only when it ends later than what is stored (the roots
        of a conversation's traces come in any order, and a re-sent root changes nothing), and
        never take ``completed`` back; never move the start later; and move it back when this
        write holds an earlier span."""
        touched = sorted(
            tid
            for tid in old_status
            if (h := p.headers.get(tid)) is not None
            and (h.metadata or h.end_time is not None or h.start_time is not None)
        )
        sql = "SELECT id, metadata, end_time, start_time FROM trajectories WHERE id IN ({marks})"
        for tid, stored, end, start in self._select_in(cur, sql, touched):
            h = p.headers[tid]
            old = jsonutil.loads(stored) if stored else {}
            if isinstance(old, dict) and h.metadata:
                h.metadata = {**old, **h.metadata}
            if h.end_time is not None and end is not None and end >= h.end_time:
                h.end_time = None
                h.status = None
            if h.status == "error" and old_status[tid] == "completed":
                # A completed conversation stays completed when a later turn fails (the failure is
                # on its step): completion is counted once, and never taken back.
                h.status = None
            if h.start_time is not None and start is not None and start <= h.start_time:
                h.start_time = None
        earlier = [
            (p.first_seen[tid], p.first_seen[tid], tid, p.first_seen[tid]) for tid in sorted(old_status)
        ]
        self._exmany(
            cur,
            "UPDATE trajectories SET start_time = ?, duration_ms = end_time - ? WHERE id = ? AND start_time > ?",
            earlier,
        )

    def _renumber_steps(self, cur: Any, tids: list[str]) -> None:
        """Number the steps of these trajectories 0, 1, … by (timestamp, step id): a span that
        arrives after a later one still takes its place. Only numbers that change are written."""
        for part in chunked(tids):
            self._ex(
                cur,
                f"""UPDATE steps SET step_number = r.n FROM (
                    SELECT trajectory_id AS t, step_id AS s,
                           ROW_NUMBER() OVER (PARTITION BY trajectory_id ORDER BY timestamp, step_id) - 1 AS n
                    FROM steps WHERE trajectory_id IN ({placeholders(len(part))})) AS r
                WHERE steps.trajectory_id = r.t AND steps.step_id = r.s AND steps.step_number <> r.n""",
                list(part),
            )

    def _link_tool_steps(self, cur: Any, p: _Prepared) -> None:
        """Point this write's unlinked tool actions to the stored LLM call that asked for them (the
        call came in an earlier request). Runs before the steps are written."""
        for (tid, _), s in sorted(p.steps.items()):
            tc_id = _tool_call_id(s.metadata)
            if s.action is None or s.action.llm_call_id is not None or tc_id is None:
                continue
            rows = self._ex(
                cur,
                "SELECT call_id, tool_calls FROM llm_calls WHERE trajectory_id = ? AND tool_calls LIKE ? ESCAPE '\\'",
                [tid, _like(jsonutil.dumps(tc_id))],
            ).fetchall()
            for call_id, tool_calls in sorted(rows):
                if tc_id in tool_call_ids(jsonutil.loads(tool_calls)):
                    s.action.llm_call_id = call_id
                    break

    def _link_stored_tools(self, cur: Any, p: _Prepared, new_calls: list[Any]) -> None:
        """Point stored tool actions still unlinked to this write's new LLM calls that asked for
        them (the tool's span came first). Runs after the steps are written."""
        for _, _, tid, call in new_calls:
            for tc_id in tool_call_ids(call.tool_calls):
                rows = self._ex(
                    cur,
                    "SELECT step_id, action, metadata FROM steps WHERE trajectory_id = ? AND action IS NOT NULL "
                    "AND metadata LIKE ? ESCAPE '\\'",
                    [tid, _like(jsonutil.dumps({"toolCallId": tc_id})[1:-1])],
                ).fetchall()
                for step_id, action, metadata in sorted(rows):
                    act = jsonutil.loads(action)
                    if _tool_call_id(jsonutil.loads(metadata)) == tc_id and not act.get("llmCallId"):
                        act["llmCallId"] = call.call_id
                        self._ex(
                            cur,
                            "UPDATE steps SET action = ? WHERE trajectory_id = ? AND step_id = ?",
                            [jsonutil.dumps(act), tid, step_id],
                        )

    def _plan_fills(self, cur: Any, p: _Prepared, w: _Write, new_calls: list[Any]) -> list[tuple[Any, ...]]:
        """For calls already stored: the values of this write that fill their still-empty columns
        (a span's call and the log event with its content arrive in either order). Never
        overwrites; the texts filled in are noted for storing and search, the token counters and
        the rollup move by exactly the difference. Returns the UPDATE rows (text hashes in the text
        slots, swapped for ids by :meth:`_apply_fills`)."""
        fresh = {(tid, call.call_id) for _, _, tid, call in new_calls}
        keys = [k for k in sorted(p.calls) if k not in fresh]
        if not keys:
            return []
        cols = ", ".join(_FILL_COLS)
        sql = f"SELECT trajectory_id, call_id, timestamp, {cols} FROM llm_calls WHERE (trajectory_id, call_id) IN ({{pairs}})"
        if getattr(self, "dialect", "") == "postgres":
            sql += " ORDER BY trajectory_id, call_id FOR UPDATE"  # a concurrent fill waits: exact counters
        rows = []
        for r in self._select_pairs(cur, sql, keys):
            key, ts, stored = (r[0], r[1]), r[2], r[3:]
            values, texts, tid, _ = p.calls[key]
            new = [values[i] for i in _FILL_INDEX]
            filled = [
                n if (old is None or (name == "model" and old == "")) and n not in (None, "") else None
                for name, old, n in zip(_FILL_COLS, stored, new, strict=True)
            ]
            if all(v is None for v in filled):
                continue
            hashes = {filled[i] for i in _FILL_TEXTS if filled[i] is not None}
            w.use(tid, [t for t in texts if t[0] in hashes])
            merged = [o if f is None else f for o, f in zip(stored, filled, strict=True)]
            old_row = dict(zip(_FILL_COLS, stored, strict=True))
            new_row = dict(zip(_FILL_COLS, merged, strict=True))
            d = w.deltas[tid]
            d[3] += (new_row["prompt_tokens"] or 0) - (old_row["prompt_tokens"] or 0)
            d[4] += (new_row["completion_tokens"] or 0) - (old_row["completion_tokens"] or 0)
            if any(
                old_row[c] != new_row[c]
                for c in ("model", "latency_ms", "prompt_tokens", "completion_tokens")
            ):
                # Move the call from its old rollup bucket to its new one: calls and sums stay exact.
                gone: dict[tuple[int, str, int], list[float]] = {}
                add_to_rollup(
                    gone,
                    ts,
                    old_row["model"],
                    old_row["latency_ms"],
                    old_row["prompt_tokens"],
                    old_row["completion_tokens"],
                )
                for k, v in gone.items():
                    acc = w.rollup.setdefault(k, [0, 0, 0, 0.0])
                    for i in range(4):
                        acc[i] -= v[i]
                add_to_rollup(
                    w.rollup,
                    ts,
                    new_row["model"],
                    new_row["latency_ms"],
                    new_row["prompt_tokens"],
                    new_row["completion_tokens"],
                )
            rows.append((*filled, *key))
        return rows

    def _apply_fills(self, cur: Any, rows: list[tuple[Any, ...]], ids_by_hash: dict[int, int]) -> None:
        """Write the planned fills (``COALESCE``: a column filled meanwhile keeps its value)."""
        if not rows:
            return
        sets = ", ".join(
            "model = CASE WHEN model = '' THEN COALESCE(?, model) ELSE model END"
            if c == "model"
            else f"{c} = COALESCE({c}, ?)"
            for c in _FILL_COLS
        )
        self._exmany(
            cur,
            f"UPDATE llm_calls SET {sets} WHERE trajectory_id = ? AND call_id = ?",
            [
                tuple(ids_by_hash[v] if i in _FILL_TEXTS and v is not None else v for i, v in enumerate(row))
                for row in rows
            ],
        )

    def _locking(self, sql: str, mode: str) -> str:
        # PostgreSQL: a trace's row is locked while a batch built on it is written (FOR SHARE) or
        # while it moves (FOR UPDATE), so the two never cross. SQLite has one writer at a time.
        return f"{sql} FOR {mode}" if getattr(self, "dialect", "") == "postgres" else sql

    def _lock_trajectories(self, cur: Any, ids: Sequence[str]) -> None:
        """Hold these trajectories' rows until the transaction ends (PostgreSQL), in id order."""
        if getattr(self, "dialect", "") == "postgres" and ids:
            self._select_in(
                cur, "SELECT id FROM trajectories WHERE id IN ({marks}) ORDER BY id FOR UPDATE", sorted(ids)
            )

    def _check_traces(self, cur: Any, traces: dict[str, str]) -> None:
        sql = self._locking(
            "SELECT trace_id, trajectory_id FROM otel_traces WHERE trace_id IN ({marks})", "SHARE"
        )
        for trace, tid in self._select_in(cur, sql, sorted(traces)):
            if traces[trace] != tid:
                raise TracesMoved(f"trace {trace} now goes to trajectory {tid!r}")

    def assign_traces(self, wanted: dict[str, str], lookup: Sequence[str] = ()) -> dict[str, str]:
        """The trajectory of each trace: the stored one, else the one proposed in ``wanted``
        (stored now, so every later span of the trace joins it). ``{trace id: trajectory id}``.

        A trace stored under its own id (its first spans had no conversation id) whose spans now
        name a conversation joins it: its trajectory's rows move into the conversation's.
        Traces in ``lookup`` are only looked up (present in the answer when stored)."""
        if not wanted and not lookup:
            return {}
        keys = sorted(wanted)
        now = now_ms()
        with self._write_tx() as cur:
            self._exmany(
                cur,
                "INSERT INTO otel_traces (trace_id, trajectory_id, created_at) VALUES (?,?,?) "
                "ON CONFLICT (trace_id) DO NOTHING",
                [(k, wanted[k], now) for k in keys],
            )
            sql = self._locking(
                "SELECT trace_id, trajectory_id FROM otel_traces WHERE trace_id IN ({marks})", "UPDATE"
            )
            stored = {r[0]: r[1] for r in self._select_in(cur, sql, sorted({*keys, *lookup}))}
            for trace in keys:
                if stored[trace] == trace and wanted[trace] != trace:
                    if self._ids_collide(cur, trace, wanted[trace]):
                        # Span ids are unique within a trace only: a trace holding one the
                        # conversation already has stays a trajectory of its own (its rows would
                        # break the conversation's keys), rather than failing every later batch.
                        log.warning(
                            "trace %s keeps its own trajectory: a span id of it is in %s",
                            trace,
                            wanted[trace],
                        )
                        continue
                    self._move_trajectory(cur, trace, wanted[trace], now)
                    self._ex(
                        cur,
                        "UPDATE otel_traces SET trajectory_id = ? WHERE trace_id = ?",
                        [wanted[trace], trace],
                    )
                    stored[trace] = wanted[trace]
            return stored

    def _ids_collide(self, cur: Any, old: str, new: str) -> bool:
        """Whether trajectory ``old`` has a step, call or access id that ``new`` has too."""
        for table, key in (
            ("steps", "step_id"),
            ("llm_calls", "call_id"),
            ("provider_accesses", "access_id"),
        ):
            row = self._ex(
                cur,
                f"SELECT 1 FROM {table} a JOIN {table} b ON a.{key} = b.{key} "
                "WHERE a.trajectory_id = ? AND b.trajectory_id = ? LIMIT 1",
                [old, new],
            ).fetchone()
            if row is not None:
                return True
        return False

    def _move_trajectory(self, cur: Any, old: str, new: str, now: int) -> None:
        """Move everything of trajectory ``old`` into ``new`` (a copy of ``old`` under the new id
        when ``new`` does not exist, else merged: counters added, times widened, metadata merged),
        then delete ``old``. The per-task counters move by what the two counted before and what
        the result counts after, so a trajectory counted under both names counts once."""
        self._lock_trajectories(cur, [old])
        src = self._ex(
            cur,
            "SELECT step_count, llm_call_count, provider_access_count, total_prompt_tokens, "
            "total_completion_tokens, start_time, end_time, status, agent_id, metadata FROM trajectories WHERE id = ?",
            [old],
        ).fetchone()
        if src is None:
            return
        before = self.counted_tasks(cur, [old])  # type: ignore[attr-defined]
        # Not "rename if absent": another server may be creating ``new`` right now (PostgreSQL). The
        # insert waits for it, and then does nothing; then ``new`` is locked and read as it stands.
        created = self._ex(
            cur,
            f"INSERT INTO trajectories ({TRAJ_COLS}) SELECT ?, {TRAJ_COLS.split(', ', 1)[1]} "
            "FROM trajectories WHERE id = ? ON CONFLICT (id) DO NOTHING",
            [new, old],
        ).rowcount
        self._lock_trajectories(cur, [new])
        dst = None
        if not created:
            dst = self._ex(cur, "SELECT status, metadata FROM trajectories WHERE id = ?", [new]).fetchone()
            before.update(self.counted_tasks(cur, [new]))  # type: ignore[attr-defined]
        # A score of the same name and source on both: the conversation's stays.
        self._ex(
            cur,
            "DELETE FROM scores WHERE trajectory_id = ? AND EXISTS (SELECT 1 FROM scores s2 WHERE "
            "s2.trajectory_id = ? AND s2.name = scores.name AND s2.source = scores.source)",
            [old, new],
        )
        for table in ("steps", "llm_calls", "provider_accesses", "scores"):
            self._ex(cur, f"UPDATE {table} SET trajectory_id = ? WHERE trajectory_id = ?", [new, old])
        self._ex(
            cur,
            "UPDATE texts SET owner = ? WHERE owner = ? AND id IN "
            "(SELECT text_id FROM trajectory_texts WHERE trajectory_id = ?)",
            [new, old, old],
        )
        self._ex(
            cur,
            "INSERT INTO trajectory_texts (text_id, trajectory_id, fts) SELECT text_id, ?, fts "
            "FROM trajectory_texts WHERE trajectory_id = ? "
            "ON CONFLICT (text_id, trajectory_id) DO UPDATE SET fts = trajectory_texts.fts OR excluded.fts",
            [new, old],
        )
        self._ex(cur, "DELETE FROM trajectory_texts WHERE trajectory_id = ?", [old])
        if dst is None:
            self._ex(cur, "UPDATE trajectories SET updated_at = ? WHERE id = ?", [now, new])
            self._ex(cur, "DELETE FROM trajectories WHERE id = ?", [old])
        else:
            steps, calls, accesses, ptok, ctok, start, end, status, agent, meta = src
            old_meta = jsonutil.loads(meta) if meta else {}
            new_meta = jsonutil.loads(dst[1]) if dst[1] else {}
            merged = (
                {**old_meta, **new_meta}
                if isinstance(old_meta, dict) and isinstance(new_meta, dict)
                else new_meta
            )
            self._ex(
                cur,
                """UPDATE trajectories SET step_count = step_count + ?, llm_call_count = llm_call_count + ?,
                   provider_access_count = provider_access_count + ?,
                   total_prompt_tokens = total_prompt_tokens + ?,
                   total_completion_tokens = total_completion_tokens + ?,
                   start_time = CASE WHEN start_time > ? THEN ? ELSE start_time END,
                   end_time = CASE WHEN end_time IS NULL OR end_time < ? THEN COALESCE(?, end_time) ELSE end_time END,
                   agent_id = CASE WHEN agent_id = '' THEN ? ELSE agent_id END,
                   status = ?, metadata = ?, updated_at = ? WHERE id = ?""",
                [
                    steps, calls, accesses, ptok, ctok, start, start, end, end, agent,
                    status if dst[0] == "active" else dst[0], jsonutil.dumps(merged), now, new,
                ],
            )  # fmt: skip
            self._ex(
                cur,
                "UPDATE trajectories SET duration_ms = end_time - start_time WHERE id = ? AND end_time IS NOT NULL",
                [new],
            )
            self._ex(cur, "DELETE FROM trajectories WHERE id = ?", [old])
        self._renumber_steps(cur, [new])
        after = self.counted_tasks(cur, [new])  # type: ignore[attr-defined]
        self.count_task_changes(cur, before, after, now)  # type: ignore[attr-defined]
