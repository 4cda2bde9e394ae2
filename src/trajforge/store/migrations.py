"""Named schema migrations, recorded in ``schema_migrations`` and applied on open, each in its own
transaction. The DDL is written once with a few type placeholders filled per dialect, so SQLite and
PostgreSQL cannot drift apart.

A migration that rewrites existing rows is a :class:`DataMigration`: it runs in batches of rows,
each batch one transaction that also advances the migration's cursor (kept in ``settings``), so a
process killed mid-way resumes after the last committed batch and never applies one twice; it
reports progress after each batch. Migrations after a pending data migration wait for it.

Never edit a migration that has shipped: add a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from trajforge.records import now_ms

TYPES = {
    "sqlite": {
        "BIGINT": "INTEGER",
        "REAL": "REAL",
        "BOOL": "INTEGER",
        "TEXTID": "INTEGER PRIMARY KEY",
        "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT",
    },
    "postgres": {
        "BIGINT": "BIGINT",
        "REAL": "DOUBLE PRECISION",
        "BOOL": "BOOLEAN",
        "TEXTID": "BIGSERIAL PRIMARY KEY",
        "SERIAL": "BIGSERIAL PRIMARY KEY",
    },
}


@dataclass(frozen=True)
class Migration:
    name: str
    common: tuple[str, ...]
    sqlite: tuple[str, ...] = ()
    postgres: tuple[str, ...] = ()

    def statements(self, dialect: str) -> list[str]:
        types = TYPES[dialect]
        out = [stmt.format(**types) for stmt in self.common]
        out.extend(self.sqlite if dialect == "sqlite" else self.postgres)
        return out


@dataclass(frozen=True)
class DataMigration:
    """Rows of ``table`` rewritten in batches, walking its integer key ``key`` upward.

    ``setup`` (DDL, placeholders as in :class:`Migration`) runs once, in the transaction of the
    first batch. Each of ``batch`` then runs once per batch with two parameters ``(lo, hi)``: the
    batch is the rows with ``lo < key <= hi``, at most ``batch_rows`` of them. Rows inserted while
    it runs are reached if their key is above the cursor; the statements should leave such rows
    (written by code that already knows the new schema) as they are or set them the same way.
    """

    name: str
    table: str
    key: str
    batch: tuple[str, ...]
    setup: tuple[str, ...] = ()
    batch_rows: int = 20_000


AnyMigration = Migration | DataMigration

Progress = Callable[[str, int, int], None]
"""Called after each committed batch of a data migration: (name, rows done, rows in all)."""

_CURSOR_KEY = "data_migration:"  # + name: the cursor's row in ``settings`` while the migration runs
_START = -(2**62)  # below every key: the cursor before the first batch


class MigrationStore(Protocol):
    """What the data migration runner needs from a store (every SQL store has it)."""

    dialect: str

    def _write_tx(self) -> Any: ...

    def _ex(self, cur: Any, sql: str, params: Any = ()) -> Any: ...

    def _lock_migrations(self, cur: Any) -> None: ...


def run_data_migration(
    store: MigrationStore,
    migration: DataMigration,
    progress: Progress | None = None,
    batch_rows: int | None = None,
) -> None:
    """Run ``migration`` to its end from wherever it stopped, batch by batch.

    Each batch is one transaction, holding the migration lock (several processes opening the store
    at once take turns, each batch reading the cursor the last one left), that reads the cursor,
    rewrites the rows above it up to the batch's last key, and stores that key as the new cursor.
    A kill anywhere loses at most the uncommitted batch, which the next run does again from the
    same cursor: every row is rewritten exactly once. The last transaction records the migration
    in ``schema_migrations`` and drops the cursor.
    """
    size = batch_rows or migration.batch_rows
    key, table = migration.key, migration.table
    cursor_key = _CURSOR_KEY + migration.name
    total = done = -1
    while True:
        with store._write_tx() as cur:
            store._lock_migrations(cur)
            if store._ex(cur, "SELECT 1 FROM schema_migrations WHERE name = ?", [migration.name]).fetchone():
                return  # another process finished it
            row = store._ex(cur, "SELECT value FROM settings WHERE key = ?", [cursor_key]).fetchone()
            if row is None:
                types = TYPES[store.dialect]
                for stmt in migration.setup:
                    store._ex(cur, stmt.format(**types))
                cursor = _START
            else:
                cursor = int(row[0])
            if total < 0:  # once per run: what is left is counted from the cursor it resumes at
                total = int(store._ex(cur, f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                done = int(
                    store._ex(cur, f"SELECT COUNT(*) FROM {table} WHERE {key} <= ?", [cursor]).fetchone()[0]
                )
            last = store._ex(
                cur,
                f"SELECT MAX({key}), COUNT(*) FROM (SELECT {key} FROM {table} WHERE {key} > ? "
                f"ORDER BY {key} LIMIT {int(size)}) AS b",
                [cursor],
            ).fetchone()
            if last is None or last[0] is None:
                store._ex(cur, "DELETE FROM settings WHERE key = ?", [cursor_key])
                store._ex(
                    cur,
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    [migration.name, now_ms()],
                )
                finished = True
            else:
                hi, rows = int(last[0]), int(last[1])
                for stmt in migration.batch:
                    store._ex(cur, stmt, [cursor, hi])
                store._ex(
                    cur,
                    "INSERT INTO settings (key, value, updated_at) VALUES (?,?,?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value, updated_at = excluded.updated_at",
                    [cursor_key, str(hi), now_ms()],
                )
                done, total = done + rows, max(total, done + rows)
                finished = False
        if progress is not None:
            progress(migration.name, done if not finished else total, total)
        if finished:
            return


MIGRATIONS: tuple[AnyMigration, ...] = (
    Migration(
        "0001_trajectories",
        common=(
            """CREATE TABLE trajectories (
                id TEXT PRIMARY KEY,
                agent_id TEXT NOT NULL DEFAULT '',
                source TEXT NOT NULL DEFAULT 'api',
                status TEXT NOT NULL DEFAULT 'active',
                start_time {BIGINT} NOT NULL,
                end_time {BIGINT},
                duration_ms {BIGINT},
                scenario_id TEXT,
                batch_id TEXT,
                group_index INTEGER,
                is_training_data {BOOL} NOT NULL DEFAULT FALSE,
                metadata TEXT NOT NULL DEFAULT '{{}}',
                total_reward {REAL},
                step_count INTEGER NOT NULL DEFAULT 0,
                llm_call_count INTEGER NOT NULL DEFAULT 0,
                provider_access_count INTEGER NOT NULL DEFAULT 0,
                total_prompt_tokens {BIGINT} NOT NULL DEFAULT 0,
                total_completion_tokens {BIGINT} NOT NULL DEFAULT 0,
                created_at {BIGINT} NOT NULL,
                updated_at {BIGINT} NOT NULL
            )""",
            "CREATE INDEX ix_traj_start ON trajectories (start_time, id)",
            "CREATE INDEX ix_traj_active ON trajectories (updated_at) WHERE status = 'active'",
            "CREATE INDEX ix_traj_source ON trajectories (source, start_time)",
            "CREATE INDEX ix_traj_status ON trajectories (status, start_time)",
            "CREATE INDEX ix_traj_agent ON trajectories (agent_id, start_time)",
            "CREATE INDEX ix_traj_scenario ON trajectories (scenario_id, start_time)",
            "CREATE INDEX ix_traj_batch ON trajectories (batch_id, start_time)",
            """CREATE TABLE steps (
                step_id TEXT PRIMARY KEY,
                trajectory_id TEXT NOT NULL,
                step_number INTEGER NOT NULL DEFAULT 0,
                timestamp {BIGINT} NOT NULL,
                action TEXT,
                reward {REAL},
                done {BOOL},
                observation TEXT,
                metadata TEXT
            )""",
            "CREATE INDEX ix_steps_traj ON steps (trajectory_id, step_number)",
            """CREATE TABLE llm_calls (
                call_id TEXT PRIMARY KEY,
                trajectory_id TEXT NOT NULL,
                step_id TEXT NOT NULL,
                timestamp {BIGINT} NOT NULL,
                model TEXT NOT NULL DEFAULT '',
                model_version TEXT,
                system_text {BIGINT},
                user_text {BIGINT},
                response_text {BIGINT},
                reasoning_text {BIGINT},
                messages_text {BIGINT},
                tools_text {BIGINT},
                tool_calls TEXT,
                finish_reason TEXT,
                temperature {REAL},
                max_tokens INTEGER,
                top_p {REAL},
                purpose TEXT NOT NULL DEFAULT 'action',
                action_type TEXT,
                latency_ms {REAL},
                prompt_tokens INTEGER,
                completion_tokens INTEGER,
                cache_read_input_tokens INTEGER,
                cache_creation_input_tokens INTEGER,
                tags TEXT
            )""",
            "CREATE INDEX ix_calls_traj ON llm_calls (trajectory_id)",
            """CREATE TABLE provider_accesses (
                access_id TEXT PRIMARY KEY,
                trajectory_id TEXT NOT NULL,
                step_id TEXT NOT NULL,
                timestamp {BIGINT} NOT NULL,
                provider_id TEXT,
                provider_name TEXT NOT NULL DEFAULT '',
                purpose TEXT NOT NULL DEFAULT '',
                query TEXT,
                data_text {BIGINT}
            )""",
            "CREATE INDEX ix_access_traj ON provider_accesses (trajectory_id)",
            # Every distinct text (prompt, response, messages, payload) is stored once, found by a
            # 64-bit hash of its content: agents repeat the same system prompt in every call. Ids
            # are sequential, not the hash: FTS5 indexes ascending rowids twice as fast.
            """CREATE TABLE texts (
                id {TEXTID},
                hash {BIGINT} NOT NULL UNIQUE,
                body TEXT NOT NULL,
                fts {BOOL} NOT NULL DEFAULT FALSE
            )""",
            # Which trajectories use which texts: the join from a full-text hit to trajectories (only
            # where this trajectory uses the text as a searchable field: ``fts``), and what tells a
            # delete which texts became unreferenced.
            """CREATE TABLE trajectory_texts (
                text_id {BIGINT} NOT NULL,
                trajectory_id TEXT NOT NULL,
                fts {BOOL} NOT NULL DEFAULT FALSE,
                PRIMARY KEY (text_id, trajectory_id)
            )""",
            "CREATE INDEX ix_tt_traj ON trajectory_texts (trajectory_id)",
            """CREATE TABLE scores (
                score_id TEXT PRIMARY KEY,
                trajectory_id TEXT NOT NULL,
                name TEXT NOT NULL,
                value {REAL} NOT NULL,
                comment TEXT,
                source TEXT NOT NULL,
                created_at {BIGINT} NOT NULL,
                UNIQUE (trajectory_id, name, source)
            )""",
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at {BIGINT} NOT NULL)",
            # Per (UTC day, model, latency bucket) call counts and token sums, kept by every write
            # and delete, so stats over millions of calls read a few hundred rows.
            """CREATE TABLE llm_rollup (
                day INTEGER NOT NULL,
                model TEXT NOT NULL,
                bucket INTEGER NOT NULL,
                calls {BIGINT} NOT NULL,
                prompt_tokens {BIGINT} NOT NULL,
                completion_tokens {BIGINT} NOT NULL,
                latency_sum {REAL} NOT NULL,
                PRIMARY KEY (day, model, bucket)
            )""",
        ),
        sqlite=(
            """CREATE VIRTUAL TABLE texts_fts USING fts5(
                body, content='texts', content_rowid='id', tokenize='unicode61 remove_diacritics 0'
            )""",
            # No triggers: the store inserts into the index itself (3x faster than from a trigger).
        ),
        postgres=(
            "CREATE INDEX ix_texts_fts ON texts USING gin (to_tsvector('simple', left(body, 100000))) "
            "WHERE fts",
        ),
    ),
    Migration(
        "0002_search_index",
        common=(
            # Search joins full-text hits to trajectories through searchable links only; covering
            # them in one partial index avoids a table lookup per hit (47 ms -> ~10 ms for 10k hits).
            "CREATE INDEX ix_tt_search ON trajectory_texts (text_id, trajectory_id) WHERE fts",
        ),
    ),
    Migration(
        "0003_datasets_events",
        common=(
            # A dataset's files live in the state dir; the row makes it visible to every server and
            # CLI on this store, and keeps the manifest queryable after the files are archived.
            """CREATE TABLE datasets (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                version INTEGER NOT NULL,
                parent TEXT,
                format TEXT NOT NULL,
                path TEXT NOT NULL,
                trajectory_count {BIGINT} NOT NULL,
                row_count {BIGINT} NOT NULL,
                manifest TEXT NOT NULL,
                created_at {BIGINT} NOT NULL,
                UNIQUE (name, version)
            )""",
            "CREATE INDEX ix_datasets_created ON datasets (created_at)",
            # The training loop's event log: numbered by the database so Server-Sent Events can
            # resume from Last-Event-ID, and shared by every process on this store.
            """CREATE TABLE events (
                seq {SERIAL},
                kind TEXT NOT NULL,
                ts {BIGINT} NOT NULL,
                message TEXT NOT NULL,
                job_id TEXT,
                dataset_id TEXT,
                model_id TEXT,
                progress {REAL},
                phase TEXT,
                data TEXT
            )""",
            "CREATE INDEX ix_events_job ON events (job_id, seq)",
        ),
    ),
    Migration(
        "0004_jobs",
        common=(
            # The job queue: every runner (server or CLI) claims pending jobs from here, so they all
            # see the same jobs; PostgreSQL runners claim with FOR UPDATE SKIP LOCKED.
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                backend TEXT NOT NULL,
                status TEXT NOT NULL,
                phase TEXT,
                progress {REAL} NOT NULL DEFAULT 0,
                request TEXT NOT NULL,
                dataset_id TEXT,
                created_at {BIGINT} NOT NULL,
                started_at {BIGINT},
                finished_at {BIGINT},
                error TEXT,
                exit_code INTEGER,
                log_path TEXT,
                output TEXT,
                pid INTEGER,
                host TEXT,
                cancel_requested {BOOL} NOT NULL DEFAULT FALSE,
                heartbeat_at {BIGINT}
            )""",
            "CREATE INDEX ix_jobs_status ON jobs (status, created_at)",
        ),
    ),
    Migration(
        "0005_task_counters",
        common=(
            # Auto-training: completed trajectories per task, counted by every write that completes
            # one (SDK, HTTP ingest, import), and the trigger's state per task.
            """CREATE TABLE task_counters (
                task TEXT PRIMARY KEY,
                completed {BIGINT} NOT NULL DEFAULT 0,
                updated_at {BIGINT} NOT NULL,
                last_trigger_at {BIGINT},
                pending_job_id TEXT,
                count_at_trigger {BIGINT},
                last_run_at {BIGINT},
                last_job_id TEXT
            )""",
        ),
    ),
    Migration(
        "0006_models",
        common=(
            # The model registry: every trained adapter with its lineage; ``active`` marks the one
            # the agent should use (at most one row, kept so by activate_model's transaction).
            """CREATE TABLE models (
                id TEXT PRIMARY KEY,
                job_id TEXT,
                dataset_id TEXT,
                base_model TEXT NOT NULL,
                backend TEXT NOT NULL,
                adapter_path TEXT,
                merged_path TEXT,
                metrics TEXT NOT NULL,
                evaluation TEXT,
                ollama_name TEXT,
                provider_model TEXT,
                active {BOOL} NOT NULL DEFAULT FALSE,
                activated_at {BIGINT},
                created_at {BIGINT} NOT NULL
            )""",
            "CREATE INDEX ix_models_created ON models (created_at)",
        ),
    ),
)

