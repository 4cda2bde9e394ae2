"""`trajforge collect`: collection runs (evidence folders with a readiness report) and their list.

Output is plain text in the ``[collect] key=value`` style (no markup: notes and errors carry
user content), so it can be grepped and read the same in a log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trajforge.cli.common import DbOption, fail, store_at
from trajforge.cli.options import request_options
from trajforge.collect.request import CollectRequest
from trajforge.errors import TrajforgeError

app = typer.Typer(help="Collect training evidence into inspectable run folders.", no_args_is_help=True)


@app.command("run")
@request_options(CollectRequest, "req")
def collect_run(req: CollectRequest, db: DbOption = None) -> None:
    """Collect everything there is to train on into a run folder (a dry run unless --live): a
    manifest, a README, an HTML viewer and a readiness report naming the next command for each gap.
    --preflight-only checks what a live run needs and stops (exit 1 when something is missing)."""
    from trajforge import collect
    from trajforge.collect.readiness import command_line

    with store_at(db) as store:
        if req.preflight_only:
            checked = collect.preflight(store, req)
            for c in checked["checks"]:
                typer.echo(f"[collect] preflight {c['id']}={c['status']} {c['note']}")
            if checked["probe"]:
                p = checked["probe"]
                typer.echo(
                    f"[collect] probe url={p['url']} status={p['status']} models={','.join(p['models'])}"
                )
            typer.echo(f"[collect] preflight ready={str(checked['ready']).lower()}")
            raise typer.Exit(0 if checked["ready"] else 1)

        def step(s: collect.StepResult) -> None:
            why = s.error or s.result.get("note") or ""
            typer.echo(
                f"[collect] step={s.id} status={s.status} seconds={s.seconds:.2f}"
                + (f" {why}" if why else "")
            )

        run = collect.run(store, req, hf_pull=collect.default_hf_pull(), on_step=step)
    ready = run.manifest["readiness"]
    counts = ready["counts"]
    typer.echo(
        f"[collect] readiness={ready['status']} ready={counts['ready']} partial={counts['partial']} "
        f"missing={counts['missing']}"
    )
    for gap in ready["checks"]:
        if gap["status"] != "ready" and gap["recommendedAction"]:
            typer.echo(
                f"[collect] gap {gap['id']}:{gap['status']} -> {command_line(gap['recommendedAction'])}"
            )
    typer.echo(f"[collect] manifest={run.manifest_path}")
    typer.echo(f"[collect] readme={run.readme_path}")
    typer.echo(f"[collect] viewer={run.output_dir / collect.VIEWER}")
    typer.echo(f"[collect] index={run.output_dir.parent / collect.INDEX_HTML}")


@app.command("list")
def collect_list(
    root: Annotated[
        Path | None, typer.Option("--root", help="Folder holding the runs (default: <home>/collections)")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Runs to show")] = 20,
) -> None:
    """List saved collection runs, newest first: readiness, sources, evals, models, gaps, viewer."""
    from trajforge import collect

    try:
        lines = collect.list_lines((root or collect.default_root()).expanduser().resolve(), limit)
    except TrajforgeError as exc:
        raise fail(exc) from exc
    for line in lines:
        typer.echo(line)
