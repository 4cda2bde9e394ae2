"""The ``trajforge`` command. Every command is a thin layer over a library function."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from trajforge import settings
from trajforge.errors import TrajforgeError
from trajforge.store import TrajectoryFilter, open_store

app = typer.Typer(
    help="trajforge: capture agent trajectories, curate datasets, improve the agent.", no_args_is_help=True
)
trajectories_app = typer.Typer(help="Browse and manage stored trajectories.", no_args_is_help=True)
app.add_typer(trajectories_app, name="trajectories")
console = Console()

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Store URL or SQLite path (default: $TRAJFORGE_DATABASE_URL or the state dir)."
    ),
]


def fail(exc: TrajforgeError) -> None:
    flag = f" (--{exc.field.replace('_', '-')})" if exc.field else ""
    console.print(f"[red]error{flag}:[/red] {exc.message}")
    raise typer.Exit(2)


@trajectories_app.command("stats")
def trajectories_stats(db: DbOption = None) -> None:
    """Totals, breakdowns by source, status and model, tokens, latency and rewards."""
    try:
        store = open_store(db)
        try:
            s = store.stats(TrajectoryFilter())
        finally:
            store.close()
    except TrajforgeError as exc:
        fail(exc)
        return
    print_stats(s)


def print_stats(s: dict) -> None:
    table = Table(title="Trajectories", show_header=False)
    for key in (
        "totalTrajectories",
        "totalSteps",
        "totalLlmCalls",
        "totalProviderAccesses",
        "totalPromptTokens",
        "totalCompletionTokens",
    ):
        table.add_row(key, str(s[key]))
    table.add_row("bySource", ", ".join(f"{k}={v}" for k, v in s["bySource"].items()))
    table.add_row("byStatus", ", ".join(f"{k}={v}" for k, v in s["byStatus"].items()))
    table.add_row("byModel", ", ".join(f"{m['model']}={m['llmCalls']}" for m in s["byModel"]))
    lat = s["latencyMs"]
    table.add_row("latency ms", f"p50={lat['p50']} p95={lat['p95']} p99={lat['p99']} mean={lat['mean']}")
    r = s["reward"]
    table.add_row("reward", f"n={r['count']} mean={r['mean']} min={r['min']} max={r['max']}")
    console.print(table)


@app.command()
def demo(
    db: DbOption = None,
    n: Annotated[
        int, typer.Option("--n", min=1, max=10_000, help="How many example trajectories to record.")
    ] = 12,
) -> None:
    """Record example trajectories of a scripted support-desk agent through the SDK and print stats."""
    from trajforge.capture.recorder import Recorder
    from trajforge.demo.capture import record_examples

    url = db or settings.database_url()
    console.print(f"Recording {n} example trajectories into [bold]{url}[/bold]")
    rec = Recorder(url)
    try:
        ids = record_examples(rec, n=n)
    finally:
        rec.close()
    console.print(f"Recorded {len(ids)} trajectories; capture counters: {rec.stats}")
    trajectories_stats(db=url)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
