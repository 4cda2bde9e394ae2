"""Examples: one LLM call normalized for training, the common input of every row converter.

An :class:`Example` holds what the model saw (prompt messages in TRL's shape: content as text, tool
call arguments as JSON objects, no ids), what it answered (the completion) and the tools offered,
with the tool-call ids recorded beside the messages. :func:`example_from_row` makes one from a
flat call row (:class:`~trajforge.records.FlatCall`), :func:`example_from_call` from a record; the TRL, OpenAI and ART converters
(``formats.trl``, ``formats.openai``, ``formats.art``) turn examples into rows, for dataset builds
and for the ``art`` export alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from trajforge.formats.openai import IdEntry, function_tools
from trajforge.records import FlatCall, LlmCall, Trajectory, task_of

_ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass(slots=True)
class Example:
    """One LLM call ready for training: what the model saw, what it answered, how it went."""

    trajectory_id: str
    scenario_id: str | None
    agent_id: str
    source: str
    task: str
    reward: float | None
    prompt: list[dict[str, Any]]
    completion: dict[str, Any]
    tools: list[dict[str, Any]] | None
    call_id: str
    model: str
    own_reward: float | None = None
    """The trajectory's own total reward (kept when ``reward`` comes from a named score)."""
    reward_from: str | None = None
    """The score name ``reward`` comes from; None for the trajectory's own reward."""
    ids: list[IdEntry] | None = None
    """The tool-call ids recorded for ``[*prompt, completion]``, one entry per message (see
    ``formats.openai.IdEntry``); None when none were. They are kept beside the messages, not in
    them: TRL rows carry no ids, and equal conversations stay equal (dedup, pairing by prompt)
    whatever ids a provider made up for them."""
    timestamp: int = 0
    """When the call was made (epoch ms)."""
    step_id: str | None = None
    context: list[dict[str, Any]] | None = None
    """What the agent read in the call's step (its provider accesses, filtered): only the
    ``rewarded`` format carries it, and only its builds fill it in."""

    @property
    def group(self) -> str:
        """What train/eval are split by: the scenario, else the trajectory."""
        return self.scenario_id or self.trajectory_id

    def split_ids(self) -> tuple[list[IdEntry], IdEntry]:
        """The ids of the prompt's messages, and those of the completion."""
        if self.ids is None:
            return [None] * len(self.prompt), None
        return self.ids[:-1], self.ids[-1]


def _loads(text: Any) -> Any:
    if text is None or not isinstance(text, str | bytes):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _content(value: Any) -> str:
    """Message content as a string: text parts of a multi-part content joined, others as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = [
            p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        if texts and len(texts) == len(value):
            return "".join(texts)
    return orjson.dumps(value).decode()


def _tool_call(tc: Any) -> dict[str, Any] | None:
    """A tool call in TRL's form: ``{"type": "function", "function": {"name", "arguments": {…}}}``."""
    if not isinstance(tc, dict):
        return None
    fn: dict[str, Any] = tc["function"] if isinstance(tc.get("function"), dict) else tc
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = fn.get("arguments", fn.get("input", {}))
    if isinstance(args, str):
        parsed = _loads(args) if args.strip() else {}
        args = parsed if isinstance(parsed, dict) else {"_raw": args}
    elif not isinstance(args, dict):
        args = {"_value": args}
    return {"type": "function", "function": {"name": name, "arguments": args}}


def _tool_calls(raw: Any) -> tuple[list[dict[str, Any]], list[str | None]]:
    """The tool calls in TRL's form, and the id recorded for each (OpenAI's and Anthropic's
    shapes both carry an ``id``)."""
    calls: list[dict[str, Any]] = []
    ids: list[str | None] = []
    for tc in raw if isinstance(raw, list) else ():
        call = _tool_call(tc)
        if call is not None:
            calls.append(call)
            ids.append(tc["id"] if isinstance(tc.get("id"), str) and tc["id"] else None)
    return calls, ids


