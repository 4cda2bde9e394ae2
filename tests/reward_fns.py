"""Reward functions a user's project would define, imported by name (``module:function``) in tests."""

from __future__ import annotations

import trajforge
from trajforge.records import Trajectory


@trajforge.reward_function("fast_and_done")
def fast_and_done(t: Trajectory) -> float:
    return 1.0 if t.status == "completed" and (t.duration_ms or 0) < 1000 else 0.0


def broken(t: Trajectory) -> float:
    if t.scenario_id == "scenario-1":
        raise RuntimeError("cannot score this one")
    return float("nan") if t.scenario_id == "scenario-2" else 0.25


def no_opinion(t: Trajectory) -> None:
    return None


def starts_right(output: str, expected: str) -> float:
    """A user metric for optimizer tests: 1 when the output starts like the expected answer."""
    return 2.0 if output[:12] == expected[:12] else -1.0  # out of range on purpose: it gets clamped
