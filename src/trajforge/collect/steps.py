"""The steps of a collection run. Each reads one kind of evidence (the store's trajectories, the
dataset snapshots, the registry, ...), writes what it found under ``steps/<id>/`` in the run
folder, and returns a JSON summary. A step that raises is recorded as ``failed`` with its reason;
the next one runs anyway (:func:`run_steps`).

Memory: the store is read through grouped SQL aggregates (``stats``, ``task_coverage``,
``score_coverage``, ``duplicate_calls``) and a few sample trajectories per source, never by
iterating every trajectory, so a run over a million calls holds what a few hundred rows hold.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import orjson

from trajforge import settings
from trajforge.collect.request import STEP_IDS, CollectRequest
from trajforge.errors import InvalidInput, TrajforgeError
from trajforge.records import iso_ms
from trajforge.store.base import Store

log = logging.getLogger(__name__)

StepStatus = Literal["succeeded", "failed", "skipped"]
PREVIEW_CHARS = 400
"""Characters of a prompt or response shown in a sample preview."""
PROBE_TIMEOUT_S = 5.0


class HfPull(Protocol):
    """How the ``hf_datasets`` step pulls one Hugging Face dataset (``trajforge.hub`` supplies
    it): import ``repo`` (``ORG/NAME``) as a dataset snapshot of ``store`` and return a JSON summary
    of it (at least ``repo``, ``revision``, ``datasetId``, ``rows``); ``out_dir`` is the step's own
    folder for anything it wants to keep beside the run (named by a hash of the repo, never by the
    repo itself). Raise a :class:`TrajforgeError` naming the
    repo on failure."""

    def __call__(self, store: Store, repo: str, *, out_dir: Path) -> dict[str, Any]: ...


@dataclass(slots=True)
class StepResult:
    """One step's outcome, as the manifest records it."""

    id: str
    status: StepStatus
    output_dir: str | None = None
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "outputDir": self.output_dir,
            "error": self.error,
            "result": self.result,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Context:
    """What the steps share: the store, the request, the run folder and what earlier steps found."""

    store: Store
    request: CollectRequest
    run_dir: Path
    home: Path
    trusted: bool = True
    """From this machine's user (CLI, Python); False over HTTP, where files must be inside home."""
    hf_pull: HfPull | None = None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Privacy-filtered previews per source."""
    _coverage: list[dict[str, Any]] | None = None

    def coverage(self) -> list[dict[str, Any]]:
        """The store's per-task coverage (one query, shared by the steps that need it)."""
        if self._coverage is None:
            self._coverage = self.store.task_coverage(self.request.require_score)
        return self._coverage

    def step_dir(self, step: str) -> Path:
        path = self.run_dir / "steps" / step
        path.mkdir(parents=True, exist_ok=True)
        return path


def write_json(path: Path, data: Any) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


def inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


# --- the steps ---------------------------------------------------------------------------------


def step_jsonl_imports(ctx: Context) -> dict[str, Any]:
    """Import each ``--jsonl`` file (all or nothing per file); one bad file fails the step but the
    others are still imported."""
    from trajforge import importer

    req = ctx.request
    if not req.jsonl:
        raise _Skip("no --jsonl files given")
    files, failures = [], []
    for given in req.jsonl:
        path = Path(given).expanduser().resolve()
        entry: dict[str, Any] = {"file": str(path), "runId": req.run_id}
        try:
            if not ctx.trusted and not inside(path, ctx.home):
                raise InvalidInput(f"{given}: files imported over HTTP must be inside {ctx.home}", "jsonl")
            with open(path, "rb") as fh:  # unreadable → a clear reason, before the importer
                fh.read(1)
            entry.update(importer.import_file(ctx.store, path), status="imported")
        except (OSError, TrajforgeError) as exc:
            reason = exc.message if isinstance(exc, TrajforgeError) else f"{type(exc).__name__}: {exc}"
            entry.update(status="failed", error=reason)
            failures.append(f"{given}: {reason}")
        files.append(entry)
    write_json(ctx.step_dir("jsonl_imports") / "imports.json", files)
    summary = {
        "runId": req.run_id,
        "files": files,
        "trajectories": sum(f.get("trajectories", 0) for f in files),
        "newTrajectories": sum(f.get("newTrajectories", 0) for f in files),
    }
    if failures:
        raise _Failed("; ".join(failures), summary)
    return summary


