"""What every optimizer shares: per-task examples, task metrics, candidates and their evaluation.

An *example* is what the agent saw (the conversation, without its system prompt) and the output it
should have produced (a completion from a high-reward trajectory). A *candidate* is what an
optimizer changes: the system instruction and a few demonstrations. A *metric* scores an output
against the expected one in [0, 1]: for JSON actions (``{"action": …, "params": …}``) 1 for the
right action with the right params and 0.5 for the right action only; token F1 for free text.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field, ValidationInfo

from trajforge.errors import InvalidInput
from trajforge.lm import LM

Metric = Callable[[str, str], float]


@dataclass(frozen=True, slots=True)
class TaskExample:
    task: str
    input: tuple[dict[str, Any], ...]
    """The conversation the agent answered, system messages removed."""
    expected: str
    system: str = ""
    """The system prompt it was answered under (the baseline instruction)."""

    def key(self) -> str:
        return hashlib.sha256(orjson.dumps([self.task, list(self.input)])).hexdigest()


@dataclass(slots=True)
class Candidate:
    instruction: str
    demos: list[TaskExample] = field(default_factory=list)

    def messages(self, ex: TaskExample) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "system", "content": self.instruction}]
        for d in self.demos:
            out.extend(d.input)
            out.append({"role": "assistant", "content": d.expected})
        out.extend(ex.input)
        return out

    def demo_wire(self) -> list[dict[str, Any]]:
        return [{"input": list(d.input), "output": d.expected} for d in self.demos]


@dataclass(slots=True)
class OptimizeResult:
    """What an optimizer found, and what it cost."""

    optimizer: str
    best: Candidate
    baseline_score: float
    best_score: float
    holdout_scores: list[float]
    baseline_holdout_scores: list[float]
    lm_calls: int
    lineage: dict[str, Any] = field(default_factory=dict)


# --- examples ------------------------------------------------------------------------------------


FORMATS = ("prompt_completion", "sft")
"""The dataset formats native optimization reads."""


def load_examples(
    folder: Path, task: str | None = None, splits: Sequence[str] = ("train", "eval")
) -> dict[str, list[TaskExample]]:
    """Examples per task from a dataset snapshot in ``prompt_completion`` or ``sft`` format (by
    default its train and eval files together: optimizers make their own split)."""
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    fmt = manifest["format"]
    if fmt not in FORMATS:
        raise InvalidInput(
            f"native optimization reads prompt_completion or sft datasets, not {fmt!r}", "datasetId"
        )
    tasks = manifest["counts"]["tasks"]
    out: dict[str, list[TaskExample]] = {}
    for name, info in tasks.items():
        if task is not None and name != task:
            continue
        base = folder / info["folder"] if "folder" in info else folder
        rows: list[dict[str, Any]] = []
        for split in splits:
            path = base / f"{split}.jsonl"
            if path.exists():
                rows.extend(orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip())
        out[name] = [ex for ex in (_example(name, r) for r in rows) if ex is not None]
    if task is not None and task not in out:
        raise InvalidInput(
            f"the dataset has no task {task!r}; it has {', '.join(sorted(tasks)) or 'none'}", "task"
        )
    return out


def _example(task: str, row: dict[str, Any]) -> TaskExample | None:
    if "messages" in row:
        messages, completion = row["messages"][:-1], row["messages"][-1]
    else:
        messages, completion = row["prompt"], row["completion"][-1]
    if completion.get("tool_calls"):
        return None  # tool-call turns are not text prompts to optimize
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    conversation = tuple(
        {"role": m["role"], "content": m["content"]} for m in messages if m.get("role") != "system"
    )
    if not conversation:
        return None
    return TaskExample(task, conversation, completion.get("content") or "", system)


def split(
    examples: Sequence[TaskExample], holdout_fraction: float = 0.3, seed: int = 0
) -> tuple[list[TaskExample], list[TaskExample]]:
    """Deterministic train/holdout split by a seeded hash of each example."""
    train: list[TaskExample] = []
    holdout: list[TaskExample] = []
    for ex in examples:
        h = int(hashlib.sha256(f"{seed}:{ex.key()}".encode()).hexdigest()[:8], 16) / 2**32
        (holdout if h < holdout_fraction else train).append(ex)
    if not holdout and len(train) > 1:
        holdout.append(train.pop())
    return train, holdout


# --- metrics -------------------------------------------------------------------------------------

_JSON_OBJECT = re.compile(r"\{[\s\S]*\}")


def parse_action(text: str) -> dict[str, Any] | None:
    """The first JSON object with an ``action`` in ``text`` (models wrap JSON in prose/fences)."""
    m = _JSON_OBJECT.search(text or "")
    if not m:
        return None
    candidate = m.group(0)
    for end in range(len(candidate), 0, -1):  # the shortest balanced prefix that parses
        if candidate[end - 1] != "}":
            continue
        try:
            value = orjson.loads(candidate[:end])
        except orjson.JSONDecodeError:
            continue
        return value if isinstance(value, dict) and "action" in value else None
    return None


def action_match(output: str, expected: str) -> float:
    got, want = parse_action(output), parse_action(expected)
    if got is None or want is None:
        return 0.0
    if str(got.get("action")).upper() != str(want.get("action")).upper():
        return 0.0
    return 1.0 if (got.get("params") or {}) == (want.get("params") or {}) else 0.5


def token_f1(output: str, expected: str) -> float:
    a, b = re.findall(r"\w+", output.lower()), re.findall(r"\w+", expected.lower())
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if not common:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def resolve_metric(spec: str) -> tuple[str, Metric]:
    """A metric by name: ``action_match``, ``token_f1``, or ``module:function`` taking
    ``(output, expected)`` and returning a score in [0, 1]."""
    import importlib

    if spec in METRICS:
        return spec, METRICS[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInput(f"metric must be {', '.join(METRICS)} or module:function, got {spec!r}", "metric")
    try:
        fn = getattr(importlib.import_module(module_name), attr, None)
    except ImportError as exc:
        raise InvalidInput(f"cannot import {module_name!r} for metric {spec!r}: {exc}", "metric") from exc
    if not callable(fn):
        raise InvalidInput(f"{module_name!r} has no callable {attr!r}", "metric")

    def bounded(output: str, expected: str) -> float:
        try:
            value = float(fn(output, expected))
        except Exception:  # noqa: BLE001 - a user metric that fails on one output scores it 0
            return 0.0
        return min(1.0, max(0.0, value)) if value == value else 0.0

    return attr, bounded


def _check_metric(value: str | None, info: ValidationInfo) -> str | None:
    # A module:function metric runs code importable where the job runs: only its own user may
    # name one (the CLI, Python), never an HTTP request.
    if value is None or value in METRICS:
        return value
    if not (info.context or {}).get("trusted"):
        raise InvalidInput(
            f"metric must be {' or '.join(METRICS)} (module:function only from the command line or Python)",
            "metric",
        )
    resolve_metric(value)
    return value


MetricName = Annotated[
    str,
    Field(min_length=1, max_length=200, json_schema_extra={"enum": ["action_match", "token_f1"]}),
    AfterValidator(_check_metric),
]
"""A request's task metric: action_match or token_f1; from the CLI or Python also module:function."""


