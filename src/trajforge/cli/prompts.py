"""`trajforge prompts`: optimized prompt artifacts per task."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from trajforge.cli.common import console, fail, print_json
from trajforge.errors import TrajforgeError

app = typer.Typer(help="Optimized prompt artifacts per task.", no_args_is_help=True)


@app.command("list")
def prompts_list() -> None:
    """Tasks with optimized prompts: versions, current version, score."""
    from trajforge.optimize import artifacts

    table = Table(title="optimized prompts")
    for col in ("task", "current", "score", "versions"):
        table.add_column(col, overflow="fold")
    for t in artifacts.tasks():
        score = "" if t["score"] is None else f"{t['score']:.3f}"
        table.add_row(t["task"], str(t["current"] or ""), score, ", ".join(map(str, t["versions"])))
    console.print(table)


@app.command("show")
def prompts_show(
    task: Annotated[str, typer.Argument(help="Task name")],
    version: Annotated[
        int | None, typer.Option("--version", help="A version (default: the current one)")
    ] = None,
) -> None:
    """Print a task's prompt artifact as JSON."""
    from trajforge.errors import NotFound
    from trajforge.optimize import artifacts

    try:
        art = artifacts.load(task, version) if version is not None else artifacts.current(task)
        if art is None:
            raise NotFound(f"task {task!r} has no current prompt", "task")
    except TrajforgeError as exc:
        fail(exc)
        return
    print_json(art.to_wire())


@app.command("rollback")
def prompts_rollback(task: Annotated[str, typer.Argument(help="Task name")]) -> None:
    """Make the previous promoted version of a task's prompt current again."""
    from trajforge.optimize import artifacts

    try:
        art = artifacts.rollback(task)
    except TrajforgeError as exc:
        fail(exc)
        return
    console.print(f"{task}: current is v{art.version} again")
