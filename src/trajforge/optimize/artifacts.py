"""Prompt artifacts: the versioned output of native optimization, and what the agent reads live.

Layout under ``<state>/optimized-prompts/``::

    <task-dir>/v1.json, v2.json, …   one file per optimization run (the last 5 are kept)
    <task-dir>/current               the version the agent uses ("3"), replaced atomically

``<task-dir>`` is the task name made safe plus a hash (task names come from recorded data and are
never used as a path as given). A new version becomes ``current`` only when it beat the incumbent
on the same holdout by more than the measured noise (:func:`should_promote`); otherwise it is kept
for the record with ``promotion.promoted = false``. :func:`rollback` moves ``current`` back to the
previous promoted version.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from trajforge import settings
from trajforge.errors import InvalidInput, NotFound
from trajforge.paths import hashed_name
from trajforge.records import iso_ms, now_ms

KEEP = 5
MIN_MARGIN = 0.01


@dataclass(slots=True)
class PromptArtifact:
    """One optimized prompt for one task, with how it was found and how good it measured."""

    task: str
    optimizer: str
    prompt: str
    baseline: str
    few_shot_examples: list[dict[str, Any]] = field(default_factory=list)
    """Demonstrations: ``{"input": [messages], "output": str}``."""
    score: float | None = None
    baseline_score: float | None = None
    dataset_id: str | None = None
    dataset_size: int = 0
    generated_at: int = field(default_factory=now_ms)
    lineage: dict[str, Any] = field(default_factory=dict)
    """Where it came from: parent version, job id, LM, rounds, LM calls used."""
    promotion: dict[str, Any] = field(default_factory=dict)
    version: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.version,
            "optimizer": self.optimizer,
            "baseline": self.baseline,
            "prompt": self.prompt,
            "fewShotExamples": self.few_shot_examples,
            "score": self.score,
            "baselineScore": self.baseline_score,
            "datasetId": self.dataset_id,
            "datasetSize": self.dataset_size,
            "generatedAt": iso_ms(self.generated_at),
            "generatedAtMs": self.generated_at,
            "lineage": self.lineage,
            "promotion": self.promotion,
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> PromptArtifact:
        return cls(
            task=d["task"],
            version=int(d.get("version", 0)),
            optimizer=d.get("optimizer", ""),
            baseline=d.get("baseline", ""),
            prompt=d["prompt"],
            few_shot_examples=list(d.get("fewShotExamples") or []),
            score=d.get("score"),
            baseline_score=d.get("baselineScore"),
            dataset_id=d.get("datasetId"),
            dataset_size=int(d.get("datasetSize") or 0),
            generated_at=int(d.get("generatedAtMs") or now_ms()),
            lineage=dict(d.get("lineage") or {}),
            promotion=dict(d.get("promotion") or {}),
        )


def root(home: Path | None = None) -> Path:
    path = (home or settings.home()) / "optimized-prompts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def task_dir(task: str, home: Path | None = None) -> Path:
    if not task or len(task) > 200:
        raise InvalidInput("a task name is 1-200 characters", "task")
    return root(home) / hashed_name(task)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def versions(task: str, home: Path | None = None) -> list[int]:
    d = task_dir(task, home)
    if not d.exists():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := re.fullmatch(r"v(\d+)\.json", p.name)))


def load(task: str, version: int, home: Path | None = None) -> PromptArtifact:
    path = task_dir(task, home) / f"v{version}.json"
    if not path.exists():
        raise NotFound(f"no version {version} of the prompt for task {task!r}", "version")
    art = PromptArtifact.from_wire(orjson.loads(path.read_bytes()))
    art.version = version
    return art


def current_version(task: str, home: Path | None = None) -> int | None:
    pointer = task_dir(task, home) / "current"
    try:
        return int(pointer.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def current(task: str, home: Path | None = None) -> PromptArtifact | None:
    v = current_version(task, home)
    return None if v is None else load(task, v, home)


def should_promote(
    new_scores: Sequence[float], incumbent_scores: Sequence[float], min_margin: float = MIN_MARGIN
) -> tuple[bool, dict[str, Any]]:
    """Promote when the new prompt beats the incumbent on the same holdout items by more than the
    noise: the mean paired difference must exceed both ``min_margin`` and its standard error."""
    if len(new_scores) != len(incumbent_scores) or not new_scores:
        raise ValueError("promotion compares scores on the same, non-empty holdout")
    diffs = [a - b for a, b in zip(new_scores, incumbent_scores, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    stderr = math.sqrt(var / n)
    needed = max(min_margin, stderr)
    decision = {
        "meanGain": mean,
        "stderr": stderr,
        "requiredGain": needed,
        "holdoutSize": n,
        "promoted": mean > needed,
    }
    return mean > needed, decision


def save(
    art: PromptArtifact,
    *,
    new_scores: Sequence[float] | None = None,
    incumbent_scores: Sequence[float] | None = None,
    home: Path | None = None,
    force: bool = False,
) -> PromptArtifact:
    """Write ``art`` as the task's next version and make it current if it earned it (or if there is
    no current prompt yet and it beat the baseline; or ``force``). Keeps the last :data:`KEEP`."""
    d = task_dir(art.task, home)
    d.mkdir(parents=True, exist_ok=True)
    incumbent = current_version(art.task, home)
    decision: dict[str, Any]
    if force:
        promote, decision = True, {"promoted": True, "forced": True}
    elif new_scores is not None and incumbent_scores is not None:
        promote, decision = should_promote(new_scores, incumbent_scores)
    else:
        promote, decision = False, {"promoted": False, "reason": "no holdout scores to compare"}
    decision["incumbentVersion"] = incumbent
    art.promotion = decision
    art.lineage.setdefault("parentVersion", incumbent)
    art.version = (max(versions(art.task, home), default=0)) + 1
    _atomic_write(d / f"v{art.version}.json", orjson.dumps(art.to_wire(), option=orjson.OPT_INDENT_2))
    if promote:
        _atomic_write(d / "current", str(art.version).encode())
    _prune(art.task, home)
    return art


def _prune(task: str, home: Path | None) -> None:
    keep_current = current_version(task, home)
    old = versions(task, home)[:-KEEP]
    for v in old:
        if v != keep_current:
            (task_dir(task, home) / f"v{v}.json").unlink(missing_ok=True)


def rollback(task: str, home: Path | None = None) -> PromptArtifact:
    """Make the previous promoted version current again."""
    now = current_version(task, home)
    if now is None:
        raise NotFound(f"task {task!r} has no current prompt to roll back", "task")
    earlier = [v for v in versions(task, home) if v < now and load(task, v, home).promotion.get("promoted")]
    if not earlier:
        raise NotFound(f"task {task!r} has no earlier promoted prompt", "task")
    _atomic_write(task_dir(task, home) / "current", str(earlier[-1]).encode())
    return load(task, earlier[-1], home)


def tasks(home: Path | None = None) -> list[dict[str, Any]]:
    """Every task with artifacts: its current version, score and artifact (None without one)."""
    out = []
    for d in sorted(root(home).iterdir()):
        files = sorted(d.glob("v*.json"))
        if not d.is_dir() or not files:
            continue
        task = orjson.loads(files[-1].read_bytes())["task"]
        cur = current(task, home)
        out.append(
            {
                "task": task,
                "versions": versions(task, home),
                "current": cur.version if cur else None,
                "score": cur.score if cur else None,
                "artifact": cur,
            }
        )
    return out
