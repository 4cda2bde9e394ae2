"""Data-quality checks for one trajectory before it becomes training data."""

from __future__ import annotations

from dataclasses import dataclass, field

from trajforge.records import LLM_PURPOSES, TRAJECTORY_STATUSES, Trajectory

MIN_PROMPT_CHARS = 10
MIN_RESPONSE_CHARS = 2


@dataclass(slots=True)
class ValidationResult:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_trajectory(t: Trajectory, *, require_reward: bool = False) -> ValidationResult:
    """Errors make a trajectory unfit for training; warnings flag what is probably not useful.

    Errors: no steps, a step without LLM calls, a missing reward when ``require_reward``, bad
    timestamps (end before start, steps out of order or before the start), wrong types.
    Warnings: very short prompts or responses, an unfinished trajectory, an unknown call purpose.
    """
    r = ValidationResult()
    if not isinstance(t.id, str) or not t.id:
        r.errors.append("id: must be a non-empty string")
    if t.status not in TRAJECTORY_STATUSES:
        r.errors.append(f"status: must be one of {', '.join(TRAJECTORY_STATUSES)}, got {t.status!r}")
    if not isinstance(t.start_time, int) or isinstance(t.start_time, bool) or t.start_time <= 0:
        r.errors.append("startTime: must be a positive integer (epoch ms)")
    elif t.end_time is not None:
        if not isinstance(t.end_time, int) or isinstance(t.end_time, bool):
            r.errors.append("endTime: must be an integer (epoch ms)")
        elif t.end_time < t.start_time:
            r.errors.append("endTime: is before startTime")
    if t.total_reward is not None and not _is_num(t.total_reward):
        r.errors.append("totalReward: must be a number")
    if require_reward and t.total_reward is None and not t.scores:
        r.errors.append("totalReward: a reward is required and none was recorded")
    if not t.steps:
        r.errors.append("steps: the trajectory has no steps")
    if t.status == "active":
        r.warnings.append("status: the trajectory is still active")
    last_ts = None
    for i, step in enumerate(t.steps):
        where = f"steps[{i}]"
        if not step.llm_calls:
            r.errors.append(f"{where}: has no LLM calls")
        if not isinstance(step.timestamp, int) or isinstance(step.timestamp, bool):
            r.errors.append(f"{where}.timestamp: must be an integer (epoch ms)")
        else:
            if isinstance(t.start_time, int) and step.timestamp < t.start_time:
                r.errors.append(f"{where}.timestamp: is before the trajectory's startTime")
            if last_ts is not None and step.timestamp < last_ts:
                r.errors.append(f"{where}.timestamp: is before the previous step's")
            last_ts = step.timestamp
        if step.reward is not None and not _is_num(step.reward):
            r.errors.append(f"{where}.reward: must be a number")
        for j, call in enumerate(step.llm_calls):
            cw = f"{where}.llmCalls[{j}]"
            if not isinstance(call.model, str) or not call.model:
                r.errors.append(f"{cw}.model: must be a non-empty string")
            if call.purpose not in LLM_PURPOSES:
                r.warnings.append(f"{cw}.purpose: {call.purpose!r} is not one of {', '.join(LLM_PURPOSES)}")
            for name in ("system_prompt", "user_prompt", "response", "reasoning"):
                value = getattr(call, name)
                if value is not None and not isinstance(value, str):
                    r.errors.append(f"{cw}.{name}: must be a string")
            for name in ("prompt_tokens", "completion_tokens"):
                value = getattr(call, name)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    r.errors.append(f"{cw}.{name}: must be a non-negative integer")
            prompt = (call.user_prompt or "") or "".join(
                str(m.get("content") or "") for m in (call.messages or []) if isinstance(m, dict)
            )
            if isinstance(prompt, str) and len(prompt.strip()) < MIN_PROMPT_CHARS:
                r.warnings.append(f"{cw}: the prompt is very short ({len(prompt.strip())} characters)")
            response = call.response if isinstance(call.response, str) else ""
            if len(response.strip()) < MIN_RESPONSE_CHARS and not call.tool_calls:
                r.warnings.append(f"{cw}: the response is very short ({len(response.strip())} characters)")
        if (
            step.action is not None
            and step.action.immediate_reward is not None
            and not _is_num(step.action.immediate_reward)
        ):
            r.errors.append(f"{where}.action.immediateReward: must be a number")
    return r
