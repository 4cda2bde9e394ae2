"""CLI options derived from the request declarations (:mod:`trajforge.requests`).

``@request_options(Model, "req")`` adds one option per field of ``Model`` to a command (nested
request models are flattened) and hands the command a validated ``req``. The flag is the field's
``--kebab-name`` unless its :class:`~trajforge.requests.Flag` names others; help is the field's
description; a bad value is refused by the model and the error names the flag. So a field added to
a request reaches the API and the CLI together (tests/test_parity.py checks both).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, cast

import typer
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticUndefined

from trajforge.cli.common import current_flags, fail
from trajforge.errors import InvalidInput, TrajforgeError
from trajforge.requests import Flag, Request, flag_of

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Spec:
    """One CLI option of one request field."""

    param: str
    """The Python parameter name Typer passes it as."""
    path: tuple[str, ...]
    """Field names from the outer model in (snake_case)."""
    wire: str
    """The wire path (``privacy.extraPatterns``), what errors name."""
    flags: tuple[str, ...]
    kind: str
    """``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict``."""
    cli_type: Any
    help: str
    metavar: str | None
    default: Any

    @property
    def flag(self) -> str:
        return self.flags[0].split("/")[0]


def _base(annotation: Any) -> Any:
    """The annotation without ``None`` and ``Annotated``."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arms) == 1:
            return _base(arms[0])
        for kind in (str, int):  # a date is int | str | datetime on input: take it as typed text
            if kind in arms:
                return kind
        return _base(arms[0])
    return annotation


def _kind(annotation: Any) -> tuple[str, Any]:
    base = _base(annotation)
    origin = typing.get_origin(base)
    if origin is Literal:
        return "str", str
    if origin in (list, tuple, set, frozenset):
        return "list", list[str]
    if origin is dict:
        return "dict", list[str]
    if base in (bool, int, float, str):
        return base.__name__, base
    return "str", str


def _kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


def specs(
    model: type[BaseModel], *, exclude: tuple[str, ...] = (), _path: tuple[str, ...] = (), _wire: str = ""
) -> list[Spec]:
    """The options of ``model``'s fields (nested request models flattened), in declaration order."""
    out: list[Spec] = []
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        flag = flag_of(model, name) or Flag()
        wire = _wire + (field.alias or name)
        base = _base(field.annotation)
        if isinstance(base, type) and issubclass(base, BaseModel):
            out.extend(specs(base, _path=(*_path, name), _wire=wire + "."))
            continue
        kind, cli_type = _kind(field.annotation)
        if kind in ("int", "float") and any(isinstance(m, BeforeValidator) for m in field.metadata):
            kind, cli_type = "str", str  # the field parses text itself (a date: ISO or epoch ms)
        names = flag.names or (_kebab(name),)
        if kind == "bool" and "/" not in names[0]:
            names = (f"{names[0]}/--no-{names[0][2:]}", *names[1:])
        if kind != "bool" and _kebab(name) not in names:
            names = (*names, _kebab(name))  # the derived name always works too
        shown = flag.default if flag.default is not None else field.default
        help_text = flag.help or field.description or ""
        if shown not in (None, PydanticUndefined, [], {}) and kind != "bool":
            help_text += f" (default: {shown})"
        if kind == "dict":
            help_text += " (KEY=VALUE, repeatable)"
        elif kind == "list" and "repeatable" not in help_text:
            help_text += " (repeatable)"
        out.append(
            Spec(
                param="opt_" + "__".join((*_path, name)),
                path=(*_path, name),
                wire=wire,
                flags=names,
                kind=kind,
                cli_type=cli_type | None,
                help=help_text,
                metavar=flag.metavar,
                default=flag.default,
            )
        )
    return out


def _pairs(values: list[str], spec: Spec) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise InvalidInput(f"expected KEY=VALUE, got {v!r}", spec.wire)
        out[key] = value
    return out


def _given(all_specs: list[Spec], values: dict[str, Any]) -> dict[str, Any]:
    """The nested dict of the options that were given (or have a CLI default)."""
    data: dict[str, Any] = {}
    for s in all_specs:
        value = values.get(s.param)
        if value is None or value == []:
            value = s.default
        if value is None:
            continue
        if s.kind == "dict":
            value = _pairs(value, s)
        *outer, name = s.wire.split(".")  # wire names: requests validate by them
        node = data
        for part in outer:
            node = node.setdefault(part, {})
        node[name] = value
    return data


def merged_specs(models: Sequence[type[Request]], exclude: tuple[str, ...] = ()) -> list[Spec]:
    """The options of several request types (the kinds of a union), one per wire field: a field
    the kinds share is one option, its help the kinds' helps when they differ."""
    merged: dict[str, Spec] = {}
    for model in models:
        for spec in specs(model, exclude=exclude):
            seen = merged.get(spec.wire)
            if seen is None:
                merged[spec.wire] = spec
                continue
            for what in ("kind", "flags", "metavar", "default"):
                if getattr(seen, what) != getattr(spec, what):
                    # One option serves both kinds: they must agree on everything but the help.
                    raise TypeError(f"{spec.wire}: the request kinds differ in their option's {what}")
            if spec.help and spec.help not in seen.help:
                merged[spec.wire] = dataclasses.replace(seen, help=f"{seen.help} | {spec.help}")
    return list(merged.values())


def request_options(
    model: type[Request] | Sequence[type[Request]],
    param: str,
    *,
    exclude: tuple[str, ...] = (),
    parse: Callable[[dict[str, Any]], Any] | None = None,
) -> Callable[[F], F]:
    """Give the decorated command one option per field of ``model`` (or of each of several models,
    then ``parse`` picks and validates one) and call it with ``param=<the validated request>``."""
    models = [model] if isinstance(model, type) else list(model)
    all_specs = merged_specs(models, exclude)
    validate = parse or models[0].parse

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            for p in sig.parameters.values()
            if p.name != param
        ]
        added = [
            inspect.Parameter(
                s.param,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    s.cli_type, typer.Option(*s.flags, help=s.help, metavar=s.metavar, show_default=False)
                ],
            )
            for s in all_specs
        ]
        flags = {s.wire: s.flag for s in all_specs}

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            token = current_flags.set({**(current_flags.get() or {}), **flags})
            try:
                values = {s.param: kwargs.pop(s.param, None) for s in all_specs}
                try:
                    data = _given(all_specs, values)
                    request = validate(data)
                except TrajforgeError as exc:
                    fail(exc)
                kwargs[param] = request
                return fn(**kwargs)
            finally:
                current_flags.reset(token)

        params = own + added
        # Typer reads the signature and the annotations: the command's own parameters, then one
        # option per request field.
        setattr(command, "__signature__", sig.replace(parameters=params))  # noqa: B010
        command.__annotations__ = {p.name: p.annotation for p in params}
        setattr(command, "__request_specs__", all_specs)  # noqa: B010
        delattr(command, "__wrapped__")
        return cast(F, command)

    return decorate
