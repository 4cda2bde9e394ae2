"""The spool: files where a writer keeps the batches its destination cannot take yet.

Every writer of a host may share one directory (``$TRAJFORGE_HOME/spool``), so ownership is
explicit and nothing is ever renamed over anything:

- a writer's files are named after its id ``<key>-<pid>-<ns>`` (``key``: the destination). Before
  its first file exists it holds an exclusive ``flock`` on ``<id>.lock`` (made under a temporary
  name and renamed, so it never appears unlocked) until it closes; the kernel drops the lock when
  the process dies, whatever kills it;
- it appends only to its current segment ``<id>.<seq>.jsonl``; a replay first seals that segment
  (the next append starts a new one), so a replay never races an append;
- the segments of a writer whose lock is free or gone (it died, or closed with data left) are
  adopted by renaming each to a new name of the adopter's. A rename is atomic, so each segment is
  taken by one writer only, and the new name is fresh, so the rename cannot replace anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from trajforge import procs

log = logging.getLogger("trajforge.capture")


def _flock(fd: int, *, wait: bool) -> None:
    """Take ``fd``'s exclusive lock (held until it is closed); without ``wait``, OSError if another
    process holds it. POSIX only: without fcntl (Windows) the SDK imports and records, and only a
    spool write fails, logged and counted lost by the writer."""
    try:
        import fcntl
    except ImportError:
        raise OSError("the spool needs POSIX file locks (fcntl), which this platform lacks") from None
    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)


class Spool:
    """One writer's share of a spool directory (see the module docstring)."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.key = key
        self._lock = threading.Lock()  # appends come from the writer thread and from callers
        self._owner: str | None = None
        self._owner_fd: int | None = None
        self._seq = 0
        self._current: Path | None = None
        self._sealed: list[Path] = []  # own segments waiting for replay, oldest first
        self.rejected_path = directory / f"rejected-{key}-{os.getpid()}-{time.time_ns()}.jsonl"

    # --- appending -------------------------------------------------------------------------------

    def append(self, lines: bytes) -> None:
        """Append to the current segment, durably (fsync) before returning."""
        with self._lock:
            if self._current is None:
                self._current = self._new_segment()
            _append(self._current, lines)

    def append_rejected(self, lines: bytes) -> None:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            _append(self.rejected_path, lines)

    @property
    def has_unsealed(self) -> bool:
        """Something was appended since the last :meth:`seal`."""
        return self._current is not None

    def _new_segment(self) -> Path:
        """A fresh segment name of ours (under ``self._lock``), taking ownership first if needed."""
        if self._owner is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            owner = f"{self.key}-{os.getpid()}-{time.time_ns()}"
            tmp = self.directory / f"{owner}.lock.tmp"
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                _flock(fd, wait=True)
                os.rename(tmp, self.directory / f"{owner}.lock")
            except BaseException:
                os.close(fd)
                raise
            self._owner, self._owner_fd = owner, fd
        self._seq += 1
        return self.directory / f"{self._owner}.{self._seq:06d}.jsonl"

    # --- replaying -------------------------------------------------------------------------------

    def seal(self) -> list[Path]:
        """Close the current segment for appends; return every segment of ours to replay, oldest first."""
        with self._lock:
            if self._current is not None:
                self._sealed.append(self._current)
                self._current = None
            return list(self._sealed)

    def done(self, segment: Path) -> None:
        """A sealed segment is replayed: remove it."""
        with self._lock:
            segment.unlink(missing_ok=True)
            with contextlib.suppress(ValueError):
                self._sealed.remove(segment)

    @staticmethod
    def keep_rest(segment: Path, rest: list[bytes]) -> None:
        """A replay stopped part way: the sealed segment keeps only the lines not yet delivered."""
        tmp = segment.with_name(segment.name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in rest))
        os.replace(tmp, segment)  # our own sealed segment: nobody else writes it

    def adopt_orphans(self) -> int:
        """Take over the segments of writers of this destination that are gone. Returns how many."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        prefix = self.key + "-"
        segments: dict[str, list[tuple[int, str]]] = {}
        locks: set[str] = set()
        legacy: list[str] = []
        for name in names:
            if not name.startswith(prefix):
                continue
            if name.endswith(".lock"):
                locks.add(name[: -len(".lock")])
            elif name.endswith(".jsonl"):
                owner, dot, seq = name[: -len(".jsonl")].rpartition(".")
                if dot and seq.isdigit():
                    segments.setdefault(owner, []).append((int(seq), name))
                else:
                    legacy.append(name)
            elif ".jsonl.replaying-" in name:
                legacy.append(name)
        taken = 0
        for owner in sorted(set(segments) | locks):
            if owner == self._owner:
                continue
            fd = self._lock_of_gone(owner) if owner in locks else None
            if owner in locks and fd is None:
                continue  # alive: its files are its own
            try:
                for _, name in sorted(segments.get(owner, [])):
                    taken += self._take(self.directory / name)
                if fd is not None:
                    # Nothing of that writer is left; it can never append again (it is gone).
                    with contextlib.suppress(OSError):
                        (self.directory / f"{owner}.lock").unlink()
            finally:
                if fd is not None:
                    os.close(fd)
        for name in legacy:
            taken += self._take_legacy(name)
        return taken

    def _lock_of_gone(self, owner: str) -> int | None:
        """An fd holding the lock of ``owner`` if that writer is gone; None while it lives."""
        try:
            fd = os.open(self.directory / f"{owner}.lock", os.O_RDWR)
        except OSError:
            return None
        try:
            _flock(fd, wait=False)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _take(self, path: Path) -> int:
        with self._lock:
            target = self._new_segment()
            try:
                os.rename(path, target)  # atomic; the target is a fresh name of ours
            except OSError:
                return 0  # another writer took it first
            self._sealed.append(target)
            return 1

    def _take_legacy(self, name: str) -> int:
        """Files of trajforge versions before segments (``<key>-<pid>-<ns>.jsonl``, and
        ``….jsonl.replaying-<pid>``): taken once the process in the name is gone."""
        stem = name.split(".jsonl", 1)[0]
        pids = [stem.split("-")[1]] if stem.count("-") == 2 else []
        if ".replaying-" in name:
            pids.append(name.rsplit("-", 1)[1])
        try:
            if any(int(p) == os.getpid() or procs.alive(int(p)) for p in pids):
                return 0
        except ValueError:
            return 0
        return self._take(self.directory / name)

    def close(self) -> None:
        """Give up ownership; segments left behind are adopted by the next writer of the destination."""
        with self._lock:
            if self._owner is None or self._owner_fd is None:
                return
            with contextlib.suppress(OSError):
                (self.directory / f"{self._owner}.lock").unlink()
            os.close(self._owner_fd)
            self._owner = self._owner_fd = None
            if self._current is not None:
                self._sealed.append(self._current)
                self._current = None


def _append(path: Path, lines: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())
