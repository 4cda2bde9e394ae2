"""The ``cpu`` and ``cuda`` backends: LoRA fine-tuning with TRL + PEFT, ``setup → fit → evaluate``.

* **setup** resolves the base model (``bundled:smollm2-135m``, ``local:<dir>``, a folder, or a hub
  id when the user has the network), reads the dataset snapshot and turns it into the rows TRL
  trains on: prompt/completion pairs for ``sft`` and ``prompt_completion`` datasets (so the loss is
  on the completions only) and prompt/chosen/rejected for ``preference`` datasets (DPO).
* **fit** runs ``SFTTrainer`` or ``DPOTrainer`` with every option that TRL would otherwise default
  surprisingly set explicitly (dtype, activation checkpointing, learning rate, max length), padding-free
  batching where the trainer supports it, and a callback that reports step, loss, learning rate and
  tokens/s as progress and stops cleanly between steps when the job is cancelled.
* **evaluate** computes the loss on the dataset's eval split (when it has one), saves the adapter
  (and, on request, the merged model) and the training log, and registers the model.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo
from pydantic.alias_generators import to_camel

from trajforge import lm, settings
from trajforge.errors import Cancelled, InvalidInput
from trajforge.records import Model
from trajforge.requests import Flag, Request

DEFAULT_BASE = "bundled:smollm2-135m"
FORMATS = ("sft", "prompt_completion", "preference", "grpo")
SUPERVISED = ("sft", "prompt_completion", "preference")
METHODS = {
    "sft": ("sft", "prompt_completion"),
    "dpo": ("preference",),
    "grpo": ("grpo", "sft", "prompt_completion"),
}
"""Each training method and the dataset formats it reads (GRPO takes an sft/prompt_completion
dataset's prompts, their completion being the reference the task metrics compare with)."""


def _check_reward(value: str, info: ValidationInfo) -> str:
    from trajforge import rewards

    rewards.check_spec(value, trusted=bool((info.context or {}).get("trusted")))
    return value


RewardName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="A registered reward function (support_desk, ...), judge, action_match, token_f1, "
        "or (command line and Python only) module:function",
    ),
    AfterValidator(_check_reward),
]


class WeightedReward(BaseModel):
    """One term of a weighted reward sum."""

    model_config = ConfigDict(
        extra="forbid", validate_by_alias=True, validate_by_name=False, alias_generator=to_camel, strict=True
    )
    name: RewardName
    weight: Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False, description="Its weight")] = 1.0


Report = Callable[[float, str, str], None]
ShouldStop = Callable[[], bool]


