"""The Store protocol every backend implements (the filter it lists with is in
:mod:`trajforge.store.filter`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from trajforge.records import (
    Dataset,
    FlatCall,
    Job,
    JobEvent,
    Model,
    Score,
    Trajectory,
    WriteBatch,
)

if TYPE_CHECKING:
    from trajforge.privacy import PrivacyFilter
    from trajforge.store.filter import TrajectoryFilter
    from trajforge.store.migrations import Progress


@dataclass(slots=True)
class Page:
    """One page of a listing, with the total number of matches."""

    items: list[Trajectory]
    total: int
    limit: int
    offset: int
    total_is_lower_bound: bool = False
    """``total`` is a lower bound, not the count: a search for a common word finds its page by
    walking the newest trajectories, and counts only the matches it walked past (at least
    ``offset + len(items) + 1``: there are more). Shown as "N+"."""


@dataclass(slots=True)
class WriteResult:
    """What a write changed: new rows (re-sent ids are not counted) and status transitions."""

    new_trajectories: int = 0
    new_steps: int = 0
    new_calls: int = 0
    new_accesses: int = 0
    scores: int = 0
    completed: list[str] = field(default_factory=list)
    """Ids of trajectories that became ``completed`` in this write (what the auto-training counters count)."""
    tasks_counted: bool = False
    """The write adjusted the per-task counters itself (an assembled write: see
    ``TrainingRecords.count_task_changes``), so the end-of-write hook must not count again."""


class TrajectoryStore(Protocol):
    """Trajectories and everything under them: writes, reads, counts, stats, deletes, scores."""

    def write(self, batch: WriteBatch) -> WriteResult:
        """Apply a batch in one transaction; re-sending the same ids never duplicates anything."""
        ...

    def get_trajectory(self, trajectory_id: str) -> Trajectory | None:
        """One trajectory with its steps, calls, accesses, actions and scores."""
        ...

    def list_trajectories(self, flt: TrajectoryFilter, limit: int = 50, offset: int = 0) -> Page:
        """Newest first; items carry the summary fields only (no steps)."""
        ...

    def iter_trajectories(
        self, flt: TrajectoryFilter, chunk: int = 500, *, full: bool = True
    ) -> Iterator[Trajectory]:
        """Every matching trajectory, newest first, loaded ``chunk`` at a time (summaries only
        when ``full`` is false)."""
        ...

    def iter_ids(self, flt: TrajectoryFilter, chunk: int = 500) -> Iterator[list[str]]:
        """Ids of the matching trajectories, newest first, a page of ``chunk`` at a time."""
        ...

    def iter_json_docs(
        self,
        flt: TrajectoryFilter,
        chunk: int = 500,
        *,
        newline: bool = False,
        privacy: PrivacyFilter | None = None,
    ) -> Iterator[bytes]:
        """Each matching trajectory as its wire JSON document (``newline``: ending in ``\\n``),
        assembled from rows without building records; ``privacy`` filters it as
        ``privacy.filter_trajectory`` would."""
        ...

    def iter_call_rows(
        self, flt: TrajectoryFilter, chunk: int = 500, *, privacy: PrivacyFilter | None = None
    ) -> Iterator[FlatCall]:
        """One flat row per LLM call (``records.FlatCall``), for parquet and datasets; ``privacy``
        filters each as ``privacy.filter_flat_call`` would."""
        ...

    def count(self, flt: TrajectoryFilter) -> int: ...

    def stats(self, flt: TrajectoryFilter | None = None) -> dict[str, Any]:
        """Totals, breakdowns by source/status/model, tokens, latency percentiles, rewards, per day."""
        ...

    def task_coverage(self, require_score: str | None = None) -> list[dict[str, Any]]:
        """Per task: ``task``, ``trajectories``, ``completed``, ``rewarded`` (a total reward),
        ``scored`` (any score), ``rewardedOrScored``, ``completedWithRequiredScore`` (None without
        ``require_score``), ``withScenario``; grouped in SQL (memory does not grow with the store)."""
        ...

    def score_coverage(self) -> list[dict[str, Any]]:
        """Per score name: ``name``, ``count``, ``trajectories``, ``mean``."""
        ...

    def duplicate_calls(self) -> tuple[int, int]:
        """(LLM calls, distinct calls by their system, user, messages and response texts)."""
        ...

    def delete(self, ids: Sequence[str] | None = None, *, all: bool = False) -> int:
        """Delete trajectories (and everything under them); returns how many were deleted."""
        ...

    def add_scores(self, scores: Sequence[Score]) -> None: ...

    def get_scores(self, trajectory_ids: Sequence[str]) -> dict[str, list[Score]]: ...

    def sweep_timeouts(self, older_than_ms: int) -> int:
        """Mark ``active`` trajectories with no write for ``older_than_ms`` as ``timeout``."""
        ...

    def assign_traces(self, wanted: dict[str, str], lookup: Sequence[str] = ()) -> dict[str, str]:
        """The trajectory each OpenTelemetry trace's spans go to (``{trace id: trajectory id}``):
        the stored one, else the one proposed in ``wanted``, stored for the trace's later spans.
        Traces in ``lookup`` are only looked up (present in the answer when stored)."""
        ...


class SettingsStore(Protocol):
    """Small named values kept with the data (the privacy salt, auto-training settings)."""

    def get_setting(self, key: str, default: Any = None) -> Any: ...

    def set_setting(self, key: str, value: Any) -> None: ...


class TrainingStore(Protocol):
    """The training loop's records: datasets, auto-training task counters, jobs, the event log and
    models."""

    def add_dataset(self, ds: Dataset) -> None: ...

    def get_dataset(self, dataset_id: str) -> Dataset | None: ...

    def list_datasets(self, limit: int = 100, offset: int = 0) -> list[Dataset]: ...

    def latest_dataset(self, name: str) -> Dataset | None: ...

    def task_counters(self) -> list[dict[str, Any]]:
        """Completed trajectories per task, and each task's auto-training trigger state."""
        ...

    def claim_task_trigger(self, task: str, job_id: str, now: int) -> bool: ...

    def settle_task_trigger(self, task: str, job_id: str, ran: bool, now: int) -> None: ...

    def add_job(self, job: Job) -> None: ...

    def get_job(self, job_id: str) -> Job | None: ...

    def list_jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]: ...

    def claim_job(self, host: str, now: int) -> Job | None:
        """Take the oldest pending job, atomically across runners."""
        ...

    def update_job(self, job_id: str, **fields: Any) -> None: ...

    def finish_job(
        self, job_id: str, status: str, now: int, *, message: str | None = None, **fields: Any
    ) -> bool:
        """End a pending or running job and append its ``job_<status>`` event (message: ``message``,
        else the error, else the status) in one transaction; False when it had already ended."""
        ...

    def add_event(self, event: JobEvent) -> int:
        """Append to the training event log; returns the event's sequence number."""
        ...

    def last_event_seq(self) -> int: ...

    def list_events(
        self,
        *,
        after: int = 0,
        job_id: str | None = None,
        kinds: Sequence[str] | None = None,
        limit: int = 500,
    ) -> list[JobEvent]: ...

    def add_model(self, model: Model) -> None: ...

    def get_model(self, model_id: str) -> Model | None: ...

    def list_models(self, limit: int = 100, offset: int = 0) -> list[Model]: ...

    def update_model(self, model_id: str, **fields: Any) -> None:
        """Set ``merged_path``, ``metrics``, ``evaluation`` or ``ollama_name``."""
        ...

    def activate_model(self, model_id: str, provider_model: str, now: int) -> bool:
        """Make one model the active one (all others inactive); False if there is no such model."""
        ...

    def active_model(self) -> Model | None: ...


class Store(TrajectoryStore, SettingsStore, TrainingStore, Protocol):
    """Where trajectories live. One implementation per database; one test suite runs on all.

    The whole of the store; a consumer that needs one concern only may ask for the narrower
    :class:`TrajectoryStore`, :class:`SettingsStore` or :class:`TrainingStore`."""

    url: str

    def migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        ...

    def pending_data_migration(self) -> str | None:
        """The data migration this store waits for when opened with ``migrate_data=False``."""
        ...

    def migrate_data(self, progress: Progress | None = None, batch_rows: int | None = None) -> None:
        """Run the pending data migrations in resumable batches, reporting each to ``progress``."""
        ...

    def close(self) -> None: ...
