"""`trajforge jobs`: queue, follow, cancel training jobs; run a worker."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from trajforge import settings
from trajforge.cli.common import DbOption, JobId, console, err, print_json, progress_bar, store_at
from trajforge.cli.options import request_options
from trajforge.jobs import request as job_request
from trajforge.jobs.request import JobOptions
from trajforge.optimize.native import NativeOptions
from trajforge.records import iso_ms
from trajforge.store import Store
from trajforge.train.lora import LoraOptions
from trajforge.train.remote import RemoteOptions
from trajforge.train.vast import VastOptions

app = typer.Typer(help="Queue, watch and cancel training jobs.", no_args_is_help=True)


@app.command("start")
@request_options((NativeOptions, LoraOptions, RemoteOptions, VastOptions), "options", parse=job_request.parse)
def jobs_start(
    options: JobOptions,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Run it here and follow progress (default), or only queue it"),
    ] = True,
    db: DbOption = None,
) -> None:
    """Queue a training job; with --wait (default) run it here with a progress bar.

    --backend native optimizes prompts (--optimizer, --iterations = trials); cpu/cuda/mlx train a
    LoRA adapter on --model (--iterations = optimizer steps) and register it (trajforge models list);
    ssh trains the same adapter on --host user@host[:port] over SSH and brings it back."""
    from trajforge import jobs

    with store_at(db) as store:
        job = jobs.submit(store, options)
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
    with progress_bar() as progress:
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


@app.command("list")
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


@app.command("show")
def jobs_show(job_id: JobId, db: DbOption = None) -> None:
    """Show one job as JSON."""
    from trajforge import jobs

    with store_at(db) as store:
        print_json(jobs.wire(jobs.get(store, job_id)))


@app.command("cancel")
def jobs_cancel(job_id: JobId, db: DbOption = None) -> None:
    """Cancel a pending job, or ask the runner of a running one to stop it."""
    from trajforge import jobs

    with store_at(db) as store:
        job = jobs.cancel(store, job_id)
    console.print(f"{job.id}: {job.status}{' (stop requested)' if job.cancel_requested else ''}")


@app.command("logs")
def jobs_logs(
    job_id: JobId,
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


@app.command("worker")
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
