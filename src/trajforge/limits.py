"""The one set of limits on what trajforge stores, checked at every way in (SDK, HTTP, import).

Each bound is what every read can still honour, so nothing accepted at ingest is unreadable later:

* JSON depth: orjson refuses to encode more than 254 levels, the dashboard's templates and the
  stdlib encoder hit Python's recursion limit near 1000, and an export wraps a call's ``messages``
  in 7 more levels (``{"trajectories": [{"steps": [{"llmCalls": [{"messages": ...``). 64 levels of
  user data is far more than any real payload and far below all of them.
* Trajectory ids: what the id routes accept (``/api/trajectories/{id}``); other ids and names
  (steps, calls, agent, source, model, score names) stay under PostgreSQL's B-tree entry limit
  (~2,700 bytes) even as 4-byte UTF-8, and leave room for the ids the importer and ingest derive
  from them (``<step id>:call:<n>``).
* Numbers: rewards, scores and the other reals are finite and at most 1e12 in size, so no sum the
  stats keep (the per-day reward rollup adds every trajectory's reward into one
  ``DOUBLE PRECISION``) can overflow, and adding and removing one leaves the sum off by ~1e-4 at
  most. Integers are 32-bit (the store's ``INTEGER`` columns; their sums are ``BIGINT``), times
  are epoch ms from 1970 to the year 9999.
* Strings: 16 Mi characters each (the HTTP body limit is 32 MiB in all).

:func:`check_field` and :func:`check_json` return the problem with a value (or ``None``); the wire
parser (:mod:`trajforge.records`) and the record checks (:mod:`trajforge.validation`) both use
them, so the SDK, HTTP ingest and the importer refuse exactly the same things.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

MAX_JSON_DEPTH = 64
"""Most levels of nesting in a free-form value (metadata, messages, tool calls, observations)."""
MAX_ID_CHARS = 200
"""Longest trajectory id (every route that takes one accepts this much)."""
MAX_REF_CHARS = 500
"""Longest step, call, access or score id."""
MAX_NAME_CHARS = 200
"""Longest name: agent, source, status, scenario, batch, model, purpose, action type, score name."""
MAX_TEXT_CHARS = 16 * 1024 * 1024
"""Longest string anywhere (a prompt, a response, a string inside metadata)."""
MAX_ABS_REAL = 1e12
"""Largest size of a reward, score, latency, temperature or any other real number."""
MIN_INT, MAX_INT = -(2**31), 2**31 - 1
"""Integers other than times (token counts, step numbers): the store's 32-bit ``INTEGER``."""
MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: anything later is not a time (times are epoch ms, from 0)."""
MAX_OFFSET = 10_000_000
"""Largest ``offset`` of a listing."""
MAX_SEQ = 2**63 - 1
"""Largest event sequence number (``after``, ``Last-Event-ID``): the store's ``BIGINT``."""

_IDS = frozenset({"id", "trajectory_id"})
_REFS = frozenset({"step_id", "call_id", "access_id", "score_id", "llm_call_id"})
_NAMES = frozenset(
    {
        "agent_id",
        "source",
        "status",
        "scenario_id",
        "batch_id",
        "model",
        "model_version",
        "purpose",
        "action_type",
        "action_name",
        "finish_reason",
        "provider_id",
        "provider_name",
        "name",
    }
)
_TEXTS = frozenset({"system_prompt", "user_prompt", "response", "reasoning", "error", "comment"})
_REALS = frozenset(
    {"total_reward", "reward", "immediate_reward", "value", "temperature", "top_p", "latency_ms"}
)
_TIMES = frozenset({"timestamp", "start_time", "end_time", "created_at", "updated_at"})
_INTS = frozenset(
    {
        "step_number",
        "group_index",
        "max_tokens",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    }
)
_BOOLS = frozenset({"is_training_data", "done", "success"})
JSON_FIELDS = frozenset(
    {
        "metadata",
        "messages",
        "tool_calls",
        "tools",
        "query",
        "data",
        "parameters",
        "result",
        "observation",
        "tags",
    }
)
"""Fields that hold free-form user data (any JSON value)."""

_STR_LIMITS = {
    **dict.fromkeys(_IDS, MAX_ID_CHARS),
    **dict.fromkeys(_REFS, MAX_REF_CHARS),
    **dict.fromkeys(_NAMES, MAX_NAME_CHARS),
    **dict.fromkeys(_TEXTS, MAX_TEXT_CHARS),
}


