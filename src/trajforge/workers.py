"""Pages of bulk work (exports, dataset builds) done by forked worker processes, results in order.

Turning stored trajectories into bytes is Python work that holds the GIL, so on a machine with two
cores a second *process* doubles what a thread cannot. The parent lists ids (cheap, keyset pages)
and hands each page to a worker; it yields the results in page order, whichever worker finished
first, with a bounded number of pages in flight (memory stays constant).

Workers are forked, not spawned: spawn re-imports the caller's ``__main__``, which breaks any
script without an ``if __name__ == "__main__"`` guard, and forking lets the initializer's arguments
(a privacy filter, a closure) reach the child without pickling. A child only opens its own store
connection and runs pure Python; it never touches the parent's connections or threads.

Smaller work stays in-process (:func:`workers_for`), reading ahead on a thread (:func:`prefetch`).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")

PARALLEL_MIN = 2000
"""Bulk work on fewer trajectories than this stays in-process: starting the workers (forking, each
opening its store) costs ~0.3-1 s, more than two cores save on less."""

_state: Any = None


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods() and (os.cpu_count() or 1) > 1


def default_workers() -> int:
    return min(2, os.cpu_count() or 1) if can_fork() else 1


def workers_for(trajectories: int, requested: int | None = None) -> int:
    """How many worker processes bulk work on (up to) ``trajectories`` trajectories uses:
    ``requested`` when given, else :func:`default_workers` from :data:`PARALLEL_MIN` on, else 1."""
    if requested is not None:
        return requested
    return default_workers() if trajectories >= PARALLEL_MIN else 1


def store_setup(url: str, *shared: Any) -> Callable[[], tuple[Any, ...]]:
    """A worker's setup for :func:`ordered_map`: open the store at ``url`` in the worker; its
    :func:`state` is ``(store, *shared)`` (``shared`` reaches the worker by fork, unpickled)."""

    def setup() -> tuple[Any, ...]:
        from trajforge.store import open_store

        return (open_store(url), *shared)

    return setup


def state() -> Any:
    """What this worker's initializer returned (inside a worker process only)."""
    if _state is None:
        raise RuntimeError("not in a trajforge worker process")
    return _state


def _init(setup: Callable[[], Any]) -> None:
    global _state
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A worker builds millions of short-lived dicts and tuples, almost none in cycles (a parquet
    # page leaves a few dozen small cyclic objects; a worker's memory stays flat over 20 pages):
    # the cyclic collector's passes over them were a few percent of a page in line profiles.
    gc.disable()
    _state = setup()


def ordered_map(
    pages: Iterable[P],
    work: Callable[[P], R],
    setup: Callable[[], Any],
    workers: int,
    ahead: int = 2,
) -> Iterator[R]:
    """``work(page)`` for every page, in page order, run by ``workers`` forked processes.

    ``setup`` runs once in each worker (open the store there) and its result is :func:`state`.
    ``work`` must be a module-level function (it is sent by reference). At most ``ahead`` pages
    per worker are in flight. Abandoning the iterator cancels the pages not started.
    """
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork")
    pending: deque[Any] = deque()
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init, initargs=(setup,)) as pool:
        try:
            for page in pages:
                pending.append(pool.submit(work, page))
                if len(pending) > ahead * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def prefetch(items: Iterable[T], depth: int = 1024) -> Iterator[T]:
    """Produce ``items`` on a background thread, up to ``depth`` ahead of the consumer.

    The database does the heavy lifting of an export or a build's read (assembling JSON, reading
    text) and releases the GIL while it does, so reading the next page overlaps with encoding and
    sending this one: on two cores, close to twice the throughput. Errors surface in the consumer;
    abandoning the iterator (client gone) stops the producer.
    """
    q: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((0, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((1, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            q.put((2, exc))

    thread = threading.Thread(target=produce, name="trajforge-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == 1:
                return
            if kind == 2:
                raise value
            yield value
    finally:
        stop.set()
