"""Which training backends can run on this machine, and why not when they cannot; and whether a
job's base model can load here (:func:`check_model`, at submit, offline).

Checked without importing torch where a package lookup is enough (the server answers
``/api/training/backends`` often); CUDA needs torch itself, imported once and cached.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from trajforge import settings
from trajforge.errors import InvalidInput, Unavailable

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


def ssh() -> tuple[bool, str]:
    """The ``ssh`` backend needs paramiko here; the training stack only on the remote host."""
    if _missing(("paramiko",)):
        return False, "needs paramiko (pip install 'trajforge[remote]')"
    return True, "LoRA fine-tuning on any host over SSH: give host (user@host[:port]) and optionally identity"


REMOTE = ("ssh", "vast")
"""Backends that train on another machine: a hub id need not be in the local cache."""


def status() -> dict[str, dict[str, Any]]:
    """``{backend: {available, reason}}`` for the training backends."""
    out = {
        name: {"available": ok, "reason": reason}
        for name, (ok, reason) in (("cpu", cpu()), ("cuda", cuda()), ("mlx", mlx()), ("ssh", ssh()))
    }
    from trajforge.train import vast

    ok, reason = vast.status()
    out["vast"] = {"available": ok, "reason": reason}
    return out


# --- base models -----------------------------------------------------------------------------------

WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
"""The weight files of a transformers model folder (a sharded model has several)."""
HUB_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def what_works(backend: str) -> str:
    """The model specs a job on ``backend`` can load, for error messages."""
    bundled = ", ".join(f"bundled:{name}" for name in _bundled())
    folder = "local:<dir> (a transformers folder: config.json and weights)"
    if backend == "native":
        return f"{bundled}, {folder}, or a model name served at baseUrl (or {settings.LM_BASE_URL})"
    return (
        f"{bundled}, {folder}, or a Hugging Face repo id already in the local cache "
        "(download it first: huggingface-cli download <id>)"
    )


def check_model(backend: str, spec: Any, base_url: str | None = None) -> None:
    """Refuse, before a job is queued, a base model its job could not load: checked offline (files
    on this machine, the local Hugging Face cache; nothing is loaded or downloaded). The error
    names ``model`` and says what would work."""
    if spec is None:
        return
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInput(
            f"model must be a non-empty string, got {spec!r}; use {what_works(backend)}", "model"
        )
    problem = _problem(backend, spec, base_url)
    if problem:
        raise Unavailable(f"{problem}; use {what_works(backend)}", "model")


def _bundled() -> tuple[str, ...]:
    from trajforge import lm

    return tuple(lm.BUNDLED)


def _problem(backend: str, spec: str, base_url: str | None) -> str | None:
    if spec.startswith("bundled:"):
        from trajforge import lm

        name = spec.split(":", 1)[1]
        if name not in lm.BUNDLED:
            return f"there is no bundled model {name!r}"
        package = lm.BUNDLED[name][0]
        converted = settings.home() / "models" / "bundled" / name / "config.json"
        if importlib.util.find_spec(package) is None and not converted.exists():
            return f"{spec} needs the {package.replace('_', '-')} package, which is not installed"
        return None
    if spec.startswith("local:"):
        return _folder_problem(spec, Path(spec.split(":", 1)[1]))
    if backend == "native":
        # A name an OpenAI-compatible server serves: only whether there is a server to ask is
        # known offline.
        if not (base_url or os.environ.get(settings.LM_BASE_URL)):
            return f"{spec!r} would be a served model, but no baseUrl is given and {settings.LM_BASE_URL} is not set"
        return None
    if _is_dir(Path(spec)):
        return _folder_problem(spec, Path(spec))
    if not _HUB_ID.fullmatch(spec) or "--" in spec or ".." in spec:
        return f"{spec!r} is not a bundled:, local: or Hugging Face model"
    if backend in REMOTE:
        return None  # the remote host resolves (downloads) it
    if not _in_hub_cache(spec):
        return f"{spec!r} is not a folder here, and not in the local Hugging Face cache ({_hub_cache()})"
    return None


def _is_dir(path: Path) -> bool:
    """``path.is_dir()`` for a path a user typed: a name too long for the file system or with a
    NUL byte is not a folder here (rather than an OSError/ValueError escaping as a 500)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _folder_problem(spec: str, path: Path) -> str | None:
    if not _is_dir(path):
        return f"{spec}: {path} is not a folder"
    if not (path / "config.json").is_file():
        return f"{spec}: {path} is not a transformers model folder (no config.json)"
    if not any(next(path.glob(pattern), None) for pattern in WEIGHTS):
        return f"{spec}: {path} has no weights ({' or '.join(WEIGHTS)})"
    return None


def _hub_cache() -> str:
    """The Hugging Face cache, read from the environment now (huggingface_hub reads it at import)."""
    from huggingface_hub import constants

    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]) / "hub")
    return str(constants.HF_HUB_CACHE)


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the cache holds the repo's config and weights (no network: a cache lookup only)."""
    from huggingface_hub import try_to_load_from_cache

    cache = _hub_cache()
    try:
        if not isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache), str):
            return False
        return any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache), str) for f in HUB_WEIGHTS)
    except ValueError:  # HFValidationError: not a repo id after all
        return False
