"""What to say of a config or study file that does not validate: each pydantic error as
``field.path: message (got value)``, and for a misspelled field the field of its section that
was meant (``features.length.nmu: no such field; did you mean 'num'?``), found through dict
values, list items, optional sections and the members of (tagged) unions."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


def validation_problems(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per error of ``exc`` (raised validating ``model``): where, what, and the value
    given (not for a missing field)."""
    problems = []
    for error in exc.errors():
        where = field_path(error["loc"]) or "(top level)"
        got = f" (got {error['input']!r})" if error["type"] != "missing" else ""
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = no_such_field(model, error["loc"])
        problems.append(f"{where}: {message}{got}")
    return problems


def field_path(location: Sequence[int | str]) -> str:
    """A pydantic error's location as the project's messages write a field:
    ``("contexts", 1, "env")`` -> ``contexts[1].env``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def no_such_field(model: type[BaseModel], location: Sequence[int | str]) -> str:
    """What to say of a field at ``location`` that ``model`` does not have (pydantic's
    ``extra_forbidden``): that, and which field of its section was meant, if one is close."""
    fields = _fields_at(model, location[:-1])
    close = difflib.get_close_matches(str(location[-1]), fields, n=1)
    return "no such field" + (f"; did you mean {close[0]!r}?" if close else "")


def _fields_at(model: type[BaseModel], location: Sequence[int | str]) -> list[str]:
    """The field names of the section of ``model`` at ``location`` (``()``: the top level;
    ``("strategy",)``: the strategy's; ``("features", "length")``: a varied feature's;
    ``("algorithm", "interventions", 0)``: an intervention's), or none where it is not a
    section of fields."""
    annotation: Any = _unannotated(model)
    for part in location:
        # pydantic names the member of a union it tried: ("arms", 0, "ArmEntry", "labl")
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [_unannotated(m) for m in typing.get_args(annotation)]
            named = [m for m in members if getattr(m, "__name__", "") == part]
            if named:
                annotation = named[0]
                continue
        section = _section(annotation)
        if section is not None:
            field = section.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            annotation = field.annotation
            continue
        # a mapping's value (named by its key) or a list's item (by its index)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is dict and len(args) == 2:
            annotation = _unannotated(args[1])
        elif origin is list and len(args) == 1:
            annotation = _unannotated(args[0])
        else:
            return []
    section = _section(annotation)
    return [] if section is None else list(section.model_fields)


def _unannotated(annotation: Any) -> Any:
    """``X`` of ``Annotated[X, ...]`` (a tagged union member, a discriminated union)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a config section's annotation (``CurvesConfig | None`` included)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for candidate in (annotation, *(typing.get_args(annotation) if union else ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


__all__ = ["field_path", "no_such_field", "validation_problems"]
