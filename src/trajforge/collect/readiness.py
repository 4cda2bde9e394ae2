"""The training-readiness report: is the data good enough to train on, and if not, what exactly is
missing? Each check reads the steps' results (pure functions of them: no store access here), says
``ready``, ``partial`` or ``missing``, and names the trajforge command that closes its gap."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ready", "partial", "missing"]

DUPLICATE_RATE_PARTIAL = 0.5
"""A store whose LLM calls repeat more than this share is mostly copies (snapshots dedup them, but
the distinct examples left are fewer than the counts suggest)."""
DROP_RATE_PARTIAL = 0.2
"""A snapshot whose privacy filter dropped more than this share of trajectories loses too much."""
REWARD_COVERAGE_READY = 0.8
INSTRUCTION_ONLY = frozenset({"instruction-search", "prompt-evolution"})
"""Optimizers that change the instruction only (no demonstrations): when they do not help, the
task LM may not follow instructions at all, and demonstrations are the next thing to try."""
"""Share of a task's trajectories with a reward or outcome for the task to count as covered."""


@dataclass(slots=True)
class Action:
    """The next step that closes a gap: a trajforge command and its options (wire names)."""

    label: str
    capability: str
    """The command, e.g. ``trajforge datasets build``."""
    params: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"label": self.label, "capability": self.capability, "params": self.params}


@dataclass(slots=True)
class Check:
    id: str
    label: str
    status: Status
    note: str
    artifact_paths: list[str] = field(default_factory=list)
    action: Action | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "status": self.status,
            "artifactCount": len(self.artifact_paths),
            "artifactPaths": self.artifact_paths[:50],
            "note": self.note,
            "recommendedAction": self.action.to_wire() if self.action else None,
        }


def command_line(action: dict[str, Any]) -> str:
    """The shell command of a recommended action (``id`` is the positional argument)."""
    parts = action["capability"].split()
    params = dict(action.get("params") or {})
    if "id" in params:
        parts.append(str(params.pop("id")))
    for key, value in params.items():
        flag = "--" + "".join("-" + c.lower() if c.isupper() else c for c in key)
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            for v in value:
                parts += [flag, str(v)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) if i >= 3 else p for i, p in enumerate(parts))


Results = dict[str, dict[str, Any] | None]
"""Step id → its result, None when the step did not succeed (skipped, failed)."""


def _not_run(check_id: str, label: str, step: str) -> Check:
    return Check(
        check_id,
        label,
        "missing",
        f"the {step} step did not run, so this could not be checked",
        action=Action(f"Run the collection without --skip-{step.replace('_', '-')}", "trajforge collect run"),
    )


def _tasks(r: Results) -> list[dict[str, Any]]:
    traj = r.get("trajectories") or {}
    return [t for t in traj.get("tasks", []) if t["completed"]]


def check_volume(r: Results, threshold_of: Callable[[str], int]) -> Check:
    label = "Enough completed trajectories per task (auto-training threshold)"
    if r.get("trajectories") is None:
        return _not_run("trajectories_per_task", label, "trajectories")
    tasks = _tasks(r)
    if not tasks:
        return Check(
            "trajectories_per_task",
            label,
            "missing",
            "no completed trajectory with LLM calls yet",
            action=Action("Capture or import completed trajectories", "trajforge trajectories import"),
        )
    short = [(t["task"], t["completed"], threshold_of(t["task"])) for t in tasks]
    short = [s for s in short if s[1] < s[2]]
    note = ", ".join(f"{t['task']} {t['completed']}/{threshold_of(t['task'])}" for t in tasks)
    if not short:
        return Check("trajectories_per_task", label, "ready", note)
    return Check(
        "trajectories_per_task",
        label,
        "partial" if len(short) < len(tasks) else "missing",
        note,
        action=Action(
            f"Capture or import more completed trajectories for {short[0][0]} "
            f"({short[0][2] - short[0][1]} more)",
            "trajforge trajectories import",
        ),
    )


def check_rewards(r: Results) -> Check:
    label = "Reward or outcome coverage"
    if r.get("trajectories") is None:
        return _not_run("reward_coverage", label, "trajectories")
    tasks = _tasks(r)
    if not tasks:
        return Check("reward_coverage", label, "missing", "no completed trajectories to score")
    cov = {t["task"]: t["rewardedOrScored"] / t["trajectories"] for t in tasks if t["trajectories"]}
    note = ", ".join(f"{task} {c:.0%}" for task, c in cov.items())
    low = [task for task, c in cov.items() if c < REWARD_COVERAGE_READY]
    if not low:
        return Check("reward_coverage", label, "ready", note)
    status: Status = "missing" if all(cov[t] == 0 for t in low) and len(low) == len(cov) else "partial"
    return Check(
        "reward_coverage",
        label,
        status,
        note,
        action=Action(
            "Score the trajectories with a reward function (or an LLM judge: trajforge judge)",
            "trajforge score",
            {"fn": "action_reward_sum"},
        ),
    )


