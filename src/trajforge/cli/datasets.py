"""`trajforge datasets`: build and inspect dataset snapshots, push them to and pull them from the
Hugging Face Hub."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from trajforge.cli.common import (
    DatasetId,
    DbOption,
    console,
    current_flags,
    err,
    print_json,
    progress_bar,
    store_at,
)
from trajforge.cli.options import request_options
from trajforge.datasets.request import BuildRequest
from trajforge.hub import PullRequest, PushRequest
from trajforge.records import iso_ms

app = typer.Typer(help="Build and inspect training dataset snapshots.", no_args_is_help=True)


@app.command("build")
@request_options(BuildRequest, "req")
def datasets_build(req: BuildRequest, db: DbOption = None) -> None:
    """Build a private, versioned dataset snapshot from the matching trajectories."""
    from trajforge import datasets

    with store_at(db) as store, progress_bar() as progress:
        bar = progress.add_task(f"build {req.format}", total=req.limit)
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
    dataset_id: DatasetId,
    db: DbOption = None,
    manifest: Annotated[bool, typer.Option("--manifest", help="Print the whole manifest as JSON")] = False,
) -> None:
    """Show one dataset snapshot (its manifest with --manifest)."""
    from trajforge import datasets

    with store_at(db) as store:
        ds = datasets.get(store, dataset_id)
    if manifest:
        print_json(ds.manifest)
    else:
        _print_dataset(ds)


@app.command("push")
@request_options(PushRequest, "req")
def datasets_push(dataset_id: DatasetId, req: PushRequest, db: DbOption = None) -> None:
    """Upload a dataset snapshot to a Hugging Face Hub dataset repo: its files, its manifest and a
    dataset card (token: HF_TOKEN or `hf auth login`)."""
    from trajforge import hub

    with store_at(db) as store:
        out = hub.push(
            store, dataset_id, req, report=lambda p, phase, message: err.print(f"{phase}: {message}")
        )
    created = " (created)" if out["created"] else ""
    console.print(f"pushed {dataset_id} to {out['repo']}{created}@{out['revision']}  commit {out['commit']}")
    console.print(f"  {len(out['files'])} files: {', '.join(out['files'])}")


@app.command("pull")
@request_options(PullRequest, "req")
def datasets_pull(
    repo: Annotated[str, typer.Argument(metavar="ORG/NAME", help="Hub dataset repo")],
    req: PullRequest,
    db: DbOption = None,
) -> None:
    """Import a Hugging Face Hub dataset as a snapshot (a trajforge dataset as it was pushed, or
    rows with messages or prompt/completion columns), with lineage to the Hub commit."""
    from trajforge import hub

    # The repo is an argument here (an option of push): errors about it name the argument.
    current_flags.set({**(current_flags.get() or {}), "repo": "ORG/NAME"})
    with store_at(db) as store:
        ds = hub.pull(store, repo, req.revision, req.split, name=req.name, limit=req.limit)
    _print_dataset(ds)
    source = ds.manifest["lineage"]["hub"]
    console.print(f"  from {source['repo']}@{source['revision']} (commit {source['commit']})")
