"""``bootstrap-fewshot``: pick demonstrations that make the task model answer better.

The pool is the training examples (completions from high-reward trajectories) plus, DSPy-style,
the task model's own answers on training inputs that the metric scored perfect ("bootstrapped"
demos, which show the model its own successful format). Several seeded draws of ``k`` demos, each
covering as many distinct expected outputs as it can, are scored on a validation slice of the
training set; the best draw is then measured on the holdout against the baseline prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

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

NAME = "bootstrap-fewshot"


def draw_demos(pool: Sequence[TaskExample], k: int, rng: random.Random) -> list[TaskExample]:
    """``k`` demos, preferring different expected answers (different actions for JSON actions)."""
    by_answer: dict[str, list[TaskExample]] = {}
    for ex in pool:
        action = parse_action(ex.expected)
        key = str(action.get("action")) if action else ex.expected[:40]
        by_answer.setdefault(key, []).append(ex)
    keys = sorted(by_answer)
    rng.shuffle(keys)
    picked: list[TaskExample] = []
    while len(picked) < k and any(by_answer[key] for key in keys):
        for key in keys:
            if by_answer[key] and len(picked) < k:
                bucket = by_answer[key]
                picked.append(bucket.pop(rng.randrange(len(bucket))))
    rng.shuffle(picked)
    return picked


def bootstrapped(
    lm: CountingLM, base: Candidate, examples: Sequence[TaskExample], metric: Metric
) -> list[TaskExample]:
    """The model's own answers that the metric scores perfect, as demonstrations (DSPy's
    "bootstrapped" demos show the model its own successful format)."""
    scores, outputs = evaluate(lm, base, examples, metric)
    return [
        TaskExample(ex.task, ex.input, out, ex.system)
        for ex, s, out in zip(examples, scores, outputs, strict=True)
        if s >= 1.0
    ]


def optimize(
    lm: LM,
    train: Sequence[TaskExample],
    holdout: Sequence[TaskExample],
    baseline: str,
    metric: Metric,
    *,
    k: int = 4,
    trials: int = 6,
    seed: int = 0,
    on_progress: Callable[[float, str], None] | None = None,
) -> OptimizeResult:
    counted = CountingLM(lm)
    rng = random.Random(seed)
    progress = on_progress or (lambda p, m: None)
    val = list(train[: max(1, len(train) // 3)])
    pool_src = list(train[len(val) :]) or list(train)
    base = Candidate(baseline)
    base_hold, _ = evaluate(counted, base, holdout, metric)
    progress(0.1, f"baseline holdout score {mean(base_hold):.3f}")
    boot = bootstrapped(counted, base, pool_src, metric)
    pool = pool_src + boot
    best, best_val = base, mean(evaluate(counted, base, val, metric)[0])
    for t in range(trials):
        cand = Candidate(baseline, draw_demos(pool, k, random.Random(rng.random())))
        score = mean(evaluate(counted, cand, val, metric)[0])
        if score > best_val:
            best, best_val = cand, score
        progress(
            0.2 + 0.7 * (t + 1) / trials,
            f"trial {t + 1}/{trials}: validation {score:.3f} (best {best_val:.3f})",
        )
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
            "k": k,
            "trials": trials,
            "seed": seed,
            "bootstrapped": len(boot),
            "pool": len(pool),
            "lm": lm.name,
        },
    )
