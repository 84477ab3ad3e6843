"""Checks for plugin options (a strategy's, an intervention's, a transfer method's): a value
of the wrong kind is a :class:`~ctxrl.errors.ConfigError` naming the option, before any work.

YAML reads ``true`` as a boolean, which Python would take for the count 1 or the number 1.0,
and ``.nan`` / ``.inf`` as floats that pass every comparison a range check makes (NaN) or
none (inf); ``bool("false")`` is True. These helpers refuse all of that."""

from __future__ import annotations

import math
from typing import Any

from ctxrl.errors import ConfigError


def refuse_bool(value: Any) -> Any:
    """A pydantic ``BeforeValidator`` for counts: YAML's ``true`` is not the number 1 (a
    lax ``int`` field takes it as 1; ``5e5`` stays a valid count)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


def _whole(value: Any) -> bool:
    """Whether ``value`` is a whole number (an int, or a finite float without a fraction),
    not a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value == int(value))


def count_option(value: Any, option: str, *, minimum: int = 1) -> int:
    """``value`` as a whole number ``>= minimum`` (``option`` names it in the error, e.g.
    ``reset: every``); a boolean or a fraction is not a count."""
    if not _whole(value):
        raise ConfigError(f"{option} must be a whole number, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{option} must be >= {minimum}, got {value!r}")
    return int(value)


def steps_option(value: Any, option: str) -> int:
    """``value`` as a number of env steps: a whole number >= 1."""
    if not _whole(value):
        raise ConfigError(f"{option} must be a whole number of env steps, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{option} must be > 0, got {value!r}")
    return int(value)


def number_option(value: Any, option: str, *, positive: bool = True) -> float:
    """``value`` as a finite number, ``> 0`` (``positive``) or ``>= 0``."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{option} must be a number {bound}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigError(f"{option} must be a finite number {bound}, got {value!r}")
    return number


def flag_option(value: Any, option: str) -> bool:
    """``value`` as a boolean: only ``true`` or ``false`` (``bool("false")`` is True)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{option} must be true or false, got {value!r}")
    return value


def names_option(value: Any, option: str) -> list[str]:
    """``value`` as a list of names; one name given alone is a list of one (a string is not
    split into its characters)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{option} must be a name or a list of names, got {value!r}")
    return list(value)


__all__ = [
    "count_option",
    "flag_option",
    "names_option",
    "number_option",
    "refuse_bool",
    "steps_option",
]
