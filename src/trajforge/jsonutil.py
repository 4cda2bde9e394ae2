"""Fast JSON in one place: orjson, with a fallback for values it cannot encode natively.

User data (metadata, provider payloads, tool results) can hold anything: sets, custom objects,
non-string keys. The capture path must never raise because of it, so unknown values become their
``str()`` rather than an error.
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    to_dict = getattr(value, "model_dump", None) or getattr(value, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict()
        except Exception:  # noqa: BLE001 - a broken user object must not break capture
            pass
    return str(value)


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=_OPTS)
    except TypeError:
        # orjson rejects e.g. integers beyond 64 bits and strings with lone surrogates.
        import json

        return json.dumps(value, default=str, ensure_ascii=True).encode()


def dumps(value: Any) -> str:
    return dumps_bytes(value).decode()


def loads(data: str | bytes) -> Any:
    return orjson.loads(data)
