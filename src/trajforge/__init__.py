"""trajforge: capture what your agent did, curate it into private datasets, make the agent better.

The public API::

    import trajforge
    rec = trajforge.Recorder()                 # SQLite in $TRAJFORGE_HOME, or a URL
    with rec.trajectory(agent_id="a1") as t, t.step() as s:
        s.llm_call(model="m", user_prompt="…", response="…")
    rec.close()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trajforge.capture.recorder import Recorder, current_step, current_trajectory
from trajforge.records import (
    ActionResult,
    LlmCall,
    ProviderAccess,
    Score,
    Step,
    Trajectory,
)
from trajforge.validation import ValidationResult, validate_trajectory

if TYPE_CHECKING:
    from trajforge import prompts
    from trajforge.capture.openai import instrument_openai
    from trajforge.models import active_model
    from trajforge.rewards import reward_function
    from trajforge.store import TrajectoryFilter, open_store

__version__ = "0.1.0"

__all__ = [
    "ActionResult",
    "LlmCall",
    "ProviderAccess",
    "Recorder",
    "Score",
    "Step",
    "Trajectory",
    "TrajectoryFilter",
    "ValidationResult",
    "active_model",
    "current_step",
    "current_trajectory",
    "instrument_openai",
    "open_store",
    "prompts",
    "reward_function",
    "validate_trajectory",
]

# Imported on first use, so that an agent that only records pays for none of them at start: the
# store's read side and its filter (a pydantic model), the optimizers' artifact store behind
# prompts, the reward and model modules, the OpenAI instrumentation. The TYPE_CHECKING imports
# above give type checkers and editors the same names.
_LAZY = {
    "TrajectoryFilter": "trajforge.store",
    "active_model": "trajforge.models",
    "instrument_openai": "trajforge.capture.openai",
    "open_store": "trajforge.store",
    "prompts": "trajforge.prompts",
    "reward_function": "trajforge.rewards",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trajforge' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module == f"trajforge.{name}" else getattr(loaded, name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
