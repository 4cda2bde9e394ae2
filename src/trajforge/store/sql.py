"""The store shared by SQLite and PostgreSQL, assembled from its parts, and its reads.

Both backends speak the same SQL for everything but connections, placeholders and full-text
search, so the logic lives here once and each backend supplies those hooks
(:class:`~trajforge.store.sqlbase.SqlBase`). The parts: the write path
(:mod:`~trajforge.store.writes`), the training records (:mod:`~trajforge.store.training`), bulk
document reads (:mod:`~trajforge.store.documents`); listing, loading, stats, deletes and settings
are here.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from trajforge import jsonutil
from trajforge.records import (
    TASK_SQL,
    ActionResult,
    LlmCall,
    ProviderAccess,
    Score,
    Step,
    Trajectory,
    camel,
    now_ms,
)
from trajforge.store import search
from trajforge.store.base import Page
from trajforge.store.documents import DocumentReads
from trajforge.store.searchwalk import SearchWalk, Walked
from trajforge.store.sqlbase import (
    ACCESS_COLS,
    CALL_COLS,
    CALL_TEXT_SLOTS,
    SCORE_COLS,
    STEP_COLS,
    TRAJ_COLS,
    SqlBase,
    chunked,
    newest_after,
    placeholders,
)
from trajforge.store.stats import DAY_MS, add_to_rollup, rolled_totals, stats_report
from trajforge.store.training import TrainingRecords
from trajforge.store.writes import AfterWrite, TrajectoryWrites

TEXTS = slice(*CALL_TEXT_SLOTS)
"""Where a call row read with CALL_COLS holds its text ids."""

if TYPE_CHECKING:  # the filter is built only in reads; the SDK's write path never imports it
    from trajforge.store.filter import TrajectoryFilter


def _opt_loads(value: str | None) -> Any:
    return None if value is None else jsonutil.loads(value)


class SqlStore(DocumentReads, TrainingRecords, TrajectoryWrites, SearchWalk, SqlBase):
    """Shared implementation; subclasses provide connections, placeholders and search."""

    def __init__(self) -> None:
        # The training records count completed trajectories per task in each write's own
        # transaction (a count is never lost or doubled); the write path only runs the list.
        self.after_write: list[AfterWrite] = [self._count_completed]

    # --- reads -----------------------------------------------------------------------------------

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
                clauses.append(f"t.id IN ({placeholders(len(ids))})")
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
        if flt.search:
            with self._read_tx() as cur:
                walked = self._walk_search(cur, flt, limit, offset)
            if walked is not None:
                return _walked_page(walked, limit, offset)
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
        cursor_key: tuple[int, str] | None = None
        while True:
            sql, page_params = newest_after(where, params, cursor_key, chunk)
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
        wanted = {v for r in call_rows for v in r[TEXTS] if v is not None}
        wanted.update(r[8] for r in access_rows if r[8] is not None)
        bodies = dict(self._text_bodies(cur, sorted(wanted)))
        for r in call_rows:
            sys_t, user_t, resp_t, reas_t, msg_t, tools_t = (
                None if k is None else bodies.get(k) for k in r[TEXTS]
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
                totals, by_source, by_status, per_day_traj = rolled_totals(rows, extremes)
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
        return stats_report(totals, by_source, by_status, per_day_traj, rollup_rows)

    # Rows one aggregate groups at a time, or None for all at once. SQLite keeps its temporary
    # b-trees in memory (temp_store = MEMORY), so a GROUP BY over every call would grow with the
    # store: it groups in passes of about this many calls and its memory stays flat. PostgreSQL
    # spills a big grouping to disk on the server by itself.
    group_pass_rows: int | None = None

    def _passes(self, rows: int) -> int:
        if self.group_pass_rows is None or rows <= self.group_pass_rows:
            return 1
        return -(-rows // self.group_pass_rows)

    def task_coverage(self, require_score: str | None = None) -> list[dict[str, Any]]:
        """Per task (a call's action type, else its purpose): the trajectories with calls of it, how
        many completed, how many carry a total reward, any score, ``require_score``, a scenario id.
        Grouped in SQL, a range of trajectory ids per pass (every count is per trajectory, so the
        passes add up)."""
        sql = (
            "SELECT c.task, COUNT(*), "
            "SUM(CASE WHEN t.status = 'completed' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN t.total_reward IS NOT NULL THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN EXISTS (SELECT 1 FROM scores s WHERE s.trajectory_id = t.id) THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN t.total_reward IS NOT NULL OR EXISTS "
            "(SELECT 1 FROM scores s WHERE s.trajectory_id = t.id) THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN t.status = 'completed' AND EXISTS (SELECT 1 FROM scores s "
            "WHERE s.trajectory_id = t.id AND s.name = ?) THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN t.scenario_id IS NOT NULL THEN 1 ELSE 0 END) "
            f"FROM (SELECT DISTINCT trajectory_id, {TASK_SQL} AS task FROM llm_calls{{range}}) c "
            "JOIN trajectories t ON t.id = c.trajectory_id GROUP BY c.task"
        )
        names = (
            "trajectories",
            "completed",
            "rewarded",
            "scored",
            "rewardedOrScored",
            "required",
            "withScenario",
        )
        totals: dict[str, list[int]] = {}
        with self._read_tx() as cur:
            trajectories, calls = self._ex(
                cur, "SELECT COUNT(*), COALESCE(SUM(llm_call_count), 0) FROM trajectories"
            ).fetchone()
            passes = self._passes(int(calls))
            size = -(-int(trajectories) // passes)
            # Pass boundaries: every size-th trajectory id (a walk of the primary key's index).
            bounds: list[str | None] = [None]
            for k in range(1, passes):
                row = self._ex(
                    cur, "SELECT id FROM trajectories ORDER BY id LIMIT 1 OFFSET ?", [k * size]
                ).fetchone()
                if row is not None:
                    bounds.append(row[0])
            bounds.append(None)
            for lo, hi in itertools.pairwise(bounds):
                where = [
                    c for c, v in (("trajectory_id >= ?", lo), ("trajectory_id < ?", hi)) if v is not None
                ]
                # The score name's placeholder comes first in the text, the range's after it.
                params = [require_score or "", *(v for v in (lo, hi) if v is not None)]
                query = sql.replace("{range}", (" WHERE " + " AND ".join(where)) if where else "")
                for r in self._ex(cur, query, params).fetchall():
                    acc = totals.setdefault(r[0], [0] * len(names))
                    for i, v in enumerate(r[1:]):
                        acc[i] += int(v or 0)
        out = []
        for task in sorted(totals):
            entry: dict[str, Any] = {"task": task, **dict(zip(names, totals[task], strict=True))}
            required = entry.pop("required")
            entry["completedWithRequiredScore"] = required if require_score else None
            out.append(entry)
        return out

    def score_coverage(self) -> list[dict[str, Any]]:
        """Per score name: how many scores, on how many trajectories, their mean."""
        with self._read_tx() as cur:
            rows = self._ex(
                cur,
                "SELECT name, COUNT(*), COUNT(DISTINCT trajectory_id), AVG(value) FROM scores "
                "GROUP BY name ORDER BY name",
            ).fetchall()
        return [
            {
                "name": r[0],
                "count": int(r[1]),
                "trajectories": int(r[2]),
                "mean": None if r[3] is None else float(r[3]),
            }
            for r in rows
        ]

    def duplicate_calls(self) -> tuple[int, int]:
        """(LLM calls, distinct calls): a call is a duplicate of another with the same system,
        user, messages and response texts (texts are stored once, so their ids compare them).
        Grouped in passes by a sum of those ids modulo the number of passes: copies of a call
        have the same sum, so they meet in the same pass and the passes' distinct counts add up."""
        group = (
            "SELECT COUNT(*) FROM (SELECT 1 FROM llm_calls{where} "
            "GROUP BY system_text, user_text, messages_text, response_text) g"
        )
        ids = (
            "(COALESCE(system_text, 0) + COALESCE(user_text, 0) + COALESCE(messages_text, 0) "
            "+ COALESCE(response_text, 0))"
        )
        # ids modulo the passes, in integer arithmetic both dialects share ('%' is psycopg's).
        key = f"{ids} - ({ids} / ?) * ? = ?"
        with self._read_tx() as cur:
            calls = int(self._ex(cur, "SELECT COUNT(*) FROM llm_calls").fetchone()[0])
            passes = self._passes(calls)
            if passes == 1:
                distinct = int(self._ex(cur, group.replace("{where}", "")).fetchone()[0])
            else:
                distinct = sum(
                    int(
                        self._ex(
                            cur, group.replace("{where}", f" WHERE {key}"), [passes, passes, k]
                        ).fetchone()[0]
                    )
                    for k in range(passes)
                )
        return calls, distinct

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
                for chunk in chunked(present):
                    self._ex(
                        cur, f"DELETE FROM {table} WHERE trajectory_id IN ({placeholders(len(chunk))})", chunk
                    )
            for chunk in chunked(present):
                self._ex(cur, f"DELETE FROM trajectories WHERE id IN ({placeholders(len(chunk))})", chunk)
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
            for chunk in chunked(orphans):
                self._ex(cur, f"DELETE FROM texts WHERE id IN ({placeholders(len(chunk))})", chunk)
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


# --- row mapping -------------------------------------------------------------------------------------


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


def _walked_page(walked: Walked, limit: int, offset: int) -> Page:
    return Page([_trajectory(r) for r in walked.rows], walked.total, limit, offset, walked.lower_bound)


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
