"""``instruction-search``: let an LM rewrite the instruction, keep what scores better.

Each round shows a proposer LM the current best instruction and a few training inputs it got
wrong (with what was expected and what came back), asks for several rewrites, scores each on a
validation slice of the training set, and keeps the best if it beats the incumbent. The winner is
measured on the holdout against the baseline.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import orjson

from trajforge.errors import LMError
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

NAME = "instruction-search"
PROPOSER_SYSTEM = (
    "You improve the system instructions of an AI agent. Given the current instruction and cases "
    "where the agent answered wrongly, write better instructions that would make it answer like the "
    "expected outputs. Keep what works; add the rules the failures show are missing. "
    'Reply with JSON only: {"instructions": ["…", "…"]}'
)


def _render_case(ex: TaskExample, got: str) -> str:
    convo = "\n".join(f"[{m['role']}] {m['content']}" for m in ex.input)
    return f"{convo}\nexpected: {ex.expected}\nagent answered: {got}"


def parse_instructions(text: str) -> list[str]:
    """Instructions from a proposer's reply: the JSON shape asked for, else a numbered list."""
    for candidate in (text, *(m.group(0) for m in re.finditer(r"\{[\s\S]*\}", text))):
        try:
            data = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        items = data.get("instructions") if isinstance(data, dict) else data
        if isinstance(items, list):
            return [i.strip() for i in items if isinstance(i, str) and i.strip()]
    numbered = re.findall(r"^\s*\d+[.)]\s+(.+)$", text, flags=re.MULTILINE)
    return [n.strip() for n in numbered if n.strip()]


def propose(
    lm: LM, instruction: str, failures: Sequence[tuple[TaskExample, str]], n: int, temperature: float = 0.0
) -> list[str]:
    """Up to ``n`` rewrites of ``instruction`` from a proposer LM shown the ``failures``
    (example, what came back). Raises LMError when the proposer cannot be reached."""
    ask = (
        f"Current instruction:\n{instruction}\n\nCases it got wrong:\n\n"
        + "\n\n".join(_render_case(ex, out) for ex, out in failures)
        + f"\n\nWrite {n} improved instructions."
    )
    reply = lm.chat(
        [{"role": "system", "content": PROPOSER_SYSTEM}, {"role": "user", "content": ask}],
        temperature=temperature,
        max_tokens=600,
    )
    return parse_instructions(reply)[:n]


def grounded(instruction: str, examples: Sequence[TaskExample], per_answer: int = 1, limit: int = 8) -> str:
    """A proposal that needs no LM: the instruction plus the shape of correct answers seen in the
    training data, one short example per kind of answer (MIPRO's "data-aware" proposals summarise
    the dataset the same way). It gives small proposer models a strong candidate to beat."""
    seen: dict[str, int] = {}
    lines: list[str] = []
    for ex in examples:
        action = parse_action(ex.expected)
        kind = str(action.get("action")) if action else ex.expected[:30]
        if seen.get(kind, 0) >= per_answer or len(lines) >= limit:
            continue
        seen[kind] = seen.get(kind, 0) + 1
        user = next((m["content"] for m in reversed(ex.input) if m.get("role") == "user"), "")
        lines.append(f'- "{user[:200]}" -> {ex.expected[:300]}')
    if not lines:
        return instruction
    return instruction.rstrip() + "\n\nCorrect answers look like this:\n" + "\n".join(lines)


def optimize(
    lm: LM,
    train: Sequence[TaskExample],
    holdout: Sequence[TaskExample],
    baseline: str,
    metric: Metric,
    *,
    proposer: LM | None = None,
    rounds: int = 3,
    candidates: int = 4,
    failures_shown: int = 4,
    seed: int = 0,
    on_progress: Callable[[float, str], None] | None = None,
) -> OptimizeResult:
    counted = CountingLM(lm)
    propose_lm = CountingLM(proposer) if proposer is not None else counted
    rng = random.Random(seed)
    progress = on_progress or (lambda p, m: None)
    val = list(train)
    base = Candidate(baseline)
    base_hold, _ = evaluate(counted, base, holdout, metric)
    best = base
    best_scores, best_outputs = evaluate(counted, best, val, metric)
    tried: set[str] = {baseline}
    # Round 0 also weighs a data-grounded rewrite, so a weak proposer cannot leave the search empty.
    seed_text = grounded(baseline, train)
    if seed_text not in tried:
        tried.add(seed_text)
        scores, outputs = evaluate(counted, Candidate(seed_text), val, metric)
        if mean(scores) > mean(best_scores):
            best, best_scores, best_outputs = Candidate(seed_text), scores, outputs
    for r in range(rounds):
        failures = [(ex, out) for ex, s, out in zip(val, best_scores, best_outputs, strict=True) if s < 1.0]
        if not failures:
            progress(1.0, "every validation example is right: stopping early")
            break
        shown = rng.sample(failures, min(failures_shown, len(failures)))
        try:
            proposals = propose(
                propose_lm, best.instruction, shown, candidates, temperature=0.7 if r else 0.0
            )
        except LMError as exc:
            progress((r + 1) / rounds, f"round {r + 1}: the proposer failed ({exc.message})")
            continue
        for text in proposals:
            if text in tried:
                continue
            tried.add(text)
            scores, outputs = evaluate(counted, Candidate(text, best.demos), val, metric)
            if mean(scores) > mean(best_scores):
                best, best_scores, best_outputs = Candidate(text, best.demos), scores, outputs
        progress((r + 1) / rounds * 0.9, f"round {r + 1}/{rounds}: validation {mean(best_scores):.3f}")
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
            "rounds": rounds,
            "candidatesPerRound": candidates,
            "tried": len(tried) - 1,
            "seed": seed,
            "lm": lm.name,
            "proposer": (proposer or lm).name,
        },
        extra_calls=(propose_lm.calls if propose_lm is not counted else 0),
    )
