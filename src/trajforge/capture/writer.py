"""The background batching writer behind every Recorder.

The agent's thread only appends a small record to a deque (well under 20 µs); a daemon thread
drains it in batches into the sink. Nothing is dropped silently:

- while the sink is unavailable, batches go to this writer's own spool files (JSON lines, see
  ``spool``) in order, and are replayed, oldest first, as soon as the sink answers again; the files
  of a writer that died are taken over by the next writer of the same destination;
- when the queue is full the caller waits a bounded time, then its record is spooled directly;
- the trajectories the sink refuses (a value the store cannot hold, a server error that repeats)
  are kept in a ``rejected-*.jsonl`` file and counted; the rest of their batch is stored;
- only if the spool itself cannot be written is anything lost, and ``stats["lost"]`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trajforge import settings
from trajforge.capture.spool import Spool
from trajforge.capture.transport import Sink, TransientError, reason_of
from trajforge.records import (
    AccessRow,
    CallRow,
    Score,
    StepHeader,
    TrajectoryHeader,
    WriteBatch,
    batch_from_wire,
    batch_to_wire,
)

log = logging.getLogger("trajforge.capture")

Item = TrajectoryHeader | StepHeader | CallRow | AccessRow | Score


class _Marker:
    """Put in the queue by flush(): set once everything before it is written or spooled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


def build_batch(items: Iterable[Item]) -> WriteBatch:
    batch = WriteBatch()
    for item in items:
        if isinstance(item, CallRow):
            batch.calls.append(item)
        elif isinstance(item, StepHeader):
            batch.steps.append(item)
        elif isinstance(item, TrajectoryHeader):
            batch.trajectories.append(item)
        elif isinstance(item, AccessRow):
            batch.accesses.append(item)
        elif isinstance(item, Score):
            batch.scores.append(item)
    return batch


