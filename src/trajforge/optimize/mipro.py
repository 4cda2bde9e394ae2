"""``mipro``: search instructions and demonstration sets together, on minibatches.

MIPRO's idea without its machinery: propose a few instructions (the proposer LM, shown training
failures) and draw a few demonstration sets (labelled and bootstrapped demos), then spend a budget
of trials on (instruction, demo set) pairs, each scored on a random minibatch of the validation
slice. Pairs are picked mostly by their running mean so far (explore a little, exploit the rest);
the best few by running mean are scored on the full validation slice, and the winner on the
holdout against the baseline.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from trajforge.errors import LMError
from trajforge.lm import LM
from trajforge.optimize.bootstrap_fewshot import bootstrapped, draw_demos
from trajforge.optimize.common import (
    Candidate,
    CountingLM,
    Metric,
    OptimizeResult,
    TaskExample,
    evaluate,
    finish,
    mean,
)
from trajforge.optimize.instruction_search import propose

NAME = "mipro"


def optimize(
    lm: LM,
    train: Sequence[TaskExample],
    holdout: Sequence[TaskExample],
    baseline: str,
    metric: Metric,
    *,
    proposer: LM | None = None,
    n_instructions: int = 4,
    n_demo_sets: int = 4,
    k: int = 4,
    trials: int = 16,
    minibatch: int = 8,
    finalists: int = 3,
    seed: int = 0,
    on_progress: Callable[[float, str], None] | None = None,
) -> OptimizeResult:
    counted = CountingLM(lm)
    propose_lm = CountingLM(proposer) if proposer is not None else counted
    rng = random.Random(seed)
    progress = on_progress or (lambda p, m: None)
    val = list(train[: max(2, len(train) // 2)])
    pool_src = list(train[len(val) :]) or list(train)
    base = Candidate(baseline)
    base_hold, _ = evaluate(counted, base, holdout, metric)
    base_val, base_out = evaluate(counted, base, val, metric)
    # Instruction candidates.
    instructions = [baseline]
    failures = [(ex, out) for ex, s, out in zip(val, base_val, base_out, strict=True) if s < 1.0]
    if failures:
        try:
            shown = rng.sample(failures, min(4, len(failures)))
            instructions += [i for i in propose(propose_lm, baseline, shown, n_instructions) if i != baseline]
        except LMError as exc:
            progress(0.1, f"the proposer failed ({exc.message}); searching demos only")
    # Demo sets (the empty set too: maybe demos do not help).
    pool = pool_src + bootstrapped(counted, base, pool_src, metric)
    demo_sets: list[list[TaskExample]] = [[]] + [
        draw_demos(pool, k, random.Random(rng.random())) for _ in range(n_demo_sets)
    ]
    progress(0.2, f"{len(instructions)} instructions × {len(demo_sets)} demo sets")
    stats: dict[tuple[int, int], list[float]] = {}
    pairs = [(i, d) for i in range(len(instructions)) for d in range(len(demo_sets))]
    for t in range(trials):
        if stats and rng.random() > 0.3:  # exploit: the best running mean so far
            pair = max(stats, key=lambda p: mean(stats[p]))
        else:  # explore: an untried pair first
            untried = [p for p in pairs if p not in stats]
            pair = rng.choice(untried or pairs)
        batch = rng.sample(val, min(minibatch, len(val)))
        cand = Candidate(instructions[pair[0]], demo_sets[pair[1]])
        stats.setdefault(pair, []).extend(evaluate(counted, cand, batch, metric)[0])
        progress(
            0.2 + 0.6 * (t + 1) / trials,
            f"trial {t + 1}/{trials}: best minibatch mean {max(mean(v) for v in stats.values()):.3f}",
        )
    ranked = sorted(stats, key=lambda p: -mean(stats[p]))[:finalists]
    best, best_val = base, mean(base_val)
    for i, d in ranked:
        cand = Candidate(instructions[i], demo_sets[d])
        score = mean(evaluate(counted, cand, val, metric)[0])
        if score > best_val:
            best, best_val = cand, score
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
            "instructions": len(instructions),
            "demoSets": len(demo_sets),
            "trials": trials,
            "minibatch": minibatch,
            "seed": seed,
            "lm": lm.name,
        },
        extra_calls=(propose_lm.calls if propose_lm is not counted else 0),
    )
