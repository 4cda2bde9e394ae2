"""Where the SDK's batches go: straight into a store, or (see ``http``) to a trajforge server.

A sink raises :class:`TransientError` when trying again later may succeed (database locked or
unreachable, server down) and anything else when the batch itself is bad.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterator
from typing import Protocol

import psycopg

from trajforge.errors import StoreError
from trajforge.records import WriteBatch
from trajforge.store import Store, open_store

LOGGING_ENABLED = "logging_enabled"
"""The settings key that turns capture on/off for every recorder using a store."""


class TransientError(Exception):
    """The sink is unavailable right now; the batch should be retried or spooled."""


class Sink(Protocol):
    key: str
    """Stable name of the destination: spool files of one destination are replayed into it only."""

    def write(self, batch: WriteBatch) -> None: ...

    def logging_enabled(self) -> bool: ...

    def sweep(self, older_than_ms: int) -> int:
        """Mark stale ``active`` trajectories ``timeout``; a server sink leaves that to the server."""
        ...

    def close(self) -> None: ...


def destination_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _unavailable_is_transient() -> Iterator[None]:
    """A locked, unreachable or closed database is an outage: retry or spool, not a bad batch."""
    try:
        yield
    except (sqlite3.OperationalError, psycopg.OperationalError, StoreError) as exc:
        raise TransientError(str(exc)) from exc


class StoreSink:
    """Writes batches into a :class:`Store` in this process.

    Given a URL instead of a store, it opens the store on first use and again after a failure, so
    an agent that starts while its database is down spools instead of failing.
    """

    def __init__(
        self, store: Store | None = None, *, url: str | None = None, owns_store: bool = True
    ) -> None:
        if store is None and url is None:
            raise ValueError("StoreSink needs a store or a url")
        self._store = store
        self._url = url if url is not None else store.url  # type: ignore[union-attr]
        self.key = destination_key(self._url)
        self._owns = owns_store

    @property
    def store(self) -> Store:
        if self._store is None:
            with _unavailable_is_transient():
                self._store = open_store(self._url)
        return self._store

    def write(self, batch: WriteBatch) -> None:
        with _unavailable_is_transient():
            self.store.write(batch)

    def logging_enabled(self) -> bool:
        with _unavailable_is_transient():
            return bool(self.store.get_setting(LOGGING_ENABLED, True))

    def sweep(self, older_than_ms: int) -> int:
        with _unavailable_is_transient():
            return self.store.sweep_timeouts(older_than_ms)

    def close(self) -> None:
        if self._owns and self._store is not None:
            self._store.close()
