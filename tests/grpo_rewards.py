"""Reward functions for the GRPO tests, named as ``module:function`` (or registered by name)."""

from __future__ import annotations

from typing import Any

import trajforge
from trajforge.records import Trajectory

TARGET = {"text": ""}
"""The completion start the test rewards (set by the test from the model's own distribution)."""


def starts_with_target(row: dict[str, Any], completion: str) -> float:
    """1 for a completion that starts with the target text: the known optimum."""
    return 1.0 if completion.lstrip().startswith(TARGET["text"]) else 0.0


def not_starts_with_target(row: dict[str, Any], completion: str) -> float:
    """The inverted reward."""
    return 1.0 - starts_with_target(row, completion)


@trajforge.reward_function("test_target_of_trajectory")
def target_of_trajectory(t: Trajectory) -> float:
    """The same reward read from the rollout as a trajectory (the stored-trajectory signature)."""
    return starts_with_target({}, t.steps[0].llm_calls[0].response or "")


def flaky(row: dict[str, Any], completion: str) -> float | None:
    """Raises, returns NaN or None, or scores, by the completion's length."""
    n = len(completion) % 4
    if n == 0:
        raise RuntimeError("cannot score this one")
    if n == 1:
        return float("nan")
    if n == 2:
        return None
    return 1.0