def _message(m: Any) -> tuple[dict[str, Any], IdEntry] | None:
    """The message normalized, and the ids recorded in it."""
    if not isinstance(m, dict):
        return None
    role = m.get("role")
    if role not in _ROLES:
        return None
    out: dict[str, Any] = {
        "role": "system" if role == "developer" else role,
        "content": _content(m.get("content")),
    }
    ids: IdEntry = None
    calls, call_ids = _tool_calls(m.get("tool_calls"))
    if calls:
        out["tool_calls"] = calls
        ids = call_ids if any(call_ids) else None
    if role == "tool":
        if isinstance(m.get("name"), str):
            out["name"] = m["name"]
        if isinstance(m.get("tool_call_id"), str) and m["tool_call_id"]:
            ids = m["tool_call_id"]
    return out, ids


def normalize_message(m: Any) -> dict[str, Any] | None:
    """A message in TRL's shape (content as text, tool call arguments as objects, no ids), or
    None when it is not a chat message: what rows imported from elsewhere are made of too."""
    got = _message(m)
    return None if got is None else got[0]


def example_from_row(row: FlatCall, reward: float | None) -> Example | None:
    """The example of one call row; None when the call has no completion to learn from (no
    response text and no tool call)."""
    return _example(
        row.trajectory_id,
        row.scenario_id,
        row.agent_id,
        row.source,
        row,
        _loads(row.messages),
        _loads(row.tool_calls),
        _loads(row.tools),
        reward,
    )


def example_from_call(t: Trajectory, call: LlmCall, reward: float | None) -> Example | None:
    """The same from a record call of trajectory ``t`` (its JSON-valued fields are values already:
    no round trip through JSON text)."""
    return _example(
        t.id, t.scenario_id, t.agent_id, t.source, call, call.messages, call.tool_calls, call.tools, reward
    )


def _example(
    trajectory_id: str,
    scenario_id: str | None,
    agent_id: str | None,
    source: str | None,
    call: FlatCall | LlmCall,
    raw_messages: Any,
    raw_tool_calls: Any,
    raw_tools: Any,
    reward: float | None,
) -> Example | None:
    tool_calls, call_ids = _tool_calls(raw_tool_calls)
    if not call.response and not tool_calls:
        return None
    prompt: list[dict[str, Any]] = []
    ids: list[IdEntry] | None = None
    if isinstance(raw_messages, list) and raw_messages:
        ids = []
        for m in raw_messages:
            got = _message(m)
            if got is not None:
                prompt.append(got[0])
                ids.append(got[1])
        if call.system_prompt is not None and not any(m["role"] == "system" for m in prompt):
            prompt.insert(0, {"role": "system", "content": call.system_prompt})
            ids.insert(0, None)
        if ids.count(None) == len(ids):
            ids = None
    else:
        if call.system_prompt is not None:
            prompt.append({"role": "system", "content": call.system_prompt})
        if call.user_prompt is not None:
            prompt.append({"role": "user", "content": call.user_prompt})
    if not any(m["role"] != "system" for m in prompt):
        return None
    completion: dict[str, Any] = {"role": "assistant", "content": call.response or ""}
    if tool_calls:
        completion["tool_calls"] = tool_calls
    completion_ids = call_ids if any(call_ids) else None
    if ids is not None or completion_ids is not None:
        ids = [*(ids or [None] * len(prompt)), completion_ids]
    return Example(
        trajectory_id=trajectory_id,
        scenario_id=scenario_id,
        agent_id=agent_id or "",
        source=source or "",
        task=task_of(call.action_type, call.purpose),
        reward=reward,
        prompt=prompt,
        completion=completion,
        tools=function_tools(raw_tools),
        call_id=call.call_id,
        model=call.model or "",
        ids=ids,
        timestamp=call.timestamp,
        step_id=call.step_id if isinstance(call, FlatCall) else None,
    )


def is_messages(value: Any, *, last_assistant: bool = False) -> bool:
    """Whether ``value`` is a non-empty list of normalized messages (ending with the assistant's
    when ``last_assistant``)."""
    if not isinstance(value, list) or not value:
        return False
    if not all(isinstance(m, dict) and m.get("role") in _ROLES for m in value):
        return False
    return not last_assistant or value[-1]["role"] == "assistant"