# --- the trajectory rollup's triggers (migration 0007) ---------------------------------------------

_ROLLUP_COLUMNS = (
    "day, source, status, trajectories, steps, calls, accesses, prompt_tokens, completion_tokens, "
    "rewarded, reward_sum"
)
_ROLLUP_WATCHED = (
    "source",
    "status",
    "start_time",
    "step_count",
    "llm_call_count",
    "provider_access_count",
    "total_prompt_tokens",
    "total_completion_tokens",
    "total_reward",
)


def _rollup_upsert(row: str, sign: str, dialect: str) -> str:
    """Add (``sign`` "") or remove (``sign`` "-") trajectory row ``row`` (NEW/OLD) in the rollup."""
    rewarded = f"({row}.total_reward IS NOT NULL)" + ("::int" if dialect == "postgres" else "")
    values = (
        f"{row}.start_time / 86400000, {row}.source, {row}.status, {sign}1, {sign}{row}.step_count, "
        f"{sign}{row}.llm_call_count, {sign}{row}.provider_access_count, {sign}{row}.total_prompt_tokens, "
        f"{sign}{row}.total_completion_tokens, {sign}{rewarded}, {sign}COALESCE({row}.total_reward, 0)"
    )
    # SQLite refuses a table alias inside a trigger; PostgreSQL needs one against plpgsql's names.
    table = "r" if dialect == "postgres" else "traj_rollup"
    sums = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _ROLLUP_COLUMNS.split(", ")[3:])
    return (
        f"INSERT INTO traj_rollup{' AS r' if dialect == 'postgres' else ''} ({_ROLLUP_COLUMNS}) VALUES ({values}) "
        f"ON CONFLICT (day, source, status) DO UPDATE SET {sums};"
    )


