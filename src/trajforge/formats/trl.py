"""Hugging Face TRL rows from examples, each format a converter and a check (TRL's own style).

=====================  ======================================================================
``sft``                ``{"messages": [...], "tools"?}`` conversational language modeling
``prompt_completion``  ``{"prompt": [...], "completion": [assistant], "tools"?}``
``preference``         ``{"prompt", "chosen", "rejected"}``: two completions of one prompt
``grpo``               ``{"prompt", "group", "reward", "task"}`` prompt-only rows (the extra
                       columns reach the reward functions)
=====================  ======================================================================

Messages are TRL's: content as text, tool call arguments as JSON objects, no ids. Each check
returns why a row is not valid, or None.
"""

from __future__ import annotations

from typing import Any

from trajforge.formats.examples import Example, is_messages


def _with_tools(row: dict[str, Any], ex: Example) -> dict[str, Any]:
    if ex.tools:
        row["tools"] = ex.tools
    return row


def to_sft(ex: Example) -> dict[str, Any]:
    return _with_tools({"messages": [*ex.prompt, ex.completion]}, ex)


def to_prompt_completion(ex: Example) -> dict[str, Any]:
    return _with_tools({"prompt": ex.prompt, "completion": [ex.completion]}, ex)


def to_grpo(ex: Example) -> dict[str, Any]:
    return {"prompt": ex.prompt, "group": ex.group, "reward": ex.reward, "task": ex.task}


def to_preference(chosen: Example, rejected: Example) -> dict[str, Any]:
    return _with_tools(
        {"prompt": chosen.prompt, "chosen": [chosen.completion], "rejected": [rejected.completion]}, chosen
    )


def check_sft(row: dict[str, Any]) -> str | None:
    return None if is_messages(row.get("messages"), last_assistant=True) else "not a valid sft row"


def check_prompt_completion(row: dict[str, Any]) -> str | None:
    ok = is_messages(row.get("prompt")) and is_messages(row.get("completion"), last_assistant=True)
    return None if ok else "not a valid prompt_completion row"


def check_preference(row: dict[str, Any]) -> str | None:
    ok = (
        is_messages(row.get("prompt"))
        and is_messages(row.get("chosen"), last_assistant=True)
        and is_messages(row.get("rejected"), last_assistant=True)
        and row["chosen"] != row["rejected"]
    )
    return None if ok else "not a valid preference row"


def check_grpo(row: dict[str, Any]) -> str | None:
    ok = is_messages(row.get("prompt")) and isinstance(row.get("reward"), int | float)
    return None if ok else "not a valid grpo row"
