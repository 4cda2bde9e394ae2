"""The training loop's records in the store: datasets and the event log.

Mixed into :class:`~trajforge.store.sql.SqlStore` so the SQL stays in the store package and runs
unchanged on SQLite and PostgreSQL (``?`` placeholders, rewritten per dialect by ``_ex``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trajforge import jsonutil
from trajforge.records import Dataset, JobEvent

_DATASET_COLS = "id, name, version, parent, format, path, trajectory_count, row_count, manifest, created_at"
_EVENT_COLS = "seq, kind, ts, message, job_id, dataset_id, model_id, progress, phase, data"


class TrainingRecords:
    """Uses the store's ``_ex``, ``_read_tx`` and ``_write_tx``."""

    def add_dataset(self, ds: Dataset) -> None:
        with self._write_tx() as cur:  # type: ignore[attr-defined]
            self._ex(  # type: ignore[attr-defined]
                cur,
                f"INSERT INTO datasets ({_DATASET_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
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

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        with self._read_tx() as cur:  # type: ignore[attr-defined]
            row = self._ex(  # type: ignore[attr-defined]
                cur, f"SELECT {_DATASET_COLS} FROM datasets WHERE id = ?", [dataset_id]
            ).fetchone()
        return None if row is None else _dataset(row)

    def list_datasets(self, limit: int = 100, offset: int = 0) -> list[Dataset]:
        with self._read_tx() as cur:  # type: ignore[attr-defined]
            rows = self._ex(  # type: ignore[attr-defined]
                cur,
                f"SELECT {_DATASET_COLS} FROM datasets ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                [limit, offset],
            ).fetchall()
        return [_dataset(r) for r in rows]

    def latest_dataset(self, name: str) -> Dataset | None:
        """The newest version of the dataset called ``name`` (the parent of the next build)."""
        with self._read_tx() as cur:  # type: ignore[attr-defined]
            row = self._ex(  # type: ignore[attr-defined]
                cur,
                f"SELECT {_DATASET_COLS} FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1",
                [name],
            ).fetchone()
        return None if row is None else _dataset(row)

    def add_event(self, event: JobEvent) -> int:
        """Append an event; returns its sequence number (also set on ``event``)."""
        with self._write_tx() as cur:  # type: ignore[attr-defined]
            row = self._ex(  # type: ignore[attr-defined]
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
        with self._read_tx() as cur:  # type: ignore[attr-defined]
            rows = self._ex(cur, sql, params).fetchall()  # type: ignore[attr-defined]
        return [_event(r) for r in rows]


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
