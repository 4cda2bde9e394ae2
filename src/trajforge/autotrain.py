"""Auto-training: once enough new trajectories of a task are stored, optimize it by itself.

The store counts completed trajectories per task as they are written, whichever way they arrive
(SDK, HTTP ingest, import). :func:`check` — run by every job runner a few times a minute — starts a
job (native unless the task names a
fine-tuning backend) for a task when its count reaches the threshold (default 100), its cooldown (default
12 h since its last trigger) has passed and no job for it is on its way. The counter goes down by
the trajectories a job was started for only when that job completed; a failed or cancelled run
leaves it as it was. At a runner's start, a task at or over its threshold with no optimized
prompt yet is optimized (``bootstrap``) unless ``TRAJFORGE_DISABLE_AUTO_BOOTSTRAP=1``. Runners
call :func:`check` through the runner hook this module registers (:mod:`trajforge.jobs.hooks`).

Config, kept in the store's settings (so every server shares it)::

    {"enabled": true, "threshold": 100, "cooldownHours": 12,
     "perTask": {"support_reply": {"threshold": 50, "cooldownHours": 1, "backend": "native"}}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trajforge import jobs, settings
from trajforge.errors import InvalidInput, NotFound
from trajforge.records import JOB_FINISHED, Job, JobEvent, now_ms
from trajforge.store.base import Store

log = logging.getLogger(__name__)

CONFIG_KEY = "autotrain.config"
DEFAULTS: dict[str, Any] = {"enabled": True, "threshold": 100, "cooldownHours": 12.0, "perTask": {}}
_TASK_KEYS = {"threshold", "cooldownHours", "backend"}
_BACKEND_CHOICES = f"{', '.join(jobs.BACKENDS[:-1])} or {jobs.BACKENDS[-1]}"


def validate_config(body: Any) -> dict[str, Any]:
    """A complete config from a (possibly partial) body; bad values are errors naming the field,
    never silently replaced by defaults."""
    if not isinstance(body, dict):
        raise InvalidInput("the config must be a JSON object", None)
    unknown = set(body) - set(DEFAULTS)
    if unknown:
        raise InvalidInput(f"unknown config keys: {', '.join(sorted(unknown))}", sorted(unknown)[0])
    out = {**DEFAULTS, **body}
    if not isinstance(out["enabled"], bool):
        raise InvalidInput("enabled must be true or false", "enabled")
    _threshold(out["threshold"], "threshold")
    _cooldown(out["cooldownHours"], "cooldownHours")
    per = out["perTask"]
    if not isinstance(per, dict):
        raise InvalidInput("perTask must be an object of task → settings", "perTask")
    for task, conf in per.items():
        where = f"perTask.{task}"
        if not isinstance(conf, dict):
            raise InvalidInput(f"{where} must be an object", where)
        bad = set(conf) - _TASK_KEYS
        if bad:
            raise InvalidInput(
                f"unknown keys in {where}: {', '.join(sorted(bad))}", f"{where}.{sorted(bad)[0]}"
            )
        if "threshold" in conf:
            _threshold(conf["threshold"], f"{where}.threshold")
        if "cooldownHours" in conf:
            _cooldown(conf["cooldownHours"], f"{where}.cooldownHours")
        if "backend" in conf and conf["backend"] not in jobs.BACKENDS:
            raise InvalidInput(f"{where}.backend must be {_BACKEND_CHOICES}", f"{where}.backend")
    return out


def _threshold(v: Any, field: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000_000:
        raise InvalidInput(f"{field} must be a whole number from 1 to 10,000,000", field)


def _cooldown(v: Any, field: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 24 * 365:
        raise InvalidInput(f"{field} must be a number of hours from 0 to 8760", field)


def get_config(store: Store) -> dict[str, Any]:
    stored = store.get_setting(CONFIG_KEY)
    return {**DEFAULTS, **stored} if isinstance(stored, dict) else dict(DEFAULTS)


def set_config(store: Store, body: Any) -> dict[str, Any]:
    config = validate_config(body)
    store.set_setting(CONFIG_KEY, config)
    return config


def _task_settings(config: dict[str, Any], task: str) -> tuple[int, float, str]:
    per = config["perTask"].get(task, {})
    return (
        int(per.get("threshold", config["threshold"])),
        float(per.get("cooldownHours", config["cooldownHours"])),
        str(per.get("backend", "native")),
    )


def status(store: Store, now: int | None = None, home: Path | None = None) -> dict[str, Any]:
    """Per task: its count, threshold, cooldown left, last run, pending job, whether it is due."""
    from trajforge.optimize import artifacts

    now = now or now_ms()
    config = get_config(store)
    tasks = []
    for row in store.task_counters():
        threshold, cooldown_h, backend = _task_settings(config, row["task"])
        since = None if row["last_trigger_at"] is None else now - row["last_trigger_at"]
        cooldown_left = 0.0 if since is None else max(0.0, cooldown_h * 3_600_000 - since) / 3_600_000
        tasks.append(
            {
                "task": row["task"],
                "completedSinceLastRun": row["completed"],
                "threshold": threshold,
                "cooldownHours": cooldown_h,
                "cooldownHoursLeft": round(cooldown_left, 4),
                "backend": backend,
                "lastTriggerAt": row["last_trigger_at"],
                "lastRunAt": row["last_run_at"],
                "lastJobId": row["last_job_id"],
                "pendingJobId": row["pending_job_id"],
                "hasPrompt": artifacts.current_version(row["task"], home) is not None,
                "due": config["enabled"]
                and row["pending_job_id"] is None
                and row["completed"] >= threshold
                and cooldown_left == 0,
            }
        )
    return {"enabled": config["enabled"], "tasks": tasks}


def _settle(store: Store, row: dict[str, Any], now: int) -> bool:
    """Settle a task whose pending job ended. Returns True while its job is still on its way."""
    job_id = row["pending_job_id"]
    if job_id is None:
        return False
    job = store.get_job(job_id)
    if job is None:
        # Claimed but not queued: either another runner is queuing it this instant, or the process
        # that claimed it died in between. Only the second frees the task (after a minute).
        if now - (row["last_trigger_at"] or 0) < 60_000:
            return True
        store.settle_task_trigger(row["task"], job_id, False, now)
        return False
    if job.status not in JOB_FINISHED:
        return True
    store.settle_task_trigger(row["task"], job_id, job.status == "completed", now)
    return False


def _start(store: Store, task: str, backend: str, reason: str, now: int) -> Job | None:
    job = Job(
        kind=jobs.kind_of(backend),
        backend=backend,
        request={"backend": backend, "task": task, "autotrain": reason},
    )
    if not store.claim_task_trigger(task, job.id, now):
        return None  # another runner triggered it first
    store.add_job(job)
    store.add_event(
        JobEvent("job_progress", f"auto-training {task}: {reason}", job_id=job.id, phase="queued")
    )
    return job


def _available(backend: str) -> bool:
    return bool(jobs.backends()[backend]["available"])


def check(
    store: Store, now: int | None = None, *, bootstrap: bool = False, home: Path | None = None
) -> list[Job]:
    """Start the jobs that are due (see the module docs); returns them."""
    from trajforge.optimize import artifacts

    now = now or now_ms()
    config = get_config(store)
    started = []
    for row in store.task_counters():
        if _settle(store, row, now):
            continue
        threshold, cooldown_h, backend = _task_settings(config, row["task"])
        if not config["enabled"] or row["completed"] < threshold or not _available(backend):
            continue
        cooled = row["last_trigger_at"] is None or now - row["last_trigger_at"] >= cooldown_h * 3_600_000
        first = bootstrap and artifacts.current_version(row["task"], home) is None
        if cooled or first:
            reason = (
                "bootstrap: no optimized prompt yet"
                if first and not cooled
                else f"{row['completed']} new trajectories"
            )
            job = _start(store, row["task"], backend, reason, now)
            if job is not None:
                started.append(job)
    return started


def trigger(store: Store, task: str | None = None, now: int | None = None) -> list[Job]:
    """Start a run now, ignoring threshold and cooldown (not a task whose job is on its way)."""
    now = now or now_ms()
    rows = {r["task"]: r for r in store.task_counters()}
    if task is not None and task not in rows:
        raise NotFound(f"no completed trajectories of task {task!r} have been counted", "task")
    started = []
    config = get_config(store)
    for name in [task] if task is not None else sorted(rows):
        if _settle(store, rows[name], now):
            continue
        _, _, backend = _task_settings(config, name)
        job = _start(store, name, backend, "triggered by hand", now)
        if job is not None:
            started.append(job)
    return started


def bootstrap_allowed() -> bool:
    return not settings.env_flag(settings.DISABLE_AUTO_BOOTSTRAP)


def _runner_hook(store: Store, home: Path | None, starting: bool) -> None:
    check(store, bootstrap=starting and bootstrap_allowed(), home=home)


jobs.hooks.register(jobs.hooks.RunnerHook("auto-training", _runner_hook, every_s=10.0))
