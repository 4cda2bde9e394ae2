"""The ``trajforge`` command: one module per noun, as the server has one routes module per
resource. Every command opens the store, calls one library function and formats the result; request
options derive from the library's request declarations (:mod:`trajforge.cli.options`)."""

from __future__ import annotations

import typer

from trajforge.cli import (
    collect,
    config,
    datasets,
    jobs,
    models,
    prompts,
    proxy,
    scoring,
    server,
    trajectories,
    vast,
)

app = typer.Typer(
    help="trajforge: capture agent trajectories, curate datasets, improve the agent.", no_args_is_help=True
)
app.add_typer(trajectories.app, name="trajectories")
app.add_typer(config.app, name="config")
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(prompts.app, name="prompts")
app.add_typer(models.app, name="models")
app.add_typer(collect.app, name="collect")
app.add_typer(vast.app, name="vast")
for command in (scoring.score, scoring.judge, server.serve, server.demo, proxy.proxy):
    app.command()(command)


def main() -> None:
    """The console script's entry point (``python -m trajforge.cli`` runs it too)."""
    app()
