"""What every command shares: the consoles, the ``--db`` option, opening the store, and turning a
library error into a clean message naming the flag (exit 2)."""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trajforge.errors import TrajforgeError
from trajforge.store import Store, open_store

console = Console()
err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="Store URL or SQLite path (default: $TRAJFORGE_DATABASE_URL or the state dir)."
    ),
]
DatasetId = Annotated[str, typer.Argument(metavar="ID", help="Dataset id")]
JobId = Annotated[str, typer.Argument(metavar="ID", help="Job id")]
ModelId = Annotated[str, typer.Argument(metavar="ID", help="Model id")]

# Flags of the command running now, by wire field path: errors the library raises while it runs
# (``InvalidInput(..., "privacy.dropOn")``) name this command's flag (see trajforge.cli.options).
current_flags: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "current_flags", default=None
)
# Names the library gives things that are not request fields (those map to the flags derived from
# their declaration, see trajforge.cli.options).
ARGUMENTS = {"file": "FILE", "id": "ID"}


def print_json(value: object) -> None:
    """One JSON document on stdout (the ``show`` commands), for ``jq`` and friends."""
    from trajforge import jsonutil

    sys.stdout.write(jsonutil.dumps(value) + "\n")


def flag_for(field: str) -> str:
    """The flag (or argument) a library error's field means on the command line."""
    derived = "--" + re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", field).replace("_", "-").lower()
    return (current_flags.get() or {}).get(field) or ARGUMENTS.get(field) or derived


def fail(exc: TrajforgeError) -> typer.Exit:
    """Print a library error naming the flag, and exit 2."""
    flag = flag_for(exc.field) if exc.field else ""
    err.print(f"[red]error{f' ({flag})' if flag else ''}:[/red] {exc.message}")
    raise typer.Exit(2)


@contextlib.contextmanager
def store_at(db: str | None) -> Iterator[Store]:
    """Open the store and turn library errors into CLI errors."""
    try:
        store = open_store(db)
    except TrajforgeError as exc:
        raise fail(exc) from exc
    try:
        yield store
    except TrajforgeError as exc:
        raise fail(exc) from exc
    finally:
        store.close()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
