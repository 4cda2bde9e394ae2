"""Reading untrusted span attributes: typed takes that never raise, and the GenAI message shapes
turned into the OpenAI chat shape the SDK capture records (``capture/openai.py``), so a call that
arrived as OTel spans looks exactly like one captured from the ``openai`` client.

A :class:`Bag` wraps one span's attributes. Every ``take_*`` marks the key consumed only when its
value converted; a value of the wrong type, out of range or bad JSON stays unconsumed and so ends
in the record's metadata under its original key (nothing sent is dropped, nothing raises).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterator
from typing import Any

import orjson

from trajforge.limits import MAX_ABS_REAL, MAX_INT, MAX_NAME_CHARS, MAX_TEXT_CHARS, MIN_INT

MAX_INDEX = 100_000
"""Highest ``.N.`` index read from flattened attributes (``gen_ai.prompt.N.*``): a larger one is
not a message list but noise, and stays in metadata."""


def parse_json(value: Any) -> Any:
    """A JSON string's value; anything else (structured values, bad JSON) as given."""
    if isinstance(value, str | bytes) and len(value) <= MAX_TEXT_CHARS:
        text = value.strip()
        if text[:1] in ("[", "{", b"[", b"{"):
            try:
                # orjson: several times json's speed on the long message lists spans carry (it
                # refuses NaN/Infinity and nesting over 1,024: such a value is kept as given).
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                return value
    return value


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and len(value) < 20:
        try:
            value = int(value)
        except ValueError:  # not a number, or digits int() does not read ("²")
            return None
    return value if isinstance(value, int) and MIN_INT <= value <= MAX_INT else None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value) if len(value) < 64 else None
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and abs(value) <= MAX_ABS_REAL:
        return float(value)
    return None


def as_text(value: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit else None


def as_name(value: Any) -> str | None:
    """A short identifier (model, tool, agent name): a non-empty string within the name limit."""
    text = as_text(value, MAX_NAME_CHARS)
    return text or None


def to_json_text(value: Any) -> str:
    """Tool arguments/results as the JSON text OpenAI messages carry (strings pass unchanged)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return str(value)


class Bag:
    """One span's attributes, with the keys the mapping consumed.

    A view with a ``prefix`` reads ``prefix + key`` from the same attributes, so flattened lists
    (``llm.input_messages.0.message.role``) are read like nested records.
    """

    def __init__(
        self,
        attrs: dict[str, Any],
        prefix: str = "",
        used: set[str] | None = None,
        keys: list[str] | None = None,
    ) -> None:
        self.attrs = attrs
        self.prefix = prefix
        self.used: set[str] = set() if used is None else used
        # The keys in order, shared by all views: a prefix's keys are one contiguous run, found by
        # bisection, so reading a long flattened conversation stays linear in its size.
        self._keys = keys if keys is not None else []
        self._sorted = keys is not None

    def _sort(self) -> None:
        if not self._sorted:
            self._keys[:] = sorted(k for k in self.attrs if isinstance(k, str))
            self._sorted = True

    def _run(self, full: str) -> Iterator[str]:
        """The keys that start with ``full``, in order."""
        self._sort()
        i = bisect.bisect_left(self._keys, full)
        while i < len(self._keys) and self._keys[i].startswith(full):
            yield self._keys[i]
            i += 1

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.attrs

    def get(self, key: str) -> Any:
        return self.attrs.get(self.prefix + key)

    def use(self, key: str) -> None:
        if self.prefix + key in self.attrs:
            self.used.add(self.prefix + key)

    def _take(self, key: str, value: Any) -> Any:
        if value is not None:
            self.used.add(self.prefix + key)
        return value

    def take(self, key: str) -> Any:
        """The raw value (any type), consumed."""
        return self._take(key, self.get(key))

    def take_json(self, key: str, want: type | tuple[type, ...] | None = None) -> Any:
        """A JSON string parsed (or a structured value as is); bad JSON, or a value not of type
        ``want``, is not consumed."""
        raw = self.get(key)
        value = parse_json(raw)
        if isinstance(raw, str) and value is raw and raw.strip()[:1] in ("[", "{"):
            return None
        if want is not None and not isinstance(value, want):
            return None
        return self._take(key, value)

    def take_int(self, key: str) -> int | None:
        return self._take(key, as_int(self.get(key)))

    def take_float(self, key: str) -> float | None:
        return self._take(key, as_float(self.get(key)))

    def take_text(self, key: str) -> str | None:
        return self._take(key, as_text(self.get(key)))

    def take_name(self, key: str) -> str | None:
        return self._take(key, as_name(self.get(key)))

    def first(self, kind: str, *keys: str) -> Any:
        """The first of ``keys`` whose value converts with ``take_<kind>``."""
        take = getattr(self, f"take_{kind}")
        for key in keys:
            value = take(key)
            if value is not None:
                return value
        return None

    def view(self, prefix: str) -> Bag:
        self._sort()  # once, before the views share the keys
        return Bag(self.attrs, self.prefix + prefix, self.used, self._keys)

    def indexed(self, prefix: str) -> list[Bag]:
        """The views ``prefix.0.``, ``prefix.1.``, … present in the attributes, in index order."""
        full = self.prefix + prefix + "."
        seen: set[int] = set()
        for key in self._run(full):
            index, dot, _ = key[len(full) :].partition(".")
            if dot and index.isdigit() and len(index) <= 6 and int(index) <= MAX_INDEX:
                seen.add(int(index))
        return [self.view(f"{prefix}.{i}.") for i in sorted(seen)]

    def has_prefix(self, prefix: str) -> bool:
        return next(self._run(self.prefix + prefix), None) is not None

    def rest(self) -> dict[str, Any]:
        """Every attribute not consumed, by its original key."""
        return {k: v for k, v in self.attrs.items() if k not in self.used}


# --- GenAI semconv messages → OpenAI chat messages -----------------------------------------------

FINISH_REASONS = {"tool_call": "tool_calls", "tool_calls": "tool_calls", "function_call": "function_call"}
"""Semconv finish reasons that differ from OpenAI's (``tool_call`` → ``tool_calls``)."""


def finish_reason(value: Any) -> str | None:
    if isinstance(value, list | tuple):
        value = next((v for v in value if isinstance(v, str)), None)
    name = as_name(value)
    return FINISH_REASONS.get(name, name) if name else None


def tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """One tool call in OpenAI's function shape (arguments as JSON text, as the API returns)."""
    out: dict[str, Any] = {
        "id": call_id if isinstance(call_id, str) else None,
        "type": "function",
        "function": {"name": name if isinstance(name, str) else "", "arguments": ""},
    }
    if arguments is not None:
        out["function"]["arguments"] = to_json_text(arguments)
    if out["id"] is None:
        del out["id"]
    return out


def _media_part(part: dict[str, Any]) -> dict[str, Any]:
    """A semconv ``uri``/``blob``/``file`` part as an OpenAI content part (image URL when it is one);
    any other part is kept as sent."""
    kind = part.get("type")
    modality = part.get("modality")
    if kind == "uri" and isinstance(part.get("uri"), str) and modality in (None, "image"):
        return {"type": "image_url", "image_url": {"url": part["uri"]}}
    if kind == "blob" and isinstance(part.get("content"), str) and modality in (None, "image"):
        mime = part.get("mime_type") if isinstance(part.get("mime_type"), str) else "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{part['content']}"}}
    return part