def check_real(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number, got {type(value).__name__}"
    if not math.isfinite(value):
        return "must be a finite number (not NaN or Infinity)"
    if not -MAX_ABS_REAL <= value <= MAX_ABS_REAL:
        return f"must be between {-MAX_ABS_REAL:g} and {MAX_ABS_REAL:g}"
    return None


def check_int(value: Any, low: int = MIN_INT, high: int = MAX_INT) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer, got {type(value).__name__}"
    if not low <= value <= high:
        return f"must be between {low} and {high}"
    return None


def check_str(value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if len(value) > limit:
        return f"is {len(value)} characters long; the limit is {limit}"
    return None


def _check_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {type(value).__name__}"


def _check_time(value: Any) -> str | None:
    return check_int(value, 0, MAX_TIME_MS)


def _check_other(value: Any) -> str | None:
    if isinstance(value, float):
        return check_real(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int(value)
    return None


Check = Callable[[Any], "str | None"]


def _str_check(limit: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is str and len(value) <= limit:  # the common case, without a call
            return None
        return check_str(value, limit)

    return check


def check_id(value: Any, limit: int) -> str | None:
    """An id: a string within ``limit``, without NUL. PostgreSQL text cannot hold NUL and the store
    replaces it in text; in an id that would make a re-sent record a new one (or another's)."""
    problem = check_str(value, limit)
    if problem is None and "\x00" in value:
        return "must not contain a NUL character"
    return problem


def _id_check(limit: int) -> Check:
    def check(value: Any) -> str | None:
        return check_id(value, limit)

    return check


ID_FIELDS = _IDS | _REFS
"""Fields that are ids: :func:`check_id` (a length and no NUL)."""


def _ignored(value: Any) -> str | None:
    return None


# Counters the store keeps from what was written: read back from an export, never stored as
# sent, so a big trajectory's token total (past 2**31) must not make its export unimportable.
DERIVED_FIELDS = frozenset({"duration_ms", "step_count", "llm_call_count", "provider_access_count"})
DERIVED_FIELDS |= {"total_prompt_tokens", "total_completion_tokens"}

_CHECKS: dict[str, Check] = {
    **dict.fromkeys(DERIVED_FIELDS, _ignored),
    **{name: _str_check(limit) for name, limit in _STR_LIMITS.items()},
    **{name: _id_check(_STR_LIMITS[name]) for name in ID_FIELDS},
    **dict.fromkeys(_REALS, check_real),
    **dict.fromkeys(_TIMES, _check_time),
    **dict.fromkeys(_INTS, check_int),
    **dict.fromkeys(_BOOLS, _check_bool),
}


def fast_bounds(name: str) -> tuple[type, float, float] | None:
    """(type, low, high) such that a value of exactly that type within [low, high] passes the
    check of field ``name`` (string lengths for ``str``; an id of :data:`ID_FIELDS` must also
    hold no NUL): lets a hot loop skip the call."""
    if name in _STR_LIMITS:
        return str, 0, _STR_LIMITS[name]
    if name in _REALS:
        return float, -MAX_ABS_REAL, MAX_ABS_REAL
    if name in _TIMES:
        return int, 0, MAX_TIME_MS
    if name in _INTS:
        return int, MIN_INT, MAX_INT
    return None


def field_check(name: str) -> Check:
    """The check of record field ``name`` (snake_case): free-form fields go through
    :func:`check_json`; a number in a field this module does not name is held to the bounds of the
    store's ``INTEGER`` / ``DOUBLE PRECISION`` sums all the same."""
    if name in JSON_FIELDS:
        return check_json
    return _CHECKS.get(name, _check_other)


def check_field(name: str, value: Any) -> str | None:
    """The problem with ``value`` as record field ``name`` (snake_case), or ``None`` (also for
    ``None``)."""
    return None if value is None else field_check(name)(value)


def _text_problem(value: str) -> str | None:
    if len(value) > MAX_TEXT_CHARS:
        return f"holds a string of {len(value)} characters; the limit is {MAX_TEXT_CHARS}"
    if not value.isascii():  # isascii is O(1); only other strings pay for the encode
        try:
            value.encode()
        except UnicodeEncodeError:
            # Only Python strings can hold one (JSON parsers refuse it); stored, it made the
            # whole value unreadable.
            return "holds a lone surrogate (not valid Unicode text)"
    return None


def _leaf(value: Any) -> str | None:
    if isinstance(value, str):
        return _text_problem(value)
    elif isinstance(value, float) and not math.isfinite(value):
        return "holds a non-finite number (NaN or Infinity), which JSON cannot carry"
    return None


def check_json(value: Any) -> str | None:
    """The problem with a free-form value (depth, a string's size, a non-finite number), or ``None``.

    One pass, no recursion (a value 10,000 levels deep must not overflow the stack checking it);
    scalars are checked where they sit, only containers go on the stack. A cycle (possible from
    the SDK) is reported as too deep.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
            for k in v:
                if type(k) is str and (len(k) > MAX_TEXT_CHARS or not k.isascii()):
                    problem = _text_problem(k)
                    if problem is not None:
                        return f"{problem} (a key)"
        elif isinstance(v, list | tuple | set | frozenset):
            children = v
        else:
            problem = _leaf(v)
            if problem is not None:
                return problem
            continue
        if depth > MAX_JSON_DEPTH:
            return f"is nested more than {MAX_JSON_DEPTH} levels deep"
        for item in children:
            kind = type(item)
            if kind is str:
                if (len(item) > MAX_TEXT_CHARS or not item.isascii()) and (
                    problem := _text_problem(item)
                ) is not None:
                    return problem
            elif kind is int or kind is bool or item is None:
                continue
            elif kind is float:
                if item != item or item in (math.inf, -math.inf):
                    return "holds a non-finite number (NaN or Infinity), which JSON cannot carry"
            else:
                stack.append((item, depth + 1))
    return None
