"""The ``trajforge`` command. Every command opens the store, calls one library function and formats
the result; library errors become a clean message naming the flag."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from trajforge import export as exports
from trajforge import privacy, settings
from trajforge.capture.transport import LOGGING_ENABLED
from trajforge.errors import TrajforgeError
from trajforge.records import iso_ms
from trajforge.store import Store, TrajectoryFilter, build_filter, open_store

app = typer.Typer(
    help="trajforge: capture agent trajectories, curate datasets, improve the agent.", no_args_is_help=True
)
trajectories_app = typer.Typer(help="Browse and manage stored trajectories.", no_args_is_help=True)
config_app = typer.Typer(help="Settings shared by every recorder of a store.", no_args_is_help=True)
app.add_typer(trajectories_app, name="trajectories")
datasets_app = typer.Typer(help="Build and inspect training dataset snapshots.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(datasets_app, name="datasets")
jobs_app = typer.Typer(help="Queue, watch and cancel training jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
prompts_app = typer.Typer(help="Optimized prompt artifacts per task.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")
models_app = typer.Typer(
    help="Fine-tuned models: list, benchmark, import into Ollama, activate.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
console = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Store URL or SQLite path (default: $TRAJFORGE_DATABASE_URL or the state dir)."
    ),
]
FLAG_NAMES = {
    "startDate": "--start-date",
    "endDate": "--end-date",
    "minReward": "--min-reward",
    "maxReward": "--max-reward",
    "search": "--search",
    "status": "--status",
    "db": "--db",
    "format": "--format",
    "file": "FILE",
    "bad_rows": "--bad-rows",
    "limit": "--limit",
    "minLlmCallsPerTrajectory": "--min-llm-calls",
    "evalFraction": "--eval-fraction",
    "preferenceMargin": "--margin",
    "pairBy": "--pair-by",
    "name": "--name",
    "privacy": "--privacy-pattern",
    "privacy.dropOn": "--drop-on",
    "fn": "--fn",
    "baseUrl": "--base-url",
    "model": "--model",
    "id": "ID",
    "backend": "--backend",
    "optimizer": "--optimizer",
    "datasetId": "--dataset",
    "task": "--task",
    "modelName": "--name",
    "baseModel": "--base",
    "ollamaUrl": "--ollama-url",
    "providerModel": "--provider-model",
    "batchSize": "--batch-size",
    "learningRate": "--learning-rate",
    "maxLength": "--max-length",
    "iterations": "--iterations",
    "epochs": "--epochs",
    "suite": "--suite",
    "version": "--version",
    "metric": "--metric",
}


def fail(exc: TrajforgeError) -> None:
    flag = FLAG_NAMES.get(exc.field or "", f"--{exc.field.replace('_', '-')}" if exc.field else "")
    err.print(f"[red]error{f' ({flag})' if flag else ''}:[/red] {exc.message}")
    raise typer.Exit(2)


@contextlib.contextmanager
def store_at(db: str | None) -> Iterator[Store]:
    """Open the store and turn library errors into CLI errors."""
    try:
        store = open_store(db)
    except TrajforgeError as exc:
        fail(exc)
        raise AssertionError from exc  # unreachable: fail() exits
    try:
        yield store
    except TrajforgeError as exc:
        fail(exc)
    finally:
        store.close()


def filter_from(**kwargs: Any) -> TrajectoryFilter:
    try:
        return build_filter(**kwargs)
    except TrajforgeError as exc:
        fail(exc)
        raise AssertionError from exc


# Shared filter options of list/export/stats.
Source = Annotated[str | None, typer.Option("--source", help="chat, autonomy, telegram, discord, api, …")]
Status = Annotated[str | None, typer.Option("--status", help="active, completed, error or timeout")]
Search = Annotated[
    str | None, typer.Option("--search", "-q", help='Full-text: words, "phrase", a OR b, -word, pre*')
]
Scenario = Annotated[str | None, typer.Option("--scenario", help="Scenario id")]
Batch = Annotated[str | None, typer.Option("--batch", help="Batch id")]
Agent = Annotated[str | None, typer.Option("--agent", help="Agent id")]
Start = Annotated[str | None, typer.Option("--start-date", help="ISO date/time or epoch ms (inclusive)")]
End = Annotated[str | None, typer.Option("--end-date", help="ISO date/time or epoch ms (inclusive)")]
MinR = Annotated[float | None, typer.Option("--min-reward", help="Minimum total reward")]
MaxR = Annotated[float | None, typer.Option("--max-reward", help="Maximum total reward")]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="At most this many trajectories")]


@trajectories_app.command("list")
def trajectories_list(
    db: DbOption = None,
    source: Source = None,
    status: Status = None,
    search: Search = None,
    scenario: Scenario = None,
    batch: Batch = None,
    agent: Agent = None,
    start_date: Start = None,
    end_date: End = None,
    min_reward: MinR = None,
    max_reward: MaxR = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="Rows per page")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Rows to skip")] = 0,
) -> None:
    """List trajectories, newest first."""
    flt = filter_from(
        source=source,
        status=status,
        search=search,
        scenario_id=scenario,
        batch_id=batch,
        agent_id=agent,
        start_date=start_date,
        end_date=end_date,
        min_reward=min_reward,
        max_reward=max_reward,
    )
    with store_at(db) as store:
        page = store.list_trajectories(flt, limit=limit, offset=offset)
    table = Table(
        title=f"{page.total} trajectories (showing {offset + 1 if page.items else 0}–{offset + len(page.items)})"
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


@trajectories_app.command("show")
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


@trajectories_app.command("stats")
def trajectories_stats(db: DbOption = None) -> None:
    """Totals, breakdowns by source, status and model, tokens, latency and rewards."""
    with store_at(db) as store:
        s = store.stats(TrajectoryFilter())
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


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


@trajectories_app.command("export")
def trajectories_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write ('-' for stdout)")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help=f"One of {', '.join(exports.FORMATS)}")
    ] = "jsonl",
    db: DbOption = None,
    include_prompts: Annotated[
        bool,
        typer.Option("--include-prompts/--no-prompts", help="Replace prompt/response text with a marker"),
    ] = True,
    private: Annotated[
        bool,
        typer.Option(
            "--privacy-filter/--raw",
            help="Redact personal data and secrets (default); --raw exports as stored, for your own use",
        ),
    ] = True,
    source: Source = None,
    status: Status = None,
    search: Search = None,
    scenario: Scenario = None,
    batch: Batch = None,
    agent: Agent = None,
    start_date: Start = None,
    end_date: End = None,
    min_reward: MinR = None,
    max_reward: MaxR = None,
    limit: Limit = None,
) -> None:
    """Export trajectories to a file in json, jsonl, csv, art, zip or parquet (streamed)."""
    try:
        exports.exporter(fmt)
    except TrajforgeError as exc:
        fail(exc)
    flt = filter_from(
        source=source,
        status=status,
        search=search,
        scenario_id=scenario,
        batch_id=batch,
        agent_id=agent,
        start_date=start_date,
        end_date=end_date,
        min_reward=min_reward,
        max_reward=max_reward,
    )
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
            progress = stack.enter_context(_progress())
            task = progress.add_task(f"export {fmt}", total=total)
            pf = privacy.for_store(store) if private else None
            for chunk in exports.stream(
                store,
                fmt,
                flt,
                include_prompts=include_prompts,
                privacy=pf,
                limit=limit,
                on_progress=progressed,
            ):
                fh.write(chunk)
    if not to_stdout:
        err.print(f"wrote {count} trajectories to {out}")


@trajectories_app.command("delete")
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


@trajectories_app.command("import")
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
    with store_at(db) as store, _progress() as progress:
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


@config_app.command("logging")
def config_logging(
    state: Annotated[str, typer.Argument(help="on or off")],
    db: DbOption = None,
) -> None:
    """Turn trajectory logging on or off for every recorder using this store."""
    if state not in ("on", "off"):
        err.print(f"[red]error (STATE):[/red] must be on or off, got {state!r}")
        raise typer.Exit(2)
    with store_at(db) as store:
        store.set_setting(LOGGING_ENABLED, state == "on")
    console.print(f"logging {state}")


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port")] = 2138,
    db: DbOption = None,
    run_jobs: Annotated[
        bool, typer.Option("--jobs/--no-jobs", help="Run queued training jobs in this server (default)")
    ] = True,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="Without a token, also answer requests for this Host name (name or name:port; "
            f"repeatable; adds to {settings.ALLOWED_HOSTS}). Loopback names are always answered.",
        ),
    ] = None,
) -> None:
    """Run the HTTP API over the store (refuses a non-loopback address without TRAJFORGE_API_TOKEN)."""
    import uvicorn

    from trajforge.server import create_app, is_loopback

    if not is_loopback(host) and not settings.api_token():
        err.print(
            f"[red]error (--host):[/red] binding to {host} exposes the API beyond this machine; "
            f"set {settings.API_TOKEN} first (clients then send 'Authorization: Bearer <token>')"
        )
        raise typer.Exit(2)
    for name in allow_host or []:
        if not name.strip() or any(c in name for c in "/@ \t*,"):
            err.print(
                f"[red]error (--allow-host):[/red] give a host name as browsers send it in Host "
                f"(name or name:port, no scheme, path or wildcard), got {name!r}"
            )
            raise typer.Exit(2)
    try:
        application = create_app(
            db, run_jobs=run_jobs, allowed_hosts=[*settings.allowed_hosts(), *(allow_host or [])]
        )
    except TrajforgeError as exc:
        fail(exc)
        return
    err.print(f"trajforge API on http://{host}:{port} (store: {application.state.store.url})")
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command()
def demo(
    db: DbOption = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Every phase with the tiny test model and a few cases (< 2 min)")
    ] = False,
    serve_after: Annotated[
        bool,
        typer.Option(
            "--serve/--no-serve", help="Keep serving the API afterwards (only when run in a terminal)"
        ),
    ] = True,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on afterwards")] = 2138,
) -> None:
    """Run the whole flywheel on a support-desk agent: capture, score, curate, optimize the prompt,
    fine-tune, evaluate on held-out cases, report. Then serve the API until Ctrl-C."""
    from trajforge.demo import flywheel

    url = db or settings.database_url()
    try:
        flywheel.run(url, quick=quick, console=console)
    except TrajforgeError as exc:
        fail(exc)
    if not serve_after or not sys.stdin.isatty():
        return
    import uvicorn

    from trajforge.server import create_app

    store = open_store(url)
    console.print(
        f"Explore it: http://127.0.0.1:{port}/api/trajectories — or in another terminal, "
        "`trajforge trajectories list`, `trajforge models list`. Ctrl-C to stop."
    )
    try:
        uvicorn.run(create_app(store, run_jobs=True), host="127.0.0.1", port=port, log_level="warning")
    finally:
        store.close()


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        label, sep, rx = v.partition("=")
        if not sep or not label:
            err.print(f"[red]error ({flag}):[/red] expected LABEL=REGEX, got {v!r}")
            raise typer.Exit(2)
        out[label] = rx
    return out


@app.command()
def score(
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
    source: Source = None,
    status: Status = None,
    search: Search = None,
    scenario: Scenario = None,
    batch: Batch = None,
    agent: Agent = None,
    start_date: Start = None,
    end_date: End = None,
    limit: Limit = None,
) -> None:
    """Apply a reward function to matching trajectories and store one score each."""
    from trajforge import rewards

    flt = filter_from(
        source=source, status=status, search=search, scenario_id=scenario, batch_id=batch, agent_id=agent,
        start_date=start_date, end_date=end_date,
    )  # fmt: skip
    sys.path.insert(0, str(Path.cwd()))  # module:function names a module of the user's project
    with store_at(db) as store, _progress() as progress:
        task = progress.add_task("score", total=store.count(flt) if limit is None else limit)
        run = rewards.score_trajectories(
            store, fn, flt, name=name, limit=limit, on_progress=lambda n: progress.update(task, completed=n)
        )
    console.print(f"{run.name}: scored {run.scored}, no opinion {run.skipped}, errors {run.errors}")
    for sample in run.error_samples:
        err.print(f"  {sample['trajectoryId']}: {sample['error']}")


@app.command()
def judge(
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
    source: Source = None,
    status: Status = None,
    scenario: Scenario = None,
    batch: Batch = None,
    agent: Agent = None,
    limit: Limit = None,
) -> None:
    """Score trajectories with an LLM judge, scenario by scenario (RULER-style, scores in [0, 1])."""
    from trajforge import lm, rewards

    flt = filter_from(source=source, status=status, scenario_id=scenario, batch_id=batch, agent_id=agent)
    with store_at(db) as store, _progress() as progress:
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


@datasets_app.command("build")
def datasets_build(
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
    min_reward: MinR = None,
    max_reward: MaxR = None,
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
    source: Source = None,
    status: Status = None,
    search: Search = None,
    scenario: Scenario = None,
    batch: Batch = None,
    agent: Agent = None,
    start_date: Start = None,
    end_date: End = None,
) -> None:
    """Build a private, versioned dataset snapshot from the matching trajectories."""
    from trajforge import datasets

    flt = filter_from(
        source=source, status=status, search=search, scenario_id=scenario, batch_id=batch, agent_id=agent,
        start_date=start_date, end_date=end_date,
    )  # fmt: skip
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
        fail(exc)
        return
    with store_at(db) as store, _progress() as progress:
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


@datasets_app.command("list")
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


@datasets_app.command("show")
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


@jobs_app.command("start")
def jobs_start(
    backend: Annotated[
        str, typer.Option("--backend", help="native (prompt optimization); cpu, cuda, mlx (LoRA)")
    ] = "native",
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset id (default: build one first)")
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="bootstrap-fewshot (default) or instruction-search")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="bundled:smollm2-135m (default), local:<dir>, or (native) a served model name / (LoRA) a "
            "hub id in the local Hugging Face cache; checked before the job is queued",
        ),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint of --model")
    ] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", min=1, help="Trials or rounds")] = None,
    max_trajectories: Annotated[
        int | None, typer.Option("--max-trajectories", min=1, help="Cap when building")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="action_match, token_f1, or module:function(output, expected)"),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="LoRA: batch size")] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", min=0.0, help="LoRA: learning rate (default 1e-3)")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", min=0.0, help="LoRA: epochs when no --iterations")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", min=16, help="LoRA: tokens per sequence (default 256)")
    ] = None,
    merge: Annotated[
        bool | None, typer.Option("--merge/--no-merge", help="LoRA: also save the merged model")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option("--precision", help="LoRA: auto (bf16 where the hardware has it), fp32 or bf16"),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Run it here and follow progress (default), or only queue it"),
    ] = True,
    db: DbOption = None,
) -> None:
    """Queue a training job; with --wait (default) run it here with a progress bar.

    --backend native optimizes prompts (--optimizer, --iterations = trials); cpu/cuda/mlx train a
    LoRA adapter on --model (--iterations = optimizer steps) and register it (trajforge models list)."""
    from trajforge import jobs

    request = {
        k: v
        for k, v in {
            "backend": backend,
            "datasetId": dataset,
            "optimizer": optimizer,
            "task": task,
            "model": model,
            "baseUrl": base_url,
            "iterations": iterations,
            "maxTrajectories": max_trajectories,
            "metric": metric,
            "batchSize": batch_size,
            "learningRate": learning_rate,
            "epochs": epochs,
            "maxLength": max_length,
            "merge": merge,
            "precision": precision,
        }.items()
        if v is not None
    }
    with store_at(db) as store:
        job = jobs.submit(store, request)
        console.print(f"queued [bold]{job.id}[/bold]")
        if not wait:
            return
        runner = jobs.JobRunner(store.url).start()
        try:
            final = _follow(store, job.id)
        finally:
            runner.stop()
    if final.status != "completed":
        err.print(f"[red]job {final.status}:[/red] {final.error or ''}")
        raise typer.Exit(1)
    output = final.output or {}
    if output.get("modelId"):
        m = output.get("metrics") or {}
        console.print(
            f"  model [bold]{output['modelId']}[/bold]: {m.get('steps')} steps, final loss {m.get('finalLoss')}, "
            f"{m.get('tokensPerS')} tokens/s; adapter {output.get('adapterPath')}"
        )
    for art in output.get("artifacts", []):
        if "version" in art:
            state = "promoted" if art["promoted"] else "kept, not promoted"
            console.print(
                f"  {art['task']}: {art['baselineScore']:.3f} → {art['score']:.3f} (v{art['version']}, {state})"
            )
        else:
            console.print(f"  {art['task']}: skipped ({art.get('skipped')})")


def _follow(store: Store, job_id: str) -> Any:
    """Show a job's progress from its events until it ends; returns the final job."""
    import time

    from trajforge import jobs

    seq = 0
    with _progress() as progress:
        bar = progress.add_task(job_id, total=1.0)
        while True:
            for e in store.list_events(after=seq, job_id=job_id):
                seq = e.seq or seq
                if e.progress is not None:
                    progress.update(bar, completed=e.progress)
                progress.console.print(f"[dim]{e.kind}[/dim] {e.message}")
            job = jobs.get(store, job_id)
            if job.status in ("completed", "failed", "cancelled"):
                progress.update(bar, completed=job.progress)
                return job
            time.sleep(0.3)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option("--status", help="pending, running, completed, failed, cancelled")
    ] = None,
    db: DbOption = None,
) -> None:
    """List training jobs, newest first."""
    with store_at(db) as store:
        items = store.list_jobs(status)
    table = Table(title=f"{len(items)} jobs")
    for col in ("id", "backend", "status", "phase", "progress", "created", "error"):
        table.add_column(col, overflow="fold", no_wrap=col == "id")
    for j in items:
        table.add_row(
            j.id, j.backend, j.status, j.phase or "", f"{j.progress:.0%}", iso_ms(j.created_at), j.error or ""
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id")], db: DbOption = None
) -> None:
    """Show one job as JSON."""
    from trajforge import jobs, jsonutil

    with store_at(db) as store:
        sys.stdout.write(jsonutil.dumps(jobs.wire(jobs.get(store, job_id))) + "\n")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id")], db: DbOption = None
) -> None:
    """Cancel a pending job, or ask the runner of a running one to stop it."""
    from trajforge import jobs

    with store_at(db) as store:
        job = jobs.cancel(store, job_id)
    console.print(f"{job.id}: {job.status}{' (stop requested)' if job.cancel_requested else ''}")


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following until the job ends")] = False,
    db: DbOption = None,
) -> None:
    """Print a job's events (and follow them with --follow)."""
    from trajforge import jobs

    with store_at(db) as store:
        jobs.get(store, job_id)
        if follow:
            _follow(store, job_id)
            return
        for e in store.list_events(job_id=job_id, limit=100_000):
            console.print(f"{iso_ms(e.ts)} {e.kind} {e.message}")


