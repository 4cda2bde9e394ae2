"""Checks of records: the limits every way in enforces (:func:`check_item`, :func:`limit_problems`)
and the data-quality checks for one trajectory before it becomes training data
(:func:`validate_trajectory`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trajforge import limits
from trajforge.errors import InvalidInput
from trajforge.records import (
    LLM_PURPOSES,
    TRAJECTORY_STATUSES,
    AccessRow,
    CallRow,
    Trajectory,
    WireError,
    camel,
)

R = TypeVar("R")

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


_NESTED = {"steps": 2, "llm_calls": 2, "provider_accesses": 2, "scores": 2, "action": 1}
_PLANS: dict[tuple[type, bool], tuple[tuple[str, str, Any, int], ...]] = {}


def _plan(cls: type, json_only: bool) -> tuple[tuple[str, str, Any, int], ...]:
    """(attribute, wire name, check, 0 plain | 1 nested record | 2 list of records) per field:
    built once per class, since the SDK checks every item on the agent's thread."""
    plan = _PLANS.get((cls, json_only))
    if plan is None:
        plan = _PLANS[(cls, json_only)] = tuple(
            (f.name, camel(f.name), limits.field_check(f.name), _NESTED.get(f.name, 0))
            for f in dataclasses.fields(cls)
            if f.name not in limits.DERIVED_FIELDS
            and (f.name in _NESTED or not json_only or f.name in limits.JSON_FIELDS)
        )
    return plan


def limit_problems(record: Any, where: str = "", *, json_only: bool = False) -> Iterator[tuple[str, str]]:
    """(field path, problem) for each value of ``record`` (and the records inside it) over the
    limits of :mod:`trajforge.limits`. ``json_only``: only the free-form values (what a read of an
    old store can trip on)."""
    for name, wire, check, kind in _plan(type(record), json_only):
        value = getattr(record, name)
        if value is None:
            continue
        if kind:
            path = f"{where}.{wire}" if where else wire
            if kind == 1:
                yield from limit_problems(value, path, json_only=json_only)
            else:
                for i, item in enumerate(value):
                    yield from limit_problems(item, f"{path}[{i}]", json_only=json_only)
            continue
        problem = check(value)
        if problem is not None:
            yield (f"{where}.{wire}" if where else wire), problem


_ITEM_NAMES = {
    "TrajectoryHeader": "trajectory",
    "StepHeader": "step",
    "CallRow": "llmCall",
    "AccessRow": "providerAccess",
    "Score": "score",
    "ActionResult": "step.action",
}


def _item_name(item: Any) -> str:
    name = type(item).__name__
    return _ITEM_NAMES.get(name, name[:1].lower() + name[1:])


_FIRST: dict[tuple[type, bool], Callable[[Any, str], tuple[str, str] | None]] = {}


def _compile(cls: type, json_only: bool) -> Callable[[Any, str], tuple[str, str] | None]:
    """The first of :func:`limit_problems` for ``cls``, as straight-line code (like dataclasses'
    own generated methods): the SDK checks every item on the agent's thread, and a loop over 26
    fields cost more than building the call. An in-range string or number passes without a call."""
    env: dict[str, Any] = {"_first": _first}
    lines = ["def first(r, where):", "    dot = where + '.' if where else ''"]
    for n, (name, wire, check, kind) in enumerate(_plan(cls, json_only)):
        env[f"c{n}"] = check
        lines.append(f"    v = r.{name}")
        if kind == 1:
            lines += [
                "    if v is not None:",
                f"        f = _first(v, dot + {wire!r}, {json_only})",
                "        if f is not None: return f",
            ]
            continue
        if kind == 2:
            lines += [
                "    for i, item in enumerate(v or ()):",
                f"        f = _first(item, f'{{dot}}{wire}[{{i}}]', {json_only})",
                "        if f is not None: return f",
            ]
            continue
        bounds = limits.fast_bounds(name)
        if bounds is None:
            test = "v is not None"
        elif bounds[0] is str:
            nul = " or '\\x00' in v" if name in limits.ID_FIELDS else ""
            test = f"v is not None and (type(v) is not str or len(v) > {bounds[2]!r}{nul})"
        else:
            test = f"v is not None and (type(v) is not {bounds[0].__name__} or not {bounds[1]!r} <= v <= {bounds[2]!r})"
        lines += [
            f"    if {test}:",
            f"        p = c{n}(v)",
            f"        if p is not None: return dot + {wire!r}, p",
        ]
    lines.append("    return None")
    exec("\n".join(lines), env)  # our own field names and constants: never user input
    fn: Callable[[Any, str], tuple[str, str] | None] = env["first"]
    return fn