def step_hf_datasets(ctx: Context) -> dict[str, Any]:
    req = ctx.request
    if not req.hf_dataset:
        raise _Skip("no --hf-dataset given")
    if ctx.hf_pull is None:
        raise _Skip("Hugging Face pulls are not available in this build (no hf_datasets hook)")
    out = ctx.step_dir("hf_datasets")
    pulled, failures = [], []
    for repo in req.hf_dataset:
        try:
            pulled.append({"repo": repo, "status": "pulled", **ctx.hf_pull(ctx.store, repo, out_dir=out)})
        except TrajforgeError as exc:
            pulled.append({"repo": repo, "status": "failed", "error": exc.message})
            failures.append(f"{repo}: {exc.message}")
    write_json(out / "pulls.json", pulled)
    if failures:
        raise _Failed("; ".join(failures), {"datasets": pulled})
    return {"datasets": pulled}


def step_trajectories(ctx: Context) -> dict[str, Any]:
    """Totals by source and status, per task with reward coverage, duplicates, and a few
    privacy-filtered previews per source."""
    store = ctx.store
    stats = store.stats()
    calls, distinct = store.duplicate_calls()
    summary = {
        "total": stats["totalTrajectories"],
        "llmCalls": stats["totalLlmCalls"],
        "bySource": stats["bySource"],
        "byStatus": stats["byStatus"],
        "byModel": [{"model": m["model"], "llmCalls": m["llmCalls"]} for m in stats["byModel"][:20]],
        "reward": stats["reward"],
        "perDay": stats["perDay"][-60:],
        "tasks": ctx.coverage(),
        "duplicates": {
            "llmCalls": calls,
            "distinct": distinct,
            "rate": round(1 - distinct / calls, 4) if calls else 0.0,
        },
    }
    ctx.samples = _previews(ctx, sorted(stats["bySource"]))
    summary["samplePreviews"] = {src: len(rows) for src, rows in ctx.samples.items()}
    write_json(ctx.step_dir("trajectories") / "summary.json", summary)
    return summary


