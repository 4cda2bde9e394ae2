"""The ``native`` backend: turn a dataset into an optimized prompt artifact per task.

Called by the job runner's subprocess (``trajforge.jobs``), and usable directly from Python.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from trajforge import datasets, lm, settings
from trajforge.errors import InvalidInput, Unavailable
from trajforge.optimize import artifacts, bootstrap_fewshot, instruction_search, mipro, prompt_evolution
from trajforge.optimize.common import (
    Candidate,
    CountingLM,
    MetricName,
    OptimizeResult,
    TaskExample,
    evaluate,
    load_examples,
    metric_for,
    resolve_metric,
    split,
)
from trajforge.records import Job
from trajforge.requests import Flag, Request
from trajforge.store.base import Store

OPTIMIZERS: dict[str, Callable[..., OptimizeResult]] = {
    bootstrap_fewshot.NAME: bootstrap_fewshot.optimize,
    instruction_search.NAME: instruction_search.optimize,
    mipro.NAME: mipro.optimize,
    prompt_evolution.NAME: prompt_evolution.optimize,
}
PLANNED: tuple[str, ...] = ()
"""Optimizers named by the design but not built yet: asking for one is a clear error, never a
silent fallback. (All four are built.)"""
DEFAULT_MODEL = "bundled:smollm2-135m"
MIN_EXAMPLES = 4

Report = Callable[[float, str, str], None]
"""report(progress 0..1, phase, message)"""


def check_optimizer(name: str | None) -> str:
    name = name or bootstrap_fewshot.NAME
    if name in PLANNED:
        raise Unavailable(
            f"the {name} optimizer is not available yet; use one of {', '.join(OPTIMIZERS)}", "optimizer"
        )
    if name not in OPTIMIZERS:
        raise InvalidInput(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}", "optimizer")
    return name


class NativeOptions(Request):
    """A ``native`` job (prompt optimization): what its request may set."""

    backend: Annotated[Literal["native"], Field(description="native: optimize the prompt (no training)")] = (
        "native"
    )
    dataset_id: Annotated[
        str | None,
        Field(min_length=1, max_length=200, description="Dataset id (default: build one first)"),
        Flag("--dataset"),
    ] = None
    optimizer: Annotated[
        str,
        Field(min_length=1, max_length=100, description=f"One of {', '.join(OPTIMIZERS)}"),
        AfterValidator(check_optimizer),
    ] = bootstrap_fewshot.NAME
    task: Annotated[str | None, Field(min_length=1, max_length=200, description="Only this task")] = None
    model: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=500,
            description="The model whose prompt is optimized: bundled:smollm2-135m (default), local:<dir>, "
            "or a model served at baseUrl / $TRAJFORGE_LM_BASE_URL; checked before the job is queued",
        ),
    ] = None
    base_url: Annotated[
        str | None,
        Field(min_length=1, max_length=500, description="OpenAI-compatible endpoint of model"),
    ] = None
    iterations: Annotated[
        int | None, Field(ge=1, le=100_000, description="Trials or rounds (default: the optimizer's)")
    ] = None
    max_trajectories: Annotated[
        int, Field(ge=1, le=10_000_000, description="Without datasetId: most trajectories to build from")
    ] = 1000
    seed: Annotated[int, Field(ge=0, le=2**31, description="Seed")] = 0
    metric: Annotated[
        MetricName | None,
        Field(
            description="Task metric: action_match or token_f1 (default: action_match for JSON actions); "
            "from the CLI also module:function(output, expected)"
        ),
    ] = None
    max_demos: Annotated[
        int | None,
        Field(
            ge=1,
            le=16,
            description="Demonstrations per prompt (bootstrap-fewshot, mipro; default 4): each costs its "
            "length in every later call of the agent",
        ),
    ] = None


def check_request(request: dict[str, Any], options: NativeOptions) -> dict[str, Any]:
    """A native job's request as it is queued: its optimizer named (the default spelled out, so
    the stored request says what ran). :class:`NativeOptions` has checked the rest."""
    return {**request, "optimizer": options.optimizer}


def run(
    store: Store,
    job: Job,
    report: Report,
    home: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Optimize every task of the job's dataset (building one first when none is given). A cancel
    interrupts it at once (SIGTERM in the job process), so ``should_stop`` is not polled."""
    opts = NativeOptions.from_stored(job.request)
    if job.dataset_id:
        ds = datasets.get(store, job.dataset_id)
    else:
        report(0.02, "dataset", "building a prompt_completion dataset from the store")
        ds = datasets.build(
            store,
            datasets.BuildRequest(
                format="prompt_completion", limit=opts.max_trajectories, task=opts.task, eval_fraction=0.0
            ),
            root=(home / "datasets") if home else None,
        )
        store.update_job(job.id, dataset_id=ds.id)
    examples = load_examples(Path(ds.path), opts.task)
    spec = opts.model or os.environ.get(settings.LM_MODEL) or DEFAULT_MODEL
    report(0.05, "model", f"loading {spec}")
    model = lm.from_spec(spec, base_url=opts.base_url)
    results = []
    tasks = sorted(examples)
    for i, task in enumerate(tasks):
        exs = examples[task]
        share = (0.1 + 0.85 * i / len(tasks), 0.85 / len(tasks))
        if len(exs) < MIN_EXAMPLES:
            report(share[0], "optimize", f"{task}: {len(exs)} examples, fewer than {MIN_EXAMPLES}: skipped")
            results.append({"task": task, "skipped": f"{len(exs)} examples"})
            continue
        results.append(_optimize_task(task, exs, ds.id, model, opts, job, share, report, home))
    report(1.0, "done", f"optimized {sum(1 for r in results if 'version' in r)} of {len(tasks)} tasks")
    return {"datasetId": ds.id, "artifacts": results}


