"""What every part of the SQL store stands on: the helpers it calls on itself, typed once.

The store is assembled from parts (the write path, training records, bulk document reads, the
reads in :mod:`~trajforge.store.sql`), each a class of its own over the same connection helpers.
:class:`SqlHelpers` is that common ground as a Protocol: a part subclasses it to say what it
needs from the store it is mixed into, and mypy checks every call. :class:`SqlBase` implements it
for both databases; a backend supplies connections, placeholders and full-text search on top.
SQL is written with ``?`` placeholders; the PostgreSQL backend rewrites them to ``%s``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from trajforge.store import search
from trajforge.store.migrations import MIGRATIONS, DataMigration, Progress, run_data_migration

if TYPE_CHECKING:
    from trajforge.store.filter import TrajectoryFilter

log = logging.getLogger("trajforge.store")

CHUNK = 500  # ids per IN (...) list: well under both databases' parameter limits

TRAJ_COLS = (
    "id, agent_id, source, status, start_time, end_time, duration_ms, scenario_id, batch_id, "
    "group_index, is_training_data, metadata, total_reward, step_count, llm_call_count, "
    "provider_access_count, total_prompt_tokens, total_completion_tokens, created_at, updated_at"
)


def newest_after(
    where: str, params: list[Any], key: tuple[int, str] | None, size: int
) -> tuple[str, list[Any]]:
    """The next ``size`` trajectory rows (``TRAJ_COLS``) of a filter's ``where``, newest first,
    after the row whose ``(start_time, id)`` is ``key`` (keyset pagination: constant cost per page
    however deep the read goes). The next key is the last row's ``(row[4], row[0])``."""
    sql = f"SELECT {TRAJ_COLS} FROM trajectories t{where}"
    out = list(params)
    if key is not None:
        sql += (" AND " if where else " WHERE ") + "(t.start_time < ? OR (t.start_time = ? AND t.id < ?))"
        out += [key[0], key[0], key[1]]
    return sql + " ORDER BY t.start_time DESC, t.id DESC LIMIT ?", [*out, size]


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
"""The span of CALL_COLS holding text ids (a write's values carry text hashes there until stored;
a read's call rows carry text ids there)."""
STEP_COLS = "step_id, trajectory_id, step_number, timestamp, action, reward, done, observation, metadata"
SCORE_COLS = "score_id, trajectory_id, name, value, comment, source, created_at"
BULK_COLS = {
    "texts": "hash, body, fts, owner",
    "trajectory_texts": "text_id, trajectory_id, fts",
    "steps": STEP_COLS,
    "llm_calls": CALL_COLS,
    "provider_accesses": ACCESS_COLS,
}
"""The tables a write inserts many rows into at once (:meth:`SqlHelpers._insert_rows`), and the
columns it gives, in this order."""