def _previews(ctx: Context, sources: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The newest few trajectories of each source, each run through the privacy filter first."""
    from trajforge import privacy
    from trajforge.store.filter import TrajectoryFilter

    n = ctx.request.samples_per_source
    if not n:
        return {}
    pf = privacy.for_store(ctx.store)
    out: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        rows = []
        for head in ctx.store.list_trajectories(TrajectoryFilter(source=source), limit=n).items:
            t = ctx.store.get_trajectory(head.id)
            if t is None:  # deleted meanwhile
                continue
            t = privacy.filter_trajectory(pf, t)
            call = next((c for s in t.steps for c in s.llm_calls), None)
            rows.append(
                {
                    "trajectoryId": t.id,
                    "agentId": t.agent_id,
                    "scenarioId": t.scenario_id,
                    "status": t.status,
                    "startTime": iso_ms(t.start_time),
                    "steps": len(t.steps),
                    "llmCalls": sum(len(s.llm_calls) for s in t.steps),
                    "totalReward": t.total_reward,
                    "task": (call.action_type or call.purpose) if call else None,
                    "prompt": _clip(call.user_prompt if call else None),
                    "response": _clip(call.response if call else None),
                }
            )
        out[source] = rows
    return out


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= PREVIEW_CHARS:
        return text
    return text[:PREVIEW_CHARS] + "…"


T = TypeVar("T")


def _every(page: Callable[..., list[T]], size: int = 100) -> Iterator[T]:
    """Every item of a store listing (``list_datasets``, ``list_models``), a page at a time."""
    offset = 0
    while True:
        items = page(limit=size, offset=offset)
        yield from items
        if len(items) < size:
            return
        offset += size


def step_datasets(ctx: Context) -> dict[str, Any]:
    """Every dataset snapshot: format, rows per split and task, privacy report, manifest on disk."""
    items = []
    for ds in _every(ctx.store.list_datasets):
        m = ds.manifest
        privacy = m.get("privacy", {})
        manifest_path = Path(ds.path) / "manifest.json"
        items.append(
            {
                "id": ds.id,
                "name": ds.name,
                "version": ds.version,
                "format": ds.format,
                "createdAt": iso_ms(ds.created_at),
                "createdAtMs": ds.created_at,
                "trajectories": ds.trajectory_count,
                "rows": m.get("counts", {}).get("rows", {}),
                "tasks": {
                    t: {k: v for k, v in c.items() if k in ("train", "eval")}
                    for t, c in m.get("counts", {}).get("tasks", {}).items()
                },
                "droppedCount": privacy.get("droppedCount", 0),
                "droppedByReason": privacy.get("droppedByReason", {}),
                "duplicatesSkipped": privacy.get("duplicatesSkipped", 0),
                "totalRedactions": privacy.get("totalRedactions", 0),
                "evalFraction": m.get("request", {}).get("evalFraction"),
                "manifestPath": str(manifest_path),
                "manifestOnDisk": manifest_path.is_file(),
                "warnings": m.get("warnings", []),
            }
        )
    write_json(ctx.step_dir("datasets") / "datasets.json", items)
    return {"count": len(items), "datasets": items}


def step_outcomes(ctx: Context) -> dict[str, Any]:
    """Score coverage per score name, and per task how many completed trajectories still wait for
    the required late outcome."""
    scores = ctx.store.score_coverage()
    name = ctx.request.require_score
    tasks = [
        {
            "task": row["task"],
            "completed": row["completed"],
            "rewardedOrScored": row["rewardedOrScored"],
            "coverage": round(row["rewardedOrScored"] / row["trajectories"], 4)
            if row["trajectories"]
            else 0.0,
            "pending": None if name is None else row["completed"] - (row["completedWithRequiredScore"] or 0),
        }
        for row in ctx.coverage()
    ]
    summary = {"requireScore": name, "scores": scores, "tasks": tasks}
    write_json(ctx.step_dir("outcomes") / "outcomes.json", summary)
    return summary


def step_prompts(ctx: Context) -> dict[str, Any]:
    """Prompt artifacts per task: the current version (else the newest one, which was not
    promoted), its optimizer, its score against the baseline, and why it was or was not promoted."""
    from trajforge.optimize import artifacts

    out = []
    for entry in artifacts.tasks(ctx.home):
        art = entry["artifact"]
        if art is None and entry["versions"]:
            art = artifacts.load(entry["task"], entry["versions"][-1], ctx.home)
        out.append(
            {
                "task": entry["task"],
                "versions": entry["versions"],
                "current": entry["current"],
                "shownVersion": art.version if art else None,
                "optimizer": art.optimizer if art else None,
                "score": art.score if art else None,
                "baselineScore": art.baseline_score if art else None,
                "promotion": art.promotion if art else None,
                "datasetId": art.dataset_id if art else None,
                "generatedAt": iso_ms(art.generated_at) if art else None,
                "generatedAtMs": art.generated_at if art else None,
                "path": str(artifacts.task_dir(entry["task"], ctx.home)),
            }
        )
    write_json(ctx.step_dir("prompts") / "prompts.json", out)
    return {"count": len(out), "tasks": out}


def step_models(ctx: Context) -> dict[str, Any]:
    """The registry: every model, its weights on disk, which one is active."""
    items = []
    for m in _every(ctx.store.list_models):
        weights = m.merged_path or m.adapter_path
        items.append(
            {
                "id": m.id,
                "baseModel": m.base_model,
                "backend": m.backend,
                "datasetId": m.dataset_id,
                "jobId": m.job_id,
                "active": m.active,
                "providerModel": m.provider_model,
                "ollamaName": m.ollama_name,
                "weightsPath": weights,
                "weightsOnDisk": weights is not None and Path(weights).exists(),
                "evaluation": (m.evaluation or {}).get("status"),
                "createdAt": iso_ms(m.created_at),
            }
        )
    active = ctx.store.active_model()
    summary = {"count": len(items), "active": active.id if active else None, "models": items}
    write_json(ctx.step_dir("models") / "models.json", summary)
    return summary


def step_benchmarks(ctx: Context) -> dict[str, Any]:
    """Base-vs-trained comparisons stored on the models, with the improvement in percent."""
    rows = []
    for m in _every(ctx.store.list_models):
        ev = m.evaluation or {}
        if not ev:
            continue
        row: dict[str, Any] = {
            "modelId": m.id,
            "baseModel": m.base_model,
            "active": m.active,
            "status": ev.get("status"),
            "datasetId": ev.get("datasetId"),
            "suite": ev.get("suite"),
        }
        if ev.get("status") == "completed":
            base, trained = float(ev["baseScore"]), float(ev["trainedScore"])
            row.update(
                baseScore=base,
                trainedScore=trained,
                delta=trained - base,
                deltaPoints=round((trained - base) * 100, 2),
                deltaPct=ev.get("deltaPct"),
                n=ev.get("n"),
                metric=ev.get("metric"),
                improved=trained > base,
            )
        else:
            row["error"] = ev.get("error")
        rows.append(row)
    write_json(ctx.step_dir("benchmarks") / "comparisons.json", rows)
    return {"count": len(rows), "comparisons": rows}


def live_api_key(ctx: Context, base_url: str) -> str | None:
    """The key the live evaluation sends: this machine's (``None`` lets the client read
    ``TRAJFORGE_LM_API_KEY``/``OPENAI_API_KEY``) when the run is the user's own (CLI, Python) or
    the URL is the configured ``TRAJFORGE_LM_BASE_URL``; none for a URL an HTTP request chose,
    which must not receive the server's credentials."""
    configured = os.environ.get(settings.LM_BASE_URL, "").rstrip("/")
    if ctx.trusted or (configured and base_url.rstrip("/") == configured):
        return None
    return ""


