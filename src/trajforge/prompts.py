"""What the agent calls to use optimized prompts: ``trajforge.prompts.get(task, default)``.

It returns the task's current optimized prompt (and its demonstrations) or ``default``, and notices
a newly promoted version without a restart: the ``current`` pointer is checked at most once a
second, so a hot path pays a dict lookup. ``TRAJFORGE_PROMPTS_DISABLE=task1,task2`` turns
substitution off for those tasks (``*`` for all). Reading never raises into the agent: a missing or
unreadable artifact means ``default``.

Example::

    p = trajforge.prompts.get("support_reply", default=SYSTEM_PROMPT)
    messages = p.messages([{"role": "user", "content": customer_message}])
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajforge import settings
from trajforge.optimize import artifacts

log = logging.getLogger(__name__)
CHECK_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Prompt:
    """A system prompt with optional demonstrations; ``str(p)`` is the prompt text."""

    text: str
    demos: tuple[dict[str, Any], ...] = ()
    task: str | None = None
    version: int | None = None
    """The artifact version, or None when this is the caller's default."""
    score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text

    def messages(self, conversation: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The chat to send: this system prompt, the demonstrations as earlier turns, then
        ``conversation`` (its own system messages are replaced by this prompt)."""
        out: list[dict[str, Any]] = [{"role": "system", "content": self.text}]
        for demo in self.demos:
            out.extend(m for m in demo.get("input", []) if m.get("role") != "system")
            out.append({"role": "assistant", "content": demo.get("output", "")})
        out.extend(m for m in conversation if m.get("role") != "system")
        return out


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple[str, str], tuple[float, int | None, Prompt | None]] = {}


_cache = _Cache()


def _disabled(task: str) -> bool:
    raw = os.environ.get(settings.PROMPTS_DISABLE, "")
    names = {t.strip() for t in raw.split(",") if t.strip()}
    return "*" in names or task in names


def get(task: str, default: str = "", *, home: Path | None = None) -> Prompt:
    """The current optimized prompt for ``task``, or ``default`` (see the module docs)."""
    if _disabled(task):
        return Prompt(default, task=task)
    # The raw setting, not settings.home(): that creates the directory, a syscall per call.
    key = (str(home) if home is not None else os.environ.get(settings.HOME, "~"), task)
    now = time.monotonic()
    with _cache.lock:
        hit = _cache.entries.get(key)
    if hit is not None and now - hit[0] < CHECK_EVERY_S:
        return hit[2] or Prompt(default, task=task)
    try:
        version = artifacts.current_version(task, home)
        prompt = hit[2] if hit is not None and hit[1] == version else None
        if version is not None and prompt is None:
            art = artifacts.load(task, version, home)
            prompt = Prompt(art.prompt, tuple(art.few_shot_examples), task, version, art.score)
    except Exception:
        log.warning("could not read the optimized prompt for %r; using the default", task, exc_info=True)
        version, prompt = None, None
    with _cache.lock:
        _cache.entries[key] = (now, version, prompt)
    return prompt or Prompt(default, task=task)
