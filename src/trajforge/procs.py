"""Which process a pid is, without trusting the pid alone.

A job's process is recognised by its command line (``python -m trajforge.jobs <job id> …``), so a
pid the kernel has since given to something else is never taken for a job: never adopted, never
signalled. A zombie (dead, not reaped yet: an orphan whose new parent does not reap, as some
container inits do not) counts as dead. Linux reads ``/proc``; elsewhere ``ps`` answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

JOB_MODULE = "trajforge.jobs"
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    state: str
    """One letter, as ``ps`` shows it: R running, S sleeping, T stopped, Z zombie…"""
    ppid: int
    argv: tuple[str, ...]

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def info(pid: int | None) -> ProcInfo | None:
    """What the system says about ``pid`` now; None when there is no such process."""
    if not pid or pid <= 0:
        return None
    if (_PROC / "self" / "stat").exists():
        try:
            stat = (_PROC / str(pid) / "stat").read_text()
            raw = (_PROC / str(pid) / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except PermissionError:
            return ProcInfo(pid, "?", 0, ())
        # The command name is in parentheses and may itself hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
        return ProcInfo(pid, fields[0], int(fields[1]), argv)
    try:
        out = subprocess.run(
            ["ps", "-o", "stat=", "-o", "ppid=", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.strip().split(None, 2)
    if out.returncode != 0 or len(parts) < 2:
        return None
    return ProcInfo(pid, parts[0][0], int(parts[1]), tuple(parts[2].split()) if len(parts) > 2 else ())


def alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (a zombie does not; one we may not inspect is taken to)."""
    p = info(pid)
    return p is not None and p.alive


def runs_job(p: ProcInfo | None, job_id: str) -> bool:
    """Whether ``p`` is alive and is the process of job ``job_id``."""
    if p is None or not p.alive:
        return False
    argv = p.argv
    return any(argv[i : i + 3] == ("-m", JOB_MODULE, job_id) for i in range(len(argv) - 2))


def job_process(pid: int | None, job_id: str) -> ProcInfo | None:
    """The live process of job ``job_id`` at ``pid``, or None (gone, a zombie, or someone else)."""
    p = info(pid)
    return p if runs_job(p, job_id) else None


def signal_job(pid: int, job_id: str, sig: signal.Signals) -> bool:
    """Send ``sig`` to job ``job_id``'s process (to its process group when it leads one, as a
    runner's job does) after checking ``pid`` is that job's process. False when it is not."""
    if job_process(pid, job_id) is None:
        return False
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
