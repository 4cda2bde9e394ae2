"""What "good" means: reward functions, late outcomes and the LLM judge, all stored as Scores.

Three ways to score trajectories, each ending in ``Score`` rows a dataset build can curate by:

* a **reward function** ``fn(trajectory) -> float | None`` registered with
  :func:`reward_function` (or named as ``module:attr``) and applied with :func:`score_trajectories`;
* a **late outcome** posted whenever it is known (``POST /api/trajectories/{id}/scores``,
  ``Recorder.score``), hours later if need be;
* the **LLM judge** (:func:`judge`, RULER-style): trajectories of one scenario are shown to a
  judge model together and scored relative to each other in [0, 1], with an explanation.

Example::

    @trajforge.reward_function("resolved_fast")
    def resolved_fast(t: Trajectory) -> float:
        return 1.0 if t.status == "completed" and (t.duration_ms or 0) < 60_000 else 0.0
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from trajforge.errors import InvalidInput, LMError
from trajforge.records import Score, Trajectory

if TYPE_CHECKING:  # an agent's @reward_function needs neither the LLM client (httpx) nor the store
    from trajforge.lm import LM
    from trajforge.store.base import Store
    from trajforge.store.filter import TrajectoryFilter

log = logging.getLogger(__name__)

RewardFn = Callable[[Trajectory], float | None]
_REGISTRY: dict[str, RewardFn] = {}


def reward_function(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn(trajectory) -> float | None`` under ``name`` (``None`` means "no opinion": no
    score is stored). The name becomes the stored score's name."""
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,80}", name):
        raise InvalidInput(f"reward function names are 1-80 letters, digits, _.:-, got {name!r}", "name")

    def register(fn: RewardFn) -> RewardFn:
        _REGISTRY[name] = fn
        return fn

    return register


@reward_function("action_reward_sum")
def action_reward_sum(t: Trajectory) -> float | None:
    """Sum of the immediate rewards of the trajectory's actions (None if no action has one)."""
    rewards = [
        s.action.immediate_reward for s in t.steps if s.action and s.action.immediate_reward is not None
    ]
    return float(sum(rewards)) if rewards else None


@reward_function("action_success_rate")
def action_success_rate(t: Trajectory) -> float | None:
    """Share of the trajectory's actions that succeeded (None without actions)."""
    actions = [s.action for s in t.steps if s.action is not None]
    return sum(1 for a in actions if a.success) / len(actions) if actions else None


def outcome(name: str) -> RewardFn:
    """Pass a named outcome through as the reward: the latest score called ``name``."""

    def passthrough(t: Trajectory) -> float | None:
        values = [s for s in t.scores if s.name == name]
        return max(values, key=lambda s: s.created_at).value if values else None

    return passthrough


def resolve(spec: str | RewardFn) -> tuple[str, RewardFn]:
    """A reward function from a registered name, ``outcome:<score name>`` or ``module:attr``."""
    if callable(spec):
        return getattr(spec, "__name__", "reward"), spec
    if spec in _REGISTRY:
        return spec, _REGISTRY[spec]
    if spec.startswith("outcome:") and len(spec) > len("outcome:"):
        return spec.split(":", 1)[1], outcome(spec.split(":", 1)[1])
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        known = ", ".join(sorted(_REGISTRY))
        raise InvalidInput(
            f"reward function {spec!r} is not registered ({known}) and is not module:attr or outcome:<name>",
            "fn",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(
            f"cannot import {module_name!r} for reward function {spec!r}: {exc}", "fn"
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        # A module whose decorator registered the name (``@reward_function("x")``) may be named too.
        if attr in _REGISTRY:
            return attr, _REGISTRY[attr]
        raise InvalidInput(f"{module_name!r} has no callable {attr!r}", "fn")
    registered = next((n for n, f in _REGISTRY.items() if f is fn), None)
    return registered or attr, fn


@dataclass(slots=True)
class ScoreRun:
    """What applying a reward function did."""

    name: str
    scored: int = 0
    skipped: int = 0
    errors: int = 0
    error_samples: list[dict[str, str]] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scored": self.scored,
            "skipped": self.skipped,
            "errors": self.errors,
            "errorSamples": self.error_samples,
        }


def score_trajectories(
    store: Store,
    fn: str | RewardFn,
    flt: TrajectoryFilter | None = None,
    *,
    name: str | None = None,
    source: str = "reward_fn",
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreRun:
    """Apply a reward function to every matching trajectory and store one Score each (re-running
    replaces the earlier value). A function that raises or returns a non-finite number for one
    trajectory is counted as an error for it; the run goes on."""
    from trajforge.store.filter import TrajectoryFilter

    fn_name, func = resolve(fn)
    run = ScoreRun(name=name or fn_name)
    pending: list[Score] = []
    for n, t in enumerate(store.iter_trajectories(flt or TrajectoryFilter()), 1):
        if limit is not None and n > limit:
            break
        try:
            value = func(t)
            if value is not None:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"returned {value}")
        except Exception as exc:  # noqa: BLE001 - one bad trajectory must not stop the run
            run.errors += 1
            if len(run.error_samples) < 10:
                run.error_samples.append({"trajectoryId": t.id, "error": f"{type(exc).__name__}: {exc}"})
            continue
        if value is None:
            run.skipped += 1
        else:
            pending.append(Score(trajectory_id=t.id, name=run.name, value=value, source=source))
            run.scored += 1
        if len(pending) >= 500:
            store.add_scores(pending)
            pending = []
        if on_progress is not None:
            on_progress(n)
    store.add_scores(pending)
    return run


# --- the LLM judge ---------------------------------------------------------------------------------

DEFAULT_RUBRIC = (
    "Score each trajectory by how well the agent achieved the user's goal: correct, complete, "
    "efficient, and safe. A trajectory that achieves the goal scores higher than one that does not; "
    "among those that do, prefer fewer wasted steps. Use the whole range 0 to 1."
)
_MAX_CONTENT = 2000


@dataclass(slots=True)
class Judgement:
    trajectory_id: str
    score: float | None
    explanation: str = ""
    error: str | None = None


def _judge_messages(t: Trajectory) -> list[dict[str, Any]]:
    from trajforge.export import art_messages  # the same transcript the ART export shows

    messages, _ = art_messages(t)
    out = []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, str):
            content = orjson.dumps(content).decode() if content is not None else ""
        if m.get("tool_calls"):
            content += "\n[tool calls] " + orjson.dumps(m["tool_calls"]).decode()
        if len(content) > _MAX_CONTENT:
            content = content[:_MAX_CONTENT] + " …[truncated]"
        out.append({"role": m.get("role", "user"), "content": content})
    return out