def step_live_eval(ctx: Context) -> dict[str, Any]:
    """With ``--live``: the model at ``baseUrl`` (default the active model's provider name) on a
    suite or a dataset's eval split, scored with the task's metric."""
    from trajforge import evaluate, lm
    from trajforge.optimize.common import load_examples, mean, metric_for

    req = ctx.request
    if not req.live:
        raise _Skip("dry run: pass --live to evaluate a model")
    model_name, base_url = live_target(ctx)
    if req.suite:
        if req.suite not in evaluate.SUITES:
            raise InvalidInput(f"unknown suite {req.suite!r}", "suite")
        items, where = evaluate.SUITES[req.suite](), {"suite": req.suite}
    else:
        ds = eval_dataset(ctx)
        by_task = load_examples(Path(ds.path), None, splits=("eval",))
        items, where = [ex for exs in by_task.values() for ex in exs], {"datasetId": ds.id}
    items = items[: req.eval_limit]
    if not items:
        raise InvalidInput("no evaluation items (the eval split is empty)", "evalDatasetId")
    metric_name, metric = metric_for(items)
    client = lm.OpenAICompatibleLM(
        base_url=base_url,
        model=model_name,
        timeout_s=60.0,
        max_retries=1,
        api_key=live_api_key(ctx, base_url),
    )
    try:
        scores, outputs = evaluate.score(client, items, metric, max_tokens=128)
    finally:
        client.close()
    result = {
        "model": model_name,
        "baseUrl": strip_userinfo(base_url),
        **where,
        "metric": metric_name,
        "n": len(items),
        "score": mean(scores),
        "perItem": [
            {"index": i, "score": s, "expected": ex.expected[:PREVIEW_CHARS], "output": o[:PREVIEW_CHARS]}
            for i, (ex, s, o) in enumerate(zip(items, scores, outputs, strict=True))
        ],
    }
    write_json(ctx.step_dir("live_eval") / "evaluation.json", result)
    return result


