"""`trajforge score` (reward functions) and `trajforge judge` (an LLM judge)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from trajforge import settings
from trajforge.cli.common import DbOption, console, err, progress_bar, store_at
from trajforge.cli.options import request_options
from trajforge.store.filter import TrajectoryFilter

Limit = Annotated[int | None, typer.Option("--limit", min=1, help="At most this many trajectories")]


@request_options(TrajectoryFilter, "flt")
def score(
    flt: TrajectoryFilter,
    fn: Annotated[
        str,
        typer.Option(
            "--fn",
            help="A registered reward function (action_reward_sum, action_success_rate), outcome:<score name>, "
            "or module:function",
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Score name (default: the function's name)")
    ] = None,
    db: DbOption = None,
    limit: Limit = None,
) -> None:
    """Apply a reward function to matching trajectories and store one score each."""
    from trajforge import rewards

    sys.path.insert(0, str(Path.cwd()))  # module:function names a module of the user's project
    with store_at(db) as store, progress_bar() as progress:
        task = progress.add_task("score", total=store.count(flt) if limit is None else limit)
        run = rewards.score_trajectories(
            store, fn, flt, name=name, limit=limit, on_progress=lambda n: progress.update(task, completed=n)
        )
    console.print(f"{run.name}: scored {run.scored}, no opinion {run.skipped}, errors {run.errors}")
    for sample in run.error_samples:
        err.print(f"  {sample['trajectoryId']}: {sample['error']}")


@request_options(TrajectoryFilter, "flt")
def judge(
    flt: TrajectoryFilter,
    model: Annotated[
        str | None, typer.Option("--model", help=f"Judge model (default ${settings.LM_MODEL})")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help=f"OpenAI-compatible endpoint (default ${settings.LM_BASE_URL})"),
    ] = None,
    rubric: Annotated[str | None, typer.Option("--rubric", help="What a good trajectory does")] = None,
    name: Annotated[str, typer.Option("--name", help="Score name")] = "ruler",
    db: DbOption = None,
    limit: Limit = None,
) -> None:
    """Score trajectories with an LLM judge, scenario by scenario (RULER-style, scores in [0, 1])."""
    from trajforge import lm, rewards

    with store_at(db) as store, progress_bar() as progress:
        judge_lm = lm.from_settings(model, base_url)
        task = progress.add_task("judge", total=store.count(flt) if limit is None else limit)
        run = rewards.judge(
            store,
            judge_lm,
            flt,
            rubric=rubric or rewards.DEFAULT_RUBRIC,
            name=name,
            limit=limit,
            on_progress=lambda n: progress.update(task, completed=n),
        )
    console.print(
        f"{run.name}: {run.scored} trajectories scored in {run.groups} groups, {len(run.errors)} failed"
    )
    for e in run.errors[:10]:
        err.print(f"  {e['trajectoryId']}: {e['error']}")
