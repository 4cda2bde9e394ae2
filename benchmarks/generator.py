"""Synthetic agent trajectories for the benchmarks, deterministic for a seed.

Shape (the issue's workload): 5 steps; per step 2 LLM calls and 1 provider access. A call's prompt
is ~2 KB: the agent's ~1.5 KB system prompt (each of 3 agents repeats its own in every call, as real
agents do) plus a ~0.5 KB user message unique to the call; the response is ~500 B and the reasoning
~200 B, both unique. The provider payload is ~1 KB, unique per step. About 1% of user prompts carry
the rare marker word ``zanzibarquux``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

MARKER = "zanzibarquux"
STEPS = 5
CALLS_PER_STEP = 2


def _vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)]


@dataclass(slots=True)
class CallSpec:
    system: str
    user: str
    response: str
    reasoning: str
    model: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class StepSpec:
    payload: dict
    calls: list[CallSpec]
    action: str
    reward: float


@dataclass(slots=True)
class TrajectorySpec:
    agent_id: str
    scenario_id: str
    steps: list[StepSpec]
    reward: float


_PII = (
    "Reach me at {name}{i}@example.com.",
    "My phone is +1 415 555 {i4}.",
    "ping @{name}_{i} about it",
    "Card 4111 1111 1111 1111 was charged twice.",
    "I live at {i} Baker Street, flat 2.",
    "Server 203.0.113.{b} refused the token sk-proj-{key}.",
)


class Generator:
    """``pii=True`` makes user prompts look like real support traffic for the privacy filter: every
    prompt carries numbers (an order id, a date, an amount) and ~5% carry personal data or a
    secret of one of the filter's kinds."""

    def __init__(self, seed: int = 42, *, pii: bool = False) -> None:
        self.pii = pii
        self.rng = random.Random(seed)
        self.words = _vocabulary(self.rng)
        self.systems = [self.text(1500) for _ in range(3)]
        self.models = ["gpt-4o-mini", "llama-3.1-8b", "qwen2.5-7b"]

    def text(self, size: int) -> str:
        out: list[str] = []
        n = 0
        choice = self.rng.choice
        while n < size:
            w = choice(self.words)
            out.append(w)
            n += len(w) + 1
        return " ".join(out)

    def trajectory(self, i: int) -> TrajectorySpec:
        rng = self.rng
        agent = i % 3
        steps = []
        for _ in range(STEPS):
            calls = []
            for _ in range(CALLS_PER_STEP):
                user = self.text(500)
                if rng.random() < 0.01:
                    user = f"{user} {MARKER}"
                if self.pii:
                    n = rng.randint(1000, 99999)
                    user = f"Order A-{n} placed 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} for ${n / 100:.2f}. {user}"
                    if rng.random() < 0.05:
                        user += " " + rng.choice(_PII).format(
                            name=rng.choice(self.words), i=n, i4=f"{n % 10000:04d}", b=n % 250, key="Q2x9" * 6
                        )
                calls.append(
                    CallSpec(
                        system=self.systems[agent],
                        user=user,
                        response=self.text(500),
                        reasoning=self.text(200),
                        model=self.models[agent],
                        latency_ms=rng.lognormvariate(6, 0.6),
                        prompt_tokens=500,
                        completion_tokens=120,
                    )
                )
            payload = {"records": [{"id": rng.randint(1, 10**6), "note": self.text(80)} for _ in range(10)]}
            steps.append(StepSpec(payload, calls, rng.choice(["BUY", "SELL", "HOLD"]), rng.uniform(-1, 1)))
        return TrajectorySpec(f"agent-{agent}", f"scenario-{i % 500}", steps, rng.uniform(0, 1))

    def trajectories(self, n: int) -> Iterator[TrajectorySpec]:
        for i in range(n):
            yield self.trajectory(i)