def live_target(ctx: Context) -> tuple[str, str]:
    """(model, base URL) of a live run: the request's, else the environment's, else the active
    model's provider name."""
    import os

    from trajforge import settings

    base_url = ctx.request.base_url or os.environ.get(settings.LM_BASE_URL)
    model = ctx.request.model or os.environ.get(settings.LM_MODEL)
    if model is None:
        active = ctx.store.active_model()
        model = active.provider_model if active else None
    if not base_url:
        raise InvalidInput(f"a live run needs baseUrl (--base-url or {settings.LM_BASE_URL})", "baseUrl")
    if not model:
        raise InvalidInput(
            f"a live run needs model (--model, {settings.LM_MODEL} or an active model)", "model"
        )
    return model, base_url


def eval_dataset(ctx: Context) -> Any:
    """The dataset a live evaluation reads: the request's, else the newest with eval rows."""
    from trajforge import datasets

    if ctx.request.eval_dataset_id:
        return datasets.get(ctx.store, ctx.request.eval_dataset_id)
    for ds in ctx.store.list_datasets(limit=100):
        if ds.format in ("sft", "prompt_completion") and ds.manifest["counts"]["rows"].get("eval"):
            return ds
    raise InvalidInput(
        "no sft or prompt_completion snapshot with an eval split: build one or pass evalDatasetId or suite",
        "evalDatasetId",
    )


def strip_userinfo(url: str) -> str:
    """A URL without ``user:password@`` (what the manifest may record)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# --- running them --------------------------------------------------------------------------------


class _Skip(Exception):
    """The step has nothing to do (its reason is the note)."""


class _Failed(Exception):
    """The step ran and failed part of its work: its partial result is kept."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


STEPS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "jsonl_imports": step_jsonl_imports,
    "hf_datasets": step_hf_datasets,
    "trajectories": step_trajectories,
    "datasets": step_datasets,
    "outcomes": step_outcomes,
    "prompts": step_prompts,
    "models": step_models,
    "benchmarks": step_benchmarks,
    "live_eval": step_live_eval,
}
assert set(STEPS) == set(STEP_IDS)


def run_steps(ctx: Context, on_step: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Every step in order; a failure is recorded and the next step runs."""
    results = []
    for step_id in STEP_IDS:
        started = time.perf_counter()
        out_dir = ctx.run_dir / "steps" / step_id
        if ctx.request.skipped(step_id):
            res = StepResult(step_id, "skipped", result={"note": f"--skip-{step_id.replace('_', '-')}"})
        else:
            try:
                res = StepResult(step_id, "succeeded", result=STEPS[step_id](ctx))
            except _Skip as exc:
                res = StepResult(step_id, "skipped", result={"note": str(exc)})
            except _Failed as exc:
                res = StepResult(step_id, "failed", error=str(exc), result=exc.result)
            except TrajforgeError as exc:
                res = StepResult(step_id, "failed", error=exc.message)
            except Exception as exc:  # a step's bug or a broken source must not end the run
                log.exception("collection step %s failed", step_id)
                res = StepResult(step_id, "failed", error=f"{type(exc).__name__}: {exc}")
        if out_dir.is_dir():
            res.output_dir = str(out_dir)
        res.seconds = time.perf_counter() - started
        results.append(res)
        if on_step is not None:
            on_step(res)
    return results
