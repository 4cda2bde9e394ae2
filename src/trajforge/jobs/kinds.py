"""The kinds of job: the backends each serves, its options, the datasets it reads, what runs it.

One table, read by :func:`trajforge.jobs.submit` (to refuse a request before it is queued) and by
the job process (to find the function that does the work), instead of an if-chain in each. The
modules that do the work import the optimizers, torch, transformers or TRL; a kind names them as
``"module:attribute"`` and imports one only when it is asked for, so this table costs nothing to
import (the server reads :data:`BACKENDS` and :func:`backends` on every status request).

The backends a job request may name are :data:`BACKENDS`, derived from this table: the one list
(the CLI help, the HTTP schema and auto-training's config read it or must agree with it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trajforge.errors import InvalidInput
from trajforge.records import Job
from trajforge.store.base import Store

Report = Callable[[float, str, str], None]
"""report(progress 0..1, phase, message)"""
Body = Callable[[Store, Job, Report, Path | None, Callable[[], bool]], Any]
"""A job's work: ``run(store, job, report, home, should_stop)``, returning the job's output."""


def load(ref: str) -> Any:
    """The attribute ``ref`` (``"module:attribute"``) names, importing its module now."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    """Stored as the job's ``kind``."""
    what: str
    """What its jobs do, for messages: ``LoRA training``."""
    runs: Mapping[str, str]
    """Backend → ``module:function`` (a :data:`Body`) that does the work of a job on it: the keys
    are the backends this kind serves."""
    options: str | None = None
    """``module:Class`` whose ``from_stored(request)`` reads the request's options, refusing bad
    ones; called at submit so they fail there, not minutes later in the job."""
    check: str | None = None
    """``module:function(request, options) -> request``: the request as it is queued, given its
    validated options (e.g. a default spelled out, so the stored request says what ran)."""
    formats: str | None = None
    """``module:NAME`` of the tuple of dataset formats its jobs read."""
    cooperative: bool = False
    """Its work polls ``should_stop`` and stops between steps (a LoRA adapter is never cut
    mid-update), so SIGTERM only asks it to stop; otherwise SIGTERM stops the work at once."""

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self.runs)

    def body(self, backend: str) -> Body:
        """The function that does the work of a job of this kind on ``backend``."""
        if backend not in self.runs:
            raise InvalidInput(f"{self.name} jobs run on {', '.join(self.runs)}, not {backend!r}", "backend")
        body: Body = load(self.runs[backend])
        return body

    def queued(self, options: Any) -> dict[str, Any]:
        """The request as it is queued, from its validated options: what was given, the backend,
        and what ``check`` spells out."""
        request = {**options.given(), "backend": options.backend}
        if self.check is not None:
            queued: dict[str, Any] = load(self.check)(request, options)
            return queued
        return request

    def checked(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``request`` as it is queued; bad options raise :class:`InvalidInput` (or
        :class:`~trajforge.errors.Unavailable`) naming the field."""
        if self.options is None:
            return dict(request)
        return self.queued(load(self.options).from_stored(request))

    def reads(self) -> tuple[str, ...] | None:
        """The dataset formats its jobs read (None: this kind does not check)."""
        return None if self.formats is None else tuple(load(self.formats))


NATIVE = Kind(
    name="native",
    what="native optimization",
    runs={"native": "trajforge.optimize.native:run"},
    options="trajforge.optimize.native:NativeOptions",
    check="trajforge.optimize.native:check_request",
    formats="trajforge.optimize.common:FORMATS",
)
LORA = Kind(
    name="lora",
    what="LoRA training",
    runs={
        "cpu": "trajforge.train.lora:run",
        "cuda": "trajforge.train.lora:run",
        "mlx": "trajforge.train.mlx:run",
    },
    options="trajforge.train.lora:LoraOptions",
    formats="trajforge.train.lora:FORMATS",
    cooperative=True,
)
REMOTE = Kind(
    name="remote",
    what="remote LoRA training",
    runs={"ssh": "trajforge.train.remote:run"},
    options="trajforge.train.remote:RemoteOptions",
    formats="trajforge.train.lora:FORMATS",
    cooperative=True,
)
VAST = Kind(
    name="vast",
    what="LoRA training on Vast.ai",
    runs={"vast": "trajforge.train.vast:run"},
    options="trajforge.train.vast:VastOptions",
    check="trajforge.train.vast:check_request",
    formats="trajforge.train.lora:FORMATS",
    cooperative=True,
)
BENCHMARK = Kind(
    name="benchmark",
    what="benchmark",
    # Queued by jobs.submit_benchmark, which checks the request against the model it names.
    runs={"native": "trajforge.evaluate:run_job"},
)

HUB_PUSH = Kind(
    name="hub_push",
    what="Hugging Face Hub push",
    # Queued by trajforge.hub.submit_push, which refuses a dataset that is not an intact snapshot.
    runs={"hub": "trajforge.hub:run_push_job"},
)

REQUESTED = (NATIVE, LORA, REMOTE, VAST)
"""The kinds a job request asks for by its ``backend``; each backend belongs to one of them."""
KINDS = {k.name: k for k in (*REQUESTED, BENCHMARK, HUB_PUSH)}
BACKENDS = tuple(b for k in REQUESTED for b in k.backends)
"""Every backend a job request may name: ``("native", "cpu", "cuda", "mlx", "ssh")``."""
DEFAULT_BACKEND = NATIVE.backends[0]


def for_backend(backend: str) -> Kind:
    """The kind of job a request for ``backend`` runs."""
    for kind in REQUESTED:
        # A body may hold anything here (the discriminator sees it before validation): a list
        # is not a backend, and must not reach ``in`` on a set as an unhashable value.
        if isinstance(backend, str) and backend in kind.runs:
            return kind
    raise InvalidInput(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}", "backend")


def kind_of(backend: str) -> str:
    """The job kind a backend runs: prompt optimization or LoRA fine-tuning."""
    return for_backend(backend).name


def get(name: str) -> Kind:
    """The kind a job names (a job stored by a newer version may name one this one lacks)."""
    kind = KINDS.get(name)
    if kind is None:
        raise InvalidInput(f"no job kind {name!r} (known: {', '.join(KINDS)})", "kind")
    return kind


def backends() -> dict[str, dict[str, Any]]:
    """Which backends work on this machine, and why the others do not."""
    from trajforge.train import backends as train_backends

    training = train_backends.status()
    native = {"available": True, "reason": "prompt optimization: needs only a model to call"}
    # training[b] and not .get: a backend this table serves but train.backends cannot check is a
    # bug to see at once, not one to report as available.
    return {b: native if b in NATIVE.runs else training[b] for b in BACKENDS}
