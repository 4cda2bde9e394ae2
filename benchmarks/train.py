"""LoRA SFT throughput: our ``cpu`` backend against a plain TRL ``SFTTrainer`` with its defaults.

    python benchmarks/train.py [--steps 20] [--rounds 2] [--model bundled:smollm2-135m]
    python benchmarks/train.py --method grpo [--steps 4] [--batch 2] [--generations 4]

``--method grpo``: our GRPO job (``trajforge.train.grpo.fit``: shared-prefix batched generation,
the JSON stop, rollouts recorded into a SQLite store) against a plain TRL ``GRPOTrainer`` with the
same settings (the same LoRA on every layer, prompts per step × generations, max completion length,
temperature, learning rate, β = 0, the same ``action_match`` reward against the expert answer) on
the same support-desk prompts for the same number of steps. Tokens are the prompt + completion
tokens TRL counts (``num_tokens``); since stopping at the closed JSON object generates fewer
tokens, the seconds per step are printed beside tokens/s.

Both runs train the same LoRA (r=8 on q/k/v/o) on the same model and the same support-desk rows
(prompt/completion, loss on the completion), for the same number of optimizer steps with the same
batch size, max length and learning rate. The baseline leaves every other option at TRL's default
(bf16, gradient checkpointing, padded batches; ``use_cpu`` is set because TRL's bf16 default
refuses to start on a CPU otherwise); ours sets them as the backend does (fp32, activation
checkpointing when every layer is adapted, padding-free best-fit packing). Each run is a child process of its own, so its peak
RSS is its own; the runs alternate (baseline first) for ``--rounds`` rounds. Tokens are the
non-padding tokens TRL counts (``num_tokens``), over the trainer's own runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any


def rows(n: int) -> list[dict[str, Any]]:
    from trajforge.demo import support

    out = []
    for c in support.cases(support.TRAIN_SEED, n):
        prompt = c.messages()
        out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": support.expert(c)}]})
    return out


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM", bias="none",
    )  # fmt: skip


def grpo_child(kind: str, model: str, steps: int, batch: int, gens: int, lr: float) -> dict[str, Any]:
    """One timed GRPO run: ``trl-grpo`` (plain GRPOTrainer) or ``ours-grpo`` (our GRPO fit)."""
    from trajforge.demo import support
    from trajforge.optimize.common import action_match
    from trajforge.train import grpo, lora

    base = lora.resolve_base(model)
    cases = support.cases(support.TRAIN_SEED, steps * batch * 2)
    out = Path(tempfile.mkdtemp(prefix=f"bench-train-{kind}-"))
    max_completion, temperature = 32, 1.0
    if kind == "ours-grpo":
        from trajforge.store import open_store

        store = open_store(str(out / "store.db"))
        opts = lora.LoraOptions(
            model=model, iterations=steps, batch_size=batch, num_generations=gens, learning_rate=lr,
            max_completion_length=max_completion, temperature=temperature, reward="action_match",
        )  # fmt: skip
        rows = [{"prompt": c.messages(), "reference": c.expected_json, "group": c.scenario_id, "task": support.TASK,
                 "index": i} for i, c in enumerate(cases)]  # fmt: skip
        t0 = time.perf_counter()
        trainer, result, _p, _r = grpo.fit(
            opts, rows, base, out, store=store, job_id="bench", report=lambda *a: None
        )
        wall = time.perf_counter() - t0
        store.close()
    else:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer

        def reward(completions: list[Any], reference: list[str], **kw: Any) -> list[float]:
            return [action_match(c[-1]["content"], r) for c, r in zip(completions, reference, strict=True)]

        t0 = time.perf_counter()
        args = GRPOConfig(
            output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch * gens, num_generations=gens,
            max_completion_length=max_completion, temperature=temperature, learning_rate=lr, beta=0.0,
            report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
            bf16=lora.native_bf16("cpu"),  # the precision ours picks (TRL's bf16 default is emulated here)
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(base),
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_list(
                [{"prompt": c.messages(), "reference": c.expected_json} for c in cases]
            ),
            processing_class=AutoTokenizer.from_pretrained(base),
            peft_config=lora_config(),
        )
        result = trainer.train()
        wall = time.perf_counter() - t0
    logs = [e for e in trainer.state.log_history if "num_tokens" in e]
    tokens = int(logs[-1]["num_tokens"]) if logs else 0
    runtime = float(result.metrics["train_runtime"])
    rewards = [float(e["reward"]) for e in trainer.state.log_history if "reward" in e]
    return {
        "kind": kind,
        "steps": int(result.global_step),
        "tokens": tokens,
        "trainRuntimeS": round(runtime, 2),
        "wallS": round(wall, 2),
        "sPerStep": round(runtime / max(1, int(result.global_step)), 2),
        "tokensPerS": round(tokens / runtime, 1),
        "completionLength": round(
            sum(float(e["completions/mean_length"]) for e in logs) / max(1, len(logs)), 1
        ),
        "rewardMean": round(sum(rewards) / len(rewards), 3) if rewards else None,
        "peakRssMb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bf16": bool(trainer.args.bf16),
        "checkpointing": bool(getattr(trainer.args, "activation_checkpointing", False)),
    }


def child(kind: str, model: str, steps: int, batch: int, max_length: int, lr: float) -> dict[str, Any]:
    """One timed run: ``trl`` (plain SFTTrainer, defaults), ``ours`` (the backend, the same LoRA on
    every layer) or ``ours-top8`` (the backend adapting the top 8 layers, as the demo does)."""
    from trajforge.train import lora

    base = lora.resolve_base(model)
    data = rows(steps * batch * 2)
    out = Path(tempfile.mkdtemp(prefix=f"bench-train-{kind}-"))
    if kind.startswith("ours"):
        opts = lora.LoraOptions(
            model=model,
            iterations=steps,
            batch_size=batch,
            max_length=max_length,
            learning_rate=lr,
            lora_layers=8 if kind == "ours-top8" else None,
        )
        t0 = time.perf_counter()
        trainer, result, _progress = lora.fit(
            opts, lora.Data("sft", data, []), base, out, report=lambda *a: None
        )
        wall = time.perf_counter() - t0
    else:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        t0 = time.perf_counter()
        args = SFTConfig(
            output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, max_length=max_length,
            learning_rate=lr, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
            use_cpu=True,  # TRL's bf16 default refuses to start on a CPU-only machine without it
        )  # fmt: skip
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(base),
            args=args,
            train_dataset=Dataset.from_list(data),
            processing_class=AutoTokenizer.from_pretrained(base),
            peft_config=lora_config(),
        )
        result = trainer.train()
        wall = time.perf_counter() - t0
    logs = [e for e in trainer.state.log_history if "num_tokens" in e]
    tokens = int(logs[-1]["num_tokens"]) if logs else 0
    runtime = float(result.metrics["train_runtime"])
    return {
        "kind": kind,
        "steps": int(result.global_step),
        "tokens": tokens,
        "trainRuntimeS": round(runtime, 2),
        "wallS": round(wall, 2),
        "tokensPerS": round(tokens / runtime, 1),
        "finalLoss": round(float(trainer.state.log_history[-2].get("loss", float("nan"))), 4),
        "peakRssMb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "bf16": bool(trainer.args.bf16),
        "checkpointing": bool(getattr(trainer.args, "activation_checkpointing", False)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--model", default="bundled:smollm2-135m")
    ap.add_argument("--method", choices=("sft", "grpo"), default="sft")
    ap.add_argument("--generations", type=int, default=4, help="GRPO: completions per prompt")
    ap.add_argument(
        "--child", choices=("ours", "trl", "ours-top8", "trl-grpo", "ours-grpo"), help=argparse.SUPPRESS
    )
    a = ap.parse_args()
    if a.child and a.child.endswith("grpo"):
        res = grpo_child(a.child, a.model, a.steps, a.batch, a.generations, a.lr)
        print("RESULT " + json.dumps(res), flush=True)
        return
    if a.child:
        print(
            "RESULT " + json.dumps(child(a.child, a.model, a.steps, a.batch, a.max_length, a.lr)), flush=True
        )
        return
    from trajforge.train import lora

    lora.resolve_base(a.model)  # convert the bundled model once, outside the timed runs
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"model {a.model}, {a.steps} steps, batch {a.batch}, max_length {a.max_length}, lr {a.lr}"
    )
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    kinds = ("trl-grpo", "ours-grpo") if a.method == "grpo" else ("trl", "ours", "ours-top8")
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(a.rounds):
        for kind in results:
            cmd = [
                sys.executable, __file__, "--child", kind, "--steps", str(a.steps), "--batch", str(a.batch),
                "--max-length", str(a.max_length), "--lr", str(a.lr), "--model", a.model,
                "--generations", str(a.generations),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{kind} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            res = json.loads(line[len("RESULT ") :])
            results[kind].append(res)
            print(f"round {r + 1} {kind:>4}: {json.dumps(res)}", flush=True)
    tps = {k: median(x["tokensPerS"] for x in v) for k, v in results.items()}
    rss = {k: max(x["peakRssMb"] for x in v) for k, v in results.items()}
    if a.method == "grpo":
        sps = {k: median(x["sPerStep"] for x in v) for k, v in results.items()}
        print(
            f"ours-grpo: tokens/s (median) {tps['ours-grpo']:.0f} vs plain TRL {tps['trl-grpo']:.0f} → "
            f"{tps['ours-grpo'] / tps['trl-grpo']:.2f}x (goal ≥ 1.0x); s/step {sps['ours-grpo']:.1f} vs "
            f"{sps['trl-grpo']:.1f} → {sps['trl-grpo'] / sps['ours-grpo']:.2f}x steps/s; peak RSS "
            f"{rss['ours-grpo']:.0f} MB vs {rss['trl-grpo']:.0f} MB → {rss['ours-grpo'] / rss['trl-grpo']:.2f}x "
            "(goal ≤ 1.0x)"
        )
        return
    for kind in ("ours", "ours-top8"):
        print(
            f"{kind}: tokens/s (median) {tps[kind]:.0f} vs plain TRL {tps['trl']:.0f} → "
            f"{tps[kind] / tps['trl']:.2f}x (goal ≥ 1.0x); peak RSS {rss[kind]:.0f} MB vs {rss['trl']:.0f} MB → "
            f"{rss[kind] / rss['trl']:.2f}x (goal ≤ 1.0x)"
        )


if __name__ == "__main__":
    main()
