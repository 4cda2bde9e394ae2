"""The training entry point a remote job runs on its host (``ssh``/``vast`` backends):

    python -m trajforge.train.remote_entry --job-dir DIR [--base DIR_OR_HUB_ID] [--device auto] [--gpus N]

``DIR`` holds what the local side uploaded: ``snapshot/`` (the dataset snapshot with its
``manifest.json``), ``options.json`` (the job's LoRA options, wire names) and ``expected.json``
(the sha256 of every uploaded file, checked here before anything else). It trains with the same
``lora.load_data``/``lora.fit`` as a local job, on ``cuda`` when the host has a CUDA device (every
GPU data-parallel under ``accelerate launch`` when it has more than one) else on the CPU, and
writes ``out/adapter`` (the PEFT adapter and tokenizer), ``out/train_log.jsonl`` and
``out/result.json`` (metrics and the sha256 of every output file).

It talks to the local side by JSON lines on stdout — ``{"event": "progress", "progress", "phase",
"message"}``, then ``{"event": "result", ...}`` or ``{"event": "error", "field", "message"}`` —
and logs to stderr (which the local side sends to a log file). It stops between steps, saving the
adapter so far to ``out/checkpoint``, on SIGTERM or when its stdin closes (the SSH connection went
away: a dead job never leaves a training run behind on a rented GPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

STOP = threading.Event()


def emit(event: str, **data: Any) -> None:
    """One line to the local side (rank 0 only, under accelerate)."""
    if int(os.environ.get("RANK", "0")) == 0:
        sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
        sys.stdout.flush()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(job_dir: Path) -> None:
    """Every uploaded file is there with the sha256 the local side computed (and the snapshot's
    files with the sha256 its manifest records)."""
    expected: dict[str, str] = json.loads((job_dir / "expected.json").read_text())
    for rel, digest in expected.items():
        path = job_dir / rel
        if not path.is_file() or sha256_of(path) != digest:
            raise SystemExit(f"upload corrupted: {rel} does not have the sha256 the local side sent")
    manifest = json.loads((job_dir / "snapshot" / "manifest.json").read_text())
    for rel, info in (manifest.get("files") or {}).items():
        path = job_dir / "snapshot" / rel
        if path.is_file() and sha256_of(path) != info.get("sha256"):
            raise SystemExit(f"dataset snapshot corrupted: {rel} does not match its manifest's sha256")


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device cuda requested but torch sees no CUDA device on this host")
    return requested


def multi_gpu_command(argv: list[str], gpus: int) -> list[str]:
    """This entry point again, once per GPU, under ``accelerate launch`` (DDP)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(gpus),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",  # the trainer config decides bf16 itself (lora.training_args)
        "--dynamo_backend",
        "no",
        "-m",
        "trajforge.train.remote_entry",
        *argv,
    ]


def _gpus_to_use(device: str, wanted: int | None) -> int:
    import torch

    if device != "cuda":
        return 1
    have = torch.cuda.device_count()
    return max(1, min(have, wanted or have))


def _watch_stdin() -> None:
    """Stop when stdin closes: the SSH connection to the local side is gone."""
    # os.read on the fd, not sys.stdin: a daemon thread blocked in a buffered reader aborts the
    # interpreter's shutdown.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    STOP.set()