@jobs_app.command("worker")
def jobs_worker(
    db: DbOption = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=16, help="Jobs at once")] = 1,
) -> None:
    """Run queued jobs from the store until interrupted (for setups without `trajforge serve`)."""
    import time

    from trajforge import jobs

    url = db or settings.database_url()
    runner = jobs.JobRunner(url, max_parallel=parallel).start()
    err.print(f"running jobs from {url} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()


@prompts_app.command("list")
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


@prompts_app.command("show")
def prompts_show(
    task: Annotated[str, typer.Argument(help="Task name")],
    version: Annotated[
        int | None, typer.Option("--version", help="A version (default: the current one)")
    ] = None,
) -> None:
    """Print a task's prompt artifact as JSON."""
    from trajforge import jsonutil
    from trajforge.errors import NotFound
    from trajforge.optimize import artifacts

    try:
        art = artifacts.load(task, version) if version is not None else artifacts.current(task)
        if art is None:
            raise NotFound(f"task {task!r} has no current prompt", "task")
    except TrajforgeError as exc:
        fail(exc)
        return
    sys.stdout.write(jsonutil.dumps(art.to_wire()) + "\n")


@prompts_app.command("rollback")
def prompts_rollback(task: Annotated[str, typer.Argument(help="Task name")]) -> None:
    """Make the previous promoted version of a task's prompt current again."""
    from trajforge.optimize import artifacts

    try:
        art = artifacts.rollback(task)
    except TrajforgeError as exc:
        fail(exc)
        return
    console.print(f"{task}: current is v{art.version} again")


def main() -> None:
    app()


if __name__ == "__main__":
    main()


# --- models ----------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(
    db: DbOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Rows")] = 50,
) -> None:
    """List fine-tuned models, newest first."""
    with store_at(db) as store:
        items = store.list_models(limit=limit)
    table = Table(title=f"{len(items)} models")
    for col in ("id", "base", "backend", "steps", "loss", "benchmark", "ollama", "active", "created"):
        table.add_column(col, overflow="fold", no_wrap=col == "id")
    for m in items:
        ev = m.evaluation or {}
        bench = (
            f"{ev['baseScore']:.3f} → {ev['trainedScore']:.3f}"
            if ev.get("status") == "completed"
            else ev.get("status", "")
        )
        loss = m.metrics.get("finalLoss")
        table.add_row(
            m.id,
            m.base_model,
            m.backend,
            str(m.metrics.get("steps", "")),
            f"{loss:.4f}" if isinstance(loss, float) else "",
            bench,
            m.ollama_name or "",
            f"✓ {m.provider_model}" if m.active else "",
            iso_ms(m.created_at),
        )
    console.print(table)


