"""trajforge: capture what your agent did, curate it into private datasets, make the agent better.

The public API::

    import trajforge
    rec = trajforge.Recorder()                 # SQLite in $TRAJFORGE_HOME, or a URL
    with rec.trajectory(agent_id="a1") as t, t.step() as s:
        s.llm_call(model="m", user_prompt="…", response="…")
    rec.close()
"""

from __future__ import annotations

# autotrain for what importing it does: it registers its runner hook (trajforge.jobs.hooks), so every
# job runner, whoever starts it, runs auto-training, while jobs never import autotrain.
from trajforge import autotrain, prompts  # noqa: F401
from trajforge.capture.openai import instrument_openai
from trajforge.capture.recorder import Recorder, current_step, current_trajectory
from trajforge.models import active_model
from trajforge.records import (
    ActionResult,
    LlmCall,
    ProviderAccess,
    Score,
    Step,
    Trajectory,
)
from trajforge.rewards import reward_function
from trajforge.store import TrajectoryFilter, open_store
from trajforge.validation import ValidationResult, validate_trajectory

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