def _rollup_changed(dialect: str) -> str:
    op = "IS NOT" if dialect == "sqlite" else "IS DISTINCT FROM"
    return " OR ".join(f"OLD.{c} {op} NEW.{c}" for c in _ROLLUP_WATCHED)


MIGRATIONS += (
    Migration(
        "0007_trajectory_rollup",
        common=(
            # Per (UTC day, source, status): trajectory counts and the sums stats reports, kept by
            # triggers on every insert, update and delete of a trajectory (whatever the path: writes,
            # deletes, the timeout sweep), so the unfiltered total and stats read a few hundred rows
            # instead of scanning 100k+ (PostgreSQL: COUNT(*) was ~20 ms of a 22 ms list page).
            # Triggers, unlike deltas computed by the writer, stay exact under concurrent writers:
            # each sees its own row's OLD and NEW under the row lock.
            """CREATE TABLE traj_rollup (
                day {BIGINT} NOT NULL,
                source TEXT NOT NULL,
                status TEXT NOT NULL,
                trajectories {BIGINT} NOT NULL,
                steps {BIGINT} NOT NULL,
                calls {BIGINT} NOT NULL,
                accesses {BIGINT} NOT NULL,
                prompt_tokens {BIGINT} NOT NULL,
                completion_tokens {BIGINT} NOT NULL,
                rewarded {BIGINT} NOT NULL,
                reward_sum {REAL} NOT NULL,
                PRIMARY KEY (day, source, status)
            )""",
            f"INSERT INTO traj_rollup ({_ROLLUP_COLUMNS}) "
            "SELECT start_time / 86400000, source, status, COUNT(*), SUM(step_count), SUM(llm_call_count), "
            "SUM(provider_access_count), SUM(total_prompt_tokens), SUM(total_completion_tokens), "
            "COUNT(total_reward), COALESCE(SUM(total_reward), 0) "
            "FROM trajectories GROUP BY start_time / 86400000, source, status",
            # Reward min/max are not sums: an index answers them in one lookup each.
            "CREATE INDEX ix_traj_reward ON trajectories (total_reward)",
        ),
        sqlite=(
            "CREATE TRIGGER traj_rollup_ins AFTER INSERT ON trajectories BEGIN "
            f"{_rollup_upsert('NEW', '', 'sqlite')} END",
            "CREATE TRIGGER traj_rollup_del AFTER DELETE ON trajectories BEGIN "
            f"{_rollup_upsert('OLD', '-', 'sqlite')} END",
            f"CREATE TRIGGER traj_rollup_upd AFTER UPDATE ON trajectories WHEN {_rollup_changed('sqlite')} BEGIN "
            f"{_rollup_upsert('OLD', '-', 'sqlite')} {_rollup_upsert('NEW', '', 'sqlite')} END",
        ),
        postgres=(
            # SET search_path FROM CURRENT: the function finds this schema's rollup whatever the
            # search_path of the session that writes (psql, another tool).
            "CREATE FUNCTION traj_rollup_apply() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT "
            "AS $$ BEGIN "
            f"IF TG_OP <> 'INSERT' THEN {_rollup_upsert('OLD', '-', 'postgres')} END IF; "
            f"IF TG_OP <> 'DELETE' THEN {_rollup_upsert('NEW', '', 'postgres')} END IF; "
            "RETURN NULL; END $$",
            "CREATE TRIGGER traj_rollup_insdel AFTER INSERT OR DELETE ON trajectories "
            "FOR EACH ROW EXECUTE FUNCTION traj_rollup_apply()",
            "CREATE TRIGGER traj_rollup_upd AFTER UPDATE ON trajectories FOR EACH ROW "
            f"WHEN ({_rollup_changed('postgres')}) EXECUTE FUNCTION traj_rollup_apply()",
        ),
    ),
)

