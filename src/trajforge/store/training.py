"""The training loop's records in the store: datasets and the event log.

Mixed into :class:`~trajforge.store.sql.SqlStore` so the SQL stays in the store package and runs
unchanged on SQLite and PostgreSQL (``?`` placeholders, rewritten per dialect by ``_ex``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trajforge import jsonutil
from trajforge.errors import Conflict
from trajforge.records import TASK_SQL, Dataset, Job, JobEvent, Model
from trajforge.store.base import WriteResult
from trajforge.store.sqlbase import SqlHelpers

_DATASET_COLS = "id, name, version, parent, format, path, trajectory_count, row_count, manifest, created_at"
_JOB_COLS = (
    "id, kind, backend, status, phase, progress, request, dataset_id, created_at, started_at, finished_at, "
    "error, exit_code, log_path, output, pid, host, cancel_requested, heartbeat_at"
)
_JOB_UPDATABLE = frozenset(
    [
        "status",
        "phase",
        "progress",
        "dataset_id",
        "started_at",
        "finished_at",
        "error",
        "exit_code",
        "log_path",
        "output",
        "pid",
        "host",
        "cancel_requested",
        "heartbeat_at",
    ]
)
_COUNTER_KEYS = (
    "task",
    "completed",
    "updated_at",
    "last_trigger_at",
    "pending_job_id",
    "count_at_trigger",
    "last_run_at",
    "last_job_id",
)
_COUNTER_COLS = ", ".join(_COUNTER_KEYS)
_MODEL_KEYS = (
    "id",
    "job_id",
    "dataset_id",
    "base_model",
    "backend",
    "adapter_path",
    "merged_path",
    "metrics",
    "evaluation",
    "ollama_name",
    "provider_model",
    "active",
    "activated_at",
    "created_at",
)
_MODEL_COLS = ", ".join(_MODEL_KEYS)
_MODEL_JSON = frozenset(["metrics", "evaluation"])
_MODEL_UPDATABLE = frozenset(["merged_path", "metrics", "evaluation", "ollama_name"])
_EVENT_COLS = "seq, kind, ts, message, job_id, dataset_id, model_id, progress, phase, data"


class TrainingRecords(SqlHelpers):
    """Datasets, jobs, events, models and task counters; mixed into
    :class:`~trajforge.store.sql.SqlStore`."""

    # How a claim locks the row it takes: PostgreSQL lets concurrent runners skip each other's
    # rows; SQLite has one writer at a time (BEGIN IMMEDIATE), which is the lock.
    claim_lock = ""

    # --- auto-training counters ----------------------------------------------------------------

    def _count_completed(self, cur: Any, result: WriteResult, now: int) -> None:
        """A step run at the end of every write (``SqlStore.after_write``): count the
        trajectories the write completed."""
        if result.completed and not result.tasks_counted:
            self._count_tasks(cur, result.completed, now)

    def counted_tasks(self, cur: Any, trajectory_ids: Sequence[str]) -> dict[str, set[str]]:
        """The tasks each of these trajectories counts for now: those of its LLM calls, when it is
        ``completed`` (none otherwise)."""
        rows = self._select_in(
            cur,
            f"SELECT DISTINCT trajectory_id, {TASK_SQL} FROM llm_calls WHERE trajectory_id IN "
            "(SELECT id FROM trajectories WHERE status = 'completed' AND id IN ({marks}))",
            sorted(trajectory_ids),
        )
        out: dict[str, set[str]] = {}
        for tid, task in rows:
            out.setdefault(tid, set()).add(task)
        return out

    def count_task_changes(
        self, cur: Any, before: dict[str, set[str]], after: dict[str, set[str]], now: int
    ) -> None:
        """Move the per-task counters by what changed between two ``counted_tasks`` readings.

        Why: an assembled trajectory (OTLP) may complete before its calls arrive, or merge with
        another that was counted already; counting at the moment it completes would miss the
        first and double the second. Counting the difference keeps every counter exact."""
        delta: dict[str, int] = {}
        for sets, sign in ((after, 1), (before, -1)):
            for tasks in sets.values():
                for task in tasks:
                    delta[task] = delta.get(task, 0) + sign
        changes = [(task, n, now) for task, n in sorted(delta.items()) if n]
        self._exmany(
            cur,
            "INSERT INTO task_counters (task, completed, updated_at) VALUES (?,?,?) ON CONFLICT (task) "
            "DO UPDATE SET completed = task_counters.completed + excluded.completed, updated_at = excluded.updated_at",
            changes,
        )

    def _count_tasks(self, cur: Any, trajectory_ids: Sequence[str], now: int) -> None:
        """Add the trajectories that just completed to their tasks' counters (in the write's own
        transaction, so a count is never lost or doubled). A trajectory counts once per task it
        has LLM calls for; a call's task is its action type, else its purpose."""
        rows = self._select_in(
            cur,
            f"SELECT DISTINCT trajectory_id, {TASK_SQL} FROM llm_calls WHERE trajectory_id IN ({{marks}})",
            trajectory_ids,
        )
        counts: dict[str, int] = {}
        for _tid, task in rows:
            counts[task] = counts.get(task, 0) + 1
        self._exmany(
            cur,
            "INSERT INTO task_counters (task, completed, updated_at) VALUES (?,?,?) ON CONFLICT (task) "
            "DO UPDATE SET completed = task_counters.completed + excluded.completed, updated_at = excluded.updated_at",
            [(task, n, now) for task, n in sorted(counts.items())],
        )

    def task_counters(self) -> list[dict[str, Any]]:
        with self._read_tx() as cur:
            rows = self._ex(cur, f"SELECT {_COUNTER_COLS} FROM task_counters ORDER BY task").fetchall()
        return [dict(zip(_COUNTER_KEYS, r, strict=True)) for r in rows]

    def claim_task_trigger(self, task: str, job_id: str, now: int) -> bool:
        """Mark ``task`` as having a job on its way, unless one already is (several servers may
        check at once: exactly one wins)."""
        with self._write_tx() as cur:
            cur = self._ex(
                cur,
                "UPDATE task_counters SET pending_job_id = ?, count_at_trigger = completed, last_trigger_at = ? "
                "WHERE task = ? AND pending_job_id IS NULL",
                [job_id, now, task],
            )
            return bool(cur.rowcount)

    def settle_task_trigger(self, task: str, job_id: str, ran: bool, now: int) -> None:
        """The task's job ended: when it ran, take the trajectories it was started for off the
        counter (later arrivals stay counted); either way the task is free for the next trigger."""
        with self._write_tx() as cur:
            if ran:
                self._ex(
                    cur,
                    "UPDATE task_counters SET completed = completed - COALESCE(count_at_trigger, 0), "
                    "last_run_at = ?, last_job_id = ? WHERE task = ? AND pending_job_id = ?",
                    [now, job_id, task, job_id],
                )
            self._ex(
                cur,
                "UPDATE task_counters SET pending_job_id = NULL, count_at_trigger = NULL WHERE task = ? AND pending_job_id = ?",
                [task, job_id],
            )

    # --- jobs ----------------------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        with self._write_tx() as cur:
            self._ex(cur, f"INSERT INTO jobs ({_JOB_COLS}) VALUES ({','.join('?' * 19)})", _job_row(job))

    def get_job(self, job_id: str) -> Job | None:
        with self._read_tx() as cur:
            row = self._ex(cur, f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", [job_id]).fetchone()
        return None if row is None else _job(row)

    def list_jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        sql = f"SELECT {_JOB_COLS} FROM jobs"
        params: list[Any] = []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self._read_tx() as cur:
            return [_job(r) for r in self._ex(cur, sql, params).fetchall()]

    def claim_job(self, host: str, now: int) -> Job | None:
        """Take the oldest pending job (atomically: two runners never take the same one)."""
        with self._write_tx() as cur:
            row = self._ex(
                cur,
                "UPDATE jobs SET status = 'running', started_at = ?, heartbeat_at = ?, host = ? "
                "WHERE id = (SELECT id FROM jobs WHERE status = 'pending' ORDER BY created_at, id LIMIT 1"
                f"{self.claim_lock}) AND status = 'pending' RETURNING {_JOB_COLS}",
                [now, now, host],
            ).fetchone()
        return None if row is None else _job(row)

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        sets, values = _job_sets(fields)
        with self._write_tx() as cur:
            self._ex(cur, f"UPDATE jobs SET {sets} WHERE id = ?", [*values, job_id])

    def finish_job(
        self, job_id: str, status: str, now: int, *, message: str | None = None, **fields: Any
    ) -> bool:
        """Move a job that is still pending or running to a final status and append its ending
        event (``job_<status>``) in the same transaction: a reader who sees the job ended sees the
        event too, and a crash between the two cannot leave one without the other. False (and no
        event) if it had already ended."""
        sets, values = _job_sets({"status": status, "finished_at": now, **fields})
        with self._write_tx() as cur:
            cur = self._ex(
                cur,
                f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ('pending', 'running')",
                [*values, job_id],
            )
            if not cur.rowcount:
                return False
            output = fields.get("output")
            model_id = output.get("modelId") if isinstance(output, dict) else None
            event = JobEvent(
                f"job_{status}",
                message or fields.get("error") or status,
                ts=now,
                job_id=job_id,
                model_id=model_id if isinstance(model_id, str) else None,
                progress=fields.get("progress"),
                data=output if isinstance(output, dict) else None,
            )
            self._insert_event(cur, event)
            return True

    def add_dataset(self, ds: Dataset) -> None:
        """Record a built dataset; a Conflict when another build took its name and version first."""
        with self._write_tx() as cur:
            cur = self._ex(
                cur,
                f"INSERT INTO datasets ({_DATASET_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (name, version) DO NOTHING",
                [
                    ds.id,
                    ds.name,
                    ds.version,
                    ds.parent,
                    ds.format,
                    ds.path,
                    ds.trajectory_count,
                    ds.row_count,
                    jsonutil.dumps(ds.manifest),
                    ds.created_at,
                ],
            )
            if not cur.rowcount:
                raise Conflict(
                    f"another build of dataset {ds.name!r} recorded version {ds.version} first; build again",
                    "name",
                )

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        with self._read_tx() as cur:
            row = self._ex(cur, f"SELECT {_DATASET_COLS} FROM datasets WHERE id = ?", [dataset_id]).fetchone()
        return None if row is None else _dataset(row)

    def list_datasets(self, limit: int = 100, offset: int = 0) -> list[Dataset]:
        with self._read_tx() as cur:
            rows = self._ex(
                cur,
                f"SELECT {_DATASET_COLS} FROM datasets ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                [limit, offset],
            ).fetchall()
        return [_dataset(r) for r in rows]

    def latest_dataset(self, name: str) -> Dataset | None:
        """The newest version of the dataset called ``name`` (the parent of the next build)."""
        with self._read_tx() as cur:
            row = self._ex(
                cur,
                f"SELECT {_DATASET_COLS} FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1",
                [name],
            ).fetchone()
        return None if row is None else _dataset(row)

    def add_event(self, event: JobEvent) -> int:
        """Append an event; returns its sequence number (also set on ``event``)."""
        with self._write_tx() as cur:
            return self._insert_event(cur, event)

    def _insert_event(self, cur: Any, event: JobEvent) -> int:
        row = self._ex(
            cur,
            "INSERT INTO events (kind, ts, message, job_id, dataset_id, model_id, progress, phase, data) "
            "VALUES (?,?,?,?,?,?,?,?,?) RETURNING seq",
            [
                event.kind,
                event.ts,
                event.message,
                event.job_id,
                event.dataset_id,
                event.model_id,
                event.progress,
                event.phase,
                None if event.data is None else jsonutil.dumps(event.data),
            ],
        ).fetchone()
        event.seq = int(row[0])
        return event.seq

    def last_event_seq(self) -> int:
        """The newest event's sequence number (0 when there is none): where a live stream starts."""
        with self._read_tx() as cur:
            row = self._ex(cur, "SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def list_events(
        self,
        *,
        after: int = 0,
        job_id: str | None = None,
        kinds: Sequence[str] | None = None,
        limit: int = 500,
    ) -> list[JobEvent]:
        """Events numbered after ``after``, oldest first (what an SSE stream sends next)."""
        sql = f"SELECT {_EVENT_COLS} FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if job_id is not None:
            sql += " AND job_id = ?"
            params.append(job_id)
        if kinds:
            sql += " AND kind IN (" + ",".join("?" * len(kinds)) + ")"
            params.extend(kinds)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        with self._read_tx() as cur:
            rows = self._ex(cur, sql, params).fetchall()
        return [_event(r) for r in rows]

    # --- models ------------------------------------------------------------------------------

    def add_model(self, model: Model) -> None:
        values = [getattr(model, k) for k in _MODEL_KEYS]
        values = [
            jsonutil.dumps(v) if k in _MODEL_JSON and v is not None else v
            for k, v in zip(_MODEL_KEYS, values, strict=True)
        ]
        with self._write_tx() as cur:
            marks = ",".join("?" * len(_MODEL_KEYS))
            self._ex(cur, f"INSERT INTO models ({_MODEL_COLS}) VALUES ({marks})", values)

    def get_model(self, model_id: str) -> Model | None:
        with self._read_tx() as cur:
            row = self._ex(cur, f"SELECT {_MODEL_COLS} FROM models WHERE id = ?", [model_id]).fetchone()
        return None if row is None else _model(row)

    def list_models(self, limit: int = 100, offset: int = 0) -> list[Model]:
        with self._read_tx() as cur:
            rows = self._ex(
                cur,
                f"SELECT {_MODEL_COLS} FROM models ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                [limit, offset],
            ).fetchall()
        return [_model(r) for r in rows]

    def update_model(self, model_id: str, **fields: Any) -> None:
        unknown = set(fields) - _MODEL_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable model columns: {sorted(unknown)}")
        if not fields:
            return
        values = [jsonutil.dumps(v) if k in _MODEL_JSON and v is not None else v for k, v in fields.items()]
        with self._write_tx() as cur:
            self._ex(
                cur,
                f"UPDATE models SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                [*values, model_id],
            )

    def activate_model(self, model_id: str, provider_model: str, now: int) -> bool:
        """Make ``model_id`` the one active model (one transaction: never two active, never none
        in between). False when there is no such model."""
        with self._write_tx() as cur:
            hit = self._ex(
                cur,
                "UPDATE models SET active = TRUE, provider_model = ?, activated_at = ? WHERE id = ?",
                [provider_model, now, model_id],
            ).rowcount
            if not hit:
                return False
            self._ex(cur, "UPDATE models SET active = FALSE WHERE active AND id <> ?", [model_id])
        return True

    def active_model(self) -> Model | None:
        with self._read_tx() as cur:
            row = self._ex(cur, f"SELECT {_MODEL_COLS} FROM models WHERE active LIMIT 1").fetchone()
        return None if row is None else _model(row)


def _model(r: Sequence[Any]) -> Model:
    d = dict(zip(_MODEL_KEYS, r, strict=True))
    for k in _MODEL_JSON:
        d[k] = None if d[k] is None else jsonutil.loads(d[k])
    d["active"] = bool(d["active"])
    return Model(**d)


def _dataset(r: Sequence[Any]) -> Dataset:
    return Dataset(
        id=r[0],
        name=r[1],
        version=int(r[2]),
        parent=r[3],
        format=r[4],
        path=r[5],
        trajectory_count=int(r[6]),
        row_count=int(r[7]),
        manifest=jsonutil.loads(r[8]),
        created_at=int(r[9]),
    )


def _event(r: Sequence[Any]) -> JobEvent:
    return JobEvent(
        seq=int(r[0]),
        kind=r[1],
        ts=int(r[2]),
        message=r[3],
        job_id=r[4],
        dataset_id=r[5],
        model_id=r[6],
        progress=r[7],
        phase=r[8],
        data=None if r[9] is None else jsonutil.loads(r[9]),
    )


def _job_sets(fields: dict[str, Any]) -> tuple[str, list[Any]]:
    """``col = ?, …`` and its parameters for job columns (``output`` stored as JSON)."""
    unknown = set(fields) - _JOB_UPDATABLE
    if unknown:
        raise ValueError(f"not job columns: {sorted(unknown)}")
    values = [jsonutil.dumps(v) if k == "output" and v is not None else v for k, v in fields.items()]
    return ", ".join(f"{k} = ?" for k in fields), values


def _job_row(j: Job) -> list[Any]:
    return [
        j.id,
        j.kind,
        j.backend,
        j.status,
        j.phase,
        j.progress,
        jsonutil.dumps(j.request),
        j.dataset_id,
        j.created_at,
        j.started_at,
        j.finished_at,
        j.error,
        j.exit_code,
        j.log_path,
        None if j.output is None else jsonutil.dumps(j.output),
        j.pid,
        j.host,
        j.cancel_requested,
        j.heartbeat_at,
    ]


def _job(r: Sequence[Any]) -> Job:
    return Job(
        id=r[0],
        kind=r[1],
        backend=r[2],
        status=r[3],
        phase=r[4],
        progress=float(r[5] or 0),
        request=jsonutil.loads(r[6]),
        dataset_id=r[7],
        created_at=int(r[8]),
        started_at=r[9],
        finished_at=r[10],
        error=r[11],
        exit_code=r[12],
        log_path=r[13],
        output=None if r[14] is None else jsonutil.loads(r[14]),
        pid=r[15],
        host=r[16],
        cancel_requested=bool(r[17]),
        heartbeat_at=r[18],
    )
