"""`trajforge serve` and `trajforge demo`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from trajforge import settings
from trajforge.cli.common import DbOption, console, err, fail
from trajforge.errors import TrajforgeError
from trajforge.store import open_store


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
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream",
            help="Also serve the OpenAI capture proxy under /proxy/v1, relaying to this OpenAI base URL "
            f"(default: ${settings.PROXY_UPSTREAM})",
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
    bar = MigrationBar()
    try:
        application = create_app(
            db,
            run_jobs=run_jobs,
            allowed_hosts=[*settings.allowed_hosts(), *(allow_host or [])],
            proxy_upstream=upstream or settings.proxy_upstream(),
            on_migration=bar.update,
        )
    except TrajforgeError as exc:
        fail(exc)
        return
    err.print(f"trajforge API on http://{host}:{port} (store: {application.state.store.url})")
    if not application.state.migration.ready:
        err.print(
            f"migrating the store's data ({application.state.migration.name}): /healthz reports the "
            "progress; the other routes answer 503 until it is done"
        )
    uvicorn.run(application, host=host, port=port, log_level="warning")


class MigrationBar:
    """A rich progress bar on stderr for a data migration the server runs after it starts, fed
    from the migration's thread (rich's Progress is thread-safe)."""

    def __init__(self) -> None:
        self._progress: Any = None  # rich.progress.Progress, imported when a migration runs
        self._task: Any = None
        self._finished: set[str] = set()

    def update(self, name: str, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if name in self._finished:
            return  # its closing report repeats the last batch's
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
            )
            self._progress.start()
        if self._task is None:
            self._task = self._progress.add_task(f"migrating {name}", total=total)
        self._progress.update(self._task, completed=done, total=total, description=f"migrating {name}")
        if done >= total:
            self._finished.add(name)
            self._progress.stop()
            self._progress = self._task = None


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