MIGRATIONS += (
    DataMigration(
        "0008_text_owner",
        # The one trajectory that uses a text, NULL once a second one does: a search maps a
        # matching prompt or response straight to its trajectory instead of looking each one
        # up in trajectory_texts (PostgreSQL, 9.5k hits: ~50 ms of a 150 ms search).
        setup=("ALTER TABLE texts ADD COLUMN owner TEXT",),
        # Rewrites every text row once (PostgreSQL, 3.5M texts of 100k trajectories: ~4 min in one
        # statement, each row written and indexed again; a grouped UPDATE ... FROM was no faster).
        # First shipped as one statement; since then in batches of texts, resumable, with progress
        # (stores that applied it then are not touched again: the name is the same).
        table="texts",
        key="id",
        batch=(
            "UPDATE texts SET owner = (SELECT MIN(tt.trajectory_id) FROM trajectory_texts tt "
            "WHERE tt.text_id = texts.id) WHERE id > ? AND id <= ? AND "
            "(SELECT COUNT(*) FROM trajectory_texts tt WHERE tt.text_id = texts.id) = 1",
        ),
        batch_rows=20_000,
    ),
)

# --- ids scoped to their trajectory (migration 0009) -----------------------------------------------

# Step, call and access ids come from the user and are unique only within their trajectory (every
# Eliza export has a "step-1"), so (trajectory_id, id) is the key. The key's index serves every read
# by trajectory too, so the separate trajectory_id indexes go (one index fewer per row written).
# A score is one per (trajectory, name, source); its id is a label, not a key.
_SCOPED_TABLES = (
    (
        "steps",
        """CREATE TABLE steps_0009 (
            step_id TEXT NOT NULL,
            trajectory_id TEXT NOT NULL,
            step_number INTEGER NOT NULL DEFAULT 0,
            timestamp INTEGER NOT NULL,
            action TEXT,
            reward REAL,
            done INTEGER,
            observation TEXT,
            metadata TEXT,
            PRIMARY KEY (trajectory_id, step_id)
        )""",
    ),
    (
        "llm_calls",
        """CREATE TABLE llm_calls_0009 (
            call_id TEXT NOT NULL,
            trajectory_id TEXT NOT NULL,
            step_id TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            model_version TEXT,
            system_text INTEGER,
            user_text INTEGER,
            response_text INTEGER,
            reasoning_text INTEGER,
            messages_text INTEGER,
            tools_text INTEGER,
            tool_calls TEXT,
            finish_reason TEXT,
            temperature REAL,
            max_tokens INTEGER,
            top_p REAL,
            purpose TEXT NOT NULL DEFAULT 'action',
            action_type TEXT,
            latency_ms REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cache_read_input_tokens INTEGER,
            cache_creation_input_tokens INTEGER,
            tags TEXT,
            PRIMARY KEY (trajectory_id, call_id)
        )""",
    ),
    (
        "provider_accesses",
        """CREATE TABLE provider_accesses_0009 (
            access_id TEXT NOT NULL,
            trajectory_id TEXT NOT NULL,
            step_id TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            provider_id TEXT,
            provider_name TEXT NOT NULL DEFAULT '',
            purpose TEXT NOT NULL DEFAULT '',
            query TEXT,
            data_text INTEGER,
            PRIMARY KEY (trajectory_id, access_id)
        )""",
    ),
    (
        "scores",
        """CREATE TABLE scores_0009 (
            score_id TEXT NOT NULL,
            trajectory_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value REAL NOT NULL,
            comment TEXT,
            source TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (trajectory_id, name, source)
        )""",
    ),
)


