"""Base against trained: run the base model and a registered fine-tuned model on the same held-out
items with the task's metric, and store the result on the model.

Items come from a dataset's eval split (by default the model's own training dataset, whose eval
split it never saw) or from a named suite registered in code (:func:`register_suite`; the demo
registers its held-out support-desk cases). The metric is the native optimizers' one: exact action
match when the expected outputs are JSON actions, token F1 otherwise, or a named metric.

The result, stored as the model's ``evaluation``::

    {"status": "completed", "baseScore", "trainedScore", "delta", "deltaPct", "n", "metric",
     "datasetId" | "suite", "perItem": [{"index", "expected", "base", "trained", "baseOutput",
     "trainedOutput"}], "startedAt", "finishedAt"}

A model trained from another (GRPO from an SFT adapter: ``metrics.parentModel``) is also compared
with its parent on the same items: ``parentModel``, ``parentScore``, ``deltaVsParent`` and each
item's ``parent`` / ``parentOutput``.

A benchmark that fails is stored too, as ``{"status": "failed", "error", …}``, never lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from trajforge import datasets, lm, models
from trajforge.errors import InvalidInput, NotFound
from trajforge.optimize.common import (
    Candidate,
    Metric,
    MetricName,
    TaskExample,
    action_match,
    load_examples,
    mean,
    metric_for,
    resolve_metric,
)
from trajforge.records import Model, now_ms
from trajforge.requests import Flag, Request
from trajforge.store.base import Store

Report = Callable[[float, str, str], None]
SUITES: dict[str, Callable[[], list[TaskExample]]] = {}
MAX_ITEMS = 2000


class BenchmarkRequest(Request):
    """A base-vs-trained benchmark of a registered model: which held-out items, how to score."""

    dataset_id: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="Held-out items (default: the model's dataset's eval split)",
        ),
        Flag("--dataset"),
    ] = None
    suite: Annotated[
        str | None, Field(min_length=1, max_length=200, description="A registered item suite")
    ] = None
    task: Annotated[str | None, Field(min_length=1, max_length=200, description="Only this task's items")] = (
        None
    )
    limit: Annotated[int | None, Field(ge=1, le=MAX_ITEMS, description="At most this many items")] = None
    metric: Annotated[
        MetricName | None,
        Field(
            description="action_match or token_f1 (default: action_match for JSON actions); from the "
            "CLI also module:function(output, expected)"
        ),
    ] = None
    max_tokens: Annotated[int | None, Field(ge=1, le=4096, description="Tokens per answer")] = None
    stop: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=20)]] | None,
        Field(max_length=4, description="Strings that end a reply (e.g. a JSON answer's closing braces)"),
    ] = None


OUTPUT_CHARS = 600
"""Outputs kept per item in the stored result (enough to see why an item failed)."""


def register_suite(name: str, items: Callable[[], list[TaskExample]]) -> None:
    """Make ``suite: name`` a benchmark item set (held-out cases kept in code, not in a dataset)."""
    SUITES[name] = items


def check_request(store: Store, model_id: str, request: dict[str, Any]) -> None:
    """Refuse a benchmark request that cannot run, before anything is queued."""
    model = models.get(store, model_id)
    if model.adapter_path is None and model.merged_path is None:
        raise InvalidInput(f"model {model_id} has no adapter or merged weights to evaluate", "id")
    if request.get("datasetId") and request.get("suite"):
        raise InvalidInput("give datasetId or suite, not both", "suite")
    if request.get("suite") and request["suite"] not in SUITES:
        known = ", ".join(sorted(SUITES)) or "none registered"
        raise InvalidInput(f"unknown suite {request['suite']!r} ({known})", "suite")
    dataset_id = request.get("datasetId") or model.dataset_id
    if not request.get("suite"):
        if dataset_id is None:
            raise InvalidInput("the model has no training dataset: pass datasetId or suite", "datasetId")
        if store.get_dataset(dataset_id) is None:
            raise NotFound(f"no dataset {dataset_id!r}", "datasetId")
    limit = request.get("limit")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_ITEMS
    ):
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_ITEMS}", "limit")
    if request.get("metric"):
        resolve_metric(request["metric"])
    stop = request.get("stop")
    if stop is not None and (
        not isinstance(stop, list)
        or len(stop) > 4
        or not all(isinstance(x, str) and 0 < len(x) <= 20 for x in stop)
    ):
        raise InvalidInput("stop must be a list of at most 4 strings of 1 to 20 characters", "stop")


def _builtin_suites() -> None:
    from trajforge.demo import support

    register_suite("support-desk", lambda: support.heldout_examples(100))
    register_suite("support-desk-quick", lambda: support.heldout_examples(12))


def items_for(
    store: Store, model: Model, request: dict[str, Any]
) -> tuple[list[TaskExample], dict[str, Any]]:
    """The held-out items and where they came from."""
    if request.get("suite"):
        return SUITES[request["suite"]](), {"suite": request["suite"]}
    dataset_id = request.get("datasetId") or model.dataset_id
    assert dataset_id is not None  # check_request
    ds = datasets.get(store, dataset_id)
    task = request.get("task")
    by_task = load_examples(Path(ds.path), task, splits=("eval",))
    items = [ex for exs in by_task.values() for ex in exs]
    if not items and dataset_id != model.dataset_id:
        # A dataset other than the training one was chosen as the held-out set: all of it is.
        by_task = load_examples(Path(ds.path), task)
        items = [ex for exs in by_task.values() for ex in exs]
    if not items:
        raise InvalidInput(
            f"dataset {dataset_id} has no eval rows to benchmark on: build one with an eval split "
            "(evalFraction > 0) or pass another datasetId or a suite",
            "datasetId",
        )
    return items, {"datasetId": dataset_id}


def score(
    model: lm.LM,
    items: Sequence[TaskExample],
    metric: Metric,
    max_tokens: int = 128,
) -> tuple[list[float], list[str]]:
    """Scores and outputs of ``model`` on ``items``, each under its own system prompt (a reply ends
    with its JSON object when the metric scores JSON actions)."""
    conversations = [Candidate(ex.system).messages(ex) for ex in items]
    batch = getattr(model, "chat_batch", None)
    if batch is not None:
        extra = {"json_object": True} if metric is action_match else {}
        outputs = list(batch(conversations, max_tokens=max_tokens, **extra))
    else:
        outputs = [model.chat(c, max_tokens=max_tokens) for c in conversations]
    return [metric(o, ex.expected) for o, ex in zip(outputs, items, strict=True)], outputs


def base_lm(model: Model) -> lm.LocalLM:
    from trajforge.train.lora import resolve_base

    return lm.LocalLM(resolve_base(model.base_model), label=model.base_model)


def trained_lm(model: Model) -> lm.LocalLM:
    from trajforge.train.lora import resolve_base

    if model.merged_path:
        return lm.LocalLM(model.merged_path, label=model.id)
    return lm.LocalLM(resolve_base(model.base_model), adapter=model.adapter_path, label=model.id)


def _parent(store: Store, model: Model) -> Model | None:
    """The registry model this one was trained from (GRPO from an SFT adapter), when it still has
    weights to run."""
    parent_id = (model.metrics or {}).get("parentModel")
    parent = store.get_model(parent_id) if isinstance(parent_id, str) else None
    if parent is None or (parent.adapter_path is None and parent.merged_path is None):
        return None
    return parent


def benchmark(
    store: Store,
    model_id: str,
    request: dict[str, Any] | None = None,
    report: Report | None = None,
) -> dict[str, Any]:
    """Run the benchmark now and store its result on the model (a failure is stored as failed
    and raised). ``request``: ``datasetId?``, ``suite?``, ``task?``, ``limit?``, ``metric?``,
    ``maxTokens?``."""
    request = dict(request or {})
    check_request(store, model_id, request)
    model = models.get(store, model_id)
    say = report or (lambda p, phase, m: None)
    started = now_ms()
    where: dict[str, Any] = {}
    try:
        items, where = items_for(store, model, request)
        items = items[: int(request.get("limit") or MAX_ITEMS)]
        metric_name, metric = (
            resolve_metric(request["metric"]) if request.get("metric") else metric_for(items)
        )
        max_tokens = int(request.get("maxTokens") or 128)
        say(0.05, "base", f"{len(items)} items, metric {metric_name}: running the base model")
        base_scores, base_out = score(base_lm(model), items, metric, max_tokens)
        parent = _parent(store, model)
        parent_scores: list[float] | None = None
        parent_out: list[str] = []
        if parent is not None:
            say(0.35, "parent", f"base {mean(base_scores):.3f}: running the parent model {parent.id}")
            parent_scores, parent_out = score(trained_lm(parent), items, metric, max_tokens)
        say(0.6 if parent else 0.5, "trained", f"base {mean(base_scores):.3f}: running the trained model")
        trained_scores, trained_out = score(trained_lm(model), items, metric, max_tokens)
    except Exception as exc:
        failed = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", **where}
        store.update_model(model_id, evaluation={**failed, "startedAt": started, "finishedAt": now_ms()})
        raise
    base, trained = mean(base_scores), mean(trained_scores)
    result = {
        "status": "completed",
        "baseScore": base,
        "trainedScore": trained,
        "delta": trained - base,
        "deltaPct": (trained - base) / base * 100 if base else None,
        "n": len(items),
        "metric": metric_name,
        **where,
        "perItem": [
            {
                "index": i,
                "expected": ex.expected[:OUTPUT_CHARS],
                "base": b,
                "trained": t,
                "baseOutput": bo[:OUTPUT_CHARS],
                "trainedOutput": to[:OUTPUT_CHARS],
            }
            for i, (ex, b, t, bo, to) in enumerate(
                zip(items, base_scores, trained_scores, base_out, trained_out, strict=True)
            )
        ],
        "startedAt": started,
        "finishedAt": now_ms(),
    }
    if parent is not None and parent_scores is not None:
        result["parentModel"] = parent.id
        result["parentScore"] = mean(parent_scores)
        result["deltaVsParent"] = trained - result["parentScore"]
        for item, p, po in zip(result["perItem"], parent_scores, parent_out, strict=True):
            item["parent"] = p
            item["parentOutput"] = po[:OUTPUT_CHARS]
    store.update_model(model_id, evaluation=result)
    say(1.0, "done", f"base {base:.3f} → trained {trained:.3f} on {len(items)} items")
    return result


def run_job(
    store: Store,
    job: Any,
    report: Report,
    home: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The ``benchmark`` job body."""
    result = benchmark(store, job.request["modelId"], job.request, report)
    return {"modelId": job.request["modelId"], **{k: v for k, v in result.items() if k != "perItem"}}


_builtin_suites()