def check_pending(r: Results, require_score: str | None) -> Check:
    label = "Late outcomes still pending"
    if require_score is None:
        return Check(
            "pending_outcomes",
            label,
            "ready",
            "no late outcome is required (pass --require-score NAME to check one)",
        )
    out = r.get("outcomes")
    if out is None:
        return _not_run("pending_outcomes", label, "outcomes")
    pending = {t["task"]: t["pending"] for t in out["tasks"] if t["completed"]}
    total = sum(pending.values())
    note = f"{require_score}: " + (", ".join(f"{k} {v} pending" for k, v in pending.items()) or "no tasks")
    if not pending:
        return Check("pending_outcomes", label, "missing", note)
    if total == 0:
        return Check("pending_outcomes", label, "ready", note)
    completed = sum(t["completed"] for t in out["tasks"])
    return Check(
        "pending_outcomes",
        label,
        "missing" if total >= completed else "partial",
        note,
        action=Action(
            f"Build from scored trajectories only until the {require_score} outcomes arrive",
            "trajforge datasets build",
            {"requireScore": require_score},
        ),
    )


def _datasets(r: Results) -> list[dict[str, Any]]:
    return list((r.get("datasets") or {}).get("datasets", []))


def check_privacy(r: Results) -> Check:
    label = "Privacy-filter drop rate"
    if r.get("datasets") is None:
        return _not_run("privacy_drop_rate", label, "datasets")
    ds = _datasets(r)
    if not ds:
        return Check(
            "privacy_drop_rate",
            label,
            "missing",
            "no snapshot has gone through the privacy filter yet",
            action=Action(
                "Build a snapshot (the privacy filter runs on every build)", "trajforge datasets build"
            ),
        )
    newest = ds[0]
    seen = newest["trajectories"] + newest["droppedCount"]
    rate = newest["droppedCount"] / seen if seen else 0.0
    note = (
        f"{newest['name']} v{newest['version']}: {newest['droppedCount']} of {seen} dropped ({rate:.0%}), "
        f"{newest['totalRedactions']} redactions"
    )
    paths = [newest["manifestPath"]]
    if rate <= DROP_RATE_PARTIAL:
        return Check("privacy_drop_rate", label, "ready", note, paths)
    return Check(
        "privacy_drop_rate",
        label,
        "partial",
        note + f"; reasons {newest['droppedByReason']}",
        paths,
        Action(
            "Review why trajectories were dropped (privacy.droppedByReason) before rebuilding",
            "trajforge datasets show",
            {"id": newest["id"], "manifest": True},
        ),
    )


def check_duplicates(r: Results) -> Check:
    label = "Duplicate rate"
    traj = r.get("trajectories")
    if traj is None:
        return _not_run("duplicate_rate", label, "trajectories")
    dup = traj["duplicates"]
    if not dup["llmCalls"]:
        return Check("duplicate_rate", label, "missing", "no LLM calls stored")
    note = f"{dup['llmCalls'] - dup['distinct']} of {dup['llmCalls']} LLM calls repeat another ({dup['rate']:.0%})"
    if dup["rate"] <= DUPLICATE_RATE_PARTIAL:
        return Check("duplicate_rate", label, "ready", note)
    return Check(
        "duplicate_rate",
        label,
        "partial",
        note,
        action=Action(
            "Build with deduplication on (the default)", "trajforge datasets build", {"dedup": True}
        ),
    )


def check_separation(r: Results) -> Check:
    label = "Train/eval scenario separation"
    traj, ds = r.get("trajectories"), r.get("datasets")
    if traj is None or ds is None:
        return _not_run("scenario_separation", label, "trajectories" if traj is None else "datasets")
    split = [d for d in _datasets(r) if d["rows"].get("train") and d["rows"].get("eval")]
    tasks = _tasks(r)
    without = sum(t["trajectories"] - t["withScenario"] for t in tasks)
    total = sum(t["trajectories"] for t in tasks)
    if not split:
        return Check(
            "scenario_separation",
            label,
            "missing",
            "no snapshot has both a train and an eval split",
            action=Action(
                "Build a snapshot with a held-out eval split",
                "trajforge datasets build",
                {"evalFraction": 0.1},
            ),
        )
    paths = [d["manifestPath"] for d in split]
    if without:
        return Check(
            "scenario_separation",
            label,
            "partial",
            f"{without} of {total} trajectories have no scenario id: they are split one by one, so a "
            "scenario may sit in both splits",
            paths,
            Action(
                "Record a scenarioId on each trajectory (Recorder(scenario_id=...)) and rebuild",
                "trajforge datasets build",
            ),
        )
    return Check(
        "scenario_separation",
        label,
        "ready",
        f"every trajectory has a scenario id; {len(split)} snapshot(s) split by scenario",
        paths,
    )