def _sqlite_rebuild(table: str, ddl: str) -> tuple[str, ...]:
    # SQLite cannot change a primary key in place: copy into the new table (same columns, same
    # order, every row), drop the old one (its indexes go with it) and take its name.
    return (
        ddl,
        f"INSERT INTO {table}_0009 SELECT * FROM {table}",
        f"DROP TABLE {table}",
        f"ALTER TABLE {table}_0009 RENAME TO {table}",
    )


MIGRATIONS += (
    Migration(
        "0009_trajectory_scoped_ids",
        common=(),
        sqlite=tuple(stmt for table, ddl in _SCOPED_TABLES for stmt in _sqlite_rebuild(table, ddl)),
        postgres=(
            # In place: each new key index is built once from the table; no row is rewritten.
            "ALTER TABLE steps DROP CONSTRAINT steps_pkey, ADD PRIMARY KEY (trajectory_id, step_id)",
            "DROP INDEX ix_steps_traj",
            "ALTER TABLE llm_calls DROP CONSTRAINT llm_calls_pkey, ADD PRIMARY KEY (trajectory_id, call_id)",
            "DROP INDEX ix_calls_traj",
            "ALTER TABLE provider_accesses DROP CONSTRAINT provider_accesses_pkey, "
            "ADD PRIMARY KEY (trajectory_id, access_id)",
            "DROP INDEX ix_access_traj",
            "ALTER TABLE scores DROP CONSTRAINT scores_pkey, "
            "DROP CONSTRAINT scores_trajectory_id_name_source_key, ADD PRIMARY KEY (trajectory_id, name, source)",
        ),
    ),
)

