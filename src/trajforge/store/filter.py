"""The trajectory filter: which trajectories a list, stats, export, scoring run or dataset build
looks at. Declared once (a :class:`~trajforge.requests.Request`): the store reads it, the API takes
it as a body or query, the CLI derives its options from it.

It imports pydantic, so the store modules import it only where they build one (the capture path
never does)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, model_validator

from trajforge.errors import InvalidInput
from trajforge.limits import MAX_OFFSET
from trajforge.records import MAX_TIME_MS, TrajectoryStatus
from trajforge.requests import Flag, Name, Request, TrajectoryId
from trajforge.store import search as search_lang

DATE_HELP = "ISO 8601 date/time (UTC if no offset) or epoch milliseconds; bounds are inclusive"


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


def _date(field_name: str) -> BeforeValidator:
    def check(value: Any) -> int | None:
        # An integer is epoch ms; a string an ISO date/time or digits. A JSON float or boolean is
        # refused rather than guessed at.
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str | datetime):
            raise InvalidInput(
                f"{field_name} must be an ISO 8601 date/time string or an integer (epoch ms)", field_name
            )
        if isinstance(value, str) and not value.strip():
            raise InvalidInput(f"{field_name} must not be empty (leave it out instead)", field_name)
        return parse_date(value, field_name)

    return BeforeValidator(check, json_schema_input_type=int | datetime | None)


def _search(value: str | None) -> str | None:
    # Parsed now, so a bad query fails before any response (or export stream) starts.
    if value is None or not value.strip():
        return None
    search_lang.parse(value)
    return value


def _id_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | set | frozenset) else value


class TrajectoryFilter(Request):
    """Which trajectories to look at; every field narrows, empty means all. Dates bound
    ``start_time`` inclusively; ``search`` uses the query language of :mod:`trajforge.store.search`."""

    source: Annotated[Name | None, Field(description="chat, autonomy, telegram, discord, api, …")] = None
    status: Annotated[TrajectoryStatus | None, Field(description="active, completed, error or timeout")] = (
        None
    )
    agent_id: Annotated[Name | None, Field(description="Agent id"), Flag("--agent")] = None
    start_date: Annotated[int | None, _date("startDate"), Field(description=DATE_HELP)] = None
    end_date: Annotated[int | None, _date("endDate"), Field(description=DATE_HELP)] = None
    search: Annotated[
        Annotated[str, Field(max_length=search_lang.MAX_QUERY_CHARS)] | None,
        AfterValidator(_search),
        Field(description='Full-text: words, "phrase", a OR b, -word, pre*'),
        Flag("--search", "-q"),
    ] = None
    scenario_id: Annotated[Name | None, Field(description="Scenario id"), Flag("--scenario")] = None
    batch_id: Annotated[Name | None, Field(description="Batch id"), Flag("--batch")] = None
    is_training_data: Annotated[
        bool | None,
        Field(description="Only trajectories marked (or not marked) as training data"),
        Flag("--training-data/--not-training-data"),
    ] = None
    min_reward: Annotated[float | None, Field(allow_inf_nan=False, description="Minimum total reward")] = None
    max_reward: Annotated[float | None, Field(allow_inf_nan=False, description="Maximum total reward")] = None
    trajectory_ids: Annotated[
        Annotated[list[TrajectoryId], Field(max_length=100_000)] | None,
        BeforeValidator(_id_list),
        Field(description="Only these trajectories"),
        Flag("--trajectory-id", help="Only this trajectory (repeatable)", metavar="ID"),
    ] = None

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.start_date is not None and self.end_date is not None and self.start_date > self.end_date:
            raise InvalidInput("startDate is after endDate", "startDate")
        if self.min_reward is not None and self.max_reward is not None and self.min_reward > self.max_reward:
            raise InvalidInput("minReward is greater than maxReward", "minReward")
        return self

    def is_empty(self, *, but: Sequence[str] = ()) -> bool:
        """True when no field narrows (other than those named in ``but``)."""
        return all(getattr(self, name) is None for name in type(self).model_fields if name not in but)

    def narrowed_by(self) -> set[str]:
        """The fields that narrow."""
        return {name for name in type(self).model_fields if getattr(self, name) is not None}

    def only_filter(self) -> TrajectoryFilter:
        """The filter part of a request that extends the filter (an export, a dataset build)."""
        if type(self) is TrajectoryFilter:
            return self
        return TrajectoryFilter.model_construct(
            **{name: getattr(self, name) for name in TrajectoryFilter.model_fields}
        )


class ListRequest(TrajectoryFilter):
    """A page of the trajectory list, newest first."""

    limit: Annotated[int, Field(ge=1, le=500, description="Rows per page")] = 50
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET, description="Rows to skip")] = 0


class FilterQuery(TrajectoryFilter):
    """The filter from a query string (the dashboard's URL): the same fields, text parsed."""

    model_config = ConfigDict(strict=False)


class ListQuery(ListRequest):
    """``GET /api/trajectories``' query string: the list request, text parsed."""

    model_config = ConfigDict(strict=False)
