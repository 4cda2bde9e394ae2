"""A data migration run by the server after it starts: its status for ``/healthz``, and the gate
that answers every other route 503 (with ``Retry-After``) until it is done.

A data migration rewrites existing rows in batches (:class:`~trajforge.store.migrations.DataMigration`)
and may take minutes on a big store. ``trajforge serve`` opens the store without running it, starts
serving, and runs it in a thread: ``/healthz`` says how far it is, instead of the port staying
closed for minutes. The other routes wait for it because the code reading and writing the store
expects the migrated schema (and the schema migrations queued after the data migration).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from trajforge.store import Store
from trajforge.store.migrations import Progress

log = logging.getLogger("trajforge.server")

RETRY_AFTER_S = 5
OPEN_PATHS = ("/healthz", "/static/")  # answered while migrating: health, and the assets of its page


class _Stopped(Exception):
    """Raised from the progress callback to end a run between batches when the server stops."""


@dataclass
class MigrationStatus:
    """Where the store's data migration is: ``running``, ``done`` or ``failed`` (with ``error``)."""

    state: str = "done"
    name: str | None = None
    done: int = 0
    total: int = 0
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _running: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ready(self) -> bool:
        return self.state == "done"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.name is not None:
            out.update(
                name=self.name,
                done=self.done,
                total=self.total,
                progress=round(self.done / self.total, 4) if self.total else float(self.ready),
            )
        if self.error is not None:
            out["error"] = self.error
        return out

    def run(self, store: Store, on_progress: Progress | None = None) -> None:
        """Run the store's pending data migrations here (a worker thread), keeping this status
        current; returns early, between batches, after :meth:`stop`."""

        def report(name: str, done: int, total: int) -> None:
            self.name, self.done, self.total = name, done, total
            if on_progress is not None:
                on_progress(name, done, total)
            if self._stop.is_set():
                raise _Stopped

        with self._running:
            if self._stop.is_set():
                return
            try:
                store.migrate_data(report)
            except _Stopped:
                return
            except Exception as exc:
                log.exception("data migration %s failed", self.name)
                self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
                return
            self.state = "done"

    def stop(self) -> None:
        """Ask a run to end after its current batch, and wait until it has (before the store closes)."""
        self._stop.set()
        with self._running:
            pass


class MigrationGate:
    """Plain ASGI: while the data migration runs (or after it failed), every route but
    :data:`OPEN_PATHS` answers 503 ``migrating`` with ``Retry-After``."""

    def __init__(self, app: ASGIApp, status: MigrationStatus) -> None:
        self.app = app
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.status.ready
            or scope["path"] == OPEN_PATHS[0]
            or scope["path"].startswith(OPEN_PATHS[1])
        ):
            await self.app(scope, receive, send)
            return
        from trajforge.server.app import error_response

        s = self.status
        if s.state == "failed":
            message = f"the store's data migration {s.name} failed ({s.error}); see the server log"
        else:
            pct = f"{100 * s.done / s.total:.0f}%" if s.total else "starting"
            message = f"the store is being migrated ({s.name or 'data migration'}, {pct}); retry shortly"
        response = error_response(503, "migrating", message, headers={"Retry-After": str(RETRY_AFTER_S)})
        await response(scope, receive, send)