def metric_for(examples: Iterable[TaskExample]) -> tuple[str, Metric]:
    """``action_match`` when the expected outputs are JSON actions, else ``token_f1``."""
    exs = list(examples)
    if exs and sum(parse_action(e.expected) is not None for e in exs) >= 0.8 * len(exs):
        return "action_match", action_match
    return "token_f1", token_f1


METRICS: dict[str, Metric] = {"action_match": action_match, "token_f1": token_f1}


# --- evaluation ----------------------------------------------------------------------------------


class CountingLM:
    """Wraps an LM to count the calls an optimizer makes (cache hits of a local model included)."""

    def __init__(self, lm: LM) -> None:
        self.lm = lm
        self.calls = 0

    @property
    def name(self) -> str:
        return self.lm.name

    def chat(
        self, messages: Sequence[dict[str, Any]], *, temperature: float = 0.0, max_tokens: int = 512
    ) -> str:
        self.calls += 1
        return self.lm.chat(messages, temperature=temperature, max_tokens=max_tokens)

    def chat_batch(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        json_object: bool = False,
    ) -> list[str]:
        self.calls += len(conversations)
        batch = getattr(self.lm, "chat_batch", None)
        if batch is not None:
            extra = {"json_object": True} if json_object else {}
            return list(batch(conversations, temperature=temperature, max_tokens=max_tokens, **extra))
        return [self.lm.chat(c, temperature=temperature, max_tokens=max_tokens) for c in conversations]


def answer_budget(examples: Sequence[TaskExample], cap: int = 128) -> int:
    """Tokens to generate per answer: one and a half times the longest expected answer (≈ 3
    characters a token) plus a margin, at most ``cap``. A reply far longer than any right answer is
    already wrong, and generating it is where a small model that rambles spends its time."""
    longest = max((len(ex.expected) for ex in examples), default=cap * 3)
    return max(16, min(cap, longest // 2 + 12))


def evaluate(
    lm: CountingLM,
    candidate: Candidate,
    examples: Sequence[TaskExample],
    metric: Metric,
    max_tokens: int | None = None,
) -> tuple[list[float], list[str]]:
    """Scores (and outputs) of ``candidate`` on ``examples``, generated as one batch (each reply
    ending with its JSON object when the metric scores JSON actions). ``max_tokens`` defaults to
    :func:`answer_budget`."""
    outputs = lm.chat_batch(
        [candidate.messages(ex) for ex in examples],
        max_tokens=max_tokens or answer_budget(examples),
        json_object=metric is action_match,
    )
    return [metric(o, ex.expected) for o, ex in zip(outputs, examples, strict=True)], outputs


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def finish(
    name: str,
    lm: CountingLM,
    best: Candidate,
    base: Candidate,
    base_hold: list[float],
    holdout: Sequence[TaskExample],
    metric: Metric,
    progress: Callable[[float, str], None],
    lineage: dict[str, Any],
    extra_calls: int = 0,
) -> OptimizeResult:
    """Measure the winner on the holdout (the baseline's scores are reused when nothing beat it)
    and report: the last step every optimizer shares."""
    best_hold = evaluate(lm, best, holdout, metric)[0] if best is not base else base_hold
    progress(1.0, f"holdout {mean(base_hold):.3f} → {mean(best_hold):.3f}")
    return OptimizeResult(
        optimizer=name,
        best=best,
        baseline_score=mean(base_hold),
        best_score=mean(best_hold),
        holdout_scores=best_hold,
        baseline_holdout_scores=base_hold,
        lm_calls=lm.calls + extra_calls,
        lineage=lineage,
    )
