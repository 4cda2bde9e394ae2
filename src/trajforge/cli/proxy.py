"""`trajforge proxy`: the OpenAI-compatible capture proxy (:mod:`trajforge.proxy`) on its own."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from trajforge import settings
from trajforge.cli.common import DbOption, err, fail
from trajforge.errors import TrajforgeError


def proxy(
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream",
            help=f"OpenAI base URL to relay to, e.g. http://127.0.0.1:11434/v1 (default: ${settings.PROXY_UPSTREAM})",
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port")] = 2139,
    db: DbOption = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help=f"Without a token, also answer requests for this Host name (adds to {settings.ALLOWED_HOSTS})",
        ),
    ] = None,
) -> None:
    """Relay OpenAI API calls to --upstream and record each as a trajectory: point an agent's
    base_url at http://HOST:PORT/v1. Group calls with X-Trajforge-Trajectory (and -Agent, -Source,
    -Scenario, -Step, -End: true) request headers; without them each call is a trajectory."""
    import uvicorn

    from trajforge.proxy import ProxyApp, check_upstream, proxy_writer, public_url
    from trajforge.server.app import _Guard, is_loopback

    target = upstream or settings.proxy_upstream()
    if not target:
        err.print(
            f"[red]error (--upstream):[/red] give the OpenAI base URL to relay to (or set {settings.PROXY_UPSTREAM})"
        )
        raise typer.Exit(2)
    token = settings.api_token()
    if not is_loopback(host) and not token:
        err.print(
            f"[red]error (--host):[/red] binding to {host} exposes the proxy beyond this machine; "
            f"set {settings.API_TOKEN} first (clients then send it as 'X-Trajforge-Token')"
        )
        raise typer.Exit(2)
    try:
        url = check_upstream(target)  # before the writer's thread starts
        app = ProxyApp(url, proxy_writer(db), token=token)
    except TrajforgeError as exc:
        fail(exc)
        return
    hosts = None if token else [h.strip().lower() for h in [*settings.allowed_hosts(), *(allow_host or [])]]
    guarded = _Guard(app, max_body=app.max_body, hosts=hosts)
    store = db or settings.database_url()
    err.print(
        f"trajforge proxy on http://{host}:{port}/v1 → {public_url(app.upstream)} (store: {public_url(store)})"
    )
    # The background writer's thread (batching, JSON, the store) shares the GIL with the relay:
    # hand it back every 0.5 ms instead of 5 so a write never holds a relayed call up for long.
    sys.setswitchinterval(0.0005)
    # The Guard passes lifespan through, so the app closes its pool and flushes its writer.
    uvicorn.run(guarded, host=host, port=port, log_level="warning", lifespan="on")
