"""The ``rewarded`` format: one row per LLM call with its reward, for RL pipelines, as the Babylon
trajectory logger's ``exportToHuggingFace({minReward, timeRange, format: 'parquet'})`` writes it
(seed 003)::

    {"prompt": "<system>\\n\\n<user>", "response": "...", "reward": 0.8,
     "context": [{"provider": "market_data", "purpose": "...", "data": "<JSON text>"}],
     "metadata": {"trajectoryId": ..., "callId": ..., "agentId": ..., "timestamp": ..., ...}}

``prompt`` is the prompt's messages' text, system first, joined by a blank line (the seed's
"system + user prompts"); ``response`` the model's text, or its tool calls as JSON when it only
called tools. ``context`` is what the agent read in the call's step (its provider accesses,
privacy-filtered like everything else); each access's ``data`` is JSON *text*, so every row has
the same parquet schema whatever shape providers return. ``metadata`` always has the same keys.
"""

from __future__ import annotations

from typing import Any

import orjson

from trajforge.formats.examples import Example
from trajforge.records import iso_ms


def _text(message: dict[str, Any]) -> str:
    return str(message.get("content") or "")


def prompt_text(prompt: list[dict[str, Any]]) -> str:
    """The prompt as one string: system messages first, then the others, by a blank line."""
    system = [_text(m) for m in prompt if m["role"] == "system"]
    rest = [_text(m) for m in prompt if m["role"] != "system"]
    return "\n\n".join(t for t in (*system, *rest) if t)


def to_row(ex: Example) -> dict[str, Any]:
    response = _text(ex.completion)
    if not response and ex.completion.get("tool_calls"):
        response = orjson.dumps(ex.completion["tool_calls"]).decode()
    return {
        "prompt": prompt_text(ex.prompt),
        "response": response,
        "reward": ex.reward,
        "context": ex.context or [],
        "metadata": {
            "trajectoryId": ex.trajectory_id,
            "callId": ex.call_id,
            "stepId": ex.step_id,
            "agentId": ex.agent_id,
            "scenarioId": ex.scenario_id,
            "source": ex.source,
            "model": ex.model,
            "task": ex.task,
            "timestamp": iso_ms(ex.timestamp),
            "timestampMs": ex.timestamp,
            "rewardFrom": ex.reward_from,
        },
    }


def context_entry(provider_name: str, purpose: str, data: Any, timestamp: int) -> dict[str, Any]:
    """One provider access as ``context`` holds it."""
    return {
        "provider": provider_name,
        "purpose": purpose,
        "data": orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode(),
        "timestamp": timestamp,
    }


def check_row(row: dict[str, Any]) -> str | None:
    ok = (
        isinstance(row.get("prompt"), str)
        and bool(row["prompt"])
        and isinstance(row.get("response"), str)
        and isinstance(row.get("reward"), int | float)
        and not isinstance(row["reward"], bool)
        and isinstance(row.get("context"), list)
        and all(isinstance(c, dict) and isinstance(c.get("provider"), str) for c in row["context"])
        and isinstance(row.get("metadata"), dict)
    )
    return None if ok else "not a valid rewarded row"
