"""A build's rows: which converter and check of ``trajforge.formats`` each dataset format uses, and
an example as its JSONL line with the key it is deduplicated by."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson

from trajforge.formats import art, openai, rewarded, trl
from trajforge.formats.examples import Example

CHECKS: dict[str, Callable[[Any], str | None]] = {
    "sft": trl.check_sft,
    "prompt_completion": trl.check_prompt_completion,
    "preference": trl.check_preference,
    "grpo": trl.check_grpo,
    "openai": openai.check_sft,
    "openai_dpo": openai.check_dpo,
    "art": art.check_row,
    "rewarded": rewarded.check_row,
}
CONVERTERS: dict[str, Callable[[Example], dict[str, Any]]] = {
    "sft": trl.to_sft,
    "prompt_completion": trl.to_prompt_completion,
    "grpo": trl.to_grpo,
    "openai": openai.to_sft,
    "rewarded": rewarded.to_row,
}
"""The formats of one row per example (the others pair examples or group trajectories)."""
PAIR_CONVERTERS: dict[str, Callable[[Example, Example], dict[str, Any]]] = {
    "preference": trl.to_preference,
    "openai_dpo": openai.to_dpo,
}
DUMP = orjson.OPT_APPEND_NEWLINE

CHECK_EVERY = 16
"""Rows are checked against their format's check function the way TRL detects formats: not every
one (the converters are the same code for every row; the test suite checks every row of every
format), but the first of each page and one in 16 after it."""


def check_row(fmt: str, row: dict[str, Any]) -> str | None:
    """Why ``row`` is not a valid ``fmt`` row, or None. Run on every row a build writes."""
    check = CHECKS.get(fmt)
    return f"unknown format {fmt!r}" if check is None else check(row)


def checked(fmt: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row``, once it passed its check: a failure is a converter bug, not bad input."""
    problem = check_row(fmt, row)
    if problem:
        raise AssertionError(f"{problem}: {row}")
    return row


def line(fmt: str, ex: Example, check: bool = True) -> tuple[str, str, bytes, bytes]:
    """(task, group, JSONL line, dedup key) of one example."""
    row = CONVERTERS[fmt](ex)
    if check:
        checked(fmt, row)
    out = orjson.dumps(row, option=DUMP)
    # Equal rows are equal bytes: orjson keeps key order, and the converters build every row the
    # same way. OpenAI rows with recorded tool-call ids carry what a provider made up, which
    # differs between equal conversations: those are keyed by their content without the ids (the
    # sft row's bytes). Rows without recorded ids have ids made from their content: their bytes do.
    keyed = orjson.dumps(trl.to_sft(ex)) if fmt == "openai" and ex.ids is not None else out
    return ex.task, ex.group, out, hashlib.blake2b(keyed, digest_size=16).digest()


def dedup_key(ex: Example) -> bytes:
    """What pair formats deduplicate examples by: their task, prompt and completion."""
    return hashlib.blake2b(orjson.dumps([ex.task, ex.prompt, ex.completion]), digest_size=16).digest()
