"""`trajforge trajectories`: list, show, stats, export, delete, import."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.tree import Tree

from trajforge import export as exports
from trajforge import privacy
from trajforge.cli.common import DbOption, console, err, progress_bar, store_at
from trajforge.cli.options import request_options
from trajforge.export import ExportRequest
from trajforge.records import iso_ms
from trajforge.store.filter import ListRequest, TrajectoryFilter

app = typer.Typer(help="Browse and manage stored trajectories.", no_args_is_help=True)


@app.command("list")
@request_options(ListRequest, "req")
def trajectories_list(req: ListRequest, db: DbOption = None) -> None:
    """List trajectories, newest first."""
    offset = req.offset
    with store_at(db) as store:
        page = store.list_trajectories(req.only_filter(), limit=req.limit, offset=offset)
    table = Table(
        title=f"{page.total}{'+' if page.total_is_lower_bound else ''} trajectories (showing {offset + 1 if page.items else 0}–{offset + len(page.items)})"
    )
    for col in ("started", "id", "agent", "source", "status", "steps", "calls", "tokens", "reward"):
        table.add_column(col, overflow="fold", no_wrap=col in ("started", "id"))
    for t in page.items:
        table.add_row(
            iso_ms(t.start_time)[:19].replace("T", " "),
            t.id,
            t.agent_id,
            t.source,
            t.status,
            str(t.step_count),
            str(t.llm_call_count),
            str(t.total_prompt_tokens + t.total_completion_tokens),
            "" if t.total_reward is None else f"{t.total_reward:.3g}",
        )
    console.print(table)


def _clip(text: str | None, n: int = 300) -> str:
    if text is None:
        return "∅"
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= n else text[:n] + f"… (+{len(text) - n} chars)"


@app.command("show")
def trajectories_show(
    trajectory_id: Annotated[str, typer.Argument(help="The trajectory id")],
    db: DbOption = None,
    full: Annotated[bool, typer.Option("--full", help="Do not shorten long texts")] = False,
) -> None:
    """Print one trajectory as a tree of steps, calls, accesses and actions."""
    with store_at(db) as store:
        t = store.get_trajectory(trajectory_id)
    if t is None:
        err.print(f"[red]error:[/red] no trajectory with id {trajectory_id!r}")
        raise typer.Exit(1)
    n = 10**9 if full else 300
    reward = "" if t.total_reward is None else f" reward={t.total_reward:.3g}"
    root = Tree(
        f"[bold]{t.id}[/bold] agent={t.agent_id} source={t.source} status={t.status}{reward}",
        guide_style="dim",
    )
    if t.scenario_id or t.batch_id:
        root.add(f"scenario={t.scenario_id} batch={t.batch_id}")
    if t.metadata:
        root.add(f"metadata: {_clip(str(t.metadata), n)}")
    for step in t.steps:
        node = root.add(f"[bold]step {step.step_number}[/bold] {step.step_id}")
        for a in step.provider_accesses:
            node.add(f"[cyan]provider[/cyan] {a.provider_name} ({a.purpose}): {_clip(str(a.data), n)}")
        for c in step.llm_calls:
            call = node.add(
                f"[magenta]llm[/magenta] {c.model} purpose={c.purpose} action={c.action_type} "
                f"latency={c.latency_ms}ms tokens={c.prompt_tokens}/{c.completion_tokens}"
            )
            if c.system_prompt is not None:
                call.add(f"system: {_clip(c.system_prompt, n)}")
            if c.user_prompt is not None:
                call.add(f"user: {_clip(c.user_prompt, n)}")
            if c.reasoning:
                call.add(f"reasoning: {_clip(c.reasoning, n)}")
            call.add(f"response: {_clip(c.response, n)}")
            if c.tool_calls:
                call.add(f"tool calls: {_clip(str(c.tool_calls), n)}")
        if step.action is not None:
            act = step.action
            mark = "[green]✓[/green]" if act.success else "[red]✗[/red]"
            node.add(
                f"[yellow]action[/yellow] {act.action_type} {mark} params={_clip(str(act.parameters), n)} "
                f"reward={act.immediate_reward}" + (f" error={act.error}" if act.error else "")
            )
    for s in t.scores:
        root.add(
            f"[green]score[/green] {s.name}={s.value} ({s.source}){' — ' + s.comment if s.comment else ''}"
        )
    console.print(root, soft_wrap=False)


@app.command("stats")
def trajectories_stats(db: DbOption = None) -> None:
    """Totals, breakdowns by source, status and model, tokens, latency and rewards."""
    with store_at(db) as store:
        s = store.stats()
    print_stats(s)


def print_stats(s: dict[str, Any]) -> None:
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


@app.command("export")
@request_options(ExportRequest, "req")
def trajectories_export(
    req: ExportRequest,
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write ('-' for stdout)")],
    db: DbOption = None,
) -> None:
    """Export trajectories to a file in json, jsonl, csv, art, zip or parquet (streamed)."""
    flt, fmt, limit = req.only_filter(), req.format, req.limit
    with store_at(db) as store:
        total = store.count(flt)
        if limit is not None:
            total = min(total, limit)
        to_stdout = str(out) == "-"
        count = 0

        def progressed(n: int) -> None:
            nonlocal count
            count = n
            progress.update(task, completed=n)

        with contextlib.ExitStack() as stack:
            fh = sys.stdout.buffer if to_stdout else stack.enter_context(open(out, "wb"))
            progress = stack.enter_context(progress_bar())
            task = progress.add_task(f"export {fmt}", total=total)
            pf = privacy.for_store(store) if req.privacy_filter else None
            for chunk in exports.stream(
                store,
                fmt,
                flt,
                include_prompts=req.include_prompts,
                privacy=pf,
                limit=limit,
                on_progress=progressed,
            ):
                fh.write(chunk)
    if not to_stdout:
        err.print(f"wrote {count} trajectories to {out}")


@app.command("delete")
def trajectories_delete(
    ids: Annotated[list[str] | None, typer.Argument(help="Trajectory ids to delete")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every trajectory")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    db: DbOption = None,
) -> None:
    """Delete trajectories by id, or all of them (asks first unless --yes)."""
    if all_ == bool(ids):
        err.print("[red]error (--all):[/red] give trajectory ids or --all, not both and not neither")
        raise typer.Exit(2)
    with store_at(db) as store:
        if all_:
            n = store.count(TrajectoryFilter())
            if not yes and not typer.confirm(f"Delete all {n} trajectories from {store.url}?", default=False):
                err.print("nothing deleted")
                raise typer.Exit(1)
            deleted = store.delete(all=True)
        else:
            deleted = store.delete(ids or [])
    console.print(f"deleted {deleted} trajectories")


@app.command("import")
def trajectories_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="A json/jsonl export of trajforge, Eliza trajectories, or a JSONL of LLM-call rows"
        ),
    ],
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Store the good rows and write the bad ones to --bad-rows (default: store nothing)",
        ),
    ] = False,
    bad_rows: Annotated[
        Path | None,
        typer.Option(
            "--bad-rows",
            help="Where --skip-bad writes bad rows with their reasons (default ./<name>.bad.jsonl for <name>.jsonl; implies --skip-bad)",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Import trajectories from a file: all or nothing, idempotent (importing it again stores nothing new)."""
    from trajforge.importer import import_file

    if bad_rows is None and skip_bad:
        bad_rows = Path.cwd() / f"{file.stem}.bad.jsonl"
    with store_at(db) as store, progress_bar() as progress:
        task = progress.add_task(f"import {file.name}", total=None)
        counts = import_file(
            store, file, on_progress=lambda n: progress.update(task, completed=n), bad_rows=bad_rows
        )
    console.print(
        f"read {counts['trajectories']} trajectories ({counts['llmCalls']} LLM calls); "
        f"stored {counts['newTrajectories']} new trajectories, {counts['newLlmCalls']} new LLM calls"
    )
    if counts["duplicateRows"]:
        console.print(f"{counts['duplicateRows']} rows were exact copies of earlier rows and read once")
    if counts["badRows"]:
        err.print(f"skipped {counts['badRows']} bad rows; they are in {bad_rows} with their reasons")