class LoraOptions(Request):
    """A LoRA fine-tuning job (``cpu``, ``cuda`` or ``mlx``): what its request may set."""

    backend: Annotated[
        Literal["cpu", "cuda", "mlx"], Field(description="Where to train: cpu, cuda or mlx (LoRA)")
    ] = "cpu"
    dataset_id: Annotated[
        str | None,
        Field(min_length=1, max_length=200, description="Dataset id (default: build one first)"),
        Flag("--dataset"),
    ] = None
    format: Annotated[
        Literal["sft", "preference"] | None,
        Field(description="Without datasetId: the dataset to build (sft, or preference for DPO)"),
    ] = None
    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=500,
            description="The base: bundled:smollm2-135m (default), local:<dir>, or a hub id in the local "
            "Hugging Face cache; checked before the job is queued",
        ),
    ] = DEFAULT_BASE
    task: Annotated[str | None, Field(min_length=1, max_length=200, description="Only this task")] = None
    iterations: Annotated[
        int | None, Field(ge=1, le=100_000, description="Optimizer steps (default: epochs over the data)")
    ] = None
    epochs: Annotated[float, Field(gt=0, le=100, description="Epochs when no iterations")] = 1.0
    batch_size: Annotated[int, Field(ge=1, le=1024, description="Batch size")] = 4
    learning_rate: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            allow_inf_nan=False,
            description="Learning rate (LoRA on a small model wants far more than a full fine-tune's 2e-5)",
        ),
    ] = 1e-3
    max_length: Annotated[int, Field(ge=16, le=32_768, description="Tokens per sequence")] = 256
    lora_rank: Annotated[int, Field(ge=1, le=256, description="LoRA rank")] = 8
    lora_alpha: Annotated[int, Field(ge=1, le=1024, description="LoRA alpha")] = 16
    lora_layers: Annotated[
        int | None,
        Field(
            ge=1,
            le=1024,
            description="Adapt only the top N layers (default all); backpropagation then stops below "
            "them: on a CPU, the top third of a 30-layer model about halves the step time",
        ),
    ] = None
    merge: Annotated[bool, Field(description="Also save the merged model")] = False
    activation_checkpointing: Annotated[
        bool | None,
        Field(
            description="Recompute activations to save memory (default: on when every layer is "
            "adapted, off with loraLayers: little to save there, and the recompute would cost)"
        ),
    ] = None
    precision: Annotated[
        Literal["auto", "fp32", "bf16"],
        Field(
            description="auto: bf16 autocast where the CPU/GPU computes bf16 natively (AVX512-BF16, AMX, "
            "a bf16 GPU), else fp32; the adapter and its optimizer state stay fp32"
        ),
    ] = "auto"
    seed: Annotated[int, Field(ge=0, le=2**31, description="Seed")] = 0
    beta: Annotated[float, Field(gt=0, le=10, description="DPO β (preference datasets)")] = 0.1
    threads: Annotated[int | None, Field(ge=1, le=256, description="torch threads")] = None
    method: Annotated[
        Literal["sft", "dpo", "grpo"] | None,
        Field(
            description="sft, dpo or grpo (default: from the dataset's format: dpo for preference, else sft)"
        ),
    ] = None
    reward: Annotated[
        Annotated[
            Annotated[RewardName, Tag("Name")]
            | Annotated[list[WeightedReward], Field(min_length=1, max_length=8), Tag("Terms")],
            Discriminator(lambda v: "Name" if isinstance(v, str) else "Terms"),
        ]
        | None,
        Field(
            description="GRPO: a reward function name, judge, action_match, token_f1, module:function (not "
            "over HTTP), or a list of {name, weight} summed (default: the task metric against the row's "
            "reference)",
        ),
    ] = None
    num_generations: Annotated[
        int, Field(ge=2, le=64, description="GRPO: completions sampled per prompt (a group)")
    ] = 4
    from_model: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=200,
            description="Start from this registry model's adapter (its base model is the base); the "
            "usual recipe is SFT first, then GRPO from it",
        ),
    ] = None
    kl_beta: Annotated[
        float,
        Field(
            ge=0,
            le=10,
            allow_inf_nan=False,
            description="GRPO: weight of the KL penalty to the starting policy (0: no reference "
            "forward, as TRL 1.16 defaults; beta is DPO's)",
        ),
    ] = 0.0
    max_completion_length: Annotated[
        int,
        Field(
            ge=1, le=4096, description="GRPO: most tokens per sampled completion (TRL's 512 is slow on a CPU)"
        ),
    ] = 64
    temperature: Annotated[
        float, Field(gt=0, le=5, allow_inf_nan=False, description="GRPO: sampling temperature")
    ] = 1.0
    loss_type: Annotated[
        Literal["dapo", "grpo", "dr_grpo", "bnpo"],
        Field(description="GRPO loss normalisation (TRL's: dapo, length-unbiased)"),
    ] = "dapo"
    stop_at_json: Annotated[
        bool | None,
        Field(
            description="GRPO: end a completion once it holds a whole JSON object (default: when the "
            "references are JSON objects)"
        ),
    ] = None
    max_trajectories: Annotated[
        int, Field(ge=1, le=10_000_000, description="Without datasetId: most trajectories to build from")
    ] = 1000

    dropout: ClassVar[float] = 0.0
    """No dropout: a run of a few hundred steps does not need it, and on a CPU it costs a copy of
    every adapted layer's input."""
    target_modules: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def summary(self) -> dict[str, Any]:
        """What the run used, for the model's metrics (wire names, defaults included)."""
        return {
            **self.model_dump(mode="json", by_alias=True),
            "dropout": self.dropout,
            "targetModules": list(self.target_modules),
        }


def method_for(opts: LoraOptions, fmt: str) -> str:
    """The training method of a request on a dataset of format ``fmt``: the one asked for (it must
    read that format), else the format's (dpo for preference, grpo for grpo, else sft)."""
    if opts.method is None:
        return {"preference": "dpo", "grpo": "grpo"}.get(fmt, "sft")
    if fmt not in METHODS[opts.method]:
        raise InvalidInput(
            f"method {opts.method} trains on {', '.join(METHODS[opts.method])} datasets, not {fmt!r}",
            "method",
        )
    return opts.method