def _optimize_task(
    task: str,
    exs: list[Any],
    dataset_id: str,
    model: lm.LM,
    opts: NativeOptions,
    job: Job,
    share: tuple[float, float],
    report: Report,
    home: Path | None,
) -> dict[str, Any]:
    metric_name, metric = resolve_metric(opts.metric) if opts.metric else metric_for(exs)
    baseline = Counter(e.system for e in exs).most_common(1)[0][0]
    train, holdout = split(exs, 0.3, seed=opts.seed)
    kwargs: dict[str, Any] = {"seed": opts.seed}
    if opts.max_demos and opts.optimizer in (bootstrap_fewshot.NAME, mipro.NAME):
        kwargs["k"] = opts.max_demos
    if opts.iterations:
        key = {instruction_search.NAME: "rounds", prompt_evolution.NAME: "max_metric_calls"}.get(
            opts.optimizer, "trials"
        )
        kwargs[key] = opts.iterations

    def progress(p: float, message: str) -> None:
        report(share[0] + share[1] * p, "optimize", f"{task}: {message}")

    result = OPTIMIZERS[opts.optimizer](
        model, train, holdout, baseline, metric, on_progress=progress, **kwargs
    )
    incumbent = artifacts.current(task, home)
    if incumbent is not None:
        # Promotion compares against what the agent uses now, on the same holdout items.
        inc_scores, _ = evaluate(CountingLM(model), _with_demos(incumbent), holdout, metric)
    else:
        inc_scores = result.baseline_holdout_scores
    art = artifacts.save(
        artifacts.PromptArtifact(
            task=task,
            optimizer=result.optimizer,
            prompt=result.best.instruction,
            baseline=baseline,
            few_shot_examples=result.best.demo_wire(),
            score=result.best_score,
            baseline_score=result.baseline_score,
            dataset_id=dataset_id,
            dataset_size=len(exs),
            lineage={**result.lineage, "jobId": job.id, "metric": metric_name, "lmCalls": result.lm_calls},
        ),
        new_scores=result.holdout_scores,
        incumbent_scores=inc_scores,
        home=home,
    )
    report(
        share[0] + share[1],
        "optimize",
        f"{task}: {result.baseline_score:.3f} → {result.best_score:.3f}, "
        f"v{art.version} {'promoted' if art.promotion.get('promoted') else 'kept, not promoted'}",
    )
    return {
        "task": task,
        "version": art.version,
        "promoted": bool(art.promotion.get("promoted")),
        "score": result.best_score,
        "baselineScore": result.baseline_score,
        "lmCalls": result.lm_calls,
    }


def _with_demos(art: artifacts.PromptArtifact) -> Candidate:
    """The candidate an artifact stands for: its prompt and its demonstrations."""
    demos = [
        TaskExample(art.task, tuple(d.get("input") or ()), str(d.get("output") or ""), art.prompt)
        for d in art.few_shot_examples
    ]
    return Candidate(art.prompt, demos)
