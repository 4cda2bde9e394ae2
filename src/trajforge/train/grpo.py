"""``method: grpo``: reinforcement learning from rewards with TRL's ``GRPOTrainer`` + PEFT.

* **Prompts** come from a ``grpo`` dataset (prompt, group = scenario id, task) or from an ``sft`` /
  ``prompt_completion`` dataset's prompts, whose completion becomes the row's *reference* (what the
  task metrics compare with). Identical prompts are trained on once.
* **Rewards** (:class:`Rewarder`): each completion gets the weighted sum of the request's terms:
  ``action_match`` / ``token_f1`` against the reference, a registered reward function or
  ``module:function``, or ``judge`` (RULER: the group's completions ranked by the judge model
  relative to each other). A reward function is called in one of two ways, by its parameters:

  - ``fn(trajectory) -> float | None`` — the same function that scores stored trajectories: the
    rollout as a :class:`~trajforge.records.Trajectory` (one step, one LLM call whose response is
    the completion and whose ``action_type`` is the row's task; ``scenario_id`` is the row's group);
  - ``fn(row, completion) -> float | None`` — ``row`` is the dataset row (``prompt`` messages,
    ``reference``, ``group``, ``task``), ``completion`` the generated text.

  ``None``, an exception or a non-finite value gives that completion reward **0** for the term (it
  stays in its group, so the group's advantages stay defined) and is counted in the progress and
  the model's metrics (``rewardErrors``, ``rewardNan``); the job goes on.
* **Start** from the base model (a new LoRA adapter) or from a registry model's adapter
  (``fromModel``: the usual recipe is SFT, then GRPO), trained further; with ``klBeta > 0`` the
  reference policy is that starting adapter (TRL keeps a frozen copy).
* **Generation**, which dominates GRPO on a CPU, is batched over the whole generation batch with the
  prompts' shared prefix (the system prompt, and each prompt's own copies) run through the model
  once, and, when the task answers in JSON, each completion ends as soon as it holds a whole JSON
  object (``stopAtJson``).
* **Rollouts are trajectories**: every completion is stored (source ``rollout``, the job id as batch
  id, its reward as the score ``rollout_reward``), so the dashboard and later datasets see what the
  policy did.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from trajforge import rewards
from trajforge.errors import Cancelled, InvalidInput
from trajforge.records import LlmCall, Score, Step, Trajectory, WriteBatch
from trajforge.train.lora import (
    LoraOptions,
    Progress,
    Report,
    ShouldStop,
    StepEntry,
    lora_config,
    progress_callback,
    use_bf16,
)

ROLLOUT_SOURCE = "rollout"
ROLLOUT_SCORE = "rollout_reward"
AGENT_ID = "trajforge-grpo"


# --- prompts -------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return orjson.dumps(content).decode() if content is not None else ""


def prompt_rows(fmt: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The GRPO rows of a dataset's rows: ``{"prompt", "reference", "group", "task", "index"}``,
    each prompt once."""
    out: list[dict[str, Any]] = []
    seen: set[bytes] = set()
    for row in rows:
        reference: str | None = None
        if fmt == "grpo":
            prompt = row.get("prompt")
        elif "messages" in row:
            messages = row["messages"]
            if len(messages) < 2 or messages[-1].get("role") != "assistant":
                continue
            prompt, reference = messages[:-1], _text(messages[-1].get("content"))
        else:
            prompt = row.get("prompt")
            completion = row.get("completion") or []
            reference = _text(completion[-1].get("content")) if completion else None
        if not isinstance(prompt, list) or not prompt:
            continue
        key = orjson.dumps(prompt)
        if key in seen:
            continue
        seen.add(key)
        out.append(
            {
                "prompt": prompt,
                "reference": reference,
                "group": row.get("group"),
                "task": row.get("task"),
                "index": len(out),
            }
        )
    return out


