"""``prompt-evolution``: reflective prompt evolution with the ``gepa`` package.

GEPA evolves the system instruction (starting from the baseline, or from its data-grounded
rewrite when that already scores better): it runs the current candidate on a minibatch, shows a
reflection LM the inputs, outputs and feedback, takes the rewrite it proposes, keeps it when the
minibatch improves, and tracks a Pareto front over the validation examples. Here GEPA gets a custom
adapter (our task LM, examples and metric) and a plain callable as its reflection LM: no litellm,
no network beyond the endpoint the user configured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from trajforge.lm import LM
from trajforge.optimize.common import (
    Candidate,
    CountingLM,
    Metric,
    OptimizeResult,
    TaskExample,
    evaluate,
    finish,
    mean,
    parse_action,
)
from trajforge.optimize.instruction_search import grounded

NAME = "prompt-evolution"
COMPONENT = "system_prompt"


def _feedback(output: str, expected: str, score: float) -> str:
    if score >= 1.0:
        return "Correct."
    want, got = parse_action(expected), parse_action(output)
    if want is not None:
        if got is None:
            return f"The answer must be one JSON action like {expected}."
        if str(got.get("action")).upper() != str(want.get("action")).upper():
            return f"Wrong action {got.get('action')!r}: the right action is {want.get('action')!r}."
        return f"Right action, wrong params {got.get('params')!r}: expected {want.get('params')!r}."
    return f"Expected an answer like: {expected}"


class _Adapter:
    """GEPA's adapter protocol over our LM, examples and metric."""

    def __init__(self, lm: CountingLM, metric: Metric, demos: Sequence[TaskExample] = ()) -> None:
        self.lm, self.metric, self.demos = lm, metric, list(demos)
        self.propose_new_texts = None  # use GEPA's own reflective proposer

    def evaluate(
        self, batch: list[TaskExample], candidate: dict[str, str], capture_traces: bool = False
    ) -> Any:
        from gepa.core.adapter import EvaluationBatch

        scores, outputs = evaluate(self.lm, Candidate(candidate[COMPONENT], self.demos), batch, self.metric)
        traces = (
            [
                {"example": ex, "output": out, "score": s}
                for ex, out, s in zip(batch, outputs, scores, strict=True)
            ]
            if capture_traces
            else None
        )
        return EvaluationBatch(outputs=outputs, scores=scores, trajectories=traces)

    def make_reflective_dataset(
        self, candidate: dict[str, str], eval_batch: Any, components_to_update: list[str]
    ) -> Mapping[str, Sequence[Mapping[str, Any]]]:
        rows = []
        for t in eval_batch.trajectories or []:
            ex: TaskExample = t["example"]
            rows.append(
                {
                    "Inputs": "\n".join(f"[{m['role']}] {m['content']}" for m in ex.input),
                    "Generated Outputs": t["output"],
                    "Feedback": _feedback(t["output"], ex.expected, t["score"]),
                }
            )
        return {name: rows for name in components_to_update}


def optimize(
    lm: LM,
    train: Sequence[TaskExample],
    holdout: Sequence[TaskExample],
    baseline: str,
    metric: Metric,
    *,
    reflection: LM | None = None,
    max_metric_calls: int = 200,
    minibatch: int = 4,
    seed: int = 0,
    on_progress: Callable[[float, str], None] | None = None,
) -> OptimizeResult:
    import gepa

    counted = CountingLM(lm)
    reflect = CountingLM(reflection) if reflection is not None else counted
    progress = on_progress or (lambda p, m: None)
    base = Candidate(baseline)
    base_hold, _ = evaluate(counted, base, holdout, metric)
    progress(0.1, f"baseline holdout score {mean(base_hold):.3f}")
    val = list(train[: max(2, len(train) // 2)])
    trainset = list(train[len(val) :]) or list(train)

    # Evolution starts from the better of the baseline and its data-grounded rewrite (as
    # instruction-search does): a small reflection model rarely writes a better instruction from
    # nothing, but it can refine one that already shows the answer format.
    seed_text, seed_from = baseline, "baseline"
    rewrite = grounded(baseline, trainset)
    if rewrite != baseline and mean(evaluate(counted, Candidate(rewrite), val, metric)[0]) > mean(
        evaluate(counted, base, val, metric)[0]
    ):
        seed_text, seed_from = rewrite, "grounded"

    def reflection_lm(prompt: str | list[dict[str, Any]]) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return reflect.chat(messages, temperature=0.7, max_tokens=800)

    result: Any = gepa.optimize(
        seed_candidate={COMPONENT: seed_text},
        trainset=trainset,
        valset=val,
        adapter=cast(Any, _Adapter(counted, metric)),
        reflection_lm=reflection_lm,
        max_metric_calls=max_metric_calls,
        reflection_minibatch_size=minibatch,
        seed=seed,
        display_progress_bar=False,
        raise_on_exception=False,
    )
    best_text = (
        result.best_candidate[COMPONENT]
        if isinstance(result.best_candidate, dict)
        else str(result.best_candidate)
    )
    best = Candidate(best_text) if best_text != baseline else base
    return finish(
        NAME,
        counted,
        best,
        base,
        base_hold,
        holdout,
        metric,
        progress,
        {
            "candidates": len(result.candidates),
            "seed": seed_from,
            "maxMetricCalls": max_metric_calls,
            "randomSeed": seed,
            "lm": lm.name,
            "reflection": (reflection or lm).name,
        },
        extra_calls=(reflect.calls if reflect is not counted else 0),
    )
