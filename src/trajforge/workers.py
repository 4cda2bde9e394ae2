"""Pages of bulk work (exports, dataset builds) done by forked worker processes, results in order.

Turning stored trajectories into bytes is Python work that holds the GIL, so on a machine with two
cores a second *process* doubles what a thread cannot. The parent lists ids (cheap, keyset pages)
and hands each page to a worker; it yields the results in page order, whichever worker finished
first, with a bounded number of pages in flight (memory stays constant).

Workers are forked, not spawned: spawn re-imports the caller's ``__main__``, which breaks any
script without an ``if __name__ == "__main__"`` guard, and forking lets the initializer's arguments
(a privacy filter, a closure) reach the child without pickling. A child only opens its own store
connection and runs pure Python; it never touches the parent's connections or threads.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

P = TypeVar("P")
R = TypeVar("R")

_state: Any = None


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods() and (os.cpu_count() or 1) > 1


def default_workers() -> int:
    return min(2, os.cpu_count() or 1) if can_fork() else 1


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