def load_prompts(folder: Path, task: str | None = None) -> list[dict[str, Any]]:
    """The GRPO rows of a dataset snapshot (train split; one task's, when ``task`` is given)."""
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    fmt = manifest["format"]
    if fmt not in ("grpo", "sft", "prompt_completion"):
        raise InvalidInput(
            f"GRPO reads grpo, sft or prompt_completion datasets (their prompts), not {fmt!r}", "datasetId"
        )
    base = folder
    if task is not None:
        tasks = manifest["counts"].get("tasks", {})
        if task not in tasks:
            raise InvalidInput(f"the dataset has no task {task!r}; it has {', '.join(sorted(tasks))}", "task")
        if "folder" in tasks[task]:
            base = folder / tasks[task]["folder"]
    path = base / "train.jsonl"
    raw = (
        [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        if path.exists()
        else []
    )
    rows = prompt_rows(fmt, raw)
    if not rows:
        raise InvalidInput("the dataset has no prompts to train on", "datasetId")
    return rows


# --- rewards -------------------------------------------------------------------------------------


@dataclass
class Term:
    name: str
    weight: float
    score: Callable[[dict[str, Any], str, Trajectory], float | None] | None
    """Per completion; None for the judge, which scores a group at once."""


def _metric_term(name: str) -> Callable[[dict[str, Any], str, Trajectory], float | None]:
    from trajforge.optimize.common import METRICS

    metric = METRICS[name]

    def score(row: dict[str, Any], completion: str, t: Trajectory) -> float | None:
        ref = row.get("reference")
        if ref is None:
            raise ValueError(f"{name} needs a reference answer; this row has none (a grpo dataset row?)")
        return metric(completion, ref)

    return score


def _function_term(name: str) -> Callable[[dict[str, Any], str, Trajectory], float | None]:
    _, fn = rewards.resolve(name)
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        params = []
    if len(params) >= 2:
        pair: Any = fn
        return lambda row, completion, t: pair(row, completion)
    return lambda row, completion, t: fn(t)


def terms(spec: Any) -> list[Term]:
    """The weighted terms of a request's ``reward`` (default: the task metric of the references)."""
    rewards.builtin()
    items = (
        [(spec, 1.0)] if isinstance(spec, str) else [(w["name"], float(w.get("weight", 1.0))) for w in spec]
    )
    out = []
    for name, weight in items:
        if name == rewards.JUDGE:
            out.append(Term(name, weight, None))
        elif name in rewards.TASK_METRICS:
            out.append(Term(name, weight, _metric_term(name)))
        else:
            out.append(Term(name, weight, _function_term(name)))
    return out


def default_reward(rows: Sequence[dict[str, Any]]) -> str:
    """The task metric the references call for: ``action_match`` for JSON actions, else ``token_f1``."""
    from trajforge.optimize.common import parse_action

    refs = [r["reference"] for r in rows if r.get("reference") is not None]
    if not refs:
        raise InvalidInput("this dataset's rows have no reference answer: name a reward function", "reward")
    return "action_match" if sum(parse_action(r) is not None for r in refs) >= 0.8 * len(refs) else "token_f1"


@dataclass
class Rewarder:
    """TRL's reward function: the weighted terms per completion, errors counted (reward 0), each
    completion recorded as a rollout trajectory with its reward."""

    terms: list[Term]
    rows: list[dict[str, Any]]
    store: Any
    job_id: str
    model_label: str
    temperature: float
    judge_lm: Any = None
    errors: int = 0
    nan: int = 0
    calls: int = 0
    error_samples: list[str] = field(default_factory=list)
    recorded: int = 0
    spec: Any = None
    """The request's reward as it ran (the default spelled out)."""
    stop_at_json: bool = False
    __name__ = "trajforge_reward"  # TRL names its reward columns after this

    def _count(self, kind: str, term: str, why: str) -> None:
        if kind == "nan":
            self.nan += 1
        else:
            self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{term}: {why}"[:300])

    def _value(self, term: str, fn: Callable[[], Any]) -> float:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - one bad completion must not stop the job
            self._count("error", term, f"{type(exc).__name__}: {exc}")
            return 0.0
        if value is None:
            self._count("nan", term, "returned None")
            return 0.0
        try:
            number = float(value)
        except (TypeError, ValueError):
            self._count("error", term, f"returned {value!r}"[:100])
            return 0.0
        if not math.isfinite(number):
            self._count("nan", term, f"returned {number}")
            return 0.0
        return number

    def trajectory(self, row: dict[str, Any], completion: str, member: int, step: int) -> Trajectory:
        prompt = row["prompt"]
        system = next((_text(m.get("content")) for m in prompt if m.get("role") == "system"), None)
        user = next((_text(m.get("content")) for m in reversed(prompt) if m.get("role") == "user"), None)
        call = LlmCall(
            model=self.model_label,
            system_prompt=system,
            user_prompt=user,
            messages=list(prompt),
            response=completion,
            temperature=self.temperature,
            action_type=row.get("task"),
        )
        return Trajectory(
            agent_id=AGENT_ID,
            source=ROLLOUT_SOURCE,
            status="completed",
            scenario_id=row.get("group") or f"grpo-{self.job_id}-{row['index']}",
            batch_id=self.job_id,
            group_index=member,
            metadata={"jobId": self.job_id, "step": step, "prompt": row["index"]},
            steps=[Step(step_number=0, llm_calls=[call])],
        )

    def __call__(self, prompts: list[Any], completions: list[Any], **kw: Any) -> list[float]:
        state = kw.get("trainer_state")
        step = int(getattr(state, "global_step", 0) or 0)
        index = kw["index"]
        texts = [_text(c[-1]["content"]) if isinstance(c, list) else str(c) for c in completions]
        rows = [self.rows[i] for i in index]
        members: list[int] = []
        seen: dict[int, int] = {}
        for i in index:
            seen[i] = seen.get(i, -1) + 1
            members.append(seen[i])
        trajs = [self.trajectory(r, t, m, step) for r, t, m in zip(rows, texts, members, strict=True)]
        self.calls += len(texts)
        totals = [0.0] * len(texts)
        parts: list[dict[str, float]] = [{} for _ in texts]
        for term in self.terms:
            if term.score is None:
                values = self._judge(index, trajs)
            else:
                fn = term.score
                values = [
                    self._value(term.name, functools.partial(fn, r, t, tr))
                    for r, t, tr in zip(rows, texts, trajs, strict=True)
                ]
            for k, v in enumerate(values):
                totals[k] += term.weight * v
                parts[k][term.name] = v
        self._record(trajs, totals, parts)
        return totals

    def _judge(self, index: list[int], trajs: list[Trajectory]) -> list[float]:
        values = [0.0] * len(trajs)
        groups: dict[int, list[int]] = {}
        for k, i in enumerate(index):
            groups.setdefault(i, []).append(k)
        for members in groups.values():
            try:
                judged = rewards.judge_group(self.judge_lm, [trajs[k] for k in members])
            except Exception as exc:  # noqa: BLE001 - a judge outage scores the group 0, counted
                for _ in members:
                    self._count("error", rewards.JUDGE, f"{type(exc).__name__}: {exc}")
                continue
            for k, j in zip(members, judged, strict=True):
                if j.score is None:
                    self._count("error", rewards.JUDGE, j.error or "not scored")
                else:
                    values[k] = j.score
        return values

    def _record(self, trajs: list[Trajectory], totals: list[float], parts: list[dict[str, float]]) -> None:
        if self.store is None:
            return
        batch = WriteBatch()
        for t, total, named in zip(trajs, totals, parts, strict=True):
            t.total_reward = total
            t.steps[0].reward = total
            t.scores = [Score(t.id, ROLLOUT_SCORE, total, source=ROLLOUT_SOURCE)]
            if len(named) > 1:
                t.scores += [Score(t.id, n, v, source=ROLLOUT_SOURCE) for n, v in named.items()]
            batch.extend(WriteBatch.from_trajectory(t))
        self.store.write(batch)
        self.recorded += len(trajs)


# --- generation ----------------------------------------------------------------------------------


class _StopAtJson:
    """Per row: stop once the completion holds a whole JSON object, remembering where."""

    def __init__(self, tokenizer: Any, prompt_len: int, rows: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.done_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        from trajforge.lm import json_closed

        flags = []
        for r, row in enumerate(input_ids[:, self.prompt_len :]):
            if self.done_at[r] is None and json_closed(self.tokenizer.decode(row, skip_special_tokens=True)):
                self.done_at[r] = int(row.shape[0])
            flags.append(self.done_at[r] is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


@functools.cache
def fast_grpo_trainer() -> Any:
    """``GRPOTrainer`` whose generation runs the batch's shared prompt prefix once and, with
    ``stop_at_json``, ends each completion at its closed JSON object. Everything else (rewards,
    advantages, loss, logging) is TRL's."""
    import torch
    from trl import GRPOTrainer
    from trl.trainer.grpo_trainer import unwrap_model_for_generation

    from trajforge.lm import shared_prefix_batch

    class FastGRPOTrainer(GRPOTrainer):
        stop_at_json: bool = False

        def _generate_single_turn(
            self,
            prompt_ids: Any,
            images: Any,
            multimodal_fields: Any,
            num_generations: Any,
            has_tool_images: bool = False,
        ) -> Any:
            if images or multimodal_fields or self.use_vllm or self.use_transformers_continuous_batching:
                return super()._generate_single_turn(
                    prompt_ids, images, multimodal_fields, num_generations, has_tool_images
                )
            device = self.accelerator.device
            pad = self._tokenizer.pad_token_id
            args: Any = self.args
            with (
                unwrap_model_for_generation(
                    self.model_wrapped,
                    self.accelerator,
                    gather_deepspeed3_params=args.ds3_gather_for_generation,
                    generation_kwargs=self.generation_kwargs,
                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
                ) as unwrapped,
                torch.no_grad(),
                self.accelerator.autocast(),
            ):
                batch, extra = shared_prefix_batch(
                    unwrapped, [list(p) for p in prompt_ids], pad, device=device
                )
                stop = None
                if self.stop_at_json:
                    from transformers import StoppingCriteriaList

                    stop = _StopAtJson(self._tokenizer, batch["input_ids"].shape[1], len(prompt_ids))
                    extra["stopping_criteria"] = StoppingCriteriaList([stop])
                out = unwrapped.generate(**batch, generation_config=self.generation_config, **extra)
            completion = out[:, batch["input_ids"].shape[1] :].cpu()
            eos = set(self.eos_token_ids)
            ids = []
            for r, row in enumerate(completion.tolist()):
                end = len(row)
                for k, tok in enumerate(row):
                    if tok in eos:
                        end = k + 1  # TRL keeps the EOS: it is what the policy learns to stop with
                        break
                closed = stop.done_at[r] if stop is not None else None
                if closed is not None:
                    end = min(end, closed)
                ids.append(row[:end])
            return ids, None

        def _get_per_token_logps_and_entropies(
            self,
            model: Any,
            input_ids: Any,
            attention_mask: Any,
            logits_to_keep: int,
            batch_size: int | None = None,
            compute_entropy: bool = False,
            compute_aux_loss: bool = False,
            **multimodal: Any,
        ) -> Any:
            # TRL's fused LM head scores only the completion positions on Triton devices; elsewhere
            # (a CPU) it projects *every* position, prompt included, through the vocabulary and back
            # in the backward: with a 300-token prompt and 30-token completions that was ~10x the
            # needed head work and a third of a CPU step. The model's own ``logits_to_keep`` slices
            # before the head (with the model's own logit scaling), then TRL's log-softmax/entropy.
            if (
                input_ids.device.type in ("cuda", "xpu")
                or compute_aux_loss
                or any(v is not None for v in multimodal.values())
            ):
                return super()._get_per_token_logps_and_entropies(
                    model,
                    input_ids,
                    attention_mask,
                    logits_to_keep,
                    batch_size,
                    compute_entropy,
                    compute_aux_loss,
                    **multimodal,
                )
            from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

            checkpointing = bool(getattr(self.args, "activation_checkpointing", False)) or bool(
                getattr(self.model, "is_gradient_checkpointing", False)
            )
            size = batch_size or input_ids.size(0)
            logps, entropies = [], []
            for start in range(0, input_ids.size(0), size):
                ids = input_ids[start : start + size]
                mask = attention_mask[start : start + size]
                with self.accelerator.autocast():
                    if checkpointing:  # recomputation refuses a cache: score the whole rows
                        logits = model(
                            input_ids=ids,
                            attention_mask=mask,
                            logits_to_keep=logits_to_keep + 1,
                            use_cache=False,
                        ).logits[:, :-1]
                    else:
                        logits = grouped_completion_logits(model, ids, mask, logits_to_keep)
                target = ids[:, -logits_to_keep:]
                if compute_entropy:
                    lp, ent = selective_log_softmax_and_entropy(logits, target, temperature=self.temperature)
                    entropies.append(ent)
                else:
                    lp = selective_log_softmax(logits, target, temperature=self.temperature)
                logps.append(lp)
            return (
                torch.cat(logps, dim=0),
                torch.cat(entropies, dim=0) if compute_entropy else None,
                None,
            )

    return FastGRPOTrainer


def grouped_completion_logits(model: Any, input_ids: Any, attention_mask: Any, keep: int) -> Any:
    """The logits that score each row's last ``keep`` tokens (the completion), with each distinct
    prompt run through the model **once**: a GRPO batch holds every prompt ``numGenerations``
    times, and the prompt is ~10x the completion, so scoring whole rows spends most of a CPU step
    on the same prompt again. The distinct prompts run first (their keys and values kept, with
    gradients), then every completion attends to its own prompt's, selected per row. Positions
    come from the attention mask, as in generation. Same values as scoring whole rows (RoPE is
    relative, pads are masked), about ``numGenerations``x less prompt work."""
    import torch

    from trajforge.lm import _cache_key

    prompt_ids, completion_ids = input_ids[:, :-keep], input_ids[:, -keep:]
    prompt_mask = attention_mask[:, :-keep]
    rows = torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    n = input_ids.size(0)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=input_ids.device), "amin")
    pick = inverse  # row i attends to distinct prompt inverse[i], run as row inverse[i] of ``first``
    u_mask = prompt_mask[first]
    out = model(
        input_ids=prompt_ids[first],
        attention_mask=u_mask,
        position_ids=(u_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = getattr(out, _cache_key())
    cache.batch_select_indices(pick)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -keep:]
    rest = model(
        input_ids=completion_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=keep,
        **{_cache_key(): cache},
    )
    return torch.cat([out.logits[:, -1:][pick], rest.logits[:, :-1]], dim=1)


# --- fit -----------------------------------------------------------------------------------------


def grpo_args(opts: LoraOptions, out: Path, device: str, gradient_checkpointing: bool) -> Any:
    """TRL's GRPO config with every surprising default set explicitly."""
    from trl import GRPOConfig

    per_step = opts.batch_size * opts.num_generations  # batchSize is prompts per step
    kwargs: dict[str, Any] = {
        "output_dir": str(out),
        "per_device_train_batch_size": per_step,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,  # on-policy: one generation per optimizer step, no stale samples
        "num_iterations": 1,
        "num_generations": opts.num_generations,
        "max_completion_length": opts.max_completion_length,
        "temperature": opts.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "beta": opts.kl_beta,
        "loss_type": opts.loss_type,
        "scale_rewards": "group",
        "epsilon": 0.2,
        "mask_truncated_completions": False,
        "learning_rate": opts.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "bf16": use_bf16(opts, device),
        "fp16": False,
        "activation_checkpointing": gradient_checkpointing,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": [],
        "use_cpu": device == "cpu",
        "dataloader_num_workers": 0,
        "seed": opts.seed,
        "disable_tqdm": True,
        "log_completions": False,
        "shuffle_dataset": True,
        "remove_unused_columns": False,
    }
    if opts.iterations:
        kwargs["max_steps"] = opts.iterations
    else:
        kwargs["num_train_epochs"] = opts.epochs
    return GRPOConfig(**kwargs)


def _step_entry(progress: Progress, rewarder: Rewarder) -> StepEntry:
    """A GRPO step's log entry and progress message: rewards, KL, completion length."""

    def entry_of(logs: dict[str, Any], step: int) -> tuple[dict[str, Any], str] | None:
        if "reward" not in logs:
            return None

        def num(key: str) -> float | None:
            v = logs.get(key)
            return round(float(v), 5) if isinstance(v, int | float) and math.isfinite(v) else None

        entry = {
            "step": step,
            "loss": num("loss"),
            "rewardMean": num("reward"),
            "rewardStd": num("reward_std"),
            "kl": num("kl"),
            "completionLength": num("completions/mean_length"),
            "learningRate": num("learning_rate"),
            "tokensPerS": round(progress.tokens_per_s(), 1),
            "rewardErrors": rewarder.errors,
            "rewardNan": rewarder.nan,
        }
        kl = f" kl {entry['kl']:.4f}" if entry["kl"] is not None else ""
        bad = (
            f" reward errors {rewarder.errors} nan {rewarder.nan}" if rewarder.errors or rewarder.nan else ""
        )
        message = (
            f"reward {entry['rewardMean'] or 0:.3f}±{entry['rewardStd'] or 0:.3f}{kl} "
            f"len {entry['completionLength'] or 0:.1f} {entry['tokensPerS']:.0f} tok/s{bad}"
        )
        return entry, message

    return entry_of


def fit(
    opts: LoraOptions,
    rows: list[dict[str, Any]],
    base_dir: str,
    out: Path,
    *,
    store: Any,
    job_id: str,
    parent_adapter: str | None = None,
    device: str = "cpu",
    report: Report,
    should_stop: ShouldStop = lambda: False,
    span: tuple[float, float] = (0.1, 0.8),
    trainer_cls: Any = None,
) -> tuple[Any, Any, Progress, Rewarder]:
    """Train with GRPO; returns the trainer, the train result, the progress log and the rewarder."""
    import warnings

    import torch
    from datasets import Dataset as HFDataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    tokenizer = AutoTokenizer.from_pretrained(parent_adapter or base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if device == "cuda":
        model = model.to("cuda")
    peft_config = None
    adapted_all = opts.lora_layers is None
    if parent_adapter is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = PeftModel.from_pretrained(model, parent_adapter, is_trainable=True)
        adapted_all = getattr(model.peft_config["default"], "layers_to_transform", None) is None
    else:
        peft_config = lora_config(opts, model)
    checkpointing = (
        opts.activation_checkpointing if opts.activation_checkpointing is not None else adapted_all
    )
    spec = opts.reward if opts.reward is not None else default_reward(rows)
    wire_spec = (
        spec if isinstance(spec, str) else [w.model_dump() if hasattr(w, "model_dump") else w for w in spec]
    )
    judge_lm = None
    reward_terms = terms(wire_spec)
    if any(t.score is None for t in reward_terms):
        from trajforge import lm

        judge_lm = lm.from_settings()
    stop_at_json = opts.stop_at_json
    if stop_at_json is None:
        from trajforge.optimize.common import parse_action

        refs = [r["reference"] for r in rows if r.get("reference")]
        stop_at_json = bool(refs) and sum(parse_action(r) is not None for r in refs) >= 0.8 * len(refs)
    rewarder = Rewarder(
        reward_terms,
        rows,
        store,
        job_id,
        model_label=parent_adapter or base_dir,
        temperature=opts.temperature,
        judge_lm=judge_lm,
        spec=wire_spec,
        stop_at_json=stop_at_json,
    )
    progress = Progress(rows=(len(rows), 0))
    cls = trainer_cls or fast_grpo_trainer()
    columns = [{k: r[k] for k in ("prompt", "index")} for r in rows]
    trainer = cls(
        model=model,
        reward_funcs=[rewarder],
        args=grpo_args(opts, out / "trainer", device, checkpointing),
        train_dataset=HFDataset.from_list(columns),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_callback(progress, report, should_stop, span, _step_entry(progress, rewarder))],
    )
    if hasattr(trainer, "stop_at_json"):
        trainer.stop_at_json = stop_at_json
    result = trainer.train()
    if should_stop():
        raise Cancelled(f"cancelled at step {trainer.state.global_step}")
    return trainer, result, progress, rewarder


# --- the whole job -------------------------------------------------------------------------------


def run(
    store: Any,
    job: Any,
    opts: LoraOptions,
    ds: Any,
    report: Report,
    home: Path | None = None,
    should_stop: ShouldStop = lambda: False,
) -> dict[str, Any]:
    """The GRPO job body (called by :func:`trajforge.train.lora.run` for ``method: grpo``): train,
    save, register the model with its method, parent and reward."""
    from trajforge import models
    from trajforge.records import Model
    from trajforge.train.lora import models_root, peak_rss_mb, resolve_base, save_model

    device = job.backend
    rows = load_prompts(Path(ds.path), opts.task)
    parent = models.get(store, opts.from_model) if opts.from_model else None
    if parent is not None and parent.adapter_path is None:
        raise InvalidInput(f"model {parent.id} has no adapter to start from", "fromModel")
    base_spec = parent.base_model if parent is not None else opts.model
    report(
        0.03,
        "setup",
        f"{len(rows)} prompts × {opts.num_generations} generations (grpo); loading {base_spec}"
        + (f" with {parent.id}'s adapter" if parent else ""),
    )
    base_dir = resolve_base(base_spec)
    model = Model(job_id=job.id, dataset_id=ds.id, base_model=base_spec, backend=device, adapter_path=None)
    out = models_root(home) / model.id
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    trainer, result, progress, rewarder = fit(
        opts,
        rows,
        base_dir,
        out,
        store=store,
        job_id=job.id,
        parent_adapter=parent.adapter_path if parent else None,
        device=device,
        report=report,
        should_stop=should_stop,
    )
    train_s = time.monotonic() - started
    report(0.9, "save", "saving the adapter")
    means = [e["rewardMean"] for e in progress.log if e.get("rewardMean") is not None]
    metrics: dict[str, Any] = {
        "kind": "grpo",
        "method": "grpo",
        "parentModel": parent.id if parent else None,
        "reward": rewarder.spec,
        "steps": int(result.global_step),
        "trainLoss": float(result.training_loss),
        "rewardFirst": means[0] if means else None,
        "rewardLast": means[-1] if means else None,
        "rewardErrors": rewarder.errors,
        "rewardNan": rewarder.nan,
        "rewardErrorSamples": rewarder.error_samples,
        "completions": rewarder.calls,
        "rollouts": rewarder.recorded,
        "stopAtJson": rewarder.stop_at_json,
        "trainSeconds": round(train_s, 2),
        "tokens": progress.tokens,
        "tokensPerS": round(progress.tokens / train_s, 1) if progress.tokens else None,
        "peakRssMb": peak_rss_mb(),
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "trainRows": len(rows),
        "evalRows": 0,
        "baseDir": base_dir,
        "options": opts.summary(),
    }
    done = (
        f"model {model.id}: reward {metrics['rewardFirst'] or 0:.3f} → {metrics['rewardLast'] or 0:.3f} "
        f"over {metrics['steps']} steps"
    )
    return save_model(store, trainer, progress, model, out, opts, metrics, report, done)
