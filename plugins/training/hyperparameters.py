"""The types and the check of the batched algorithms' hyperparameters.

An algorithm's hyperparameters are a frozen dataclass whose fields are annotated with the types
here (:data:`Count`, :data:`Rate`, :data:`Fraction`, :data:`Weight`, :data:`Finite`,
:data:`Steps`, :data:`Widths`); :func:`hyperparameters` builds one from a config's
``algorithm.params``, checking every value against its field's type before anything trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from ctxrl.errors import ConfigError
from ctxrl.field_errors import field_path
from ctxrl.options import refuse_bool

ConfigT = TypeVar("ConfigT")


# A boolean is not a count or a rate (YAML's `true` would be 1), and rates are finite.
Count = Annotated[int, BeforeValidator(refuse_bool), Field(ge=1)]
"""A hyperparameter that counts something (environments, steps, epochs): at least 1."""
Rate = Annotated[float, Field(gt=0, strict=True, allow_inf_nan=False)]
"""A positive, finite rate or scale (learning rate, clipping threshold)."""
Fraction = Annotated[float, Field(ge=0, le=1, strict=True)]
"""A value in [0, 1] (discount, GAE lambda, exploration probabilities)."""
Weight = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]
"""A non-negative, finite loss weight."""
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""Any finite number (an initial log standard deviation)."""
Steps = Annotated[int, BeforeValidator(refuse_bool), Field(ge=0)]
"""A number of env steps that may be 0 (learning starts)."""


def _widths(value: object) -> object:
    widths = value if isinstance(value, tuple) else (value,)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(
            "one width for every hidden layer (64) or one per layer ([64, 32]), whole numbers >= 1"
        )
    return value


Widths = Annotated[int | tuple[int, ...], BeforeValidator(_widths)]
"""Hidden-layer widths: one for every layer, or one per layer."""


def hyperparameters(
    config_class: type[ConfigT], params: Mapping[str, Any], algorithm: str
) -> ConfigT:
    """A frozen hyperparameter dataclass from config ``params``, each value checked against
    its field's type (``"abc"`` for a learning rate is an error naming the field, before
    anything trains); unknown keys are an error that names them and lists the known ones.
    Lists become tuples (the dataclasses are hashable), and a boolean given for a text option
    becomes ``on`` / ``off``: YAML reads an unquoted ``compile: off`` as False."""
    known = {f.name for f in fields(config_class)}  # type: ignore[arg-type]
    text = {f.name for f in fields(config_class) if f.type in ("str", str)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"algorithm.params: {algorithm} has no hyperparameter "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    for name in text & values.keys():
        if isinstance(values[name], bool):
            values[name] = "on" if values[name] else "off"
    try:
        return TypeAdapter(config_class).validate_python(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{field_path(e['loc'])}: {e['msg']} (got {e['input']!r})" for e in exc.errors()
        )
        raise ConfigError(f"algorithm.params: {algorithm}: {problems}") from None
