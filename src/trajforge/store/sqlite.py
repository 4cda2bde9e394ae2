"""The embedded default store: one SQLite file, WAL, one writer, FTS5 search."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trajforge import settings
from trajforge.errors import InvalidQuery, StoreError
from trajforge.records import now_ms
from trajforge.store import search
from trajforge.store.migrations import DataMigration, Migration
from trajforge.store.sql import SqlStore

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    # PRAGMA synchronous follows TRAJFORGE_SQLITE_SYNC (settings.sqlite_sync): NORMAL by default
    # (a commit survives a process crash; WAL keeps the file consistent; the last commits may be
    # lost on power loss), FULL syncs the WAL on every commit (survives power loss too).
    "PRAGMA busy_timeout = 30000",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA cache_size = -65536",
    "PRAGMA mmap_size = 268435456",
)
RANGE_GAP = 20_000
"""Text ids closer than this are asked of FTS5 as one range: the matches in the gap between them
(a few hundred at most for a word in most texts) cost less than another statement."""
MAX_RANGES = 16
"""Most FTS5 statements one check of a batch's texts runs."""


class SQLiteStore(SqlStore):
    """All writes go through one connection under a lock (SQLite has one writer anyway); each reading
    thread has its own connection so reads never wait for a write in WAL mode. Several processes may
    share the file: ``BEGIN IMMEDIATE`` plus the busy timeout serialize them."""

    dialect = "sqlite"
    page_search_id = "+t.id"
    # A word in ~9.5% of the trajectories: at 100k the index path 105 ms (9.5k hits, 11 us each),
    # a walk 79 ms (~540 trajectories, 0.15 ms each); at 400k 561 ms against 100 ms.
    walk_hit_cost = 15
    group_pass_rows = 100_000

    def __init__(self, path: str | Path, *, migrate_data: bool = True) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for {self.path}: {exc}") from exc
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        try:
            # Read once per store: every connection of it commits with the same guarantee.
            self.synchronous = settings.sqlite_sync()
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
        self._writer = self._connect()
        self._open_migrations(migrate_data)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            for pragma in PRAGMAS:
                conn.execute(pragma)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
        return conn

    def _run_migrations(self) -> DataMigration | None:
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            applied = {r[0] for r in cur.execute("SELECT name FROM schema_migrations")}

            def apply(migration: Migration) -> None:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have applied it while we waited for the lock.
                    if cur.execute(
                        "SELECT 1 FROM schema_migrations WHERE name = ?", [migration.name]
                    ).fetchone():
                        cur.execute("COMMIT")
                        return
                    for stmt in migration.statements(self.dialect):
                        cur.execute(stmt)
                    cur.execute(
                        "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                        [migration.name, now_ms()],
                    )
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise

            return self._migrate(applied, apply)

    @contextmanager
    def _write_tx(self) -> Iterator[sqlite3.Cursor]:
        if self._closed:
            raise StoreError("the store is closed")
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _read_tx(self) -> Iterator[sqlite3.Cursor]:
        if self._closed:
            raise StoreError("the store is closed")
        cur = self._reader().cursor()
        # One read transaction: every query of a multi-query read sees the same snapshot.
        cur.execute("BEGIN")
        try:
            yield cur
        except sqlite3.OperationalError as exc:
            cur.execute("ROLLBACK")
            if "fts5" in str(exc):
                raise InvalidQuery(f"search could not be run: {exc}") from exc
            raise
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _text_match(self, terms: tuple[search.Term, ...]) -> tuple[str, list[Any]]:
        return "tt.text_id IN (SELECT rowid FROM texts_fts WHERE texts_fts MATCH ?)", [search.fts5_any(terms)]

    def _match_texts(self, cur: Any, terms: tuple[search.Term, ...], text_ids: Sequence[int]) -> set[int]:
        """FTS5 answers ``MATCH`` within a range of rowids by seeking in the word's list, but ran
        ``rowid IN (...)`` of 3,000 ids for seconds, and each statement costs ~0.2 ms to set up: the
        ids are asked as a few ranges, split at the gaps wider than RANGE_GAP (a batch of
        trajectories' texts is mostly one run of recent ids, plus a few shared ones), at most
        MAX_RANGES of them (the widest gaps; scattered ids cost a longer stretch of the list, never
        more than all of it)."""
        ids = sorted(text_ids)
        if not ids:
            return set()
        gaps = sorted(range(1, len(ids)), key=lambda k: ids[k] - ids[k - 1], reverse=True)
        cuts = sorted(k for k in gaps[: MAX_RANGES - 1] if ids[k] - ids[k - 1] > RANGE_GAP)
        wanted = set(ids)
        match = search.fts5_any(terms)
        out: set[int] = set()
        for a, b in itertools.pairwise([0, *cuts, len(ids)]):
            rows = cur.execute(
                "SELECT rowid FROM texts_fts WHERE texts_fts MATCH ? AND rowid BETWEEN ? AND ?",
                [match, ids[a], ids[b - 1]],
            ).fetchall()
            out.update(r[0] for r in rows if r[0] in wanted)
        return out

    def _index_texts(self, cur: Any, rows: Sequence[tuple[int, str]]) -> None:
        if rows:
            cur.executemany("INSERT INTO texts_fts (rowid, body) VALUES (?, ?)", rows)

    def _forget_texts(self, cur: Any, ids: Sequence[int]) -> None:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            cur.execute(
                "INSERT INTO texts_fts (texts_fts, rowid, body) SELECT 'delete', id, body FROM texts "
                f"WHERE fts AND id IN ({','.join('?' * len(chunk))})",
                chunk,
            )

    def _delete_all(self, cur: Any) -> None:
        super()._delete_all(cur)
        cur.execute("INSERT INTO texts_fts (texts_fts) VALUES ('delete-all')")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # created in another thread that is gone; the GC closes it
            self._readers.clear()
