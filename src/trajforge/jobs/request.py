"""A job request: one options type per kind a request may ask for, chosen by its ``backend``
(absent: native). The API takes it as its body, the CLI derives ``jobs start``'s options from its
kinds, and :func:`trajforge.jobs.submit` validates a mapping with it.

It imports the kinds' options types (pydantic models beside their run functions); the kinds table
(:mod:`.kinds`) names them by string so that it stays cheap to import, and a test checks that the
two agree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from trajforge.jobs import kinds
from trajforge.optimize.native import NativeOptions
from trajforge.requests import TRUSTED, invalid
from trajforge.train.lora import LoraOptions
from trajforge.train.remote import RemoteOptions
from trajforge.train.vast import VastOptions

JobOptions = NativeOptions | LoraOptions | RemoteOptions | VastOptions


def _kind(value: Any) -> str:
    backend = value.get("backend") if isinstance(value, Mapping) else getattr(value, "backend", None)
    # An unknown backend raises InvalidInput naming it (not a pydantic error on some arm).
    # Tags are capitalised: an error's location then names the field alone (server.app._union_tag).
    return kinds.for_backend(backend or kinds.DEFAULT_BACKEND).name.title()


JobRequest = Annotated[
    Annotated[NativeOptions, Tag("Native")]
    | Annotated[LoraOptions, Tag("Lora")]
    | Annotated[RemoteOptions, Tag("Remote")]
    | Annotated[VastOptions, Tag("Vast")],
    Discriminator(_kind),
]
OPTIONS: dict[str, type[JobOptions]] = {
    "native": NativeOptions,
    "lora": LoraOptions,
    "remote": RemoteOptions,
    "vast": VastOptions,
}
"""Kind name → its options type (what :data:`JobRequest` is a union of)."""
_ADAPTER: TypeAdapter[JobOptions] = TypeAdapter(JobRequest)


def parse(request: Mapping[str, Any]) -> JobOptions:
    """The options of a job request from this machine's user (the CLI, Python; camelCase keys);
    a bad one raises :class:`~trajforge.errors.InvalidInput` naming the field. (The API validates
    its body itself, untrusted.)"""
    try:
        return _ADAPTER.validate_python(dict(request), context=TRUSTED)
    except ValidationError as exc:
        raise invalid(exc) from None