def _first(record: Any, where: str, json_only: bool = False) -> tuple[str, str] | None:
    """The first of :func:`limit_problems` (``record``, ``where``, ``json_only``), compiled."""
    key = (type(record), json_only)
    fn = _FIRST.get(key)
    if fn is None:
        fn = _FIRST[key] = _compile(*key)
    return fn(record, where)


def _first_problem(item: Any, where: str) -> tuple[str, str] | None:
    kind = type(item)
    if kind is CallRow or kind is AccessRow:
        inner = item.call if kind is CallRow else item.access
        return _first(inner, where) or _first(item, where)
    return _first(item, where)


def check_item(item: Any) -> None:
    """Refuse (:class:`InvalidInput` naming the field) an SDK item the store could not hold or a
    read could not return: a trajectory or step header, a call, a provider access, a score."""
    kind = type(item)
    # A call's or access's ids are its open trajectory's and step's, checked with their headers
    # (a refused header leaves a null scope that submits nothing).
    if kind is CallRow:
        first = _first(item.call, "llmCall")
    elif kind is AccessRow:
        first = _first(item.access, "providerAccess")
    else:
        first = _first(item, _item_name(item))
    if first is not None:
        raise InvalidInput(f"{first[0]}: {first[1]}", first[0])


def check_record(item: R, where: str) -> R:
    """``item`` if it is within the limits, else :class:`WireError` naming the field under
    ``where`` (the importer's rows: ``file.jsonl:12.promptTokens``)."""
    first = _first_problem(item, where)
    if first is not None:
        raise WireError(first[1], first[0])
    return item


class OverLimit(InvalidInput):
    """A stored trajectory holds a value over the limits (written before they existed): it cannot
    be shown, rather than failing as a 500 halfway through encoding it."""

    code = "over_limit"


def check_readable(t: Trajectory) -> Trajectory:
    """``t`` if every free-form value in it is within the limits, else :class:`OverLimit` naming
    the first one over (a store written before the limits can hold such a row)."""
    first = _first(t, "", True)
    if first is not None:
        raise OverLimit(
            f"trajectory {t.id!r} was stored before the current limits and cannot be shown: "
            f"{first[0]} {first[1]}; delete it, or re-import a corrected copy",
            first[0],
        )
    return t


def check_value(name: str, value: Any, where: str) -> Any:
    """``value`` as record field ``name`` (snake_case); :class:`InvalidInput` naming ``where`` if
    it is over the limits. The SDK checks a reward or metadata when it is set, so a bad one never
    costs the trajectory its end."""
    problem = limits.check_field(name, value)
    if problem is not None:
        raise InvalidInput(f"{where}: {problem}", where)
    return value


def validate_trajectory(t: Trajectory, *, require_reward: bool = False) -> ValidationResult:
    """Errors make a trajectory unfit for training; warnings flag what is probably not useful.

    Errors: no steps, a step without LLM calls, a missing reward when ``require_reward``, bad
    timestamps (end before start, steps out of order or before the start), wrong types, values
    over the limits of :mod:`trajforge.limits` (what the SDK and every ingest path refuse).
    Warnings: very short prompts or responses, an unfinished trajectory, an unknown call purpose.
    """
    r = ValidationResult()
    r.errors.extend(f"{path}: {problem}" for path, problem in limit_problems(t))
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
