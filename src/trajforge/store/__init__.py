"""Where trajectories live: :func:`open_store` picks the backend from a URL or path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajforge import settings
from trajforge.errors import InvalidInput
from trajforge.store.base import Page, Store, WriteResult

if TYPE_CHECKING:
    from trajforge.store.filter import TrajectoryFilter, parse_date

__all__ = ["Page", "Store", "TrajectoryFilter", "WriteResult", "open_store", "parse_date"]


def __getattr__(name: str) -> Any:
    # The filter imports pydantic; a process that only records (the capture SDK) never needs it.
    if name in ("TrajectoryFilter", "parse_date"):
        from trajforge.store import filter as filter_module

        return getattr(filter_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str | Path | None = None, *, migrate_data: bool = True) -> Store:
    """Open the store at ``url``: a path or ``sqlite:///path`` (SQLite) or ``postgresql://…``.

    ``None`` means ``$TRAJFORGE_DATABASE_URL`` or the SQLite file in the state dir. Migrations are
    applied on open. ``migrate_data=False`` leaves a pending data migration (a batched rewrite of
    existing rows, which may take minutes) to :meth:`Store.migrate_data`, as ``trajforge serve``
    does to answer ``/healthz`` while it runs; the store must not be used for anything else until
    then (the schema migrations after it wait with it).
    """
    target = str(url) if url is not None else settings.database_url()
    if target.startswith(("postgresql://", "postgres://")):
        from trajforge.store.postgres import PostgresStore

        return PostgresStore(target, migrate_data=migrate_data)
    if target.startswith(("http://", "https://")):
        raise InvalidInput("an http(s) URL is a server, not a store: use it with Recorder()", "db")
    if target.startswith("sqlite:///"):
        target = target[len("sqlite:///") :]
    elif target.startswith("sqlite://"):
        raise InvalidInput("use sqlite:///path/to/file.db (three slashes)", "db")
    from trajforge.store.sqlite import SQLiteStore

    return SQLiteStore(target, migrate_data=migrate_data)
