"""Where the SDK's batches go: straight into a store, or (see ``http``) to a trajforge server.

A sink raises :class:`TransientError` when trying again later may succeed (database locked or
unreachable, server down) and anything else when the batch itself is bad. A batch the destination
refuses is split by trajectory (:func:`write_split`), so only the trajectories it refuses on their
own are returned as :class:`Refusal` and the rest is stored.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from trajforge.errors import InvalidInput, StoreError
from trajforge.records import WriteBatch

if TYPE_CHECKING:
    from trajforge.store import Store, WriteResult

log = logging.getLogger("trajforge.capture")

LOGGING_ENABLED = "logging_enabled"
"""The settings key that turns capture on/off for every recorder using a store."""

OUTAGE_STATUSES = frozenset({401, 403, 429, 502, 503, 504})
"""Answers of a server that mean "not now" (a token to fix, overload, a proxy without its server,
the server's store down): the batch waits in the spool. Any other error status is about the data
or a server bug: retrying it forever would queue everything recorded later behind it."""

REOPEN_AFTER_S = 2.0
"""After a failed open of the store, calls fail fast for this long instead of waiting again (a
locked SQLite file makes every open wait its 30 s busy timeout)."""


class TransientError(Exception):
    """The sink is unavailable right now; the batch should be retried or spooled."""


class ServerAnswered(Exception):
    """A trajforge server answered a batch with an error status (see :data:`OUTAGE_STATUSES`)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"server answered {status}: {body[:500]}")
        self.status = status

    @property
    def split(self) -> bool:
        """Whether sending the batch's trajectories apart can help: a bad value (400/422), a body
        too large (413) or a server error may concern one trajectory only; 404/405/409 concern all."""
        return self.status in (400, 413, 422) or self.status >= 500


@dataclass(slots=True)
class Refusal:
    """One trajectory the destination refused, with all of it that was in the batch."""

    trajectory_id: str
    reason: str
    batch: WriteBatch


class Sink(Protocol):
    key: str
    """Stable name of the destination: spool files of one destination are replayed into it only."""

    def write(self, batch: WriteBatch) -> list[Refusal] | None:
        """Store the batch; return the trajectories refused (the rest is stored)."""
        ...

    def logging_enabled(self) -> bool: ...

    def sweep(self, older_than_ms: int) -> int:
        """Mark stale ``active`` trajectories ``timeout``; a server sink leaves that to the server."""
        ...

    def close(self) -> None: ...


def destination_key(url: str) -> str:
    import hashlib  # here, once per recorder: loading OpenSSL is ~5 ms of every agent's import

    return hashlib.sha256(url.encode()).hexdigest()[:16]


def store_key(url: str) -> str:
    """The spool key of a store: one per database, however its URL is written (``x.db``,
    ``sqlite:///…/x.db``, an open store's URL), so the next process replays what this one left."""
    if url.startswith(("postgresql://", "postgres://")):
        return destination_key(url)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    return destination_key(f"sqlite:///{Path(path).expanduser().resolve()}")


@contextlib.contextmanager
def _unavailable_is_transient() -> Iterator[None]:
    """A locked, unreachable or closed database, an unreachable server or one answering with an
    outage status is an outage: retry or spool, not a bad batch."""
    try:
        yield
    except StoreError as exc:
        raise TransientError(str(exc)) from exc
    except _loaded("sqlite3.OperationalError", "psycopg.OperationalError") as exc:
        raise TransientError(str(exc)) from exc
    except _loaded("httpx.HTTPError") as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    except ServerAnswered as exc:
        if exc.status in OUTAGE_STATUSES:
            raise TransientError(str(exc)) from exc
        raise


def _loaded(*names: str) -> tuple[type[Exception], ...]:
    """The exception classes named ``module.Class`` whose module is imported. Each driver is
    imported only by the store or sink that uses it (an agent recording into SQLite never loads
    psycopg or httpx: ~0.3 s of import), and no exception of a module never imported can reach
    :func:`_unavailable_is_transient`. An ``except`` clause evaluates its classes only when an
    exception gets there."""
    found = []
    for name in names:
        module, _, cls = name.rpartition(".")
        if (loaded := sys.modules.get(module)) is not None:
            found.append(getattr(loaded, cls))
    return tuple(found)


def reason_of(exc: BaseException) -> str:
    """One line saying why a write was refused (the first line: PostgreSQL's DETAIL repeats the row)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def by_trajectory(batch: WriteBatch) -> dict[str, WriteBatch]:
    """The batch's records grouped by trajectory, in order of first appearance."""
    groups: dict[str, WriteBatch] = {}

    def group(tid: str) -> WriteBatch:
        g = groups.get(tid)
        if g is None:
            g = groups[tid] = WriteBatch()
        return g

    for h in batch.trajectories:
        group(h.id).trajectories.append(h)
    for s in batch.steps:
        group(s.trajectory_id).steps.append(s)
    for c in batch.calls:
        group(c.trajectory_id).calls.append(c)
    for a in batch.accesses:
        group(a.trajectory_id).accesses.append(a)
    for sc in batch.scores:
        group(sc.trajectory_id).scores.append(sc)
    return groups


T = TypeVar("T")


