"""Which training backends can run on this machine, and why not when they cannot.

Checked without importing torch where a package lookup is enough (the server answers
``/api/training/backends`` often); CUDA needs torch itself, imported once and cached.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import sys
from typing import Any

TRAIN_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets")


def _missing(packages: tuple[str, ...]) -> list[str]:
    return [p for p in packages if importlib.util.find_spec(p) is None]


def cpu() -> tuple[bool, str]:
    missing = _missing(TRAIN_PACKAGES)
    if missing:
        return False, f"needs the train extra (pip install 'trajforge[train]'): missing {', '.join(missing)}"
    return True, "LoRA fine-tuning with TRL + PEFT on the CPU"


@functools.cache
def cuda() -> tuple[bool, str]:
    ok, reason = cpu()
    if not ok:
        return ok, reason
    import torch

    if not torch.cuda.is_available():
        build = (
            "a CPU-only torch build" if torch.version.cuda is None else f"torch for CUDA {torch.version.cuda}"
        )
        return False, f"no CUDA device is visible ({build})"
    return True, f"LoRA fine-tuning with TRL + PEFT on {torch.cuda.get_device_name(0)}"


def mlx() -> tuple[bool, str]:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return False, f"mlx needs macOS on Apple Silicon; this is {sys.platform}/{platform.machine()}"
    missing = _missing(("mlx", "mlx_lm"))
    if missing:
        return False, f"needs mlx-lm (pip install mlx-lm): missing {', '.join(missing)}"
    return True, "LoRA fine-tuning with mlx_lm on Apple Silicon"


def status() -> dict[str, dict[str, Any]]:
    """``{backend: {available, reason}}`` for the training backends."""
    return {
        name: {"available": ok, "reason": reason}
        for name, (ok, reason) in (("cpu", cpu()), ("cuda", cuda()), ("mlx", mlx()))
    }