MIGRATIONS += (
    Migration(
        "0010_otel_traces",
        common=(
            # Which trajectory the spans of an OpenTelemetry trace go to: they arrive in many
            # requests and out of order, and only some carry the conversation id that names the
            # trajectory; the first decision for a trace is kept, so later spans join it.
            """CREATE TABLE otel_traces (
                trace_id TEXT PRIMARY KEY,
                trajectory_id TEXT NOT NULL,
                created_at {BIGINT} NOT NULL
            )""",
        ),
    ),
)

MIGRATIONS += (
    Migration(
        "0011_deferred_rollup_triggers",
        common=(),
        postgres=(
            # The rollup's rows are few and every writer updates the same ones (today's day, the
            # source, the status). Fired as each trajectory row changed, the first insert of a write
            # locked them until its commit, so concurrent writers ran their whole writes one after
            # the other. Deferred to the commit, the same OLD/NEW rows are added in the same
            # transaction (still exact) and the lock is held for the commit only. SQLite has one
            # writer at a time and keeps its triggers.
            "DROP TRIGGER traj_rollup_insdel ON trajectories",
            "DROP TRIGGER traj_rollup_upd ON trajectories",
            "CREATE CONSTRAINT TRIGGER traj_rollup_insdel AFTER INSERT OR DELETE ON trajectories "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION traj_rollup_apply()",
            "CREATE CONSTRAINT TRIGGER traj_rollup_upd AFTER UPDATE ON trajectories "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
            f"WHEN ({_rollup_changed('postgres')}) EXECUTE FUNCTION traj_rollup_apply()",
        ),
    ),
    Migration(
        "0012_texts_lz4",
        common=(),
        postgres=(
            # Text bodies TOASTed (over ~2 KB: long system prompts, tool outputs, message lists) are
            # compressed with lz4 instead of pglz: it decompresses several times faster, and an
            # export reads every body back. Rows are not rewritten (only new values use it). The
            # TOAST threshold stays at its default on purpose: the benchmark's texts (200 B-1.5 KB)
            # stay inline, and compressing them inline (toast_tuple_target 128) saved nothing on its
            # word soup (20k texts, 10.04 MB either way, lz4 or pglz) while costing every write and
            # read. A server built without lz4 keeps pglz.
            """DO $$ BEGIN
                ALTER TABLE texts ALTER COLUMN body SET COMPRESSION lz4;
            EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN NULL;
            END $$""",
        ),
    ),
)
