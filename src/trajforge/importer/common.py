"""Checked reads of foreign JSON fields, shared by the trajectory and per-call row readers.

A field that is present with the wrong type is an error naming its path (``file:12.usage.promptTokens``),
never a silent ``None``: an import that drops a value it could not read has lost data.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, TypeVar

import orjson

from trajforge.records import MAX_TIME_MS, WireError

# Where a trajectory, step or call keeps the source's fields trajforge has no column for.
SOURCE_FIELDS = "sourceFields"
CALL_SOURCE_FIELDS = "callSourceFields"
ACCESS_SOURCE_FIELDS = "accessSourceFields"
ACTION_SOURCE_FIELDS = "actionSourceFields"
# Which times of a step were not in the source (and so were taken from a neighbour).
TIMES_UNKNOWN = "timesUnknown"
START_TIME_UNKNOWN = "startTimeUnknown"


T = TypeVar("T")


def wire_names(cls: type) -> frozenset[str]:
    """Every key ``from_wire`` reads for ``cls``: camelCase and snake_case field names."""
    out: set[str] = set()
    for f in dataclasses.fields(cls):
        head, *rest = f.name.split("_")
        out.add(f.name)
        out.add(head + "".join(p[:1].upper() + p[1:] for p in rest))
    return frozenset(out)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _opt(obj: dict[str, Any], key: str, where: str, kind: type[T], what: str) -> T | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise WireError(f"expected {what}, got {type(value).__name__}", _join(where, key))
    return value


def opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    return _opt(obj, key, where, str, "a string")


def opt_number(obj: dict[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"expected a number, got {type(value).__name__}", _join(where, key))
    return value


def opt_count(obj: dict[str, Any], key: str, where: str) -> int | None:
    """A non-negative integer (token counts, indexes); ``12.0`` is read as 12."""
    value = opt_number(obj, key, where)
    if value is None:
        return None
    if isinstance(value, float):
        if not value.is_integer():
            raise WireError("expected an integer", _join(where, key))
        value = int(value)
    if not 0 <= value <= 2**31 - 1:
        raise WireError(f"must be between 0 and {2**31 - 1}", _join(where, key))
    return int(value)


def opt_time(obj: dict[str, Any], key: str, where: str) -> int | None:
    """Epoch milliseconds."""
    value = opt_number(obj, key, where)
    if value is None:
        return None
    if not 0 <= value <= MAX_TIME_MS:
        raise WireError(f"must be epoch milliseconds between 0 and {MAX_TIME_MS}", _join(where, key))
    return int(value)


def opt_dict(obj: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    return _opt(obj, key, where, dict, "an object")


def opt_list(obj: dict[str, Any], key: str, where: str) -> list[Any] | None:
    return _opt(obj, key, where, list, "an array")


def opt_bool(obj: dict[str, Any], key: str, where: str) -> bool | None:
    return _opt(obj, key, where, bool, "true or false")


def content_digest(obj: Any) -> str:
    """A hex sha256 of the object's content (keys sorted, so formatting and key order do not
    matter): the identity of a row that carries no id of its own."""
    try:
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers beyond 64 bits: the stdlib encoder is slower but total
        import json

        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


def common_items(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The items every dict of ``dicts`` has with the same value."""
    if not dicts:
        return {}
    common = dict(dicts[0])
    for d in dicts[1:]:
        common = {k: v for k, v in common.items() if k in d and d[k] == v}
        if not common:
            break
    return common
