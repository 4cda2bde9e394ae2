"""OpenAI chat messages and fine-tuning rows: the converter from normalized messages, and the checks.

Messages come in normalized, in TRL's shape (tool call arguments as JSON objects, no ids, as
``formats.examples.Example`` holds them), with the ids recorded for them alongside; they leave in the
shape of Chat Completions and of OpenAI's fine-tuning files: arguments as JSON strings, every tool
call with an ``id`` and every tool message with the ``tool_call_id`` of the call it answers.

The checks are those of OpenAI's cookbook ("Data preparation and analysis for chat model
fine-tuning": data type, messages list, missing and unrecognized keys, roles, content, an
assistant message), brought up to the tools API (``tool_calls``, ``tool_call_id``, ``tools``,
``weight`` 0/1 on assistant turns) and to DPO rows (``input``, ``preferred_output``,
``non_preferred_output``), plus one the cookbook does not make and the API does: every tool
message answers a tool call made earlier in the same row. Each returns why a row is not valid, or
None. Empty strings are not flagged as missing content (the cookbook counts them): recorded
conversations have them and the API accepts them; a trained turn must still say something.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from trajforge.formats.examples import Example

ROLES = ("system", "developer", "user", "assistant", "tool")
_MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "weight", "refusal", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
}
_SFT_KEYS = {"messages", "tools", "parallel_tool_calls"}
_DPO_KEYS = {"input", "preferred_output", "non_preferred_output"}
_DPO_INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}

IdEntry = list[str | None] | str | None
"""The ids recorded for one message: its tool calls' ids (a list, one per call), a tool message's
``tool_call_id`` (a string), or None."""


def function_tools(raw: Any) -> list[dict[str, Any]] | None:
    """Tools as Chat Completions function specs (the Responses API's flat shape is wrapped);
    anything that is not a named function is left out. None when nothing is left."""
    if not isinstance(raw, list):
        return None
    out = []
    for t in raw:
        if not isinstance(t, dict):
            continue
        fn: dict[str, Any] = t["function"] if isinstance(t.get("function"), dict) else t
        if isinstance(fn.get("name"), str) and fn["name"]:
            spec = {k: fn[k] for k in ("name", "description", "parameters") if k in fn}
            out.append({"type": "function", "function": spec})
    return out or None


def _arguments(args: Any) -> str:
    return orjson.dumps(args, option=orjson.OPT_SORT_KEYS).decode()


class Conversation:
    """Converts the messages of one row in order, keeping tool-call ids consistent.

    Recorded ids are kept. Where none was recorded one is made up (``call_1``, ``call_2``, …,
    never an id recorded anywhere in the row). A tool message whose recorded id answers no earlier
    call (or that has none) answers the call it follows: the first unanswered call of the same
    tool name, else the first unanswered call. A tool result that follows no call at all (a
    history cut short by the agent) stays as context in a user message: a ``tool`` message there
    is rejected by OpenAI."""

    __slots__ = ("_known", "_n", "_pending", "_recorded", "_taken")

    def __init__(self, *recorded: Sequence[IdEntry] | None) -> None:
        self._recorded = recorded
        self._taken: set[str] | None = None  # made when first needed: most rows have no tool calls
        self._n = 0
        self._known: set[str] = set()
        self._pending: list[tuple[str, str]] = []

    def _fresh(self) -> str:
        if self._taken is None:
            self._taken = {i for ids in self._recorded if ids for i in _flat(ids)}
        while True:
            self._n += 1
            cid = f"call_{self._n}"
            if cid not in self._taken:
                self._taken.add(cid)
                return cid

    def add(self, m: dict[str, Any], recorded: IdEntry = None, weight: int | None = None) -> dict[str, Any]:
        role = m["role"]
        out: dict[str, Any] = {"role": role, "content": m["content"]}
        calls = m.get("tool_calls")
        if calls:
            given = recorded if isinstance(recorded, list) else []
            out["content"] = m["content"] or None
            self._pending = []
            converted = []
            for i, tc in enumerate(calls):
                rid = given[i] if i < len(given) else None
                cid = rid if isinstance(rid, str) and rid else self._fresh()
                fn = tc["function"]
                self._known.add(cid)
                self._pending.append((cid, fn["name"]))
                converted.append(
                    {
                        "id": cid,
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": _arguments(fn["arguments"])},
                    }
                )
            out["tool_calls"] = converted
        elif role == "tool":
            answered = self._answer(recorded if isinstance(recorded, str) else None, m.get("name"))
            if answered is None:
                return {"role": "user", "content": m["content"]}
            out["tool_call_id"] = answered
        if weight is not None and role == "assistant":
            out["weight"] = weight
        return out

    def _answer(self, recorded: str | None, name: Any) -> str | None:
        pending = self._pending
        if recorded is not None and recorded in self._known:
            self._pending = [p for p in pending if p[0] != recorded]
            return recorded
        if not pending:
            return None
        pick = next((p for p in pending if p[1] == name), pending[0])
        pending.remove(pick)
        return pick[0]


def _flat(ids: Iterable[IdEntry]) -> Iterator[str]:
    for entry in ids:
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, list):
            yield from (i for i in entry if isinstance(i, str))


# --- rows --------------------------------------------------------------------------------------


def to_sft(ex: Example) -> dict[str, Any]:
    """OpenAI SFT: earlier assistant turns of the prompt are context (weight 0), the completion
    trains (weight 1); tool call arguments become JSON strings, recorded call ids are kept."""
    conv = Conversation(ex.ids)
    add = conv.add
    if ex.ids is None:
        messages = [add(m, None, 0) for m in ex.prompt]
        messages.append(add(ex.completion, None, 1))
    else:
        messages = [add(m, i, 0) for m, i in zip(ex.prompt, ex.ids, strict=False)]
        messages.append(add(ex.completion, ex.ids[-1], 1))
    row: dict[str, Any] = {"messages": messages}
    if ex.tools:
        row["tools"] = ex.tools
    return row


def to_dpo(chosen: Example, rejected: Example) -> dict[str, Any]:
    """OpenAI DPO: the shared prompt as ``input``, each completion as an output."""
    conv = Conversation(chosen.ids, rejected.ids)
    prompt_ids, chosen_ids = chosen.split_ids()
    return {
        "input": {
            "messages": [conv.add(m, i) for m, i in zip(chosen.prompt, prompt_ids, strict=True)],
            "tools": chosen.tools or [],
        },
        "preferred_output": [conv.add(chosen.completion, chosen_ids)],
        "non_preferred_output": [conv.add(rejected.completion, rejected.split_ids()[1])],
    }


# --- checks ------------------------------------------------------------------------------------


def check_tools(tools: Any, where: str = "tools") -> str | None:
    """Why ``tools`` is not a list of Chat Completions function tools, or None."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        return f"{where} is not a list"
    for i, t in enumerate(tools):
        at = f"{where}[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            return f"{at} is not a function tool"
        if set(t) - {"type", "function"}:
            return f"{at} has unrecognized keys {sorted(set(t) - {'type', 'function'})}"
        fn = t["function"]
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            return f"{at}.function.name is missing"
        if "description" in fn and not isinstance(fn["description"], str):
            return f"{at}.function.description is not a string"
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            return f"{at}.function.parameters is not an object"
    return None


def _check_call(tc: Any, at: str) -> str | None:
    if not isinstance(tc, dict) or set(tc) != {"id", "type", "function"}:
        return f"{at} must have exactly id, type and function"
    if not isinstance(tc["id"], str) or not tc["id"]:
        return f"{at}.id is missing"
    fn = tc["function"]
    if tc["type"] != "function" or not isinstance(fn, dict) or set(fn) != {"name", "arguments"}:
        return f"{at} is not a function call of a name and arguments"
    if not isinstance(fn["name"], str) or not fn["name"]:
        return f"{at}.function.name is missing"
    if not isinstance(fn["arguments"], str):
        return f"{at}.function.arguments is not a JSON string"
    try:
        args = orjson.loads(fn["arguments"])
    except orjson.JSONDecodeError:
        return f"{at}.function.arguments is not valid JSON"
    return None if isinstance(args, dict) else f"{at}.function.arguments is not a JSON object"


def check_messages(
    messages: Any,
    where: str = "messages",
    *,
    weights: bool = False,
    known: set[str] | None = None,
    allow_empty: bool = False,
) -> str | None:
    """Why ``messages`` is not a valid list of fine-tuning messages, or None. ``known`` holds the
    tool-call ids made before these messages (a DPO output continues its input); it is updated.
    ``allow_empty`` lets a trained assistant turn be empty (ART's rows: every turn is one)."""
    if not isinstance(messages, list) or not messages:
        return f"{where} is missing or empty"
    known = set() if known is None else known
    for i, m in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            return f"{at} is not an object"
        role = m.get("role")
        if role not in _MESSAGE_KEYS:
            return f"{at} has unrecognized role {role!r}"
        if "content" not in m:
            return f"{at} has no content key"
        # weight: only on assistant turns, and only in supervised rows.
        extra = set(m) - (_MESSAGE_KEYS[role] if weights else _MESSAGE_KEYS[role] - {"weight"})
        if extra:
            return f"{at} has unrecognized keys {sorted(extra)}"
        content, calls = m["content"], m.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list) or not calls:
                return f"{at}.tool_calls is not a non-empty list"
            for j, tc in enumerate(calls):
                problem = _check_call(tc, f"{at}.tool_calls[{j}]")
                if problem:
                    return problem
                known.add(tc["id"])
        if not (isinstance(content, str) or (content is None and calls)):
            return f"{at}.content is missing"
        if role == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str) or cid not in known:
                return f"{at}.tool_call_id {cid!r} answers no tool call made earlier in the row"
        if "weight" in m and (m["weight"] not in (0, 1) or isinstance(m["weight"], bool)):
            return f"{at}.weight must be 0 or 1"
        if role == "assistant" and m.get("weight", 1) == 1 and not (content or calls or allow_empty):
            return f"{at} is a trained assistant turn with nothing in it"
    return None


