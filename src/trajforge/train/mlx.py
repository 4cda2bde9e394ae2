"""The ``mlx`` backend: LoRA fine-tuning with ``mlx_lm lora`` on Apple Silicon.

Only runs where :func:`trajforge.train.backends.mlx` says so (macOS on arm64 with ``mlx-lm``
installed); elsewhere the job runner refuses the backend with that reason. ``setup`` writes the
dataset as mlx-lm's chat JSONL (``train.jsonl``/``valid.jsonl``, loss on the completion with
``--mask-prompt``); ``fit`` runs ``python -m mlx_lm lora`` as a child process, turning its
``Iter N: Train loss …`` lines into progress (mlx-lm has no callback API across a process) and
terminating it between reports when the job is cancelled; the adapter it writes is registered.

mlx-lm writes its own adapter format (``adapters.safetensors``), which Ollama does not import as
a PEFT adapter: import an mlx model into Ollama after fusing it (``mlx_lm fuse``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from trajforge.errors import Cancelled, Unavailable
from trajforge.records import Model
from trajforge.train import backends
from trajforge.train.lora import LoraOptions, Report, ShouldStop, load_data, models_root

_ITER = re.compile(
    r"Iter (\d+): Train loss ([\d.]+)(?:.*?Learning Rate ([\d.e+-]+))?(?:.*?Tokens/sec ([\d.]+))?"
)


def _chat_rows(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps({"messages": r["prompt"] + r["completion"]}) + b"\n" for r in rows)


def command(opts: LoraOptions, base: str, data_dir: Path, adapter_dir: Path, iters: int) -> list[str]:
    return [
        sys.executable, "-m", "mlx_lm", "lora",
        "--model", base,
        "--train",
        "--data", str(data_dir),
        "--iters", str(iters),
        "--batch-size", str(opts.batch_size),
        "--learning-rate", str(opts.learning_rate),
        "--max-seq-length", str(opts.max_length),
        "--adapter-path", str(adapter_dir),
        "--seed", str(opts.seed),
        "--mask-prompt",
        "--steps-per-report", "1",
    ]  # fmt: skip


def run(
    store: Any, job: Any, report: Report, home: Path | None = None, should_stop: ShouldStop = lambda: False
) -> dict[str, Any]:
    ok, reason = backends.mlx()
    if not ok:
        raise Unavailable(f"the mlx backend is not available on this machine: {reason}", "backend")
    from trajforge import datasets
    from trajforge.train.lora import resolve_base

    opts = LoraOptions.from_stored(job.request)
    ds = datasets.get(store, job.dataset_id) if job.dataset_id else None
    if ds is None:
        ds = datasets.build(store, datasets.BuildRequest(format="sft", task=opts.task))
        store.update_job(job.id, dataset_id=ds.id)
    data = load_data(Path(ds.path), opts.task)
    if data.kind != "sft":
        raise Unavailable("the mlx backend trains SFT only; use the cpu or cuda backend for DPO", "backend")
    model = Model(job_id=job.id, dataset_id=ds.id, base_model=opts.model, backend="mlx", adapter_path=None)
    out = models_root(home) / model.id
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "train.jsonl").write_bytes(_chat_rows(data.train))
    (data_dir / "valid.jsonl").write_bytes(_chat_rows(data.eval or data.train[:1]))
    iters = opts.iterations or max(1, int(len(data.train) * opts.epochs / opts.batch_size))
    adapter = out / "adapter"
    log: list[dict[str, Any]] = []
    started = time.monotonic()
    with open(out / "train.log", "wb") as sink:
        proc = subprocess.Popen(
            command(opts, resolve_base(opts.model), data_dir, adapter, iters),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        for raw in proc.stdout:
            sink.write(raw)
            m = _ITER.search(raw.decode(errors="replace"))
            if m:
                step = int(m.group(1))
                entry = {"step": step, "loss": float(m.group(2)), "learningRate": float(m.group(3) or 0)}
                if m.group(4):
                    entry["tokensPerS"] = float(m.group(4))
                log.append(entry)
                report(0.05 + 0.9 * step / iters, "train", f"step {step}/{iters} loss {entry['loss']:.4f}")
            if should_stop():
                proc.terminate()
                proc.wait(30)
                raise Cancelled("cancelled")
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"mlx_lm lora exited with code {code}; see {out / 'train.log'}")
    model.adapter_path = str(adapter)
    model.metrics = {
        "kind": "sft",
        "steps": iters,
        "finalLoss": log[-1]["loss"] if log else None,
        "trainSeconds": round(time.monotonic() - started, 2),
        "trainRows": len(data.train),
        "log": log,
    }
    (out / "train_log.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in log))
    store.add_model(model)
    report(1.0, "done", f"model {model.id}")
    return {"modelId": model.id, "adapterPath": model.adapter_path, "metrics": model.metrics}
