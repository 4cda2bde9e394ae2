"""OpenPipe ART rows: what ART's own models (``art.Trajectory``, ``art.TrajectoryGroup``, in ART's
``trajectories.py``) accept, as converters for the free-form parts and as checks.

ART's rules, from its source (openpipe-art 0.5):

- ``Trajectory`` fields: ``messages_and_choices``, ``tools`` (Chat Completions tool params,
  validated), ``additional_histories``, ``reward`` (float), ``initial_policy_version``,
  ``final_policy_version``, ``metrics`` (``dict[str, float | int | bool]``), ``metadata``
  (``dict[str, float | int | str | bool | None]``: scalars only), ``logs`` (``list[str]``).
  Unknown keys are dropped without a word, so a row has none: what it carries arrives.
- ``TrajectoryGroup(trajectories, *, exceptions, metadata, metrics, logs)``: its ``__new__`` takes
  those keywords only (an unknown one is a TypeError, also from ``model_validate``), and it keeps
  only ``Trajectory`` objects, so a row loads as
  ``TrajectoryGroup(**{**row, "trajectories": [Trajectory(**t) for t in row["trajectories"]]})``.
  ``exceptions`` takes exception objects, so rows never carry it.
- Messages are not validated by the model, but ART's tokenizer reads them as Chat Completions
  messages (tool call arguments as JSON strings, each call with an id, the ``system`` role):
  :func:`messages` renders a trajectory's examples so, for dataset builds and the ``art`` export
  alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from trajforge.formats.examples import Example
from trajforge.formats.openai import Conversation, IdEntry, check_messages, check_tools

TRAJECTORY_KEYS = frozenset(
    (
        "messages_and_choices",
        "tools",
        "additional_histories",
        "reward",
        "initial_policy_version",
        "final_policy_version",
        "metrics",
        "metadata",
        "logs",
    )
)
GROUP_KEYS = frozenset(("trajectories", "metadata", "metrics", "logs"))


def _number(v: Any) -> bool:
    return isinstance(v, int | float)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float)


def metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as ART metadata: scalars as they are, anything nested as its JSON text (ART's
    metadata holds scalars only; the text keeps every value and still reads back with json)."""
    return {
        k: v if _scalar(v) else orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
        for k, v in values.items()
    }


