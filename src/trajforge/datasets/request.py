"""What a dataset build is asked for: :class:`BuildRequest` (with its :class:`PrivacyOptions`),
declared once — the library validates with it, the API takes it as its body, ``trajforge datasets
build`` derives its options from it — and the formats it may name."""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from trajforge.errors import InvalidInput
from trajforge.limits import MAX_INT
from trajforge.privacy import CATEGORIES
from trajforge.requests import Flag, Request
from trajforge.store.filter import TrajectoryFilter

_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_MAX_SINCE_MS = 100 * 366 * 86_400_000


def since_ms(value: str) -> int:
    """Milliseconds in a duration such as ``7d`` (a number and one of s, m, h, d, w)."""
    return int(value[:-1]) * _UNITS_MS[value[-1]]


def _duration(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if not (len(text) >= 2 and text[:-1].isascii() and text[:-1].isdigit() and text[-1] in _UNITS_MS):
        raise InvalidInput(
            f"since must be a number and a unit (s, m, h, d or w) such as 7d, got {value!r}", "since"
        )
    if since_ms(text) > _MAX_SINCE_MS:
        raise InvalidInput("since is longer than 100 years", "since")
    return text


class PrivacyOptions(Request):
    """What the privacy filter does beyond its defaults, for one build."""

    extra_patterns: Annotated[
        dict[str, str],
        Field(description="label → regular expression, redacted as <REDACTED:label>"),
        Flag("--privacy-pattern", metavar="LABEL=REGEX", help="Extra redaction LABEL=REGEX"),
    ] = {}
    allow: Annotated[list[str], Field(description="Literal strings never redacted"), Flag("--allow")] = []
    drop_on: Annotated[
        list[str],
        Field(
            description="Categories that drop the whole trajectory instead of redacting it (e.g. private_key)"
        ),
        Flag("--drop-on"),
    ] = []

    @model_validator(mode="after")
    def _known_categories(self) -> Self:
        unknown = [c for c in self.drop_on if c not in CATEGORIES and c not in self.extra_patterns]
        if unknown:
            raise InvalidInput(
                f"privacy.dropOn names unknown categories {unknown}; known: {', '.join(CATEGORIES)}",
                "privacy.dropOn",
            )
        return self


class BuildRequest(TrajectoryFilter):
    """What to build: which trajectories (the filter's fields), how to curate them, the format."""

    format: Annotated[
        Literal["sft", "prompt_completion", "preference", "grpo", "openai", "openai_dpo", "art", "rewarded"],
        Field(description="sft, prompt_completion, preference, grpo, openai, openai_dpo, art or rewarded"),
        Flag("--format", "-f"),
    ] = "sft"
    limit: Annotated[
        int,
        Field(
            ge=1,
            le=10_000_000,
            description="Most trajectories to include (newest first, after every other condition)",
        ),
    ] = 1000
    since: Annotated[
        Annotated[str, Field(max_length=20)] | None,
        AfterValidator(_duration),
        Field(
            description="Only trajectories started in this much time before the build: 30m, 24h, 7d or 2w "
            "(resolved to startDate when the build runs; the manifest records both)",
        ),
    ] = None
    min_llm_calls_per_trajectory: Annotated[
        int,
        Field(ge=0, le=MAX_INT, description="Skip trajectories with fewer LLM calls"),
        Flag("--min-llm-calls"),
    ] = 0
    reward_score: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="Score used as the reward (default: the trajectory's totalReward)",
        ),
    ] = None
    min_reward: Annotated[
        float | None, Field(allow_inf_nan=False, description="Minimum reward (rewardScore's, or the total)")
    ] = None
    max_reward: Annotated[
        float | None, Field(allow_inf_nan=False, description="Maximum reward (rewardScore's, or the total)")
    ] = None
    require_score: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="Leave out trajectories without this score yet (a late outcome still to come)",
        ),
    ] = None
    task: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="Only calls of this task (action type or purpose); default every task, with a file per task too",
        ),
    ] = None
    eval_fraction: Annotated[float, Field(ge=0, lt=1, description="Share of scenarios held out")] = 0.1
    seed: Annotated[int, Field(ge=0, le=2**63 - 1, description="Seed of the train/eval split")] = 0
    dedup: Annotated[bool, Field(description="Drop duplicate examples")] = True
    preference_margin: Annotated[
        float,
        Field(ge=0, allow_inf_nan=False, description="Preference pairs: minimum reward difference"),
        Flag("--margin"),
    ] = 0.1
    pair_by: Annotated[
        Literal["prompt", "scenario"], Field(description="Preference pairs share a 'prompt' or a 'scenario'")
    ] = "prompt"
    name: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$",
            description="Dataset name (1-80 letters, digits, _.-); builds with the same name are its versions 1, 2, … (default: the format)",
        ),
    ] = None
    privacy: Annotated[PrivacyOptions, Field(description="Privacy filter options")] = Field(
        default_factory=PrivacyOptions
    )

    def resolved(self, now_ms: int) -> BuildRequest:
        """The request with ``since`` turned into a ``startDate`` bound at ``now_ms`` (the later of
        the two when both are given), so one build reads one time range however long it runs."""
        if self.since is None:
            return self
        start = now_ms - since_ms(self.since)
        if self.start_date is not None:
            start = max(start, self.start_date)
        if self.end_date is not None and start > self.end_date:
            raise InvalidInput(f"since {self.since} starts after endDate", "since")
        return self.model_copy(update={"start_date": start})

    @property
    def filter(self) -> TrajectoryFilter:
        """Which trajectories: the filter's fields. minReward/maxReward bound the curated reward
        (a score or the total), so they are not part of it."""
        return self.only_filter().model_copy(update={"min_reward": None, "max_reward": None})

    def manifest_request(self) -> dict[str, Any]:
        """The request as the manifest records it: the build's own fields (in declaration order,
        unset ones as null), then ``filter`` (the fields that narrow, by name) and ``privacy``."""
        flt = self.filter
        fields = type(self).model_fields
        own = [name for name in BuildRequest.__annotations__ if name != "privacy"]
        return {
            **{fields[name].alias or name: getattr(self, name) for name in own},
            "filter": {fields[name].alias or name: getattr(flt, name) for name in sorted(flt.narrowed_by())},
            "privacy": self.privacy.model_dump(by_alias=True),
        }


FORMATS: tuple[str, ...] = typing.get_args(BuildRequest.model_fields["format"].annotation)
PAIR_FORMATS = ("preference", "openai_dpo")