def _text_of(part: dict[str, Any]) -> str | None:
    value = part.get("content", part.get("text"))
    return value if isinstance(value, str) else None


def semconv_message(message: Any) -> tuple[list[dict[str, Any]], str | None]:
    """One ``gen_ai.input.messages``/``output.messages`` entry as OpenAI chat messages (a tool
    message per ``tool_call_response`` part), and the text of its ``reasoning`` parts."""
    if not isinstance(message, dict):
        return [], None
    role = message.get("role") if isinstance(message.get("role"), str) else "user"
    parts = message.get("parts")
    if parts is None and "content" in message:  # a message already in chat shape
        return [{k: v for k, v in message.items() if v is not None or k == "content"}], None
    if not isinstance(parts, list):
        parts = [] if parts is None else [{"type": "text", "content": parts}]
    texts: list[str] = []
    content: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    reasoning: list[str] = []
    results: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, str):
            part = {"type": "text", "content": part}
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" or (kind is None and _text_of(part) is not None):
            text = _text_of(part) or ""
            texts.append(text)
            content.append({"type": "text", "text": text})
        elif kind == "tool_call":
            calls.append(tool_call(part.get("id"), part.get("name"), part.get("arguments")))
        elif kind == "tool_call_response":
            result: dict[str, Any] = {"role": "tool", "content": to_json_text(part.get("response"))}
            if isinstance(part.get("id"), str):
                result["tool_call_id"] = part["id"]
            results.append(result)
        elif kind in ("reasoning", "thinking"):
            if _text_of(part) is not None:
                reasoning.append(_text_of(part) or "")
        else:
            content.append(_media_part(part))
    out: list[dict[str, Any]] = []
    if texts or content or calls or not results:
        # text only: a plain string, as OpenAI clients send it; else the content parts
        body: Any = ("".join(texts) if texts else None) if len(content) == len(texts) else content
        if body == "" and calls:  # an empty text part beside tool calls: OpenAI says null
            body = None
        msg: dict[str, Any] = {"role": role, "content": body}
        if calls:
            msg["tool_calls"] = calls
        if isinstance(message.get("name"), str):
            msg["name"] = message["name"]
        out.append(msg)
    out.extend(results)
    return out, "\n".join(reasoning) if reasoning else None


def semconv_messages(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list):
        return None
    out: list[dict[str, Any]] = []
    for message in value:
        out.extend(semconv_message(message)[0])
    return out


def instructions_text(value: Any) -> str | None:
    """``gen_ai.system_instructions``: a list of parts (or a plain string) as one system prompt."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        texts = [
            t
            for p in value
            if (t := (p if isinstance(p, str) else _text_of(p) if isinstance(p, dict) else None))
        ]
        return "\n".join(texts) if texts else None
    return None


def semconv_tool(tool: Any) -> Any:
    """A ``gen_ai.tool.definitions`` entry in OpenAI's ``{"type": "function", "function": …}``
    shape (the semconv flattens name/description/parameters onto the tool)."""
    if not isinstance(tool, dict) or "function" in tool or "name" not in tool:
        return tool
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    extra = {k: v for k, v in tool.items() if k not in function and k != "type"}
    return {"type": tool.get("type") or "function", "function": function, **extra}
