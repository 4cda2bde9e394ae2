"""Where the SDK's batches go: straight into a store, or (see ``http``) to a trajforge server.

A sink raises :class:`TransientError` when trying again later may succeed (database locked or
unreachable, server down) and anything else when the batch itself is bad.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Protocol

import psycopg

from trajforge.errors import StoreError
from trajforge.records import WriteBatch
from trajforge.store import Store

LOGGING_ENABLED = "logging_enabled"
"""The settings key that turns capture on/off for every recorder using a store."""


class TransientError(Exception):
    """The sink is unavailable right now; the batch should be retried or spooled."""


class Sink(Protocol):
    key: str
    """Stable name of the destination: spool files of one destination are replayed into it only."""

    def write(self, batch: WriteBatch) -> None: ...

    def logging_enabled(self) -> bool: ...

    def close(self) -> None: ...


def destination_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class StoreSink:
    """Writes batches into a :class:`Store` in this process."""

    def __init__(self, store: Store, *, owns_store: bool = True) -> None:
        self.store = store
        self.key = destination_key(store.url)
        self._owns = owns_store

    def write(self, batch: WriteBatch) -> None:
        try:
            self.store.write(batch)
        except (sqlite3.OperationalError, psycopg.OperationalError, StoreError) as exc:
            raise TransientError(str(exc)) from exc

    def logging_enabled(self) -> bool:
        try:
            return bool(self.store.get_setting(LOGGING_ENABLED, True))
        except (sqlite3.OperationalError, psycopg.OperationalError, StoreError) as exc:
            raise TransientError(str(exc)) from exc

    def close(self) -> None:
        if self._owns:
            self.store.close()