class BackgroundWriter:
    def __init__(
        self,
        sink: Sink,
        spool_dir: Path,
        *,
        max_pending: int = 200_000,
        max_batch: int = 5_000,
        interval_s: float = 0.1,
        put_timeout_s: float = 2.0,
        retry_max_s: float = 5.0,
        settings_refresh_s: float = 2.0,
        sweep_every_s: float = 60.0,
        active_timeout_s: float | None = None,
        adopt_every_s: float = 5.0,
    ) -> None:
        self.sink = sink
        self.spool_dir = spool_dir
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.interval_s = interval_s
        self.put_timeout_s = put_timeout_s
        self.retry_max_s = retry_max_s
        self.settings_refresh_s = settings_refresh_s
        self.sweep_every_s = sweep_every_s
        self.active_timeout_s = (
            active_timeout_s if active_timeout_s is not None else settings.active_timeout_s()
        )
        self._next_sweep = 0.0
        self.adopt_every_s = adopt_every_s
        self._next_adopt = 0.0
        self.enabled = True
        self.stats: dict[str, int] = dict.fromkeys(
            ("written", "spilled", "replayed", "rejected", "lost", "write_errors"), 0
        )
        self._submitted = 0
        self._count_lock = threading.Lock()
        self._items: deque[Item | _Marker] = deque()
        self._wake = threading.Event()
        self._drained = threading.Event()
        self._spool = Spool(spool_dir, sink.key)
        self._healthy = True
        self._next_retry = 0.0
        self._backoff = 0.2
        self._next_refresh = 0.0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="trajforge-writer", daemon=True)
        self._thread.start()

    # --- calling thread --------------------------------------------------------------------------

    def submit(self, item: Item) -> None:
        """Queue one record; never raises, never blocks longer than ``put_timeout_s``."""
        with self._count_lock:  # uncontended: ~0.1 µs; a bare += could lose counts across threads
            self._submitted += 1
        items = self._items
        if len(items) >= self.max_pending and not self._wait_for_room():
            self._spool_batch(build_batch([item]), 1)
            return
        items.append(item)
        if len(items) >= self.max_batch:
            self._wake.set()

    def _wait_for_room(self) -> bool:
        deadline = time.monotonic() + self.put_timeout_s
        self._wake.set()
        while len(self._items) >= self.max_pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop:
                return False
            self._drained.clear()
            self._drained.wait(min(remaining, 0.05))
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything submitted so far is written (or spooled). False on timeout."""
        if not self._thread.is_alive():
            return not self._items
        marker = _Marker()
        self._items.append(marker)
        self._wake.set()
        return marker.done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> bool:
        ok = self.flush(timeout_s)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._spool.close()  # what is left in the spool goes to the next writer
        return ok

    @property
    def pending(self) -> int:
        return len(self._items)

    # --- writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        self._replay_spool()  # leftovers of earlier processes for this destination
        while True:
            wait = self.interval_s
            if not self._healthy:  # a retry is due before the next batch would be
                wait = min(wait, max(0.0, self._next_retry - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()
            try:
                self._cycle()
            except Exception:
                log.exception("trajforge writer cycle failed")
            if self._stop and not self._items:
                return

    def _cycle(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self.settings_refresh_s
            try:
                self.enabled = self.sink.logging_enabled()
            except TransientError:
                pass
            except Exception:
                log.exception("trajforge could not read the logging setting")
        if self._healthy and now >= self._next_sweep:
            # Trajectories whose agent died mid-episode would stay `active` forever otherwise.
            self._next_sweep = now + self.sweep_every_s
            try:
                self.sink.sweep(int(self.active_timeout_s * 1000))
            except TransientError:
                pass
            except Exception:
                log.exception("trajforge could not sweep timed-out trajectories")
        if not self._healthy and now >= self._next_retry:
            self._replay_spool()
        elif self._healthy and (self._spool.has_unsealed or now >= self._next_adopt):
            self._replay_spool()  # callers spilled (queue full), or a writer died and left files
        while self._items:
            items: list[Item] = []
            markers: list[_Marker] = []
            popleft = self._items.popleft
            while self._items and len(items) < self.max_batch:
                item = popleft()
                if isinstance(item, _Marker):
                    markers.append(item)
                    break  # everything before the marker goes in this batch
                items.append(item)
            self._drained.set()
            if items:
                self._deliver(build_batch(items), len(items))
            for m in markers:
                m.done.set()

    def _deliver(self, batch: WriteBatch, n: int) -> None:
        if not self._healthy:
            # Keep order: while older batches wait in the spool, newer ones queue behind them.
            self._spool_batch(batch, n)
            return
        try:
            refused = self.sink.write(batch) or []
        except TransientError as exc:
            self.stats["write_errors"] += 1
            log.warning("trajforge sink unavailable (%s); spooling to %s", exc, self.spool_dir)
            self._mark_unhealthy()
            self._spool_batch(batch, n)
        except Exception as exc:  # noqa: BLE001 - a bad batch must not kill capture
            self.stats["write_errors"] += 1
            log.error("trajforge sink rejected a batch of %d records: %s", n, exc)
            self._reject([(batch, n, reason_of(exc))])
        else:
            # A batch built here holds one record per submitted item: a piece's length is its count.
            pieces = [(r.batch, len(r.batch), r.reason) for r in refused]
            if pieces:
                self.stats["write_errors"] += 1
                log.error("trajforge sink refused %d trajectories: %s", len(pieces), pieces[0][2])
                self._reject(pieces)
            self.stats["written"] += n - sum(k for _, k, _ in pieces)

    def _mark_unhealthy(self) -> None:
        self._healthy = False
        self._next_retry = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    # --- spool -----------------------------------------------------------------------------------

    def _spool_batch(self, batch: WriteBatch, n: int) -> None:
        try:
            self._spool.append(_spool_line(batch, n))
            self.stats["spilled"] += n
        except Exception:
            self.stats["lost"] += n
            log.exception(
                "trajforge LOST %d records: the spool in %s could not be written", n, self.spool_dir
            )

    def _reject(self, refused: list[tuple[WriteBatch, int, str]]) -> None:
        """Keep refused data in ``rejected-*.jsonl`` (one line per batch, with the reason), counted."""
        count = sum(n for _, n, _ in refused)
        try:
            self._spool.append_rejected(b"".join(_spool_line(b, n, reason) for b, n, reason in refused))
            self.stats["rejected"] += count
        except Exception:
            self.stats["lost"] += count
            log.exception(
                "trajforge LOST %d rejected records: %s could not be written",
                count,
                self._spool.rejected_path,
            )

    def _replay_spool(self) -> None:
        """Send spooled batches oldest first (first taking over those of writers that are gone); stop
        at the first outage and keep the rest."""
        self._next_adopt = time.monotonic() + self.adopt_every_s
        try:
            self._spool.adopt_orphans()
        except Exception:
            log.exception("trajforge could not look for spool files of other writers")
        while segments := self._spool.seal():  # again if callers spilled while we replayed
            for segment in segments:
                if not self._replay_file(segment):
                    self._mark_unhealthy()
                    return
                self._spool.done(segment)
        self._healthy = True
        self._backoff = 0.2

    def _replay_file(self, path: Path) -> bool:
        from trajforge import jsonutil  # see _spool_line

        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        done = 0
        for line in lines:
            if not line.strip():
                done += 1
                continue
            try:
                entry = jsonutil.loads(line)
                batch = batch_from_wire(entry["batch"])
                records = int(entry.get("records") or len(batch))
                per: dict[str, int] = entry.get("perTrajectory") or {}
            except Exception:  # noqa: BLE001 - a torn last line after a crash
                log.error("trajforge skipped an unreadable spool line in %s", path)
                self.stats["lost"] += 1
                done += 1
                continue
            try:
                refused = self.sink.write(batch) or []
            except TransientError:
                self._spool.keep_rest(path, lines[done:])
                return False
            except Exception as exc:  # noqa: BLE001
                log.error("trajforge sink rejected a spooled batch: %s", exc)
                self._reject([(batch, records, reason_of(exc))])
            else:
                pieces = [(r.batch, per.get(r.trajectory_id, len(r.batch)), r.reason) for r in refused]
                if pieces:
                    self._reject(pieces)
                self.stats["replayed"] += records - sum(k for _, k, _ in pieces)
            done += 1
        return True

    def counters(self) -> dict[str, Any]:
        """What happened to every record submitted: written, spilled, replayed, rejected, lost."""
        return {"submitted": self._submitted, "pending": self.pending, "healthy": self._healthy, **self.stats}


def _spool_line(batch: WriteBatch, n: int, reason: str | None = None) -> bytes:
    """One spool line. It carries how many submitted records it holds (in all and per trajectory),
    so "replayed" and "rejected" count in the same unit as "spilled" (the wire form merges repeated
    headers)."""
    per: dict[str, int] = {}
    for tid in (
        *(h.id for h in batch.trajectories),
        *(s.trajectory_id for s in batch.steps),
        *(c.trajectory_id for c in batch.calls),
        *(a.trajectory_id for a in batch.accesses),
        *(sc.trajectory_id for sc in batch.scores),
    ):
        per[tid] = per.get(tid, 0) + 1
    entry: dict[str, Any] = {"records": n, "perTrajectory": per, "batch": batch_to_wire(batch)}
    if reason is not None:
        entry["reason"] = reason
    # Imported at the first spooled batch, not with the SDK: orjson (with the json, uuid and platform
    # modules it loads) is ~8 ms of every agent's start, and a store loads it in the writer thread.
    from trajforge import jsonutil

    return jsonutil.dumps_bytes(entry) + b"\n"