def _checkpoint_callback(out: Path) -> Any:
    from transformers import TrainerCallback

    class _Save(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if STOP.is_set() and model is not None and state.is_world_process_zero:
                model.save_pretrained(out / "checkpoint")
                (out / "checkpoint" / "step").write_text(str(state.global_step))

    return _Save()


def train(job_dir: Path, base: str, device: str) -> dict[str, Any]:
    """The run itself: lora.load_data + lora.fit, then what lora.run saves (adapter, log, metrics)."""
    from trajforge.train import lora

    opts = lora.LoraOptions.from_stored(json.loads((job_dir / "options.json").read_text()))
    out = job_dir / "out"
    out.mkdir(parents=True, exist_ok=True)
    data = lora.load_data(job_dir / "snapshot", opts.task)
    if device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))

    def report(progress: float, phase: str, message: str) -> None:
        emit("progress", progress=progress, phase=phase, message=message)

    report(0.05, "setup", f"{len(data.train)} train / {len(data.eval)} eval rows ({data.kind}) on {device}")
    started = time.monotonic()
    trainer, result, progress = lora.fit(
        opts,
        data,
        base,
        out,
        device=device,
        report=report,
        should_stop=STOP.is_set,
        span=(0.05, 0.85),
        callbacks=(_checkpoint_callback(out),),
    )
    train_s = time.monotonic() - started
    metrics: dict[str, Any] = {
        "kind": data.kind,
        "steps": int(result.global_step),
        "trainLoss": float(result.training_loss),
        "finalLoss": progress.log[-1]["loss"] if progress.log else None,
        "trainSeconds": round(train_s, 2),
        "tokens": progress.tokens,
        "tokensPerS": round(progress.tokens / train_s, 1) if progress.tokens else None,
        "peakRssMb": lora.peak_rss_mb(),
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "trainRows": progress.rows[0],
        "evalRows": progress.rows[1],
        "droppedTooLong": progress.dropped,
        "device": device,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "options": opts.summary(),
    }
    if progress.rows[1]:
        report(0.9, "evaluate", "evaluating")
        metrics["evalLoss"] = float(trainer.evaluate()["eval_loss"])
    if not trainer.is_world_process_zero():
        return metrics
    adapter = out / "adapter"
    trainer.model.save_pretrained(adapter)
    trainer.processing_class.save_pretrained(adapter)
    (out / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in progress.log))
    if opts.merge:
        report(0.95, "merge", "merging the adapter into the base model")
        merged = out / "merged"
        trainer.model.merge_and_unload().save_pretrained(merged)
        trainer.processing_class.save_pretrained(merged)
    return metrics


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m trajforge.train.remote_entry")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--base", help="the base model: a folder on this host or a hub id")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all)")
    parser.add_argument("--no-stdin-watch", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    if not args.no_stdin_watch and "LOCAL_RANK" not in os.environ:
        threading.Thread(target=_watch_stdin, daemon=True).start()
    job_dir: Path = args.job_dir.resolve()
    if "LOCAL_RANK" not in os.environ:
        # A process group of our own (its id in ``pid``): the local side's stop kills the whole
        # group (accelerate's ranks included) and nothing else. Under ``sh -c 'exec …'`` this
        # process already leads the session sshd made for it.
        try:
            os.setsid()
        except OSError:
            pass
        (job_dir / "pid").write_text(str(os.getpgid(0)))
    try:
        if "LOCAL_RANK" not in os.environ:
            verify(job_dir)
        device = pick_device(args.device)
        gpus = _gpus_to_use(device, args.gpus)
        if gpus > 1 and "LOCAL_RANK" not in os.environ:
            emit("progress", progress=0.02, phase="setup", message=f"{gpus} GPUs: accelerate launch")
            sys.stdout.flush()
            # exec: same pid (and process group), so the local side's stop reaches every rank.
            command = multi_gpu_command([*argv, "--no-stdin-watch"], gpus)
            os.execv(command[0], command)
        base = args.base or json.loads((job_dir / "options.json").read_text()).get("model")
        metrics = train(job_dir, base, device)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            emit("error", field=None, message=exc.code)
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the local side, then logged
        from trajforge.errors import Cancelled, InvalidInput

        if isinstance(exc, Cancelled):
            marker = job_dir / "out" / "checkpoint" / "step"
            step = int(marker.read_text()) if marker.exists() else None
            emit("cancelled", message=str(exc), checkpointStep=step)
            print(f"cancelled: {exc}", file=sys.stderr)
            return 130
        if isinstance(exc, InvalidInput):
            emit("error", field=exc.field, message=exc.message)
        else:
            emit("error", field=None, message=f"{type(exc).__name__}: {exc}")
        import traceback

        traceback.print_exc()
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    out = job_dir / "out"
    files = {p.relative_to(out).as_posix(): sha256_of(p) for p in sorted(out.rglob("*")) if p.is_file()}
    files = {k: v for k, v in files.items() if not k.startswith(("trainer/", "checkpoint/"))}
    result = {"metrics": metrics, "files": files}
    (out / "result.json").write_text(json.dumps(result))
    shutil.rmtree(out / "trainer", ignore_errors=True)
    emit("result", **result)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter shutdown: the stdin watcher may still be blocked in its read.
    os._exit(code)
