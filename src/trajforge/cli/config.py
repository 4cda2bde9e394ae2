"""`trajforge config`: settings shared by every recorder of a store."""

from __future__ import annotations

from typing import Annotated

import typer

from trajforge.capture.transport import LOGGING_ENABLED
from trajforge.cli.common import DbOption, console, err, store_at

app = typer.Typer(help="Settings shared by every recorder of a store.", no_args_is_help=True)


@app.command("logging")
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