def write_split(
    write: Callable[[WriteBatch], T],
    batch: WriteBatch,
    *,
    first: Callable[[WriteBatch], T] | None = None,
) -> tuple[list[T], list[Refusal]]:
    """Write ``batch``; if it is refused, write its trajectories in halves, recursively, so that only
    the trajectories refused on their own are returned (k bad of n: about 2·k·log2(n) writes).

    ``write`` raises :class:`TransientError` for an outage (propagated: the caller spools the whole
    batch; re-sending what was already stored is harmless, writes are idempotent by ids) and any
    other exception for a refusal. ``first`` replaces ``write`` for the whole batch (the HTTP sink
    retries a server error there before splitting). Returns the results of the writes that passed.
    """
    results: list[T] = []
    refused: list[Refusal] = []

    def attempt(pieces: list[tuple[str, WriteBatch]], fn: Callable[[WriteBatch], T]) -> None:
        merged = pieces[0][1] if len(pieces) == 1 else _merge(p for _, p in pieces)
        try:
            results.append(fn(merged))
            return
        except TransientError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure refuses this data
            if len(pieces) == 1 or not getattr(exc, "split", True):
                reason = reason_of(exc)
                refused.extend(Refusal(tid, reason, p) for tid, p in pieces)
                return
        mid = len(pieces) // 2
        attempt(pieces[:mid], write)
        attempt(pieces[mid:], write)

    try:
        results.append((first or write)(batch))
    except TransientError:
        raise
    except Exception as exc:  # noqa: BLE001
        groups = list(by_trajectory(batch).items())
        if len(groups) <= 1 or not getattr(exc, "split", True):
            reason = reason_of(exc)
            refused.extend(Refusal(tid, reason, p) for tid, p in groups)
        else:
            mid = len(groups) // 2
            attempt(groups[:mid], write)
            attempt(groups[mid:], write)
    return results, refused


def _merge(pieces: Iterator[WriteBatch] | list[WriteBatch]) -> WriteBatch:
    out = WriteBatch()
    for p in pieces:
        out.extend(p)
    return out


@dataclass(slots=True)
class StoredBatch:
    """What :func:`store_batch` did: the sum of the writes that passed, and what was refused."""

    result: WriteResult
    refused: list[Refusal] = field(default_factory=list)


def store_batch(store: Store, batch: WriteBatch) -> StoredBatch:
    """Write a batch into a store, keeping its good trajectories when the store refuses some (a value
    a column or a rollup cannot hold, a constraint). Raises :class:`TransientError` for an outage.

    The one write path of the SDK's direct sink and of the server's batch ingest route.
    """
    from trajforge.store import WriteResult  # the store package loads in the writer thread, not at import

    def write(b: WriteBatch) -> WriteResult:
        with _unavailable_is_transient():
            return store.write(b)

    results, refused = write_split(write, batch)
    total = WriteResult()
    for r in results:
        total.new_trajectories += r.new_trajectories
        total.new_steps += r.new_steps
        total.new_calls += r.new_calls
        total.new_accesses += r.new_accesses
        total.scores += r.scores
        total.completed.extend(r.completed)
    for refusal in refused:
        log.warning("trajforge: the store refused trajectory %r: %s", refusal.trajectory_id, refusal.reason)
    return StoredBatch(total, refused)


def check_store_url(url: str) -> None:
    """Raise :class:`InvalidInput` for a URL :func:`open_store` would refuse, without connecting
    (the recorder opens its store later, in its writer thread)."""
    if url.startswith(("postgresql://", "postgres://")):
        from trajforge.store.postgres import split_url

        split_url(url)
    elif url.startswith("sqlite://") and not url.startswith("sqlite:///"):
        raise InvalidInput("use sqlite:///path/to/file.db (three slashes)", "db")


class StoreSink:
    """Writes batches into a :class:`Store` in this process.

    Given a URL instead of a store, it opens the store on first use and again after a failure, so
    an agent that starts while its database is down or locked spools instead of failing or waiting.
    """

    def __init__(
        self, store: Store | None = None, *, url: str | None = None, owns_store: bool = True
    ) -> None:
        if store is None and url is None:
            raise ValueError("StoreSink needs a store or a url")
        self._store = store
        self._url = url if url is not None else store.url  # type: ignore[union-attr]
        self.key = store_key(self._url)
        self._owns = owns_store
        self._reopen_at = 0.0
        self._open_error = ""

    @property
    def store(self) -> Store:
        if self._store is None:
            if time.monotonic() < self._reopen_at:
                raise TransientError(f"the store is unavailable: {self._open_error}")
            from trajforge.store import open_store

            try:
                with _unavailable_is_transient():
                    self._store = open_store(self._url)
            except TransientError as exc:
                self._open_error = str(exc)
                self._reopen_at = time.monotonic() + REOPEN_AFTER_S
                raise
        return self._store

    def write(self, batch: WriteBatch) -> list[Refusal]:
        store = self.store  # outside the split: a store that cannot open refuses nothing by itself
        return store_batch(store, batch).refused

    def logging_enabled(self) -> bool:
        with _unavailable_is_transient():
            return bool(self.store.get_setting(LOGGING_ENABLED, True))

    def sweep(self, older_than_ms: int) -> int:
        with _unavailable_is_transient():
            return self.store.sweep_timeouts(older_than_ms)

    def close(self) -> None:
        if self._owns and self._store is not None:
            self._store.close()
