"""Every ``TRAJFORGE_*`` environment variable, documented in one place.

Values are read through the small functions below (not at import time) so tests and long-running
processes can change the environment and see the change; each function is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = "TRAJFORGE_HOME"
"""State directory: the default SQLite file, spool files, datasets, prompt artifacts, models. Default
``~/.trajforge``."""

DATABASE_URL = "TRAJFORGE_DATABASE_URL"
"""Where trajectories are stored: a SQLite path, ``sqlite:///path``, ``postgresql://…`` or, for the
SDK only, ``http(s)://host:port`` of a trajforge server. Default: ``<home>/trajforge.db``."""

API_TOKEN = "TRAJFORGE_API_TOKEN"
"""Bearer token the API requires (and the HTTP SDK sends). Required when the server binds beyond
loopback."""

ALLOWED_HOSTS = "TRAJFORGE_ALLOWED_HOSTS"
"""Comma-separated host names (``name`` or ``name:port``) a server without an API token answers
besides the loopback ones (``127.0.0.1``, ``localhost``, ``[::1]``), e.g. the name of a reverse
proxy in front of it. Requests naming any other ``Host`` are refused, so a web page cannot reach the
server through a DNS name rebound to 127.0.0.1. ``trajforge serve --allow-host`` adds to it."""

DISABLE_LOGGING = "TRAJFORGE_DISABLE_LOGGING"
"""``1`` turns every recorder in this process into a no-op (the agent keeps running)."""

ACTIVE_TIMEOUT_S = "TRAJFORGE_ACTIVE_TIMEOUT_S"
"""Seconds after its last write that an ``active`` trajectory is marked ``timeout`` by the sweep.
Default 3600."""

LM_BASE_URL = "TRAJFORGE_LM_BASE_URL"
"""OpenAI-compatible endpoint the LLM judge (and optimizers) call when none is given, e.g.
``http://127.0.0.1:11434/v1`` for Ollama."""

LM_MODEL = "TRAJFORGE_LM_MODEL"
"""Model name at ``TRAJFORGE_LM_BASE_URL``."""

LM_API_KEY = "TRAJFORGE_LM_API_KEY"
"""Key sent to that endpoint (falls back to ``OPENAI_API_KEY``; local servers need none)."""

PRIVACY_SALT = "TRAJFORGE_PRIVACY_SALT"
"""Salt for the privacy filter's ``@handle`` hashes. Default: a random salt created once per store and
kept in its settings, so builds from one store map a handle to the same id."""

PROMPTS_DISABLE = "TRAJFORGE_PROMPTS_DISABLE"
"""Comma-separated tasks for which ``trajforge.prompts.get`` returns the caller's default instead of
the optimized prompt (``*``: all tasks)."""

DISABLE_AUTO_BOOTSTRAP = "TRAJFORGE_DISABLE_AUTO_BOOTSTRAP"
"""``1``: a job runner starting up does not optimize tasks that reached their auto-training threshold
but have no optimized prompt yet."""

JOB_HEARTBEAT_TIMEOUT_S = "TRAJFORGE_JOB_HEARTBEAT_TIMEOUT_S"
"""Seconds without a heartbeat after which a runner fails a running job ``interrupted`` (its process
or its host is gone). Jobs heartbeat several times within it. Default 60."""

PROXY_UPSTREAM = "TRAJFORGE_PROXY_UPSTREAM"
"""An OpenAI base URL (e.g. ``http://127.0.0.1:11434/v1``): ``trajforge serve`` then also serves
the capture proxy under ``/proxy/v1/...`` (``trajforge proxy`` takes it as its default
``--upstream``)."""

SQLITE_SYNC = "TRAJFORGE_SQLITE_SYNC"
"""How hard a SQLite store pushes each commit to disk (the file runs in WAL mode either way):
``normal`` (default) or ``full``. With ``normal`` a committed write (a returned ``flush()``)
survives the process crashing or being killed, but the last commits before a power loss or an OS
crash may be lost (the file stays consistent). With ``full`` every commit is synced to disk
before it returns, so it survives power loss too, at a cost per commit (BENCHMARKS.md)."""

SQLITE_SYNC_MODES = ("normal", "full")

VAST_URL = "TRAJFORGE_VAST_URL"
"""Base URL of the Vast.ai REST API the ``vast`` backend calls. Default
``https://console.vast.ai/api/v0``."""

VAST_API_KEY = "TRAJFORGE_VAST_API_KEY"
"""The Vast.ai API key the ``vast`` backend sends (``Authorization: Bearer``). Read from the
environment only: never written to a job's request, events, logs or error messages. Without it
the ``vast`` backend and the ``/api/training/vast`` routes are unavailable."""

DEFAULT_VAST_URL = "https://console.vast.ai/api/v0"

TRUTHY = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """True when the variable is set to 1/true/yes/on (any case)."""
    return os.environ.get(name, "").strip().lower() in TRUTHY


def home() -> Path:
    """The state directory, created on first use."""
    path = Path(os.environ.get(HOME) or Path.home() / ".trajforge").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    """The configured store location, defaulting to the SQLite file in the state dir."""
    return os.environ.get(DATABASE_URL) or str(home() / "trajforge.db")


def api_token() -> str | None:
    return os.environ.get(API_TOKEN) or None


def proxy_upstream() -> str | None:
    return os.environ.get(PROXY_UPSTREAM, "").strip() or None


def allowed_hosts() -> list[str]:
    """``TRAJFORGE_ALLOWED_HOSTS`` as a list of non-empty, lower-cased names."""
    return [h.strip().lower() for h in os.environ.get(ALLOWED_HOSTS, "").split(",") if h.strip()]


def logging_disabled() -> bool:
    return env_flag(DISABLE_LOGGING)


def active_timeout_s() -> float:
    raw = os.environ.get(ACTIVE_TIMEOUT_S)
    if not raw:
        return 3600.0
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{ACTIVE_TIMEOUT_S} must be a number of seconds, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{ACTIVE_TIMEOUT_S} must be positive, got {raw!r}")
    return value


def sqlite_sync() -> str:
    """``TRAJFORGE_SQLITE_SYNC`` as a ``PRAGMA synchronous`` value (``NORMAL`` or ``FULL``)."""
    raw = os.environ.get(SQLITE_SYNC, "").strip().lower() or "normal"
    if raw not in SQLITE_SYNC_MODES:
        raise ValueError(f"{SQLITE_SYNC} must be one of {', '.join(SQLITE_SYNC_MODES)}, got {raw!r}")
    return raw.upper()


def _positive_s(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def job_heartbeat_timeout_s() -> float:
    return _positive_s(JOB_HEARTBEAT_TIMEOUT_S, 60.0)


def datasets_dir() -> Path:
    """Where dataset snapshots are written: ``<home>/datasets``."""
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def vast_url() -> str:
    return (os.environ.get(VAST_URL, "").strip() or DEFAULT_VAST_URL).rstrip("/")


def vast_api_key() -> str | None:
    return os.environ.get(VAST_API_KEY, "").strip() or None