def _common_prefix(transcripts: Sequence[list[dict[str, Any]]]) -> int:
    n = min(len(t) for t in transcripts) if transcripts else 0
    for i in range(n):
        if any(t[i] != transcripts[0][i] for t in transcripts[1:]):
            return i
    return n if len(transcripts) > 1 else 0


def judge_prompt(group: Sequence[Trajectory], rubric: str) -> list[dict[str, Any]]:
    """RULER's layout: the shared message prefix once, then what each trajectory did after it,
    under short ids (1, 2, …) so the judge cannot confuse long ids."""
    transcripts = [_judge_messages(t) for t in group]
    shared = _common_prefix(transcripts)
    parts = []
    if shared:
        parts.append("<context>\n" + _render(transcripts[0][:shared]) + "\n</context>")
    for i, t in enumerate(transcripts, 1):
        extra = (
            [f"reward so far: {group[i - 1].total_reward}"] if group[i - 1].total_reward is not None else []
        )
        parts.append(
            f'<trajectory id="{i}">\n'
            + _render(t[shared:])
            + "".join(f"\n({e})" for e in extra)
            + "\n</trajectory>"
        )
    system = (
        "You are an impartial judge of AI agent trajectories. All trajectories below attempt the same "
        "task. " + rubric + "\nAnswer with JSON only, in this exact shape: "
        '{"scores": [{"trajectory_id": "1", "explanation": "…", "score": 0.0}]} '
        "with one entry per trajectory and each score between 0 and 1."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]


def _render(messages: Iterable[dict[str, Any]]) -> str:
    return "\n".join(f"[{m['role']}] {m['content']}" for m in messages)


_JSON_BLOCK = re.compile(r"```(?:json)?\s*([\s\S]*?)```")