def metrics(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as ART metrics: numbers and booleans; a missing (None) value is left out."""
    return {k: v for k, v in values.items() if _number(v)}


def _check_dict(d: Any, where: str, ok: Any, what: str) -> str | None:
    if not isinstance(d, dict):
        return f"{where} is not an object"
    bad = sorted(str(k) for k, v in d.items() if not isinstance(k, str) or not ok(v))
    return f"{where} values must be {what}: {bad[:5]}" if bad else None


def check_trajectory(t: Any, where: str = "trajectory") -> str | None:
    """Why ``art.Trajectory(**t)`` would fail or drop part of ``t``, or None."""
    if not isinstance(t, dict):
        return f"{where} is not an object"
    if set(t) - TRAJECTORY_KEYS:
        return f"{where} has keys ART's Trajectory drops: {sorted(set(t) - TRAJECTORY_KEYS)}"
    messages = t.get("messages_and_choices", [])
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        return f"{where}.messages_and_choices is not a list of messages"
    if "reward" in t and (not _number(t["reward"]) or isinstance(t["reward"], bool)):
        return f"{where}.reward is not a number"
    for key in ("initial_policy_version", "final_policy_version"):
        if t.get(key) is not None and (not isinstance(t[key], int) or isinstance(t[key], bool)):
            return f"{where}.{key} is not an integer"
    if "logs" in t and (not isinstance(t["logs"], list) or not all(isinstance(x, str) for x in t["logs"])):
        return f"{where}.logs is not a list of strings"
    return (
        _check_dict(t.get("metrics", {}), f"{where}.metrics", _number, "numbers or booleans")
        or _check_dict(t.get("metadata", {}), f"{where}.metadata", _scalar, "scalars")
        or (check_tools(t["tools"], f"{where}.tools") if t.get("tools") is not None else None)
        or (
            None
            if isinstance(t.get("additional_histories", []), list)
            else f"{where}.additional_histories is not a list"
        )
    )


def check_group(row: Any) -> str | None:
    """Why a group row would not load as an ``art.TrajectoryGroup`` (see the module's docstring),
    or None."""
    if not isinstance(row, dict):
        return "the row is not an object"
    if set(row) - GROUP_KEYS:
        return f"the row has keys TrajectoryGroup does not take: {sorted(set(row) - GROUP_KEYS)}"
    trajectories = row.get("trajectories")
    if not isinstance(trajectories, list) or not trajectories:
        return "trajectories is missing or empty"
    for i, t in enumerate(trajectories):
        problem = check_trajectory(t, f"trajectories[{i}]")
        if problem:
            return problem
    if "logs" in row and (
        not isinstance(row["logs"], list) or not all(isinstance(x, str) for x in row["logs"])
    ):
        return "logs is not a list of strings"
    return _check_dict(row.get("metrics", {}), "metrics", _number, "numbers or booleans") or _check_dict(
        row.get("metadata", {}), "metadata", _scalar, "scalars"
    )


# --- rows --------------------------------------------------------------------------------------


def _transcript(examples: Sequence[Example]) -> tuple[list[dict[str, Any]], list[IdEntry]]:
    """One trajectory's calls as one conversation: a call whose prompt continues the conversation
    so far adds only its new messages; the system message appears only when it changes. With the
    ids recorded for each message."""
    out: list[dict[str, Any]] = []
    out_ids: list[IdEntry] = []
    last_system: str | None = None
    for ex in examples:
        prompt = ex.prompt
        prompt_ids, completion_ids = ex.split_ids()
        if out and prompt[: len(out)] == out:
            out.extend(prompt[len(out) :])
            out_ids.extend(prompt_ids[len(out_ids) :])
        else:
            for m, i in zip(prompt, prompt_ids, strict=True):
                if m["role"] == "system":
                    if m["content"] == last_system:
                        continue
                    last_system = m["content"]
                out.append(m)
                out_ids.append(i)
        out.append(ex.completion)
        out_ids.append(completion_ids)
    return out, out_ids


def messages(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """One trajectory's examples (its calls, in order) as the Chat Completions messages ART's
    tokenizer reads: the conversation once, the system message only when it changes, tool call
    arguments as JSON strings and every tool message answering a call by its id."""
    out, ids = _transcript(examples)
    conv = Conversation(ids)
    return [conv.add(m, i) for m, i in zip(out, ids, strict=True)]


def to_group(task: str, scenario: str, trajectories: Sequence[Sequence[Example]]) -> dict[str, Any]:
    """An ART ``TrajectoryGroup``: the scenario's trajectories, each with its messages (in Chat
    Completions' shape, which ART's tokenizer reads) and reward. Only keys ART's models take:
    what identifies the group goes in its metadata."""
    group = []
    for examples in trajectories:
        first = examples[0]
        tools = next((ex.tools for ex in examples if ex.tools), None)
        found: dict[str, Any] = {"llm_calls": len(examples)}
        meta: dict[str, Any] = {
            "trajectory_id": first.trajectory_id,
            "agent_id": first.agent_id,
            "source": first.source,
            "scenario_id": first.scenario_id,
            "task": first.task,
        }
        if first.reward_from is not None:
            # RULER's convention: the judged (or otherwise named) score is the reward; the
            # trajectory's own reward stays as a metric (when it has one), the score's name goes
            # in metadata (ART's metrics are numbers).
            found["independent_reward"] = first.own_reward
            meta["reward_score"] = first.reward_from
        group.append(
            {
                "messages_and_choices": messages(examples),
                "tools": tools or [],
                "reward": first.reward if first.reward is not None else 0.0,
                "metrics": metrics(found),
                "metadata": meta,
                "logs": [],
            }
        )
    return {"trajectories": group, "metadata": {"scenario_id": scenario, "task": task}}


def check_row(row: Any) -> str | None:
    """Why a dataset's group row would not load in ART (:func:`check_group`) or its messages would
    not read as Chat Completions messages (:func:`check_chat`), or None."""
    problem = check_group(row)
    for i, t in enumerate(row["trajectories"] if problem is None else ()):
        problem = check_chat(t["messages_and_choices"], f"trajectories[{i}].messages_and_choices")
        if problem:
            break
    return problem


def check_chat(chat: Any, where: str = "messages") -> str | None:
    """Why ``chat`` would not read as the Chat Completions messages ART's tokenizer takes, or
    None. Every assistant turn is trained, and may be empty."""
    return check_messages(chat, where, allow_empty=True)