def chunked(seq: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def placeholders(n: int) -> str:
    return ",".join("?" * n)


class SqlHelpers(Protocol):
    """The transactions, statements and dialect hooks a part of the SQL store calls on ``self``."""

    def _write_tx(self) -> AbstractContextManager[Any]:
        """A cursor in a write transaction (one writer at a time on SQLite)."""
        ...

    def _read_tx(self) -> AbstractContextManager[Any]:
        """A cursor in a read transaction: every query in it sees the same snapshot."""
        ...

    def _ex(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (``?`` placeholders); returns the cursor."""
        ...

    def _exmany(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row (nothing when there are no rows)."""
        ...

    def _select_in(self, cur: Any, sql: str, ids: Sequence[Any]) -> list[Any]:
        """The rows of ``sql`` (containing ``IN ({marks})``) for all of ``ids``."""
        ...

    def _select_pairs(self, cur: Any, sql: str, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """The rows of ``sql`` (containing ``IN ({pairs})``) for all of ``pairs``."""
        ...

    def _known(
        self, cur: Any, table: str, column: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which of the (trajectory id, ``column``) keys ``table`` already holds."""
        ...

    def _insert_rows(
        self, cur: Any, table: str, order: str, rows: Sequence[Sequence[Any]], tail: str
    ) -> None:
        """Insert ``rows`` (the ``BULK_COLS[table]`` columns, sorted by the ``order`` columns) into
        ``table`` in that order, each followed by ``tail`` (its ``ON CONFLICT`` clause)."""
        ...

    def _insert_texts(self, cur: Any, rows: Sequence[tuple[int, str, bool, str | None]]) -> list[Any]:
        """Insert new ``(hash, body, fts, owner)`` texts (sorted by hash; a hash another writer
        stored meanwhile is left as it is) and return ``(hash, id, fts, owner)`` of every one of
        them as stored."""
        ...

    def _text_bodies(self, cur: Any, ids: Sequence[int]) -> list[Any]:
        """``(id, body)`` of the texts with these ids (sorted ascending)."""
        ...

    def _clean_text(self, body: str) -> str:
        """A text as this database can store it."""
        ...

    def _index_texts(self, cur: Any, rows: Sequence[tuple[int, str]]) -> None:
        """Add ``(id, body)`` texts to the full-text index."""
        ...

    def _forget_texts(self, cur: Any, ids: Sequence[int]) -> None:
        """Remove texts from the full-text index before their rows are deleted."""
        ...

    def _search_ids(self, terms: tuple[search.Term, ...]) -> tuple[str, list[Any]]:
        """A SELECT of the ids of the trajectories with a searchable text matching any of ``terms``."""
        ...

    def _match_texts(self, cur: Any, terms: tuple[search.Term, ...], text_ids: Sequence[int]) -> set[int]:
        """Which of the (searchable) texts ``text_ids`` match any of ``terms``: the same match as
        :meth:`_search_ids`, asked of a few thousand given texts instead of the whole index."""
        ...

    def _pages(self, flt: TrajectoryFilter, chunk: int) -> Iterator[list[Any]]:
        """Trajectory rows matching ``flt``, newest first, ``chunk`` per page (the reads implement it)."""
        ...

    def _where(self, flt: TrajectoryFilter, *, page: bool = False) -> tuple[str, list[Any]]:
        """The ``WHERE`` clause (on ``trajectories t``) and its parameters for ``flt`` (the reads
        implement it)."""
        ...

    def _count(self, cur: Any, flt: TrajectoryFilter) -> int:
        """How many trajectories match ``flt`` (the reads implement it)."""
        ...


class SqlBase(SqlHelpers):
    """The helpers as both databases run them; subclasses provide connections, placeholders and search."""

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

    def _match_texts(self, cur: Any, terms: tuple[search.Term, ...], text_ids: Sequence[int]) -> set[int]:
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
        for chunk in chunked(list(ids)):
            self._ex(cur, sql.format(marks=placeholders(len(chunk))), chunk)
            out.extend(cur.fetchall())
        return out

    def _select_pairs(self, cur: Any, sql: str, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """Run ``sql`` (containing ``IN ({pairs})``, rows of two values) for ``pairs`` in chunks.

        The pairs are wrapped in a sub-select: SQLite scans the table for a bare ``IN (VALUES ...)``
        of row values, but searches the key index for ``IN (SELECT ... FROM (VALUES ...))``."""
        out: list[Any] = []
        for chunk in chunked(list(pairs), CHUNK // 2):
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

    def _insert_rows(
        self, cur: Any, table: str, order: str, rows: Sequence[Sequence[Any]], tail: str
    ) -> None:
        cols = BULK_COLS[table]
        n = cols.count(",") + 1
        self._exmany(cur, f"INSERT INTO {table} ({cols}) VALUES ({placeholders(n)}) {tail}", rows)

    def _insert_texts(self, cur: Any, rows: Sequence[tuple[int, str, bool, str | None]]) -> list[Any]:
        self._insert_rows(cur, "texts", "hash", rows, "ON CONFLICT (hash) DO NOTHING")
        sql = "SELECT hash, id, fts, owner FROM texts WHERE hash IN ({marks})"
        return self._select_in(cur, sql, [r[0] for r in rows])

    def _text_bodies(self, cur: Any, ids: Sequence[int]) -> list[Any]:
        """``(id, body)`` of the texts with these ids (sorted ascending)."""
        return self._select_in(cur, "SELECT id, body FROM texts WHERE id IN ({marks})", ids)

    # --- migrations --------------------------------------------------------------------------------

    _pending_data: DataMigration | None = None

    def _run_migrations(self) -> DataMigration | None:
        """Apply the pending schema migrations up to the first pending data migration (returned)."""
        raise NotImplementedError

    def _lock_migrations(self, cur: Any) -> None:
        """Hold the migration lock until ``cur``'s transaction ends (PostgreSQL; SQLite's write
        transaction is already exclusive)."""

    def _open_migrations(self, migrate_data: bool) -> None:
        """On open: every schema migration, and the data migrations too unless ``migrate_data`` is
        False (then the first pending one waits in :meth:`pending_data_migration`, and the schema
        migrations after it with it, until :meth:`migrate_data`)."""
        self._pending_data = self._run_migrations()
        if migrate_data:
            self.migrate_data(_log_progress)

    def pending_data_migration(self) -> str | None:
        """The name of the data migration this store waits for, if it was opened without running it."""
        return None if self._pending_data is None else self._pending_data.name

    def migrate_data(self, progress: Progress | None = None, batch_rows: int | None = None) -> None:
        """Run the pending data migrations (and the schema migrations after each) to the end,
        reporting each committed batch to ``progress``; resumes where an earlier run stopped."""
        while self._pending_data is not None:
            run_data_migration(self, self._pending_data, progress, batch_rows)
            self._pending_data = self._run_migrations()

    @staticmethod
    def _migrate(applied: set[str], apply: Any) -> DataMigration | None:
        for migration in MIGRATIONS:
            if migration.name in applied:
                continue
            if isinstance(migration, DataMigration):
                return migration  # it runs in batches of its own transactions; later ones wait
            apply(migration)
        return None


_announced: set[str] = set()


def _log_progress(name: str, done: int, total: int) -> None:
    """Not silent: an open that migrates data may take minutes on a big store (the CLI, the SDK's
    writer). Said once per migration and process, after its first batch; nothing for a new store
    (its tables are empty: one report, at the end)."""
    if done < total and name not in _announced:
        _announced.add(name)
        log.warning(
            "migrating the store's data (%s, %d rows) in batches before it opens; an interrupted "
            "run resumes where it stopped",
            name,
            total,
        )
    log.info("data migration %s: %d of %d rows", name, done, total)
