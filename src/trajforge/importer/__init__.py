"""Import trajectories from files: our own ``json``/``jsonl`` exports, Eliza's trajectory objects,
and JSONL files of per-call rows (the seed system's and Eliza's ``eliza_native_v1``), rebuilt
into trajectories.

* **All or nothing.** The whole file is read and checked before anything is stored: one bad row
  and nothing is stored (the error names every bad row, up to a few). With ``bad_rows=PATH`` the
  good rows are stored and the bad ones written to PATH (JSONL: ``{"where", "error", "field",
  "text"}``, ``text`` being the row as it was in the file).
* **Idempotent.** Ids in the file are kept; records without one get an id derived from their place
  in their trajectory, and a per-call row without any id (allowed by ``eliza_native_v1`` for
  stand-alone training rows) one derived from the sha256 of its content. So importing the same
  file again, from any path or under any name, stores nothing new; exact copies of a row are
  read once.
* **Nothing dropped.** See :mod:`.bundles` and :mod:`.rows` for where each field goes; a time the
  file does not have is never made up: it is taken from a neighbour and flagged, and a trajectory
  with no time at all is stored at the import time with ``metadata.startTimeUnknown: true``.

JSONL above ``KEEP_BYTES`` is read twice (check, then store in batches of ``BATCH``
trajectories), so memory does not grow with the file, except for per-call rows, which are held
until the end of the file since a trajectory's rows may be anywhere in it. Smaller files and
``.json`` documents are parsed once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from trajforge import jsonutil
from trajforge.errors import InvalidInput, TrajforgeError
from trajforge.importer.bundles import trajectory_from_object
from trajforge.importer.rows import RowReader, RowTrajectories, is_call_row
from trajforge.records import Trajectory, WireError, WriteBatch, now_ms
from trajforge.store import Store
from trajforge.validation import check_record

BATCH = 200
SHOWN_ERRORS = 5
# JSONL up to this size is converted once and held (tens of MB of records at most); larger files
# are read twice, so memory stays flat however big the file is.
KEEP_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class _Item:
    position: int  # line number (JSONL) or index (JSON array): where bad rows are recognised again
    where: str
    obj: Any
    raw: bytes | None  # the line as read (JSONL); None for items of a JSON document
    error: str | None = None  # not JSON


class _Source:
    """The objects of a file, readable twice: JSONL is streamed again, a JSON document is parsed
    once and kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signature = self._signature()
        self.document: list[Any] | None = None
        with open(path, "rb") as fh:
            head = fh.read(1)
            while head.isspace():
                head = fh.read(1)
            if head == b"[" or (head == b"{" and path.suffix == ".json"):
                fh.seek(0)
                try:
                    data = jsonutil.loads(fh.read())
                except ValueError as exc:
                    raise InvalidInput(f"{path.name}: not valid JSON ({exc})", "file") from exc
                items = data.get("trajectories") if isinstance(data, dict) else data
                if not isinstance(items, list):
                    raise InvalidInput(f"{path.name}: expected an array of trajectories", "file")
                self.document = items
        self.keep = self.document is not None or self.signature[0] <= KEEP_BYTES

    def _signature(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_size, st.st_mtime_ns

    def unchanged(self) -> bool:
        return self._signature() == self.signature

    def __iter__(self) -> Iterator[_Item]:
        name = self.path.name
        if self.document is not None:
            for i, obj in enumerate(self.document):
                yield _Item(i, f"{name}[{i}]", obj, None)
            return
        with open(self.path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield _Item(n, f"{name}:{n}", jsonutil.loads(line), line)
                except ValueError as exc:
                    yield _Item(n, f"{name}:{n}", None, line, f"not valid JSON ({exc})")


class _BadRows:
    """Bad rows: remembered by position, and written to ``path`` when skipping them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.positions: set[int] = set()
        self.shown: list[str] = []
        self.later = 0  # rows found bad after reading (a trajectory of per-call rows)
        # A bad-rows file left by an earlier run must not stand for this one.
        self._out: IO[bytes] | None = open(path, "wb") if path is not None and path.exists() else None  # noqa: SIM115

    def __len__(self) -> int:
        return len(self.positions) + self.later

    def add(self, item: _Item, message: str, field: str | None) -> None:
        self.positions.add(item.position)
        if len(self.shown) < SHOWN_ERRORS:
            self.shown.append(message)
        if self.path is None:
            return
        text = (
            item.raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if item.raw is not None
            else jsonutil.dumps(item.obj)
        )
        self._write([(item.where, text)], message, field)

    def add_rows(self, wheres: list[str], message: str, field: str | None) -> None:
        """Rows found bad together, after they were read (their text is not kept)."""
        self.later += len(wheres)
        if len(self.shown) < SHOWN_ERRORS:
            self.shown.append(message)
        if self.path is not None:
            self._write([(where, None) for where in wheres], message, field)

    def _write(self, rows: list[tuple[str, str | None]], message: str, field: str | None) -> None:
        if self._out is None:
            assert self.path is not None  # callers write only when skipping to a file
            self._out = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        for where, text in rows:
            line = {"where": where, "error": message, "field": field, "text": text}
            self._out.write(jsonutil.dumps_bytes(line) + b"\n")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def _message(exc: WireError, where: str) -> tuple[str, str | None]:
    field = exc.field or where
    return f"{field}: {exc}", field


def import_file(
    store: Store,
    path: str | Path,
    on_progress: Callable[[int], None] | None = None,
    *,
    bad_rows: str | Path | None = None,
) -> dict[str, int]:
    """Import one file into ``store``; returns counts of what was read and newly stored.

    Without ``bad_rows`` a file with any bad row stores nothing and raises :class:`InvalidInput`
    naming them; with it, bad rows are skipped and written there (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", "file")
    out = Path(bad_rows) if bad_rows is not None else None
    if out is not None and out.exists() and out.resolve() == path.resolve():
        raise InvalidInput("the bad-rows file must not be the file being imported", "bad_rows")
    source = _Source(path)
    now = now_ms()
    bad = _BadRows(out)
    rows = RowTrajectories()
    reader = RowReader()
    kept: list[tuple[Trajectory, bool]] = []  # when the file is read once (source.keep)
    built: list[tuple[Trajectory, bool]] = []  # the trajectories of per-call rows
    bundles = 0

    # Pass 1: read and check everything; per-call rows are kept (they are grouped at the end).
    try:
        for item in source:
            if item.error is not None:
                bad.add(item, f"{item.where}: {item.error}", item.where)
                continue
            obj = item.obj
            try:
                if not isinstance(obj, dict):
                    raise WireError("expected a JSON object", item.where)
                if is_call_row(obj):
                    rows.add(reader.read(obj, item.where))
                else:
                    parsed = trajectory_from_object(obj, item.where, now)
                    # As stored: fields without a column moved into metadata sit deeper than in
                    # the file, and what the limits refuse there no read could return.
                    check_record(parsed[0], item.where)
                    bundles += 1
                    if source.keep:
                        kept.append(parsed)
            except WireError as exc:
                bad.add(item, *_message(exc, item.where))
            if source.document is not None:
                source.document[item.position] = None  # converted: let the parsed JSON go
        # Per-call rows become trajectories only now (a trajectory's rows can be anywhere in the
        # file): check each as it will be stored; one over the limits takes all its rows with it.
        # Built once, here: pass 2 stores what was checked.
        for tid in list(rows.rows):
            try:
                trajectory = rows.build(tid, now)
                check_record(trajectory[0], f"{path.name}: trajectory {tid}")
                built.append(trajectory)
            except WireError as exc:
                bad.add_rows([rc.where for rc in rows.rows[tid]], *_message(exc, tid))
            del rows.rows[tid]
    finally:
        bad.close()
    if len(bad) and out is None:
        more = f" (and {len(bad) - len(bad.shown)} more)" if len(bad) > len(bad.shown) else ""
        raise InvalidInput(
            f"{len(bad)} bad row{'s' if len(bad) > 1 else ''} in {path.name}, nothing was stored: "
            + "; ".join(bad.shown)
            + more
            + ". Fix them, or skip them (--skip-bad) to store the good rows and write the bad ones to a file",
            "file",
        )

    counts = {
        "trajectories": 0,
        "llmCalls": 0,
        "newTrajectories": 0,
        "newLlmCalls": 0,
        "badRows": len(bad),
        "duplicateRows": rows.duplicates,
    }
    total = bundles + len(built)
    batch = WriteBatch()

    def flush() -> None:
        nonlocal batch
        if len(batch):
            result = store.write(batch)
            counts["newTrajectories"] += result.new_trajectories
            counts["newLlmCalls"] += result.new_calls
            batch = WriteBatch()

    def add(t: Trajectory, start_unknown: bool) -> None:
        part = WriteBatch.from_trajectory(t)
        if start_unknown:
            # Unknown times stay unset in the headers: the store then uses the time it first saw
            # the trajectory, and a later import of the same file does not move it.
            part.trajectories[0].start_time = part.trajectories[0].end_time = None
            for s in part.steps:
                s.timestamp = None
        batch.extend(part)
        counts["trajectories"] += 1
        counts["llmCalls"] += len(part.calls)
        if len(batch.trajectories) >= BATCH:
            flush()
        if on_progress is not None:
            on_progress(counts["trajectories"])

    # Pass 2: store, in batches. Nothing below is expected to fail on content (pass 1 read it
    # all); if the store fails, say how far the import got: re-running it is safe.
    try:
        if source.keep:
            for t, unknown in kept:
                add(t, unknown)
            kept.clear()
        elif bundles:
            if not source.unchanged():
                raise InvalidInput(f"{path.name} changed while it was being imported", "file")
            for item in source:
                if item.position in bad.positions or item.error is not None or is_call_row(item.obj):
                    continue
                add(*trajectory_from_object(item.obj, item.where, now))
        for t, unknown in built:
            add(t, unknown)
        built.clear()
        flush()
    except (TrajforgeError, WireError) as exc:
        stored = counts["trajectories"] - len(batch.trajectories)
        note = (
            f" ({stored} of {total} trajectories of {path.name} were stored before this; "
            "importing the file again is safe and stores the rest)"
            if stored
            else " (nothing was stored)"
        )
        if isinstance(exc, WireError):
            raise InvalidInput(f"{_message(exc, path.name)[0]}{note}", "file") from exc
        exc.message += note
        exc.args = (exc.message,)
        raise
    return counts
