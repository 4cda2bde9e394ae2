"""Request declarations: each request type (a trajectory filter, a dataset build, a job's options)
is one pydantic model, declared once. The library validates with it, FastAPI takes it as a body
(or, through a lax subclass, as query parameters), and the CLI derives its options from its fields
(:mod:`trajforge.cli.options`). A test walks the API schema and the CLI and fails when a field is
in one but not the other.

Fields are snake_case in Python and camelCase on the wire (an alias generator, so the two cannot
drift). Models are strict: a JSON body's ``"1"`` or ``false`` is not a number; the CLI passes
typed values, and query strings go through a subclass with ``strict=False`` (e.g.
:class:`~trajforge.store.filter.FilterQuery`), where text is parsed. A bad value raises
:class:`~trajforge.errors.InvalidInput` naming the wire field, from the library and the CLI alike
(the API answers 422 naming it too, through FastAPI's own validation).

Importing this module imports pydantic (~0.1 s): the capture SDK never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic._internal._model_construction import ModelMetaclass
from pydantic.alias_generators import to_camel

from trajforge.errors import InvalidInput
from trajforge.limits import MAX_ID_CHARS, MAX_NAME_CHARS

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
"""A short user-given name (source, agent id, scenario id, ...)."""
TrajectoryId = Annotated[str, Field(max_length=MAX_ID_CHARS)]


class Flag:
    """How a field appears on the command line, when the derived ``--kebab-name`` is not enough:
    ``names`` (the first is the one errors name; the derived name is always accepted too),
    ``help`` that replaces the description there, ``metavar``, and a CLI ``default``."""

    __slots__ = ("default", "help", "metavar", "names")

    def __init__(
        self,
        *names: str,
        help: str | None = None,
        metavar: str | None = None,
        default: Any = None,
    ) -> None:
        self.names = names
        self.help = help
        self.metavar = metavar
        self.default = default
        """A default on the command line where the API has none (or another)."""


def flag_of(model: type[BaseModel], name: str) -> Flag | None:
    """The :class:`Flag` metadata of a field, if it has one."""
    for meta in model.model_fields[name].metadata:
        if isinstance(meta, Flag):
            return meta
    return None


def invalid(exc: ValidationError) -> InvalidInput:
    """The first error of a validation, as an :class:`InvalidInput` naming the wire field."""
    first = exc.errors(include_url=False)[0]
    # Requests validate by wire names, so a location is one (or the unknown key as given); a
    # union's member tags (capitalised, e.g. ``Lora``) and list indexes are not fields.
    loc = ".".join(p for p in first.get("loc", ()) if isinstance(p, str) and not p[:1].isupper())
    got = first.get("input")
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "is not a known field"
    shown = "" if isinstance(got, dict) or got is None else f", got {got!r}"[:200]
    return InvalidInput(f"{loc}: {message}{shown}" if loc else message, loc or None)


TRUSTED = {"trusted": True}
"""Validation context of a request from the command line or Python (not from HTTP): a field may
accept more there (a metric named ``module:function`` runs the caller's own code)."""


class _Constructor(ModelMetaclass):
    """``Request(...)`` from Python: field names are mapped to the wire names requests validate by,
    and a bad value raises :class:`InvalidInput` (the CLI and the API name fields the same way).
    Only calls of the class come here: FastAPI and ``model_validate`` validate wire names alone."""

    def __call__(cls, *args: Any, **data: Any) -> Any:
        fields = cls.model_fields  # type: ignore[attr-defined]
        try:
            return super().__call__(
                *args, **{(fields[k].alias or k) if k in fields else k: v for k, v in data.items()}
            )
        except ValidationError as exc:
            raise invalid(exc) from None


class Request(BaseModel, metaclass=_Constructor):
    """Base of every request declaration.

    Validators raise :class:`~trajforge.errors.InvalidInput` (not ``ValueError``) on purpose: it
    passes through pydantic untouched, so the first error is what the caller sees, naming the
    wire field, from the library, the CLI and the API alike (the app turns it into a 422 or 400).
    """

    # Wire names only when validating: an HTTP body or query with ``min_reward`` is refused, as it
    # always was. (Python callers use field names; the constructor maps them.)
    model_config = ConfigDict(
        extra="forbid",
        validate_by_alias=True,
        validate_by_name=False,
        alias_generator=to_camel,
        strict=True,
    )

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, trusted: bool = True) -> Self:
        """From a wire mapping (camelCase keys): the CLI's options, a stored request. ``trusted``:
        it comes from this machine's user, not from HTTP."""
        try:
            return cls.model_validate(data, context=TRUSTED if trusted else None)
        except ValidationError as exc:
            raise invalid(exc) from None

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Self:
        """From a stored request, which may carry provenance beside the fields (a job queued by
        auto-training records why): those keys are not options and are left out."""
        known = set(cls.aliases().values())
        return cls.parse({k: v for k, v in data.items() if k in known})

    def to_wire(self) -> dict[str, Any]:
        """camelCase, the fields that are set to something."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def given(self) -> dict[str, Any]:
        """camelCase, the fields the caller set (what a stored request records)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Wire name of each field."""
        return {name: f.alias or name for name, f in cls.model_fields.items()}