LOCAL_TORCH = ("cpu", "cuda")
"""The backends that run :func:`run` in this process's job (GRPO and ``fromModel`` need it)."""


def check_submit(store: Any, options: LoraOptions, dataset_format: str | None) -> None:
    """What only the store can tell, checked when the job is queued: the method reads the
    dataset's format, and ``fromModel`` names a registered model with an adapter."""
    if dataset_format is not None:
        method_for(options, dataset_format)
    if options.from_model is not None:
        parent = store.get_model(options.from_model)
        if parent is None:
            raise InvalidInput(f"no model {options.from_model!r} in the registry", "fromModel")
        if parent.adapter_path is None:
            raise InvalidInput(f"model {options.from_model} has no adapter to start from", "fromModel")
        if options.backend not in LOCAL_TORCH:
            raise InvalidInput(f"fromModel needs the cpu or cuda backend, not {options.backend}", "fromModel")
    # The remote entry point (ssh, vast) and mlx train SFT/DPO only: GRPO there would silently
    # train something else.
    if (options.method == "grpo" or dataset_format == "grpo") and options.backend not in LOCAL_TORCH:
        raise InvalidInput(f"GRPO runs on the cpu and cuda backends, not {options.backend}", "method")


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bf16 in hardware (so autocast to it is faster, not slower)."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def use_bf16(opts: LoraOptions, device: str) -> bool:
    if opts.precision == "auto":
        return native_bf16(device)
    return opts.precision == "bf16"


def resolve_base(spec: str) -> str:
    """A folder (or hub id) transformers can load for a base-model spec."""
    if spec.startswith("bundled:"):
        return str(lm.bundled_model_dir(spec.split(":", 1)[1]))
    if spec.startswith("local:"):
        spec = spec.split(":", 1)[1]
        if not (Path(spec) / "config.json").exists():
            raise InvalidInput(f"{spec} is not a transformers model folder (no config.json)", "model")
        return spec
    if Path(spec).is_dir():
        if not (Path(spec) / "config.json").exists():
            raise InvalidInput(f"{spec} is not a transformers model folder (no config.json)", "model")
        return spec
    # A hub id: transformers resolves it from its cache, or downloads it when the user has the
    # network (HF_HUB_OFFLINE=1 makes that an error instead).
    return spec


# --- setup ---------------------------------------------------------------------------------------