def parse_judgement(text: str, n: int) -> tuple[dict[int, tuple[float, str, bool]], str | None]:
    """``{index: (score, explanation, clamped)}`` from a judge's reply, and an error when the reply
    is unusable. Tolerates fences, prose around the JSON, a bare list, numeric strings, scores out
    of range (clamped) and unknown or repeated ids (ignored / first wins)."""
    candidates = [m.group(1) for m in _JSON_BLOCK.finditer(text)]
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            candidates.append(text[start : end + 1])
    data: Any = None
    for c in [text, *candidates]:
        try:
            data = orjson.loads(c)
            break
        except orjson.JSONDecodeError:
            continue
    if data is None:
        return {}, "the judge's reply is not JSON"
    items = data.get("scores") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return {}, "the judge's reply has no list of scores"
    out: dict[int, tuple[float, str, bool]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        raw_id = item.get("trajectory_id", item.get("id"))
        try:
            idx = int(str(raw_id).strip().strip('"'))
            score = float(item.get("score"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if not 1 <= idx <= n or idx in out or not math.isfinite(score):
            continue
        clamped = min(1.0, max(0.0, score))
        explanation = item.get("explanation")
        out[idx] = (clamped, explanation if isinstance(explanation, str) else "", clamped != score)
    if not out:
        return {}, "the judge's reply scores none of the trajectories"
    return out, None


def judge_group(
    lm: LM, group: Sequence[Trajectory], rubric: str = DEFAULT_RUBRIC, *, retries: int = 2
) -> list[Judgement]:
    """Score one group of trajectories (same scenario) relative to each other. Malformed replies
    and missing ids are asked again up to ``retries`` times; what is still missing after that is
    returned as an error, never as a made-up score."""
    messages = judge_prompt(group, rubric)
    got: dict[int, tuple[float, str, bool]] = {}
    error: str | None = None
    for _attempt in range(retries + 1):
        try:
            reply = lm.chat(messages, temperature=0.0, max_tokens=300 + 150 * len(group))
        except LMError as exc:
            error = exc.message
            continue
        parsed, error = parse_judgement(reply, len(group))
        for idx, value in parsed.items():
            got.setdefault(idx, value)
        missing = [i for i in range(1, len(group) + 1) if i not in got]
        if not missing:
            error = None
            break
        error = error or f"the judge did not score trajectories {missing}"
        messages = [
            *messages[:2],
            {"role": "assistant", "content": reply},
            {
                "role": "user",
                "content": f"Your answer was incomplete or invalid ({error}). Reply again with JSON only, "
                'scoring every trajectory: {"scores": [{"trajectory_id": "1", "explanation": "…", "score": 0.5}]}',
            },
        ]
    out = []
    for i, t in enumerate(group, 1):
        if i in got:
            score, explanation, clamped = got[i]
            note = " (score clamped into [0, 1])" if clamped else ""
            out.append(Judgement(t.id, score, explanation + note))
        else:
            out.append(Judgement(t.id, None, error=error or "not scored"))
    return out


@dataclass(slots=True)
class JudgeRun:
    name: str
    groups: int = 0
    scored: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "groups": self.groups, "scored": self.scored, "errors": self.errors}


def judge(
    store: Store,
    lm: LM,
    flt: TrajectoryFilter | None = None,
    *,
    rubric: str = DEFAULT_RUBRIC,
    name: str = "ruler",
    max_group: int = 8,
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> JudgeRun:
    """Judge every matching trajectory, grouped by scenario (at most ``max_group`` per call;
    trajectories without a scenario are judged alone). Scores are stored with source ``judge``;
    trajectories the judge failed on are listed in ``errors`` and get no score."""
    from trajforge.store.filter import TrajectoryFilter

    groups: dict[str, list[Trajectory]] = {}
    for n, t in enumerate(store.iter_trajectories(flt or TrajectoryFilter()), 1):
        if limit is not None and n > limit:
            break
        groups.setdefault(t.scenario_id or f"\x00{t.id}", []).append(t)
    run = JudgeRun(name=name)
    done = 0
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda t: t.id)
        for i in range(0, len(members), max_group):
            chunk = members[i : i + max_group]
            run.groups += 1
            scores = []
            for j in judge_group(lm, chunk, rubric):
                if j.score is None:
                    run.errors.append({"trajectoryId": j.trajectory_id, "error": j.error or "not scored"})
                    continue
                scores.append(
                    Score(j.trajectory_id, name, j.score, comment=j.explanation[:2000], source="judge")
                )
            store.add_scores(scores)
            run.scored += len(scores)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done)
    return run


# --- rewards for GRPO rollouts ---------------------------------------------------------------------

TASK_METRICS = ("action_match", "token_f1")
JUDGE = "judge"


def builtin() -> None:
    """Register the reward functions trajforge ships (the demo task's ``support_desk``): a job
    process resolves a name before anything else imported the module that registers it."""
    import trajforge.demo.support  # noqa: F401 - registers support_desk


def check_spec(name: str, *, trusted: bool) -> None:
    """Refuse a GRPO reward term that cannot run, naming the ``reward`` field: an unknown name, a
    ``module:function`` from HTTP (it runs the caller's code) or one that does not import, ``judge``
    without a configured judge endpoint."""
    import os

    from trajforge import settings

    builtin()
    if name in TASK_METRICS or name in _REGISTRY:
        return
    if name == JUDGE:
        if not os.environ.get(settings.LM_BASE_URL) or not os.environ.get(settings.LM_MODEL):
            raise InvalidInput(
                f"the judge reward needs a judge model: set {settings.LM_BASE_URL} and {settings.LM_MODEL}",
                "reward",
            )
        return
    if ":" not in name or name.startswith("outcome:"):
        known = ", ".join(sorted({*_REGISTRY, *TASK_METRICS, JUDGE}))
        raise InvalidInput(f"unknown reward {name!r}: use one of {known} or module:function", "reward")
    if not trusted:
        raise InvalidInput(
            f"reward {name!r}: module:function runs your own code, so it is accepted only from the command "
            "line or Python, not over HTTP",
            "reward",
        )
    try:
        resolve(name)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, "reward") from None
