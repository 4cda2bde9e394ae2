"""The main job: the whole flywheel on the support desk, offline, on a laptop CPU.

1. **capture** — the agent (the bundled ``smollm2-135m``, batched local generation) answers the
   training cases, and a teacher (a scripted expert, source ``teacher``) answers them too, all
   recorded through the SDK: the customer lookup as a provider access, the planner's LLM call, the
   action through ``wrap_action``; then the task's reward function scores every trajectory.
2. **datasets** — privacy-filtered snapshots of the rewarded trajectories: ``sft`` (answers with
   reward 1), ``preference`` pairs (a better and a worse answer to the same prompt), and a small
   ``prompt_completion`` set for prompt optimization.
3. **prompt optimization** — two native jobs (``bootstrap-fewshot`` and the LM-driven ``mipro``)
   in the job runner's subprocesses; the promoted prompt is what ``trajforge.prompts.get`` serves.
4. **fine-tuning** — a ``cpu`` LoRA job on the ``sft`` dataset; the model lands in the registry.
5. **reinforcement learning** — a GRPO job (``method: grpo``) from the SFT adapter on the training
   cases' prompts (a ``grpo`` dataset), rewarded by the task's ``support_desk`` reward function; its
   rollouts are stored as trajectories.
6. **evaluation** — base prompt, optimized prompt, fine-tuned model and fine-tuned + RL on the same
   held-out cases (the models through one benchmark of the RL model, which runs its parent too).
7. **report** — ``report.md`` and ``report.html`` (bar chart of the four scores, the loss and
   reward curves) in ``<state>/demo/``, and a summary table.

``quick`` runs every phase with the tiny random model and a few cases (a CI smoke run); its scores
mean nothing.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from trajforge import datasets, evaluate, jobs, lm, models, prompts, rewards, settings
from trajforge.demo import support
from trajforge.optimize.common import parse_action
from trajforge.records import Job
from trajforge.store import TrajectoryFilter, open_store
from trajforge.store.base import Store

AGENT_ID = "support-desk"


@dataclass
class Plan:
    """How big each phase is."""

    quick: bool
    model: str
    n_train: int
    n_agent: int
    n_heldout: int
    native_examples: int
    trials: int
    lora_steps: int
    grpo_steps: int = 8
    grpo_prompts: int = 4
    """Prompts per GRPO step (each sampled ``grpo_generations`` times)."""
    grpo_generations: int = 4
    lora_layers: int = 8
    max_length: int = 384
    gen_batch: int = 32
    max_tokens: int = 32
    """A right answer is ~24 tokens; a reply still going after 32 is wrong anyway."""

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            model="bundled:smollm2-135m",
            n_train=160,
            n_agent=48,
            n_heldout=100,
            native_examples=40,
            trials=2,
            lora_steps=20,
        )

    @classmethod
    def small(cls, home: Path) -> Plan:
        from trajforge.demo.tiny import build_tiny_model

        tiny = build_tiny_model(home / "models" / "tiny-random-llama")
        return cls(
            quick=True,
            model=f"local:{tiny}",
            n_train=24,
            n_agent=12,
            n_heldout=12,
            native_examples=16,
            trials=1,
            lora_steps=4,
            grpo_steps=2,
            grpo_prompts=1,
            grpo_generations=2,
            max_tokens=16,
        )

    @property
    def suite(self) -> str:
        return "support-desk-quick" if self.quick else "support-desk"


@dataclass
class Result:
    run_id: str
    plan: Plan
    seconds: dict[str, float] = field(default_factory=dict)
    trajectories: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    native: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    rl_model: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_md: Path | None = None
    report_html: Path | None = None


class _Phases:
    """A progress bar per phase, and how long each took."""

    def __init__(self, console: Console, result: Result) -> None:
        self.console = console
        self.result = result

    @contextmanager
    def phase(self, name: str, total: float) -> Iterator[Callable[..., None]]:
        started = time.monotonic()
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=self.console,
            transient=False,
        ) as bar:
            task = bar.add_task(name, total=total, note="")

            def advance(by: float = 0, *, done: float | None = None, note: str | None = None) -> None:
                kw: dict[str, Any] = {}
                if note is not None:
                    kw["note"] = note[:70]
                if done is not None:
                    bar.update(task, completed=done, **kw)
                else:
                    bar.update(task, advance=by, **kw)

            yield advance
            bar.update(task, completed=total)
        self.result.seconds[name] = round(time.monotonic() - started, 1)


def run(store_url: str | None = None, *, quick: bool = False, console: Console | None = None) -> Result:
    """Run the flywheel once on the store at ``store_url`` (default: the local SQLite)."""
    console = console or Console()
    # The phases have progress bars of their own; the libraries' per-file bars would drown them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the env var is read at import, which may have happened
    home = settings.home()
    plan = Plan.small(home) if quick else Plan.full()
    url = store_url or settings.database_url()
    result = Result(run_id=time.strftime("%Y%m%d-%H%M%S"), plan=plan)
    phases = _Phases(console, result)
    batch_id = f"demo-{result.run_id}"
    train, heldout = support.split(plan.n_train, plan.n_heldout)
    console.print(
        f"[bold]trajforge demo[/bold] — run {result.run_id}: {len(train)} training cases, "
        f"{len(heldout)} held-out, model {plan.model}, store {url}"
    )
    store = open_store(url)
    try:
        with phases.phase("load model", 1) as step:
            model = lm.from_spec(plan.model)
            if isinstance(model, lm.LocalLM):
                model.max_batch = plan.gen_batch
            step(note=model.name)
        _capture(phases, store, url, model, plan, train, batch_id, result)
        ds_ids = _datasets(phases, store, plan, batch_id, result)
        runner = jobs.JobRunner(store.url, home=home, autotrain=False).start()
        try:
            _native(phases, store, plan, ds_ids["prompt_completion"], result)
            sft_id = _finetune(phases, store, plan, ds_ids["sft"], result)
            model_id = _reinforce(phases, store, plan, ds_ids["grpo"], sft_id, result)
        finally:
            runner.stop()
        _evaluate(phases, store, model, plan, heldout, model_id, result)
        write_report(result, home / "demo", store)
    finally:
        store.close()
    _summary(console, result)
    return result


# --- 1. capture -------------------------------------------------------------------------------------


def _record(rec: Any, act: Callable[..., Any], c: support.Case, answer: str, who: dict[str, Any]) -> None:
    with rec.trajectory(
        agent_id=AGENT_ID,
        source=who["source"],
        scenario_id=c.scenario_id,
        batch_id=who["batch"],
        metadata={"policy": who["policy"], "model": who["model"]},
    ) as t:
        with t.step() as s:
            s.provider("crm", data=c.record, purpose="look up the customer", query={"message": c.message})
            s.llm_call(
                model=who["model"],
                system_prompt=support.SYSTEM_PROMPT,
                user_prompt=c.user_prompt(),
                response=answer,
                purpose="action",
                action_type=support.TASK,
                latency_ms=who["latency_ms"],
                prompt_tokens=len(c.user_prompt() + support.SYSTEM_PROMPT) // 4,
                completion_tokens=max(1, len(answer) // 4),
                temperature=0.0,
                max_tokens=who["max_tokens"],
            )
            try:
                act(parse_action(answer) or {"action": None}, c.record)
            except ValueError:
                pass  # recorded as a failed action
            r = support.reward(answer, c)
            s.reward(r)
        t.reward(r)


def _capture(
    phases: _Phases,
    store: Store,
    url: str,
    model: Any,
    plan: Plan,
    train: list[support.Case],
    batch_id: str,
    result: Result,
) -> None:
    from trajforge.capture.recorder import Recorder

    rec = Recorder(url)
    act = rec.wrap_action("SUPPORT_ACTION")(support.execute)
    base = {"batch": batch_id, "max_tokens": plan.max_tokens}
    try:
        agent_cases = train[: plan.n_agent]
        with phases.phase("agent runs the cases", len(agent_cases)) as step:
            for start in range(0, len(agent_cases), plan.gen_batch):
                chunk = agent_cases[start : start + plan.gen_batch]
                t0 = time.monotonic()
                answers = support.batch_answers(model, chunk, max_tokens=plan.max_tokens)
                per = (time.monotonic() - t0) * 1000 / len(chunk)
                who = {
                    **base,
                    "source": "autonomy",
                    "policy": "agent",
                    "model": model.name,
                    "latency_ms": per,
                }
                for c, a in zip(chunk, answers, strict=True):
                    _record(rec, act, c, a, who)
                step(len(chunk), note=f"{start + len(chunk)} answered")
        with phases.phase("teacher answers the cases", len(train)) as step:
            who = {
                **base,
                "source": "teacher",
                "policy": "teacher",
                "model": "scripted-expert",
                "latency_ms": 1.0,
            }
            for c in train:
                _record(rec, act, c, support.expert(c), who)
                step(1)
        rec.flush()
    finally:
        rec.close()
    with phases.phase("score with the task reward", 1) as step:
        flt = TrajectoryFilter(batch_id=batch_id)
        run = rewards.score_trajectories(store, support.support_desk_reward, flt, name="support_desk")
        step(note=f"{run.scored} scored")
    agent = store.count(TrajectoryFilter(batch_id=batch_id, source="autonomy"))
    teacher = store.count(TrajectoryFilter(batch_id=batch_id, source="teacher"))
    perfect = store.count(TrajectoryFilter(batch_id=batch_id, source="autonomy", min_reward=1.0))
    result.trajectories = {"agent": agent, "teacher": teacher, "agentPerfect": perfect, "scored": run.scored}


# --- 2. datasets ------------------------------------------------------------------------------------


def _datasets(phases: _Phases, store: Store, plan: Plan, batch_id: str, result: Result) -> dict[str, str]:
    requests = {
        "sft": datasets.BuildRequest(
            format="sft", reward_score="support_desk", min_reward=1.0, batch_id=batch_id, name="support-desk-sft",
            eval_fraction=0.1, task=support.TASK,
        ),
        "preference": datasets.BuildRequest(
            format="preference", reward_score="support_desk", batch_id=batch_id, name="support-desk-preference",
            eval_fraction=0.0, task=support.TASK,
        ),
        "grpo": datasets.BuildRequest(
            format="grpo", reward_score="support_desk", batch_id=batch_id, name="support-desk-grpo",
            eval_fraction=0.0, task=support.TASK,
        ),
        "prompt_completion": datasets.BuildRequest(
            format="prompt_completion", reward_score="support_desk", min_reward=1.0, batch_id=batch_id,
            name="support-desk-prompts", limit=plan.native_examples, eval_fraction=0.0, task=support.TASK,
        ),
    }  # fmt: skip
    out = {}
    with phases.phase("build private datasets", len(requests)) as step:
        for key, req in requests.items():
            ds = datasets.build(store, req)
            out[key] = ds.id
            priv = ds.manifest["privacy"]
            result.datasets[key] = {
                "id": ds.id,
                "name": ds.name,
                "version": ds.version,
                "rows": ds.manifest["counts"]["rows"],
                "redactions": priv["redactions"],
                "path": ds.path,
            }
            step(1, note=f"{key}: {ds.row_count} rows")
    return out


# --- 3 and 4. jobs ----------------------------------------------------------------------------------


def _follow(phases: _Phases, store: Store, job: Job, title: str) -> Job:
    seq = 0
    with phases.phase(title, 1.0) as step:
        while True:
            for e in store.list_events(after=seq, job_id=job.id):
                seq = e.seq or seq
                step(done=e.progress if e.progress is not None else None, note=e.message)
            current = jobs.get(store, job.id)
            if current.status in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.3)
    if current.status != "completed":
        raise RuntimeError(f"{title}: job {job.id} {current.status}: {current.error}")
    return current


def _native(phases: _Phases, store: Store, plan: Plan, dataset_id: str, result: Result) -> None:
    for optimizer in ("bootstrap-fewshot", "mipro"):
        job = jobs.submit(
            store,
            {
                "backend": "native",
                "optimizer": optimizer,
                "datasetId": dataset_id,
                "task": support.TASK,
                "model": plan.model,
                "iterations": plan.trials,
                "maxDemos": 3,  # every demonstration is ~200 tokens in each later call
            },
        )
        done = _follow(phases, store, job, f"optimize the prompt ({optimizer})")
        for art in (done.output or {}).get("artifacts", []):
            result.native.append({"optimizer": optimizer, "jobId": job.id, **art})


def _finetune(phases: _Phases, store: Store, plan: Plan, dataset_id: str, result: Result) -> str:
    job = jobs.submit(
        store,
        {
            "backend": "cpu",
            "datasetId": dataset_id,
            "model": plan.model,
            "iterations": plan.lora_steps,
            "batchSize": 4,
            "learningRate": 1.5e-3,  # fewer steps, a little more per step
            "maxLength": plan.max_length,
            "loraLayers": plan.lora_layers,
        },
    )
    done = _follow(phases, store, job, "fine-tune with LoRA (cpu)")
    model_id = str((done.output or {})["modelId"])
    result.model = {"id": model_id, "jobId": job.id, **models.get(store, model_id).metrics}
    return model_id


def _reinforce(
    phases: _Phases, store: Store, plan: Plan, dataset_id: str, parent_id: str, result: Result
) -> str:
    job = jobs.submit(
        store,
        {
            "backend": "cpu",
            "datasetId": dataset_id,
            "method": "grpo",
            "fromModel": parent_id,
            "reward": "support_desk",
            "iterations": plan.grpo_steps,
            "batchSize": plan.grpo_prompts,
            "numGenerations": plan.grpo_generations,
            "maxCompletionLength": plan.max_tokens,
            "temperature": 1.0,
            "learningRate": 1e-3,
            "stopAtJson": True,
        },
    )
    done = _follow(phases, store, job, "reinforce with GRPO (cpu)")
    model_id = str((done.output or {})["modelId"])
    result.rl_model = {"id": model_id, "jobId": job.id, **models.get(store, model_id).metrics}
    return model_id


# --- 5. evaluation ----------------------------------------------------------------------------------


def _score(answers: list[str], cases: list[support.Case]) -> dict[str, Any]:
    rs = [support.reward(a, c) for a, c in zip(answers, cases, strict=True)]
    return {
        "score": sum(rs) / len(rs),
        "exact": sum(r == 1.0 for r in rs) / len(rs),
        "rightAction": sum(r >= 0.5 for r in rs) / len(rs),
        "n": len(rs),
    }


def _evaluate(
    phases: _Phases,
    store: Store,
    model: Any,
    plan: Plan,
    heldout: list[support.Case],
    model_id: str,
    result: Result,
) -> None:
    optimized = prompts.get(support.TASK, default=support.SYSTEM_PROMPT)
    with phases.phase("evaluate the optimized prompt", len(heldout)) as step:
        answers: list[str] = []
        for start in range(0, len(heldout), plan.gen_batch):
            chunk = heldout[start : start + plan.gen_batch]
            answers += support.batch_answers(model, chunk, optimized, max_tokens=plan.max_tokens)
            step(len(chunk))
    with phases.phase("benchmark base, fine-tuned, fine-tuned + RL", 1.0) as step:
        bench = evaluate.benchmark(
            store,
            model_id,
            {"suite": plan.suite, "maxTokens": plan.max_tokens},
            lambda p, phase, m: step(done=p, note=m),
        )
    by_item = bench["perItem"]
    result.scores = {
        "base prompt": {**_score([i["baseOutput"] for i in by_item], heldout), "model": plan.model},
        "optimized prompt": {
            **_score(answers, heldout),
            "model": plan.model,
            "artifact": None if optimized.version is None else f"{support.TASK} v{optimized.version}",
        },
    }
    if "parentOutput" in by_item[0]:
        result.scores["fine-tuned model"] = {
            **_score([i["parentOutput"] for i in by_item], heldout),
            "model": bench["parentModel"],
        }
        result.scores["fine-tuned + RL"] = {
            **_score([i["trainedOutput"] for i in by_item], heldout),
            "model": model_id,
        }
    else:
        result.scores["fine-tuned model"] = {
            **_score([i["trainedOutput"] for i in by_item], heldout),
            "model": model_id,
        }


# --- 6. report --------------------------------------------------------------------------------------


def _bars_svg(scores: dict[str, dict[str, Any]]) -> str:
    w, h, pad = 480, 240, 40
    bw = (w - 2 * pad) / max(1, len(scores)) * 0.6
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        'aria-label="held-out score by configuration">',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>',
    ]
    colors = ("#9aa5b1", "#3b82f6", "#10b981", "#8b5cf6")
    for i, (name, s) in enumerate(scores.items()):
        x = pad + (i + 0.2) * (w - 2 * pad) / len(scores)
        bh = (h - 2 * pad) * max(0.0, min(1.0, s["score"]))
        parts.append(
            f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
            f'fill="{colors[i % len(colors)]}"><title>{html.escape(name)}: {s["score"]:.3f}</title></rect>'
        )
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{h - pad - bh - 6:.1f}" text-anchor="middle" '
            f'font-size="13">{s["score"]:.2f}</text>'
        )
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{h - pad + 16:.1f}" text-anchor="middle" '
            f'font-size="12">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _loss_svg(
    log: list[dict[str, Any]], key: str = "loss", label: str = "loss", color: str = "#ef4444"
) -> str:
    w, h, pad = 480, 200, 40
    log = [e for e in log if isinstance(e.get(key), int | float)]
    if not log:
        return "<p>(no training log)</p>"
    steps = [e["step"] for e in log]
    losses = [float(e[key]) for e in log]
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    last = max(steps) or 1

    def xy(s: float, v: float) -> str:
        return f"{pad + (w - 2 * pad) * s / last:.1f},{h - pad - (h - 2 * pad) * (v - lo) / span:.1f}"

    points = " ".join(xy(s, v) for s, v in zip(steps, losses, strict=True))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="{html.escape(label)} per step">'
        f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>'
        f'<text x="{pad}" y="{pad - 8}" font-size="12">{html.escape(label)} {hi:.3f} (max)</text>'
        f'<text x="{w - pad}" y="{h - pad - 6}" text-anchor="end" font-size="12">'
        f"{losses[-1]:.3f} at step {last}</text>"
        f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle" font-size="12">step</text>'
        "</svg>"
    )


def _train_log(store: Store | None, model_id: str | None) -> list[dict[str, Any]]:
    """A registered model's per-step training log (loss; for GRPO, reward too)."""
    if store is None or not model_id:
        return []
    adapter = models.get(store, model_id).adapter_path
    path = Path(adapter).parent / "train_log.jsonl" if adapter else None
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(result: Result, folder: Path, store: Store | None = None) -> None:
    """``report.md`` and ``report.html`` (with inline SVG charts) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    log = _train_log(store, result.model.get("id"))
    rl_log = _train_log(store, result.rl_model.get("id"))
    plan = result.plan
    rows = [
        f"| {name} | {s['score']:.3f} | {s['exact']:.0%} | {s['rightAction']:.0%} | {s['n']} |"
        for name, s in result.scores.items()
    ]
    md = [
        f"# trajforge demo — run {result.run_id}",
        "",
        f"Support-desk agent, model `{plan.model}`{' (quick: tiny random model, scores are noise)' if plan.quick else ''}.",
        "",
        "## Held-out cases",
        "",
        "| configuration | score | exact (action + order) | right action | n |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Score: 1 for the right action with the right order id, 0.5 for the right action, 0 otherwise.",
        "",
        "## What happened",
        "",
        f"- Captured {result.trajectories.get('agent', 0)} agent trajectories "
        f"({result.trajectories.get('agentPerfect', 0)} perfect) and {result.trajectories.get('teacher', 0)} "
        "teacher trajectories, scored with the `support_desk` reward.",
        *(
            f"- Dataset `{d['name']}` v{d['version']} ({k}): {d['rows']['train']} train / {d['rows']['eval']} eval rows; "
            f"redactions {d['redactions'] or 'none'}; `{d['path']}`"
            for k, d in result.datasets.items()
        ),
        *(
            f"- Prompt optimization `{a['optimizer']}`: {a.get('baselineScore', 0):.3f} → {a.get('score', 0):.3f} "
            f"on its holdout (v{a.get('version')}, {'promoted' if a.get('promoted') else 'not promoted'})"
            for a in result.native
        ),
        f"- LoRA fine-tune `{result.model.get('id')}`: {result.model.get('steps')} steps, final loss "
        f"{result.model.get('finalLoss')}, {result.model.get('tokensPerS')} tokens/s.",
        *(
            [
                f"- GRPO `{result.rl_model.get('id')}` from it: {result.rl_model.get('steps')} steps, "
                f"{plan.grpo_prompts} prompts × {plan.grpo_generations} completions per step, reward "
                f"`{result.rl_model.get('reward')}` {result.rl_model.get('rewardFirst')} → "
                f"{result.rl_model.get('rewardLast')} (first → last step mean), "
                f"{result.rl_model.get('rollouts')} rollouts stored, {result.rl_model.get('tokensPerS')} tokens/s; "
                f"reward errors {result.rl_model.get('rewardErrors')}, none/NaN {result.rl_model.get('rewardNan')}.",
                "",
                "Reward per GRPO step (mean over the step's completions): "
                + ", ".join(f"{e['rewardMean']:.3f}" for e in rl_log if e.get("rewardMean") is not None),
            ]
            if result.rl_model
            else []
        ),
        "",
        "## Time per phase (s)",
        "",
        *(f"- {k}: {v}" for k, v in result.seconds.items()),
        f"- total: {sum(result.seconds.values()):.0f}",
        "",
    ]
    result.report_md = folder / "report.md"
    result.report_md.write_text("\n".join(md))
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s['score']:.3f}</td><td>{s['exact']:.0%}</td>"
        f"<td>{s['rightAction']:.0%}</td><td>{s['n']}</td></tr>"
        for name, s in result.scores.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trajforge demo {html.escape(result.run_id)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:760px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>trajforge demo — run {html.escape(result.run_id)}</h1>
<p>Support-desk agent, model <code>{html.escape(plan.model)}</code>.{" Quick run: scores are noise." if plan.quick else ""}</p>
<h2>Held-out score</h2>{_bars_svg(result.scores)}
<table><tr><th>configuration</th><th>score</th><th>exact</th><th>right action</th><th>n</th></tr>{table}</table>
<h2>Training loss (SFT)</h2>{_loss_svg(log)}
<h2>Reward per step (GRPO)</h2>{_loss_svg(rl_log, "rewardMean", "reward", "#8b5cf6")}
<p>Details: <a href="report.md">report.md</a>. Browse everything with <code>trajforge serve</code>.</p>
</body></html>
"""
    result.report_html = folder / "report.html"
    result.report_html.write_text(page)


def _summary(console: Console, result: Result) -> None:
    table = Table(title="held-out cases")
    for col in ("configuration", "score", "exact", "right action", "n"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for name, s in result.scores.items():
        table.add_row(name, f"{s['score']:.3f}", f"{s['exact']:.0%}", f"{s['rightAction']:.0%}", str(s["n"]))
    console.print(table)
    console.print(
        f"total {sum(result.seconds.values()):.0f} s; report: {result.report_md} and {result.report_html}"
    )
