"""Native optimizers on one task with the bundled model (SmolLM2-135M) as the task LM.

    python benchmarks/optimize.py [--train 40] [--holdout 30] [--model bundled:smollm2-135m]

The task (until the demo's support desk exists, issue 7): read a customer message, answer with one
JSON action ``{"action": …, "params": {"orderId": …}}`` out of five; scored by ``action_match``
(1 for the right action and order id, 0.5 for the right action). Each optimizer starts from the
same baseline prompt, uses the same train/holdout split and the same model as task LM (and as
proposer/reflection LM: nothing else runs offline), and reports the holdout score before and
after and the LM calls it used. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

from trajforge import lm as lms
from trajforge.optimize import bootstrap_fewshot, instruction_search, mipro, prompt_evolution
from trajforge.optimize.common import TaskExample, action_match

BASELINE = (
    "You are a support-desk agent. Answer with exactly one JSON object "
    '{"action": NAME, "params": {"orderId": ID}}. Actions: REFUND, TRACK, CANCEL, REPLACE, ESCALATE.'
)
INTENTS = {
    "REFUND": [
        "I want my money back for order {o}.",
        "Please refund order {o}, I changed my mind.",
        "Refund {o} now.",
    ],
    "TRACK": [
        "Where is my package {o}?",
        "Can you tell me where order {o} is?",
        "Order {o} has not arrived yet.",
    ],
    "CANCEL": [
        "Please cancel order {o}.",
        "Cancel {o}, I do not need it any more.",
        "Stop order {o} before it ships.",
    ],
    "REPLACE": [
        "Order {o} arrived broken, send a new one.",
        "The item in {o} is damaged, I need a replacement.",
    ],
    "ESCALATE": ["I want to speak to a manager about {o}!", "This is the third time, escalate order {o}."],
}


def examples(n: int, seed: int) -> list[TaskExample]:
    rng = random.Random(seed)
    out = []
    actions = sorted(INTENTS)
    for i in range(n):
        action = actions[i % len(actions)]
        order = f"A-{rng.randrange(1000, 9999)}"
        text = rng.choice(INTENTS[action]).format(o=order)
        expected = json.dumps({"action": action, "params": {"orderId": order}})
        out.append(TaskExample("support_reply", ({"role": "user", "content": text},), expected, BASELINE))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--holdout", type=int, default=30)
    ap.add_argument("--model", default="bundled:smollm2-135m")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; task LM {args.model}")
    t = time.perf_counter()
    model = lms.from_spec(args.model)
    print(f"model loaded in {time.perf_counter() - t:.1f} s")
    train, holdout = examples(args.train, 1), examples(args.holdout, 2)
    runs = {
        "bootstrap-fewshot": lambda: bootstrap_fewshot.optimize(
            model, train, holdout, BASELINE, action_match, k=5, trials=4
        ),
        "instruction-search": lambda: instruction_search.optimize(
            model, train, holdout, BASELINE, action_match, rounds=2, candidates=3
        ),
        "mipro": lambda: mipro.optimize(
            model,
            train,
            holdout,
            BASELINE,
            action_match,
            n_instructions=2,
            n_demo_sets=3,
            trials=8,
            minibatch=8,
        ),
        "prompt-evolution": lambda: prompt_evolution.optimize(
            model, train, holdout, BASELINE, action_match, max_metric_calls=120
        ),
    }
    rows = []
    for name, run in runs.items():
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        r = run()
        secs = time.perf_counter() - t
        gain = r.best_score - r.baseline_score
        rows.append((name, r.baseline_score, r.best_score, gain, r.lm_calls, secs))
        print(
            f"{name}: holdout {r.baseline_score:.3f} → {r.best_score:.3f} ({gain:+.3f}), {r.lm_calls} LM calls, {secs:.0f} s",
            flush=True,
        )
    print("\n| optimizer | holdout before | holdout after | gain | LM calls | gain per 100 calls | time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, before, after, gain, calls, secs in rows:
        print(
            f"| {name} | {before:.3f} | {after:.3f} | {gain:+.3f} | {calls} | {100 * gain / max(calls, 1):+.3f} | {secs:.0f} s |"
        )


if __name__ == "__main__":
    main()
