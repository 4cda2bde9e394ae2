"""The Store protocol every backend implements, and the filter it lists trajectories with."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from trajforge.errors import InvalidInput
from trajforge.records import (
    MAX_TIME_MS,
    TRAJECTORY_STATUSES,
    Dataset,
    Job,
    JobEvent,
    Model,
    Score,
    Trajectory,
    WriteBatch,
)
from trajforge.store import search as search_lang


@dataclass(slots=True)
class TrajectoryFilter:
    """Which trajectories a list, stats, export or dataset build looks at. Empty means all.

    Dates are epoch milliseconds and bound ``start_time`` inclusively; ``search`` uses the query
    language of :mod:`trajforge.store.search`.
    """

    source: str | None = None
    status: str | None = None
    agent_id: str | None = None
    start_date: int | None = None
    end_date: int | None = None
    search: str | None = None
    scenario_id: str | None = None
    batch_id: str | None = None
    is_training_data: bool | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    trajectory_ids: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in TRAJECTORY_STATUSES:
            raise InvalidInput(
                f"status must be one of {', '.join(TRAJECTORY_STATUSES)}, got {self.status!r}", "status"
            )
        if self.start_date is not None and self.end_date is not None and self.start_date > self.end_date:
            raise InvalidInput("startDate is after endDate", "startDate")
        if self.min_reward is not None and self.max_reward is not None and self.min_reward > self.max_reward:
            raise InvalidInput("minReward is greater than maxReward", "minReward")
        if self.search is not None and not self.search.strip():
            self.search = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__slots__)


@dataclass(slots=True)
class Page:
    """One page of a listing, with the total number of matches."""

    items: list[Trajectory]
    total: int
    limit: int
    offset: int


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


def parse_date(value: str | int | float | datetime | None, field_name: str) -> int | None:
    """Epoch ms from an ISO date/datetime, a datetime or a number (ms); the error names the field."""
    ms = _parse_date(value, field_name)
    if ms is not None and not -MAX_TIME_MS <= ms <= MAX_TIME_MS:
        raise InvalidInput(f"{field_name} is outside the years 1 to 9999", field_name)
    return ms


def _parse_date(value: str | int | float | datetime | None, field_name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit() and len(text) <= 20:  # longer: past any time (and int() refuses 4300+)
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(
            f"{field_name} must be an ISO date (2026-01-31 or 2026-01-31T12:00:00Z) or epoch ms, got {text!r}",
            field_name,
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def build_filter(
    *,
    source: str | None = None,
    status: str | None = None,
    start_date: str | int | datetime | None = None,
    end_date: str | int | datetime | None = None,
    search: str | None = None,
    scenario_id: str | None = None,
    batch_id: str | None = None,
    is_training_data: bool | None = None,
    agent_id: str | None = None,
    min_reward: float | None = None,
    max_reward: float | None = None,
    trajectory_ids: list[str] | None = None,
) -> TrajectoryFilter:
    """The filter from API/CLI arguments; the search is parsed now so a bad one fails before any
    response (or export stream) starts."""
    if search:
        search_lang.parse(search)
    return TrajectoryFilter(
        source=source,
        status=status,
        agent_id=agent_id,
        start_date=parse_date(start_date, "startDate"),
        end_date=parse_date(end_date, "endDate"),
        search=search,
        scenario_id=scenario_id,
        batch_id=batch_id,
        is_training_data=is_training_data,
        min_reward=min_reward,
        max_reward=max_reward,
        trajectory_ids=trajectory_ids,
    )


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
        self, flt: TrajectoryFilter, chunk: int = 500, *, newline: bool = False
    ) -> Iterator[bytes]:
        """Each matching trajectory as its wire JSON document (``newline``: ending in ``\\n``),
        assembled from rows without building records."""
        ...

    def iter_call_rows(self, flt: TrajectoryFilter, chunk: int = 500) -> Iterator[tuple[Any, ...]]:
        """One flat row per LLM call (``documents.CALL_ROW_COLUMNS``), for parquet and datasets."""
        ...

    def count(self, flt: TrajectoryFilter) -> int: ...

    def stats(self, flt: TrajectoryFilter | None = None) -> dict[str, Any]:
        """Totals, breakdowns by source/status/model, tokens, latency percentiles, rewards, per day."""
        ...

    def delete(self, ids: Sequence[str] | None = None, *, all: bool = False) -> int:
        """Delete trajectories (and everything under them); returns how many were deleted."""
        ...

    def add_scores(self, scores: Sequence[Score]) -> None: ...

    def get_scores(self, trajectory_ids: Sequence[str]) -> dict[str, list[Score]]: ...

    def sweep_timeouts(self, older_than_ms: int) -> int:
        """Mark ``active`` trajectories with no write for ``older_than_ms`` as ``timeout``."""
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

    def finish_job(self, job_id: str, status: str, now: int, **fields: Any) -> bool:
        """End a pending or running job; False when it had already ended."""
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

    def close(self) -> None: ...
