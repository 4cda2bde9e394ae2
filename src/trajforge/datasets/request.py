"""What a dataset build is asked for: :class:`BuildRequest` (and its :class:`PrivacyOptions`), the
library twin of the API's camelCase body, and the formats it may name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from trajforge.errors import InvalidInput
from trajforge.privacy import CATEGORIES
from trajforge.records import camel
from trajforge.store.base import TrajectoryFilter

FORMATS = ("sft", "prompt_completion", "preference", "grpo", "openai", "openai_dpo", "art")
PAIR_FORMATS = ("preference", "openai_dpo")


@dataclass(slots=True)
class PrivacyOptions:
    """``extra_patterns``: label → regex to redact; ``allow``: literals never redacted;
    ``drop_on``: categories that drop the whole trajectory instead of redacting it."""

    extra_patterns: dict[str, str] = field(default_factory=dict)
    allow: list[str] = field(default_factory=list)
    drop_on: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [c for c in self.drop_on if c not in CATEGORIES and c not in self.extra_patterns]
        if unknown:
            raise InvalidInput(
                f"privacy.dropOn names unknown categories {unknown}; known: {', '.join(CATEGORIES)}",
                "privacy.dropOn",
            )


@dataclass(slots=True)
class BuildRequest:
    """What to build. Field names are the snake_case twins of the API's camelCase body."""

    format: str = "sft"
    limit: int = 1000
    """Most trajectories to include (newest first, after every other condition)."""
    min_llm_calls_per_trajectory: int = 0
    reward_score: str | None = None
    """Which score is the reward for curation: a score name, or None for the trajectory's own
    ``totalReward``."""
    min_reward: float | None = None
    max_reward: float | None = None
    require_score: str | None = None
    """Leave out trajectories without this score yet (a late outcome still to come)."""
    task: str | None = None
    """Only calls of this task; None builds every task, with one file per task as well."""
    eval_fraction: float = 0.1
    seed: int = 0
    dedup: bool = True
    preference_margin: float = 0.1
    pair_by: str = "prompt"
    """``prompt``: pair completions of the same prompt; ``scenario``: of the same scenario."""
    name: str | None = None
    """Dataset name; builds with the same name are versions 1, 2, … of it (default: the format)."""
    filter: TrajectoryFilter = field(default_factory=TrajectoryFilter)
    privacy: PrivacyOptions = field(default_factory=PrivacyOptions)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}", "format")
        if not 1 <= self.limit <= 10_000_000:
            raise InvalidInput("limit must be between 1 and 10,000,000", "limit")
        if self.min_llm_calls_per_trajectory < 0:
            raise InvalidInput("minLlmCallsPerTrajectory must be 0 or more", "minLlmCallsPerTrajectory")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InvalidInput("evalFraction must be at least 0 and below 1", "evalFraction")
        if self.preference_margin < 0:
            raise InvalidInput("preferenceMargin must be 0 or more", "preferenceMargin")
        if self.pair_by not in ("prompt", "scenario"):
            raise InvalidInput("pairBy must be 'prompt' or 'scenario'", "pairBy")
        if self.min_reward is not None and self.max_reward is not None and self.min_reward > self.max_reward:
            raise InvalidInput("minReward is greater than maxReward", "minReward")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}", self.name):
            raise InvalidInput(
                "name must be 1-80 letters, digits, _.- starting with a letter or digit", "name"
            )

    def to_wire(self) -> dict[str, Any]:
        flt = {
            k: getattr(self.filter, k) for k in self.filter.__slots__ if getattr(self.filter, k) is not None
        }
        if "trajectory_ids" in flt:
            flt["trajectory_ids"] = list(flt["trajectory_ids"])
        return {
            "format": self.format,
            "limit": self.limit,
            "minLlmCallsPerTrajectory": self.min_llm_calls_per_trajectory,
            "rewardScore": self.reward_score,
            "minReward": self.min_reward,
            "maxReward": self.max_reward,
            "requireScore": self.require_score,
            "task": self.task,
            "evalFraction": self.eval_fraction,
            "seed": self.seed,
            "dedup": self.dedup,
            "preferenceMargin": self.preference_margin,
            "pairBy": self.pair_by,
            "name": self.name,
            "filter": {camel(k): v for k, v in sorted(flt.items())},
            "privacy": {
                "extraPatterns": self.privacy.extra_patterns,
                "allow": self.privacy.allow,
                "dropOn": self.privacy.drop_on,
            },
        }