@models_app.command("show")
def models_show(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id")], db: DbOption = None
) -> None:
    """Show one model (lineage, metrics, benchmark) as JSON."""
    from trajforge import jsonutil, models

    with store_at(db) as store:
        sys.stdout.write(jsonutil.dumps(models.wire(models.get(store, model_id))) + "\n")


@models_app.command("benchmark")
def models_benchmark(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id")],
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Held-out items (default: the model's eval split)")
    ] = None,
    suite: Annotated[str | None, typer.Option("--suite", help="A registered item suite")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's items")] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, max=2000, help="At most this many items")
    ] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="action_match or token_f1")] = None,
    db: DbOption = None,
) -> None:
    """Run base and trained on the same held-out items here, and store the result on the model."""
    from trajforge import evaluate

    request = {
        k: v
        for k, v in {
            "datasetId": dataset,
            "suite": suite,
            "task": task,
            "limit": limit,
            "metric": metric,
        }.items()
        if v is not None
    }
    with store_at(db) as store, _progress() as progress:
        bar = progress.add_task(model_id, total=1.0)

        def report(p: float, phase: str, message: str) -> None:
            progress.update(bar, completed=p)
            progress.console.print(f"[dim]{phase}[/dim] {message}")

        try:
            result = evaluate.benchmark(store, model_id, request, report)
        except TrajforgeError:
            raise
        except Exception as exc:
            err.print(f"[red]benchmark failed (recorded on the model):[/red] {type(exc).__name__}: {exc}")
            raise typer.Exit(1) from exc
    pct = f" ({result['deltaPct']:+.1f}%)" if result["deltaPct"] is not None else ""
    console.print(
        f"{result['metric']} on {result['n']} items: base {result['baseScore']:.3f} → "
        f"trained {result['trainedScore']:.3f}, delta {result['delta']:+.3f}{pct}"
    )