def check_preference(r: Results) -> Check:
    label = "Preference pairs for DPO"
    if r.get("datasets") is None:
        return _not_run("preference_pairs", label, "datasets")
    pairs = [
        d for d in _datasets(r) if d["format"] in ("preference", "openai_dpo") and d["rows"].get("train")
    ]
    if pairs:
        n = sum(d["rows"].get("train", 0) + d["rows"].get("eval", 0) for d in pairs)
        return Check(
            "preference_pairs",
            label,
            "ready",
            f"{n} pairs in {len(pairs)} snapshot(s)",
            [d["manifestPath"] for d in pairs],
        )
    return Check(
        "preference_pairs",
        label,
        "missing",
        "no preference snapshot with pairs (needs several rewarded answers to the same prompt or scenario)",
        action=Action("Build preference pairs", "trajforge datasets build", {"format": "preference"}),
    )


def check_snapshot_per_task(r: Results) -> Check:
    label = "A dataset snapshot for each task"
    if r.get("trajectories") is None or r.get("datasets") is None:
        return _not_run("snapshot_per_task", label, "datasets")
    tasks = [t["task"] for t in _tasks(r)]
    covered = {t for d in _datasets(r) for t in d["tasks"]}
    paths = [d["manifestPath"] for d in _datasets(r)]
    if not tasks:
        return Check("snapshot_per_task", label, "missing", "no tasks with completed trajectories yet", paths)
    missing = [t for t in tasks if t not in covered]
    if not missing:
        return Check("snapshot_per_task", label, "ready", f"{len(tasks)} task(s) covered", paths)
    return Check(
        "snapshot_per_task",
        label,
        "missing" if len(missing) == len(tasks) else "partial",
        "no snapshot for " + ", ".join(missing),
        paths,
        Action(f"Build a snapshot for {missing[0]}", "trajforge datasets build", {"task": missing[0]}),
    )


def check_eval_set(r: Results, suites: list[str]) -> Check:
    label = "An eval suite or eval split"
    if r.get("datasets") is None:
        return _not_run("eval_set", label, "datasets")
    split = [d for d in _datasets(r) if d["rows"].get("eval")]
    if split:
        n = sum(d["rows"]["eval"] for d in split)
        return Check(
            "eval_set",
            label,
            "ready",
            f"{n} eval rows in {len(split)} snapshot(s)",
            [d["manifestPath"] for d in split],
        )
    action = Action("Build a snapshot with an eval split", "trajforge datasets build", {"evalFraction": 0.1})
    if suites:
        return Check(
            "eval_set",
            label,
            "partial",
            "no eval split; registered suites: " + ", ".join(suites),
            action=action,
        )
    return Check("eval_set", label, "missing", "no eval split and no registered suite", action=action)


def check_comparison(r: Results) -> Check:
    label = "A base-vs-trained comparison that improves"
    bench, models = r.get("benchmarks"), r.get("models")
    if bench is None:
        return _not_run("base_vs_trained", label, "benchmarks")
    done = [c for c in bench["comparisons"] if c.get("status") == "completed"]
    registered = (models or {}).get("models", [])
    if not done:
        if registered:
            return Check(
                "base_vs_trained",
                label,
                "missing",
                f"{len(registered)} model(s) registered, none benchmarked",
                action=Action(
                    "Benchmark the newest model against its base",
                    "trajforge models benchmark",
                    {"id": registered[0]["id"]},
                ),
            )
        return Check(
            "base_vs_trained",
            label,
            "missing",
            "no trained model yet",
            action=Action("Fine-tune a LoRA adapter", "trajforge jobs start", {"backend": "cpu"}),
        )
    best = max(done, key=lambda c: c["delta"])
    note = (
        f"{best['modelId']}: base {best['baseScore']:.3f} → trained {best['trainedScore']:.3f} "
        f"({best['deltaPoints']:+.1f} points"
        + (f", {best['deltaPct']:+.1f}%" if best.get("deltaPct") is not None else "")
        + f", n={best['n']})"
    )
    if best["improved"]:
        return Check("base_vs_trained", label, "ready", note)
    return Check(
        "base_vs_trained",
        label,
        "partial",
        note + ": the trained model does not beat its base",
        action=Action(
            "Train longer or on more data, then benchmark again", "trajforge jobs start", {"backend": "cpu"}
        ),
    )