def check_sft(row: Any) -> str | None:
    """Why ``row`` is not a valid line of an OpenAI supervised fine-tuning file, or None."""
    if not isinstance(row, dict):
        return "the row is not an object"
    if set(row) - _SFT_KEYS:
        return f"the row has unrecognized keys {sorted(set(row) - _SFT_KEYS)}"
    messages = row.get("messages")
    problem = check_messages(messages, weights=True) or check_tools(row.get("tools"))
    if problem:
        return problem
    if row["messages"][-1]["role"] != "assistant":
        return "the last message is not the assistant's"
    return None


def check_dpo(row: Any) -> str | None:
    """Why ``row`` is not a valid line of an OpenAI DPO fine-tuning file, or None."""
    if not isinstance(row, dict):
        return "the row is not an object"
    if set(row) != _DPO_KEYS:
        return f"the row must have exactly {sorted(_DPO_KEYS)}"
    inp = row["input"]
    if not isinstance(inp, dict) or set(inp) - _DPO_INPUT_KEYS:
        return "input is not an object of messages, tools and parallel_tool_calls"
    known: set[str] = set()
    problem = check_messages(inp.get("messages"), "input.messages", known=known) or check_tools(
        inp.get("tools"), "input.tools"
    )
    if problem:
        return problem
    for key in ("preferred_output", "non_preferred_output"):
        out = row[key]
        problem = check_messages(out, key, known=set(known))
        if problem:
            return problem
        if any(m["role"] != "assistant" for m in out):
            return f"{key} holds a message that is not the assistant's"
    if row["preferred_output"] == row["non_preferred_output"]:
        return "preferred_output equals non_preferred_output"
    return None