@dataclass
class Data:
    format: str
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    dropped: int = 0
    """Rows left out for being longer than maxLength."""

    @property
    def kind(self) -> str:
        return "dpo" if self.format == "preference" else "sft"


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _trainable(fmt: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """The row as TRL wants it: conversational prompt/completion (loss on the completion only) or
    prompt/chosen/rejected. Rows ending in a tool call keep it: the chat template renders it."""
    if fmt == "preference":
        return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    if "messages" in row:
        messages = row["messages"]
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            return None
        return {"prompt": messages[:-1], "completion": [messages[-1]]}
    return {"prompt": row["prompt"], "completion": row["completion"]}


def load_data(folder: Path, task: str | None = None) -> Data:
    """Train and eval rows of a dataset snapshot (one task's, when ``task`` is given)."""
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    fmt = manifest["format"]
    if fmt not in SUPERVISED:
        raise InvalidInput(
            f"SFT and DPO read {', '.join(SUPERVISED)} datasets, not {fmt!r}; build one with --format sft "
            "(a grpo dataset trains with method grpo)",
            "datasetId",
        )
    base = folder
    if task is not None:
        tasks = manifest["counts"].get("tasks", {})
        if task not in tasks:
            raise InvalidInput(f"the dataset has no task {task!r}; it has {', '.join(sorted(tasks))}", "task")
        if "folder" in tasks[task]:
            base = folder / tasks[task]["folder"]
    train = [r for r in (_trainable(fmt, row) for row in _read_rows(base / "train.jsonl")) if r]
    evals = [r for r in (_trainable(fmt, row) for row in _read_rows(base / "eval.jsonl")) if r]
    if not train:
        raise InvalidInput("the dataset has no training rows", "datasetId")
    return Data(fmt, train, evals)


def _length(tokenizer: Any, row: dict[str, Any]) -> int:
    answers = [row[k] for k in ("completion", "chosen", "rejected") if k in row]
    texts = [str(tokenizer.apply_chat_template(row["prompt"] + a, tokenize=False)) for a in answers]
    return max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def fit_length(data: Data, tokenizer: Any, max_length: int) -> Data:
    """Leave out rows longer than ``max_length`` tokens: truncation would cut the completion — the
    only part the loss is on — and train on nothing. Counted in ``data.dropped``; when no row fits
    it is an error that says which option to raise."""
    train = [r for r in data.train if _length(tokenizer, r) <= max_length]
    evals = [r for r in data.eval if _length(tokenizer, r) <= max_length]
    if not train:
        longest = max(_length(tokenizer, r) for r in data.train)
        raise InvalidInput(
            f"every training row is longer than maxLength={max_length} tokens (the longest has {longest}); "
            "raise maxLength",
            "maxLength",
        )
    return Data(data.format, train, evals, dropped=len(data.train) - len(train) + len(data.eval) - len(evals))


# --- fit -----------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the trainer callback saw: the loss curve and throughput."""

    total_steps: int = 0
    dropped: int = 0
    rows: tuple[int, int] = (0, 0)
    """Train and eval rows trained/evaluated on (after leaving out the too-long ones)."""
    log: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def tokens_per_s(self) -> float:
        return self.tokens / max(1e-9, time.monotonic() - self.started)


StepEntry = Callable[[dict[str, Any], int], tuple[dict[str, Any], str] | None]
"""``(trainer logs, global step) -> (log entry, progress message)``, or None for logs that are not
a training step's (evaluation, the final summary)."""


def _sft_entry(progress: Progress) -> StepEntry:
    def entry_of(logs: dict[str, Any], step: int) -> tuple[dict[str, Any], str] | None:
        if "loss" not in logs:
            return None
        entry = {
            "step": step,
            "loss": float(logs["loss"]),
            "learningRate": float(logs.get("learning_rate") or 0.0),
            "tokensPerS": round(progress.tokens_per_s(), 1),
        }
        message = f"loss {entry['loss']:.4f} lr {entry['learningRate']:.2e} {entry['tokensPerS']:.0f} tok/s"
        return entry, message

    return entry_of


def progress_callback(
    progress: Progress,
    report: Report,
    should_stop: ShouldStop,
    span: tuple[float, float],
    step_entry: StepEntry | None = None,
) -> Any:
    """The trainer callback every LoRA method shares: it records each step's log entry (made by
    ``step_entry``: loss for SFT/DPO by default, rewards for GRPO), reports progress, and stops
    between steps when the job is cancelled."""
    from transformers import TrainerCallback

    entry_of = step_entry or _sft_entry(progress)

    class _Cb(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            progress.total_steps = int(state.max_steps or 0)
            progress.started = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if should_stop():
                control.should_training_stop = True  # between steps: the adapter stays consistent

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logs = dict(logs or {})
            if "num_tokens" in logs and ("loss" in logs or "reward" in logs):
                progress.tokens = int(logs["num_tokens"])
            made = entry_of(logs, int(state.global_step))
            if made is None:
                return
            entry, message = made
            progress.log.append(entry)
            total = max(1, progress.total_steps)
            report(
                span[0] + span[1] * min(1.0, state.global_step / total),
                "train",
                f"step {state.global_step}/{total} {message}",
            )

    return _Cb()


def training_args(opts: LoraOptions, kind: str, out: Path, device: str) -> Any:
    """The trainer's config, every surprising default set explicitly."""
    from trl import DPOConfig, SFTConfig

    common: dict[str, Any] = {
        "output_dir": str(out),
        "per_device_train_batch_size": opts.batch_size,
        "per_device_eval_batch_size": opts.batch_size,
        "learning_rate": opts.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        # TRL defaults to bf16 everywhere; on CPUs without native bf16 that is slower than fp32.
        "bf16": use_bf16(opts, device),
        "fp16": False,
        "activation_checkpointing": opts.activation_checkpointing
        if opts.activation_checkpointing is not None
        else opts.lora_layers is None,
        "max_length": opts.max_length,
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": [],
        "use_cpu": device == "cpu",
        "dataloader_num_workers": 0,
        "seed": opts.seed,
        "disable_tqdm": True,
    }
    if opts.iterations:
        common["max_steps"] = opts.iterations
    else:
        common["num_train_epochs"] = opts.epochs
    if kind == "dpo":
        return DPOConfig(**common, beta=opts.beta)
    # Best-fit packing into max_length blocks, padding-free (one row with position ids; transformers
    # masks each packed sequence off from the others): no compute spent on pad tokens. Evaluation
    # reports the loss only (the logits TRL would rebuild for metrics cost a second forward).
    return SFTConfig(
        **common,
        packing=True,
        packing_strategy="bfd",
        completion_only_loss=True,
        prediction_loss_only=True,
    )


@functools.cache
def compact_sft_trainer() -> Any:
    """``SFTTrainer`` whose loss projects through the LM head only the positions that have a label.

    TRL's fused head scores every position on a CPU (it compacts only on Triton devices), so a
    packed batch of 4×384 tokens builds ~300 MB of logits in the forward, again for the softmax
    and twice more in the backward, although the loss is on the completions alone (a few dozen
    tokens per row). Selecting the labelled hidden states first makes the head's memory and
    compute proportional to the completion tokens. Same loss, same normalisation, same logged
    metrics (token accuracy, entropy, token count) as TRL's.
    """
    import torch
    from trl import SFTTrainer

    class CompactSFTTrainer(SFTTrainer):
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            if return_outputs or self.aux_loss_enabled or self.compute_loss_func is not None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if model.training else "eval"
            causal = model.get_base_model() if hasattr(model, "get_base_model") else model
            kwargs = {k: v for k, v in inputs.items() if k != "labels"}
            kwargs["use_cache"] = False
            # Calling the backbone directly skips the autocast accelerate wraps around the model's
            # forward for bf16: enter it here.
            with self.accelerator.autocast():
                hidden = causal.base_model(**kwargs).last_hidden_state[:, :-1]
                labels = inputs["labels"][:, 1:].to(hidden.device)
                mask = labels != -100
                targets = labels[mask]
                logits = causal.get_output_embeddings()(hidden[mask]).float()
            nll = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            valid = mask.sum()
            denominator = valid if num_items_in_batch is None else num_items_in_batch
            loss = nll / torch.as_tensor(denominator).clamp(min=1)
            with torch.no_grad():
                n = max(1, int(valid))
                logp = torch.log_softmax(logits, dim=-1)
                entropy = -(logp.exp() * logp).sum(-1).sum()
                correct = (logits.argmax(-1) == targets).sum()
                self._metrics[mode]["entropy"].append(float(entropy) / n if valid else 0.0)
                self._metrics[mode]["mean_token_accuracy"].append(float(correct) / n if valid else 0.0)
            if mode == "train":
                if "attention_mask" in inputs:
                    seen = int(inputs["attention_mask"].sum())
                else:  # padding-free: one packed row, every position a real token
                    seen = int(inputs["position_ids"].size(1))
                self._total_train_tokens += seen
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CompactSFTTrainer


def lora_config(opts: LoraOptions, model: Any) -> Any:
    """The PEFT LoRA config of a new adapter on ``model`` (every method's: SFT, DPO, GRPO)."""
    from peft import LoraConfig

    depth = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    layers = None
    if opts.lora_layers is not None and depth:
        layers = list(range(max(0, depth - opts.lora_layers), depth))
    return LoraConfig(
        r=opts.lora_rank,
        lora_alpha=opts.lora_alpha,
        lora_dropout=opts.dropout,
        target_modules=list(opts.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
        bias="none",
    )


def fit(
    opts: LoraOptions,
    data: Data,
    base_dir: str,
    out: Path,
    *,
    device: str = "cpu",
    report: Report,
    should_stop: ShouldStop = lambda: False,
    span: tuple[float, float] = (0.1, 0.8),
    callbacks: tuple[Any, ...] = (),
) -> tuple[Any, Any, Progress]:
    """Train; returns the trainer (with the PEFT model), the train result and the progress log.
    ``callbacks``: more trainer callbacks (the remote entry point saves a checkpoint on a cancel)."""
    import torch
    from datasets import Dataset as HFDataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if device == "cuda":
        model = model.to("cuda")
    peft_config = lora_config(opts, model)
    fitted = fit_length(data, tokenizer, opts.max_length)
    if fitted.dropped:
        report(span[0], "setup", f"left out {fitted.dropped} rows longer than maxLength={opts.max_length}")
    data = fitted
    progress = Progress(dropped=fitted.dropped, rows=(len(fitted.train), len(fitted.eval)))
    trainer_cls = DPOTrainer if data.kind == "dpo" else compact_sft_trainer()
    trainer = trainer_cls(
        model=model,
        args=training_args(opts, data.kind, out / "trainer", device),
        train_dataset=HFDataset.from_list(data.train),
        eval_dataset=HFDataset.from_list(data.eval) if data.eval else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[progress_callback(progress, report, should_stop, span), *callbacks],
    )
    result = trainer.train()
    if should_stop():
        raise Cancelled(f"cancelled at step {trainer.state.global_step}")
    return trainer, result, progress


# --- the whole job -------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if os.uname().sysname == "Darwin" else 1024), 1)


def models_root(home: Path | None = None) -> Path:
    return (home or settings.home()) / "models"


def run(
    store: Any,
    job: Any,
    report: Report,
    home: Path | None = None,
    should_stop: ShouldStop = lambda: False,
) -> dict[str, Any]:
    """The ``cpu``/``cuda`` job body: train, evaluate, save, register. Returns the job's output."""
    from trajforge import datasets

    device = job.backend
    opts = LoraOptions.from_stored(job.request)
    if job.dataset_id:
        ds = datasets.get(store, job.dataset_id)
    else:
        fmt = opts.format or ("preference" if opts.method == "dpo" else "sft")
        report(0.01, "dataset", f"building an {fmt} dataset from the store")
        ds = datasets.build(
            store,
            datasets.BuildRequest(format=fmt, limit=opts.max_trajectories, task=opts.task),
            root=(home / "datasets") if home else None,
        )
        store.update_job(job.id, dataset_id=ds.id)
    method = method_for(opts, ds.format)
    if method == "grpo":
        from trajforge.train import grpo

        return grpo.run(store, job, opts, ds, report, home, should_stop)
    data = load_data(Path(ds.path), opts.task)
    if data.kind != method:
        raise InvalidInput(f"method {method} does not train on {ds.format} datasets", "method")
    report(
        0.03,
        "setup",
        f"{len(data.train)} train / {len(data.eval)} eval rows ({data.kind}); loading {opts.model}",
    )
    base_dir = resolve_base(opts.model)
    model = Model(job_id=job.id, dataset_id=ds.id, base_model=opts.model, backend=device, adapter_path=None)
    out = models_root(home) / model.id  # our own id: safe as a folder name
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    trainer, result, progress = fit(
        opts, data, base_dir, out, device=device, report=report, should_stop=should_stop
    )
    train_s = time.monotonic() - started

    report(0.9, "evaluate", "evaluating and saving")
    metrics: dict[str, Any] = {
        "kind": data.kind,
        "steps": int(result.global_step),
        "trainLoss": float(result.training_loss),
        "finalLoss": progress.log[-1]["loss"] if progress.log else None,
        "trainSeconds": round(train_s, 2),
        "tokens": progress.tokens,
        "tokensPerS": round(progress.tokens / train_s, 1) if progress.tokens else None,
        "peakRssMb": peak_rss_mb(),
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "trainRows": progress.rows[0],
        "evalRows": progress.rows[1],
        "droppedTooLong": progress.dropped,
        "baseDir": base_dir,
        "options": opts.summary(),
    }
    if progress.rows[1]:
        metrics["evalLoss"] = float(trainer.evaluate()["eval_loss"])
    (out / "trainer_state.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return save_model(
        store,
        trainer,
        progress,
        model,
        out,
        opts,
        metrics,
        report,
        f"model {model.id}: loss {metrics['finalLoss']}",
    )


def save_model(
    store: Any,
    trainer: Any,
    progress: Progress,
    model: Model,
    out: Path,
    opts: LoraOptions,
    metrics: dict[str, Any],
    report: Report,
    done: str,
) -> dict[str, Any]:
    """Save a trained adapter (and, with ``merge``, the merged model) and its step log under
    ``out``, register ``model`` with ``metrics``; the job's output. Every local LoRA method ends here."""
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    trainer.processing_class.save_pretrained(adapter)
    (out / "train_log.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in progress.log))
    model.adapter_path = str(adapter)
    if opts.merge:
        report(0.95, "merge", "merging the adapter into the base model")
        merged = out / "merged"
        trainer.model.merge_and_unload().save_pretrained(merged)
        trainer.processing_class.save_pretrained(merged)
        model.merged_path = str(merged)
    model.metrics = metrics
    store.add_model(model)
    report(1.0, "done", done)
    return {
        "modelId": model.id,
        "adapterPath": model.adapter_path,
        "mergedPath": model.merged_path,
        "metrics": metrics,
    }
