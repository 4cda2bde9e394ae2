"""Where trajectories live: :func:`open_store` picks the backend from a URL or path."""

from __future__ import annotations

from pathlib import Path

from trajforge import settings
from trajforge.errors import InvalidInput
from trajforge.store.base import Page, Store, TrajectoryFilter, WriteResult, build_filter, parse_date

__all__ = ["Page", "Store", "TrajectoryFilter", "WriteResult", "build_filter", "open_store", "parse_date"]


def open_store(url: str | Path | None = None) -> Store:
    """Open the store at ``url``: a path or ``sqlite:///path`` (SQLite) or ``postgresql://…``.

    ``None`` means ``$TRAJFORGE_DATABASE_URL`` or the SQLite file in the state dir. Migrations are
    applied on open.
    """
    target = str(url) if url is not None else settings.database_url()
    if target.startswith(("postgresql://", "postgres://")):
        from trajforge.store.postgres import PostgresStore

        return PostgresStore(target)
    if target.startswith(("http://", "https://")):
        raise InvalidInput("an http(s) URL is a server, not a store: use it with Recorder()", "db")
    if target.startswith("sqlite:///"):
        target = target[len("sqlite:///") :]
    elif target.startswith("sqlite://"):
        raise InvalidInput("use sqlite:///path/to/file.db (three slashes)", "db")
    from trajforge.store.sqlite import SQLiteStore

    return SQLiteStore(target)
