"""`trajforge datasets`: build and inspect dataset snapshots."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from trajforge.cli.common import DbOption, console, err, fail, progress_bar, store_at
from trajforge.cli.options import request_options
from trajforge.errors import TrajforgeError
from trajforge.records import iso_ms
from trajforge.store.filter import TrajectoryFilter

app = typer.Typer(help="Build and inspect training dataset snapshots.", no_args_is_help=True)


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        label, sep, rx = v.partition("=")
        if not sep or not label:
            err.print(f"[red]error ({flag}):[/red] expected LABEL=REGEX, got {v!r}")
            raise typer.Exit(2)
        out[label] = rx
    return out


@app.command("build")
@request_options(TrajectoryFilter, "flt", exclude=("min_reward", "max_reward"))
def datasets_build(
    flt: TrajectoryFilter,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="sft, prompt_completion, preference, grpo, openai, openai_dpo or art"
        ),
    ] = "sft",
    limit: Annotated[int, typer.Option("--limit", help="Most trajectories to include")] = 1000,
    min_llm_calls: Annotated[
        int, typer.Option("--min-llm-calls", help="Skip trajectories with fewer LLM calls")
    ] = 0,
    reward_score: Annotated[
        str | None,
        typer.Option(
            "--reward-score", help="Score name used as the reward (default: the trajectory's total reward)"
        ),
    ] = None,
    min_reward: Annotated[float | None, typer.Option("--min-reward", help="Minimum reward")] = None,
    max_reward: Annotated[float | None, typer.Option("--max-reward", help="Maximum reward")] = None,
    require_score: Annotated[
        str | None, typer.Option("--require-score", help="Leave out trajectories without this score yet")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Only this task (action type or purpose)")
    ] = None,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", help="Share of scenarios held out")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/eval split")] = 0,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop duplicate examples")] = True,
    margin: Annotated[
        float, typer.Option("--margin", help="Preference pairs: minimum reward difference")
    ] = 0.1,
    pair_by: Annotated[
        str, typer.Option("--pair-by", help="Preference pairs share a 'prompt' or a 'scenario'")
    ] = "prompt",
    name: Annotated[
        str | None, typer.Option("--name", help="Dataset name; rebuilds become new versions")
    ] = None,
    privacy_pattern: Annotated[
        list[str] | None, typer.Option("--privacy-pattern", help="Extra redaction LABEL=REGEX (repeatable)")
    ] = None,
    allow: Annotated[
        list[str] | None, typer.Option("--allow", help="A literal never to redact (repeatable)")
    ] = None,
    drop_on: Annotated[
        list[str] | None, typer.Option("--drop-on", help="Drop whole trajectories containing this category")
    ] = None,
    db: DbOption = None,
) -> None:
    """Build a private, versioned dataset snapshot from the matching trajectories."""
    from trajforge import datasets

    try:
        req = datasets.BuildRequest(
            format=fmt,
            limit=limit,
            min_llm_calls_per_trajectory=min_llm_calls,
            reward_score=reward_score,
            min_reward=min_reward,
            max_reward=max_reward,
            require_score=require_score,
            task=task,
            eval_fraction=eval_fraction,
            seed=seed,
            dedup=dedup,
            preference_margin=margin,
            pair_by=pair_by,
            name=name,
            filter=flt,
            privacy=datasets.PrivacyOptions(
                extra_patterns=_pairs(privacy_pattern, "--privacy-pattern"),
                allow=allow or [],
                drop_on=drop_on or [],
            ),
        )
    except TrajforgeError as exc:
        raise fail(exc) from exc
    with store_at(db) as store, progress_bar() as progress:
        bar = progress.add_task(f"build {fmt}", total=limit)
        ds = datasets.build(store, req, on_progress=lambda n: progress.update(bar, completed=n))
        progress.update(bar, total=ds.trajectory_count, completed=ds.trajectory_count)
    _print_dataset(ds)


def _print_dataset(ds: Any) -> None:
    m = ds.manifest
    console.print(f"[bold]{ds.id}[/bold]  {ds.name} v{ds.version}  format {ds.format}  ({ds.path})")
    rows = m["counts"]["rows"]
    console.print(f"  {ds.trajectory_count} trajectories → {rows['train']} train / {rows['eval']} eval rows")
    for t, c in m["counts"]["tasks"].items():
        console.print(f"  task {t}: {c['train']} train / {c['eval']} eval")
    p = m["privacy"]
    if p["redactions"]:
        console.print("  redacted: " + ", ".join(f"{k} {v}" for k, v in p["redactions"].items()))
    if p["droppedCount"]:
        console.print("  dropped: " + ", ".join(f"{k} ({v})" for k, v in p["droppedByReason"].items()))
    for w in m.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {w}")


@app.command("list")
def datasets_list(
    db: DbOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Rows")] = 50,
) -> None:
    """List dataset snapshots, newest first."""
    with store_at(db) as store:
        items = store.list_datasets(limit=limit)
    table = Table(title=f"{len(items)} datasets")
    for col in ("id", "name", "ver", "format", "trajectories", "train", "eval", "created"):
        table.add_column(col, overflow="fold", no_wrap=col == "id")
    for ds in items:
        rows = ds.manifest["counts"]["rows"]
        table.add_row(
            ds.id, ds.name, str(ds.version), ds.format, str(ds.trajectory_count), str(rows["train"]),
            str(rows["eval"]), iso_ms(ds.created_at),
        )  # fmt: skip
    console.print(table)


@app.command("show")
def datasets_show(
    dataset_id: Annotated[str, typer.Argument(metavar="ID", help="Dataset id")],
    db: DbOption = None,
    manifest: Annotated[bool, typer.Option("--manifest", help="Print the whole manifest as JSON")] = False,
) -> None:
    """Show one dataset snapshot (its manifest with --manifest)."""
    from trajforge import datasets, jsonutil

    with store_at(db) as store:
        ds = datasets.get(store, dataset_id)
    if manifest:
        sys.stdout.write(jsonutil.dumps(ds.manifest) + "\n")
    else:
        _print_dataset(ds)