@models_app.command("import-ollama")
def models_import_ollama(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id")],
    model_name: Annotated[str, typer.Option("--name", help="Name of the new Ollama model")],
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="The Ollama model the adapter was trained on (default: from the registry when it "
            "knows the base, e.g. smollm2:135m for bundled:smollm2-135m)",
        ),
    ] = None,
    ollama_url: Annotated[
        str | None, typer.Option("--ollama-url", help="Loopback only (default http://127.0.0.1:11434)")
    ] = None,
    db: DbOption = None,
) -> None:
    """Upload the adapter to a local Ollama and create a model from it."""
    from trajforge import ollama

    with store_at(db) as store:
        result = ollama.import_model(
            store, model_id, model_name, base_model, ollama_url, report=lambda p, m: console.print(f"  {m}")
        )
    if result.get("baseModelDefaulted"):
        console.print(f"  --base defaulted to {result['baseModel']} (the registry's base of {model_id})")
    console.print(
        f"imported [bold]{result['modelName']}[/bold] into {result['ollamaUrl']} ({result['mode']})"
    )


@models_app.command("activate")
def models_activate(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Model id")],
    provider_model: Annotated[
        str | None,
        typer.Option("--provider-model", help="e.g. ollama/my-agent (default: ollama/<its Ollama name>)"),
    ] = None,
    db: DbOption = None,
) -> None:
    """Make the agent use this model (trajforge.active_model() returns it)."""
    from trajforge import models

    with store_at(db) as store:
        model = models.activate(store, model_id, provider_model)
    console.print(f"{model.id} is active as [bold]{model.provider_model}[/bold]")


@models_app.command("active")
def models_active(db: DbOption = None) -> None:
    """Print the active model's provider name (nothing, exit 1, when none is active)."""
    with store_at(db) as store:
        model = store.active_model()
    if model is None:
        err.print("no model is active")
        raise typer.Exit(1)
    console.print(f"{model.provider_model}  ({model.id})")
