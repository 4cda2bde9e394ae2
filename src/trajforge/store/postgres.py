"""The shared store for many agent hosts: PostgreSQL through psycopg 3, tsvector + GIN search."""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool

from trajforge.errors import InvalidInput, StoreError
from trajforge.records import now_ms
from trajforge.store import pgcopy, search
from trajforge.store.base import Page
from trajforge.store.filter import TrajectoryFilter
from trajforge.store.migrations import DataMigration, Migration
from trajforge.store.sql import TRAJ_COLS, SqlStore, _trajectory, _walked_page

_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Any fixed number: serializes migrations when several hosts open the same database at once.
_MIGRATION_LOCK = 7_320_138
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
SEARCH_WORK_MEM = "64MB"
"""work_mem of a search statement (per hash table; a common word's hits are ~40 bytes each)."""


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    # Our SQL never contains a literal '?' or '%', so a plain rewrite is exact.
    return sql.replace("?", "%s")


def _no_nul(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL, in any column: replace it rather than fail the batch.
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def split_url(url: str) -> tuple[str, str | None]:
    """Take our own ``schema=`` parameter out of a PostgreSQL URL: (libpq URL, schema)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = [(k, v) for k, v in query if k != "schema"]
    if schema is not None and not _SCHEMA.match(schema):
        raise InvalidInput(f"schema must be a plain identifier, got {schema!r}", "schema")
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


class PostgresStore(SqlStore):
    claim_lock = " FOR UPDATE SKIP LOCKED"
    """Safe with many concurrent writers on several hosts: every write is one transaction whose
    upserts touch rows in a fixed order, and deadlocks or serialization failures are retried."""

    dialect = "postgres"
    # A word in ~9.5% of the trajectories: at 100k the index path 33 ms (9.5k hits, 3.5 us each),
    # a walk 161 ms (~540 trajectories, 0.3 ms each: a text's key lookup and check cost more than
    # FTS5's seek in its word list); at 400k the index path 290 ms (38k hits, 7.5 us each: the
    # heap pages no longer cached), a walk 151 ms. Either side of 40.
    walk_hit_cost = 40

    def __init__(self, url: str, *, pool_size: int = 8, migrate_data: bool = True) -> None:
        super().__init__()
        self.url = url
        conninfo, self.schema = split_url(url)
        self._closed = False

        def configure(conn: psycopg.Connection[Any]) -> None:
            if self.schema:
                # IF NOT EXISTS is not safe against a concurrent CREATE: serialize on a lock.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                conn.commit()
                conn.execute(f'SET search_path TO "{self.schema}"')
            # Our queries are short and their plans cheap to run; JIT compiling them (it kicks in on
            # the cost estimates of 100k-row tables) adds 10-40 ms to a search or a count.
            conn.execute("SET jit = off")
            conn.commit()
            try:
                for stmt in pgcopy.create_stages_sql():
                    conn.execute(stmt)
                conn.commit()
            except pg_errors.ReadOnlySqlTransaction:
                conn.rollback()  # a read-only server (a standby): it takes no writes, needs no staging

        try:
            # Probe first: a refused connection fails here at once instead of after the pool's wait.
            psycopg.connect(conninfo, connect_timeout=5).close()
            self._pool = ConnectionPool(
                conninfo,
                min_size=1,
                max_size=pool_size,
                configure=configure,
                open=True,
                timeout=30,
                kwargs={"connect_timeout": 10},
            )
            self._pool.wait(timeout=15)
        except Exception as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {urlsplit(url).hostname}: {exc}") from exc
        self._open_migrations(migrate_data)

    def _q(self, sql: str) -> str:
        return _to_pyformat(sql)

    def _ex(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._q(sql), [_no_nul(v) for v in params])
        return cur

    def _exmany(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur.executemany(self._q(sql), [[_no_nul(v) for v in row] for row in rows])

    def _select_in(self, cur: Any, sql: str, ids: Sequence[Any]) -> list[Any]:
        """One query with the ids as an array parameter instead of chunks of 500 placeholders:
        PostgreSQL plans it once and reads the index in one pass (text reads of an export: 2x).
        Sent in binary (``%b``): the text format quotes-checks every element with a regex (500
        ids: 1.3 ms of client CPU, binary 0.3 ms)."""
        ids = [_no_nul(v) for v in ids]
        if not ids:
            return []
        cur.execute(self._q(sql.replace("IN ({marks})", "= ANY(%b)")), [ids])
        return list(cur.fetchall())

    def _select_pairs(self, cur: Any, sql: str, pairs: Sequence[tuple[str, str]]) -> list[Any]:
        """The pairs as two array parameters (binary, as in ``_select_in``): one statement, a nested
        loop over the key index."""
        if not pairs:
            return []
        firsts = [_no_nul(a) for a, _ in pairs]
        seconds = [_no_nul(b) for _, b in pairs]
        cur.execute(sql.format(pairs="SELECT * FROM unnest(%b::text[], %b::text[])"), [firsts, seconds])
        return list(cur.fetchall())

    def _insert_rows(
        self, cur: Any, table: str, order: str, rows: Sequence[Sequence[Any]], tail: str
    ) -> None:
        """Many rows by binary COPY through the session's staging table (see :mod:`pgcopy`)."""
        if len(rows) < pgcopy.MIN_ROWS:
            super()._insert_rows(cur, table, order, rows, tail)
            return
        pgcopy.copy_in(cur, table, rows)
        cur.execute(pgcopy.move_sql(table, order, tail))

    def _insert_texts(self, cur: Any, rows: Sequence[tuple[int, str, bool, str | None]]) -> list[Any]:
        """As :meth:`_insert_rows`, the stored ids coming back from the insert itself; only the texts
        a concurrent writer stored first (not returned) are read again."""
        if len(rows) < pgcopy.MIN_ROWS:
            return super()._insert_texts(cur, rows)
        pgcopy.copy_in(cur, "texts", rows)
        sql = pgcopy.move_sql("texts", "hash", "ON CONFLICT (hash) DO NOTHING", "hash, id, fts, owner")
        stored = list(cur.execute(sql).fetchall())
        if len(stored) < len(rows):
            done = {r[0] for r in stored}
            missing = [r[0] for r in rows if r[0] not in done]
            stored += self._select_in(
                cur, "SELECT hash, id, fts, owner FROM texts WHERE hash IN ({marks})", missing
            )
        return stored

    def _delete_all(self, cur: Any) -> None:
        # The rollup's triggers are deferred to the commit (migration 0011): run the deleted
        # trajectories' ones now, before the rollup is emptied, not after.
        cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
        super()._delete_all(cur)

    def _text_bodies(self, cur: Any, ids: Sequence[int]) -> list[Any]:
        """The texts of a page of an export are mostly runs of consecutive ids (stored together as
        the trajectories came in): each run is read as one index range instead of one index
        descent per id (17.5k texts of a 500-trajectory page: ~80 -> ~35 ms)."""
        ids = sorted(set(ids))
        if not ids:
            return []
        lows, highs = [ids[0]], []
        for prev, cur_id in itertools.pairwise(ids):
            if cur_id != prev + 1:
                highs.append(prev)
                lows.append(cur_id)
        highs.append(ids[-1])
        # LATERAL ... OFFSET 0 keeps one index range scan per run: as a plain join the planner
        # may pick a sequential scan of the whole table for a handful of long runs.
        cur.execute(
            "SELECT t.id, t.body FROM unnest(%b::bigint[], %b::bigint[]) AS r (lo, hi), "
            "LATERAL (SELECT id, body FROM texts WHERE id BETWEEN r.lo AND r.hi OFFSET 0) t",
            [lows, highs],
        )
        return list(cur.fetchall())

    def _clean_text(self, body: str) -> str:
        # PostgreSQL text cannot hold NUL; it is the one character we must replace.
        return body.replace("\x00", "\ufffd") if "\x00" in body else body

    def _lock_migrations(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])

    def _run_migrations(self) -> DataMigration | None:
        with self._pool.connection() as conn, conn.transaction():
            # One opener at a time (several hosts may start together); the lock is taken before
            # CREATE ... IF NOT EXISTS, which races otherwise.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            applied = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            cur = conn.cursor()

            def apply(migration: Migration) -> None:
                with conn.transaction():  # a savepoint per migration
                    for stmt in migration.statements(self.dialect):
                        cur.execute(stmt)
                    cur.execute(
                        "INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)",
                        [migration.name, now_ms()],
                    )

            return self._migrate(applied, apply)

    @contextmanager
    def _write_tx(self) -> Iterator[Any]:
        if self._closed:
            raise StoreError("the store is closed")
        # The body of a write is replayable (idempotent by ids), so a retry after a deadlock or a
        # serialization failure is exact. The retry loop cannot re-enter a `with` body, so writes
        # that may conflict go through `write()` which retries whole.
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def write(self, batch: Any) -> Any:
        for attempt in range(6):
            try:
                return super().write(batch)
            except _RETRYABLE:
                if attempt == 5:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _read_tx(self) -> Iterator[Any]:
        if self._closed:
            raise StoreError("the store is closed")
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    def _search_ids(self, terms: tuple[search.Term, ...]) -> tuple[str, list[Any]]:
        tsquery, params = search.tsquery_any(terms)
        # The GIN index finds the matching texts once (MATERIALIZED: not re-run per candidate);
        # a text with an owner is used by that trajectory only, and only the rest (shared texts:
        # system prompts, repeated messages) are looked up in the link index.
        return (
            "(WITH m AS MATERIALIZED (SELECT x.id, x.owner FROM texts x WHERE x.fts AND "
            f"to_tsvector('simple', left(x.body, 100000)) @@ {tsquery}) "
            "SELECT m.owner AS id FROM m WHERE m.owner IS NOT NULL UNION ALL "
            "SELECT tt.trajectory_id FROM trajectory_texts tt WHERE tt.fts AND "
            "tt.text_id IN (SELECT m.id FROM m WHERE m.owner IS NULL))",
            params,
        )

    def _about(self, cur: Any, flt: TrajectoryFilter) -> int:
        """The planner's row count of the table (the rollup's sum reads a table that only vacuum
        keeps small: 6-9 ms here without autovacuum), or the rollup's count before any analyze."""
        row = self._ex(cur, "SELECT reltuples FROM pg_class WHERE oid = 'trajectories'::regclass").fetchone()
        return int(row[0]) if row[0] >= 0 else super()._about(cur, flt)

    def _text_test(self, cur: Any, terms: tuple[search.Term, ...]) -> tuple[str, list[Any]]:
        """A condition on a text ``x`` (``x.body``): it matches any of ``terms``, by the tsquery
        the index answers. Parsing a text (``to_tsvector``) costs ~45 us, so a cheap test runs
        first: every word of a matching term is a substring of the text lowercased (the 'simple'
        configuration's words are its tokens lowercased, character by character). ASCII
        lowercasing (``COLLATE "C"``) is the cheap one and exact for ASCII words: the only other
        characters that lowercase to ASCII are U+0130 and U+212A (checked over all of Unicode),
        and a text holding one skips the test. A term with a non-ASCII word is checked without it."""
        tsquery, params = search.tsquery_any(terms)
        words: list[list[str]] = []
        for term in terms:
            row = self._ex(cur, "SELECT tsvector_to_array(to_tsvector('simple', ?))", [" ".join(term.words)])
            lexemes = row.fetchone()[0]
            if not lexemes or not all(w.isascii() for w in lexemes):
                words = []
                break
            words.append(list(lexemes))
        test = f"to_tsvector('simple', left(x.body, 100000)) @@ {tsquery}"
        if not words:
            return test, params
        lowered = 'lower(x.body COLLATE "C")'
        alternatives = ["(" + " AND ".join([f"strpos({lowered}, ?) > 0"] * len(w)) + ")" for w in words]
        # The two letters are looked for only in texts with a non-ASCII character (on the
        # benchmark's ASCII texts, a quarter of the test's cost otherwise).
        special = (
            "(octet_length(x.body) <> length(x.body) AND (strpos(x.body, ?) > 0 OR strpos(x.body, ?) > 0))"
        )
        prefilter = "(" + " OR ".join([*alternatives, special]) + ")"
        pre_params = [w for lexemes in words for w in lexemes] + ["\u0130", "\u212a"]
        return f"{prefilter} AND {test}", [*pre_params, *params]

    # OFFSET 0 keeps the texts fetched by their keys and the match a filter on them: given the
    # match as a condition of the scan, the planner reads the word's whole GIN list to AND it with
    # the keys (a word in 52k texts: ~40 ms, growing with the store).
    _TEXTS_BY_KEY = "(SELECT id, body FROM texts WHERE id = ANY({ids}) AND fts OFFSET 0) x"

    def _match_texts(self, cur: Any, terms: tuple[search.Term, ...], text_ids: Sequence[int]) -> set[int]:
        """The texts by their keys, each checked with :meth:`_text_test`."""
        if not text_ids:
            return set()
        test, params = self._text_test(cur, terms)
        sql = f"SELECT x.id FROM {self._TEXTS_BY_KEY.format(ids='%b')} WHERE {test}"
        return {r[0] for r in self._ex(cur, sql, [list(text_ids), *params]).fetchall()}

    def _matching_trajectories(
        self, cur: Any, terms: tuple[search.Term, ...], trajectory_ids: list[str]
    ) -> set[str]:
        """As the shared one, in one statement: the links stay on the server (a batch of 800
        trajectories has ~25k of them)."""
        test, params = self._text_test(cur, terms)
        texts = self._TEXTS_BY_KEY.format(ids="ARRAY(SELECT DISTINCT text_id FROM l)")
        sql = (
            "WITH l AS MATERIALIZED (SELECT trajectory_id, text_id FROM trajectory_texts "
            "WHERE trajectory_id = ANY(%b) AND fts), "
            f"m AS MATERIALIZED (SELECT x.id FROM {texts} WHERE {test}) "
            "SELECT DISTINCT l.trajectory_id FROM l JOIN m ON m.id = l.text_id"
        )
        return {r[0] for r in self._ex(cur, sql, [list(trajectory_ids), *params]).fetchall()}

    def list_trajectories(self, flt: TrajectoryFilter, limit: int = 50, offset: int = 0) -> Page:
        """A search page and its total from one statement: the matching trajectory ids are found
        once (the GIN index, then owners or the link index) and both the page and the count read
        them, where the shared path would run the text match twice (~2x the time at 10k hits)."""
        if not flt.search:
            return super().list_trajectories(flt, limit, offset)
        with self._read_tx() as cur:
            walked = self._walk_search(cur, flt, limit, offset)
        if walked is not None:
            return _walked_page(walked, limit, offset)
        query = search.parse(flt.search)
        selects, hit_params = [], []
        for terms, op in [(g, " INTERSECT ") for g in query.groups] + [
            ((n,), " EXCEPT ") for n in query.negated
        ]:
            ids, mparams = self._search_ids(terms)
            selects.append((op, ids))
            hit_params.extend(mparams)
        hits = selects[0][1] + "".join(op + sql for op, sql in selects[1:])
        where, params = self._where(flt.model_copy(update={"search": None}))
        joined = f"SELECT {TRAJ_COLS} FROM trajectories t WHERE t.id IN (SELECT id FROM hits)"
        order = " ORDER BY t.start_time DESC, t.id DESC LIMIT ?"
        if where:
            joined += " AND " + where[len(" WHERE ") :]
            count_sql, count_params = joined.replace(TRAJ_COLS, "COUNT(*)", 1), params
            ctes, page, page_params = "", joined, params
        else:
            # DISTINCT then COUNT hashes; COUNT(DISTINCT) sorts, and spills to disk at 60k hits.
            count_sql, count_params = "SELECT COUNT(*) FROM (SELECT DISTINCT id FROM hits) d", []
            # Two plans, one of which runs (each branch's condition is decided once, before its
            # rows): with many hits, walk trajectories newest first and keep those in the hits'
            # hash table, (offset + limit) * N / hits rows; with few, fetch every hit by its key
            # and sort. A key lookup costs about four walked rows. 9.5k hits of 100k: 57 -> ~20 ms.
            # N is the planner's row estimate (an estimate is all a choice of plan needs; the
            # rollup's exact sum reads a table that only vacuum keeps small), or that sum when the
            # table was never analyzed (reltuples -1). Decided once, in its own CTE, for both.
            depth = int(limit) + int(offset)
            ctes = (
                ", dense (yes) AS MATERIALIZED (SELECT c > 0 AND c * c * 4 >= ? * GREATEST(CASE WHEN "
                "reltuples >= 0 THEN reltuples ELSE (SELECT COALESCE(SUM(trajectories), 0) FROM traj_rollup) "
                "END, c) FROM n, pg_class WHERE pg_class.oid = 'trajectories'::regclass)"
            )
            walk = (
                f"SELECT {TRAJ_COLS} FROM trajectories t WHERE (SELECT yes FROM dense) "
                "AND (t.id IN (SELECT id FROM hits)) IS TRUE"  # IS TRUE: a hashed filter, not a join
            )
            page = f"({walk}{order}) UNION ALL ({joined} AND NOT (SELECT yes FROM dense){order})"
            page_params = [depth, depth, depth]
        sql = (
            f"WITH hits (id) AS MATERIALIZED ({hits}), n (c) AS MATERIALIZED ({count_sql}){ctes} "
            f"SELECT p.*, (SELECT c FROM n) FROM ({page}) p "
            "ORDER BY p.start_time DESC, p.id DESC LIMIT ? OFFSET ?"
        )
        with self._read_tx() as cur:
            # The hits' hash tables (the count's DISTINCT, the walk's hashed IN) must fit in
            # work_mem, or the planner gives up hashing: at the default 4 MB a word in most of
            # 400k trajectories (~250k hits) turned the walk's IN into a scan of the whole hit list
            # for every walked row. For this statement only.
            cur.execute(f"SET LOCAL work_mem = '{SEARCH_WORK_MEM}'")
            rows = self._ex(
                cur, sql, [*hit_params, *count_params, *page_params, int(limit), int(offset)]
            ).fetchall()
            if rows:
                total = int(rows[0][-1])
            else:  # past the last page: the count still counts
                total = int(
                    self._ex(
                        cur,
                        f"WITH hits (id) AS MATERIALIZED ({hits}) {count_sql}",
                        [*hit_params, *count_params],
                    ).fetchone()[0]
                )
        return Page([_trajectory(r[:-1]) for r in rows], total, limit, offset)

    def drop_schema(self) -> None:
        """Drop this store's schema and everything in it (tests; requires a ``schema=`` URL)."""
        if not self.schema:
            raise InvalidInput("drop_schema needs a store opened with ?schema=", "schema")
        with self._pool.connection() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()
