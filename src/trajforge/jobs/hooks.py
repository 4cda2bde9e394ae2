"""Work a job runner does besides running jobs: hooks it calls as it starts, then every few seconds.

Auto-training (:mod:`trajforge.autotrain`) is one: it registers itself here when imported, and
every runner calls it without knowing it. Auto-training starts jobs, so it depends on jobs; jobs
never import it back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trajforge.store.base import Store


@dataclass(frozen=True, slots=True)
class RunnerHook:
    name: str
    run: Callable[[Store, Path | None, bool], object]
    """``run(store, home, starting)``; ``starting`` is True for the call as the runner starts. A
    runner logs what it raises and goes on running jobs."""
    every_s: float = 10.0
    """How often a runner calls it after the start, at least this far apart."""


HOOKS: dict[str, RunnerHook] = {}

BUILTIN = ("trajforge.autotrain", "trajforge.train.vast")
"""trajforge's own modules that register hooks, loaded as a runner starts. Named, not imported:
they import jobs (auto-training starts jobs), so jobs importing them would be a cycle."""


def load_builtin() -> None:
    """Import the built-in hook modules (each registers its hooks as it is imported)."""
    for name in BUILTIN:
        importlib.import_module(name)


def register(hook: RunnerHook) -> None:
    """Have every runner call ``hook`` (one per name: registering a name again replaces it, so
    reloading a module does not double its work)."""
    HOOKS[hook.name] = hook
