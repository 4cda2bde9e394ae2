"""The model registry: every fine-tuned model with its lineage, metrics, benchmark, Ollama name and
whether the agent should use it.

Training jobs register their models (:mod:`trajforge.train.lora`); :func:`activate` marks one as
the model the agent uses (e.g. ``ollama/my-agent``) and emits ``model_activated``; an agent reads it
with :func:`active_model` (``trajforge.active_model()``), so switching needs no code change.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from trajforge.errors import InvalidInput, NotFound
from trajforge.records import JobEvent, Model, now_ms
from trajforge.store.base import TrainingStore

CHECK_EVERY_S = 5.0
MAX_PROVIDER_MODEL = 200


def get(store: TrainingStore, model_id: str) -> Model:
    model = store.get_model(model_id)
    if model is None:
        raise NotFound(f"no model {model_id!r}", "id")
    return model


def wire(model: Model, *, per_item: bool = True) -> dict[str, Any]:
    """The model as the API shows it (``perItem`` of the benchmark only when asked: it is long)."""
    evaluation = model.evaluation
    if evaluation is not None and not per_item:
        evaluation = {k: v for k, v in evaluation.items() if k != "perItem"}
    return {
        "id": model.id,
        "jobId": model.job_id,
        "datasetId": model.dataset_id,
        "baseModel": model.base_model,
        "backend": model.backend,
        "adapterPath": model.adapter_path,
        "mergedPath": model.merged_path,
        "metrics": model.metrics,
        "evaluation": evaluation,
        "ollamaName": model.ollama_name,
        "providerModel": model.provider_model,
        "active": model.active,
        "activatedAt": model.activated_at,
        "createdAt": model.created_at,
    }


def activate(store: TrainingStore, model_id: str, provider_model: str | None = None) -> Model:
    """Make ``model_id`` the model the agent uses. ``provider_model`` is what the agent passes to
    its provider (``ollama/<name>``); it defaults to the model's Ollama name once imported."""
    model = get(store, model_id)
    if provider_model is None:
        if model.ollama_name is None:
            raise InvalidInput(
                "providerModel is required (e.g. ollama/my-agent) until the model is imported into Ollama",
                "providerModel",
            )
        provider_model = f"ollama/{model.ollama_name}"
    provider_model = provider_model.strip()
    if (
        not provider_model
        or len(provider_model) > MAX_PROVIDER_MODEL
        or any(c.isspace() for c in provider_model)
    ):
        raise InvalidInput(
            f"providerModel must be a model name without spaces, at most {MAX_PROVIDER_MODEL} characters",
            "providerModel",
        )
    if not store.activate_model(model_id, provider_model, now_ms()):
        raise NotFound(f"no model {model_id!r}", "id")
    store.add_event(
        JobEvent("model_activated", f"{provider_model} is active", model_id=model_id, job_id=model.job_id)
    )
    return get(store, model_id)


class _Active:
    """``active_model()``'s cache: the registry is read at most every few seconds per target."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[str | None, str | None], tuple[float, str | None]] = {}


_active = _Active()


def active_model(
    target: str | None = None, *, default: str | None = None, token: str | None = None
) -> str | None:
    """The provider model the agent should use (``ollama/my-agent``), or ``default`` when none is
    active. ``target``: a server URL (``http://127.0.0.1:2138``), a store URL/path, or None for the
    local store. A changed activation is noticed within :data:`CHECK_EVERY_S` seconds."""
    key = (target, token)
    with _active.lock:
        hit = _active.seen.get(key)
        if hit is not None and time.monotonic() - hit[0] < CHECK_EVERY_S:
            return hit[1] or default
    value = _read_active(target, token)
    with _active.lock:
        _active.seen[key] = (time.monotonic(), value)
    return value or default


def _read_active(target: str | None, token: str | None) -> str | None:
    if target is not None and target.startswith(("http://", "https://")):
        import httpx

        from trajforge import settings

        token = token or settings.api_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = httpx.get(f"{target.rstrip('/')}/api/training/models/active", headers=headers, timeout=10)
        resp.raise_for_status()
        body = resp.json()
        return body.get("providerModel") if body.get("model") else None
    from trajforge.store import open_store

    store = open_store(target)
    try:
        model = store.active_model()
    finally:
        store.close()
    return None if model is None else model.provider_model