def check_active_model(r: Results) -> Check:
    label = "The active model is tracked"
    models = r.get("models")
    if models is None:
        return _not_run("active_model", label, "models")
    if models["active"]:
        m = next((x for x in models["models"] if x["id"] == models["active"]), None)
        paths = [m["weightsPath"]] if m and m["weightsPath"] else []
        if m and m["weightsPath"] and not m["weightsOnDisk"]:
            return Check(
                "active_model", label, "partial", f"{m['id']} is active but its weights are gone", paths
            )
        return Check("active_model", label, "ready", f"{models['active']} is active", paths)
    if models["models"]:
        newest = models["models"][0]
        return Check(
            "active_model",
            label,
            "partial",
            f"{len(models['models'])} model(s) registered, none active",
            action=Action("Activate a model", "trajforge models activate", {"id": newest["id"]}),
        )
    return Check(
        "active_model",
        label,
        "missing",
        "no model in the registry",
        action=Action("Fine-tune a LoRA adapter", "trajforge jobs start", {"backend": "cpu"}),
    )


def _weak_prompt(task: str, p: dict[str, Any]) -> tuple[str, Action] | None:
    """The gap of a prompt that does not beat its baseline (or was not promoted), if it has one."""
    score, base = p["score"], p["baselineScore"]
    promoted = p["current"] is not None
    if promoted and (score is None or base is None or score > base):
        return None
    measured = (
        f"scored {score:.3f} against the baseline's {base:.3f}"
        if score is not None and base is not None
        else "has no score against the baseline"
    )
    reason = (p.get("promotion") or {}).get("reason")
    note = f"{task}: v{p['shownVersion']} by {p['optimizer']} {measured}" + (
        "" if promoted else f", not promoted{f' ({reason})' if reason else ''}"
    )
    if p["optimizer"] in INSTRUCTION_ONLY:
        note += " (instruction-only optimization: the task LM may ignore instructions)"
        action = Action(
            f"Try demonstrations instead of instructions for {task}",
            "trajforge jobs start",
            {"backend": "native", "optimizer": "bootstrap-fewshot", "task": task},
        )
    else:
        action = Action(
            f"Fine-tune for {task} (a better prompt did not help)", "trajforge jobs start", {"backend": "cpu"}
        )
    return note, action


def check_prompts(r: Results) -> Check:
    label = "Prompt artifacts current"
    prompts = r.get("prompts")
    if prompts is None:
        return _not_run("prompt_artifacts", label, "prompts")
    found = {p["task"]: p for p in prompts["tasks"] if p["shownVersion"] is not None}
    tasks = [t["task"] for t in _tasks(r)] or list(found)
    paths = [p["path"] for p in found.values()]
    newest_ds = max((d["createdAtMs"] for d in _datasets(r)), default=None)
    if not tasks:
        return Check("prompt_artifacts", label, "missing", "no tasks yet")
    missing = [t for t in tasks if t not in found]
    gaps: list[str] = []
    action = None
    for task, p in found.items():
        weak = _weak_prompt(task, p)
        if weak is not None:
            gaps.append(weak[0])
            action = action or weak[1]
        elif newest_ds is not None and p["generatedAtMs"] is not None and p["generatedAtMs"] < newest_ds:
            gaps.append(f"{task}: optimized before the newest snapshot")
            action = action or Action(
                f"Re-optimize {task} on the newest data",
                "trajforge jobs start",
                {"backend": "native", "task": task},
            )
    if missing:
        gaps.append("no optimized prompt for " + ", ".join(missing))
        action = action or Action(
            f"Optimize the {missing[0]} prompt",
            "trajforge jobs start",
            {"backend": "native", "task": missing[0]},
        )
    if not gaps:
        return Check("prompt_artifacts", label, "ready", f"{len(found)} task(s) with a current prompt", paths)
    status: Status = "missing" if len(missing) == len(tasks) else "partial"
    return Check("prompt_artifacts", label, status, "; ".join(gaps), paths, action)


def report(
    results: Results,
    *,
    threshold_of: Callable[[str], int],
    require_score: str | None,
    suites: list[str],
) -> dict[str, Any]:
    """The readiness report: every check, the counts per status and the overall status (``ready``
    when all are, ``missing`` when none is even partly there, else ``partial``)."""
    checks = [
        check_volume(results, threshold_of),
        check_rewards(results),
        check_pending(results, require_score),
        check_privacy(results),
        check_duplicates(results),
        check_separation(results),
        check_preference(results),
        check_snapshot_per_task(results),
        check_eval_set(results, suites),
        check_comparison(results),
        check_active_model(results),
        check_prompts(results),
    ]
    counts = {s: sum(c.status == s for c in checks) for s in ("ready", "partial", "missing")}
    overall: Status = (
        "ready"
        if counts["ready"] == len(checks)
        else "missing"
        if counts["missing"] == len(checks)
        else "partial"
    )
    return {
        "status": overall,
        "counts": counts,
        "checks": [c.to_wire() for c in checks],
        "gaps": [
            {"id": c.id, "status": c.status, "recommendedAction": c.action.to_wire() if c.action else None}
            for c in checks
            if c.status != "ready"
        ],
    }
