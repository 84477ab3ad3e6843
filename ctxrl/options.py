"""Checks for plugin options (a strategy's, an intervention's, a transfer method's): a value
of the wrong kind, or an option a plugin does not take (:func:`check_options`), is a
:class:`~ctxrl.errors.ConfigError` naming the option, before any work.

YAML reads ``true`` as a boolean, which Python would take for the count 1 or the number 1.0,
and ``.nan`` / ``.inf`` as floats that pass every comparison a range check makes (NaN) or
none (inf); ``bool("false")`` is True. These helpers refuse all of that."""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ctxrl.errors import ConfigError, CtxrlError


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


SEED_LIMIT = 2**61
"""Seeds and seed offsets are below this: random streams are int64 tensors, and a seed plus an
offset plus the salts and indices added to it (a student's target index) must stay below
2**63 (past it the error came after the sources had trained)."""


def count_option(value: Any, option: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as a whole number ``>= minimum`` (and ``< maximum`` where given; ``option``
    names it in the error, e.g. ``reset: every``); a boolean or a fraction is not a count."""
    if not _whole(value):
        raise ConfigError(f"{option} must be a whole number, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{option} must be >= {minimum}, got {value!r}")
    if maximum is not None and int(value) >= maximum:
        raise ConfigError(f"{option} must be < {maximum}, got {value!r}")
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


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (``float(text)`` succeeds: ``1e-3``, ``nan``, ``inf``
    included)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    "SEED_LIMIT",
    "count_option",
    "flag_option",
    "names_option",
    "number_option",
    "refuse_bool",
    "steps_option",
]


UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '([^']+)'")
"""Finds the option named in Python's ``TypeError`` for a keyword a callable does not take."""
MISSING_ARGUMENTS = re.compile(
    r"missing \d+ required (?:positional |keyword-only )?arguments?: (.+)$"
)


def check_options(factory: Callable[..., Any], options: Mapping[str, Any], where: str) -> Any:
    """Build ``factory(**options)`` once, so that an option the plugin does not take or a value
    it refuses is a :class:`ConfigError` that starts with ``where`` (the field, e.g.
    ``strategy.options: 'mbtl-gp'``) and names the option, before any work; returns what was
    built."""
    try:
        return factory(**options)
    except TypeError as exc:
        match = UNEXPECTED_KEYWORD.search(str(exc))
        missing = MISSING_ARGUMENTS.search(str(exc))
        if match is None and missing is not None:
            raise ConfigError(f"{where}: the option {missing.group(1)} must be given") from None
        if match is None:
            raise ConfigError(f"{where}: {exc}") from None
        takes = option_names(factory)
        close = difflib.get_close_matches(match.group(1), sorted(takes), n=1)
        meant = f" (did you mean {close[0]!r}?)" if close else ""
        listed = f"; it takes {', '.join(sorted(takes))}" if takes else ""
        if not takes and _takes_nothing(factory):
            listed = "; it takes no options"
        raise ConfigError(f"{where}: no option {match.group(1)!r}{meant}{listed}") from None
    except (ValueError, CtxrlError) as exc:
        raise ConfigError(f"{where}: {without_repeated_label(str(exc), where)}") from None
    except Exception as exc:  # the plugin's own bug (a KeyError, a RuntimeError): where it is
        raise ConfigError(
            f"{where}: the plugin's factory failed with {type(exc).__name__}: {exc}"
        ) from exc


_PLUGIN_LABEL = re.compile(r"(?:[a-z][\w ]* )?('[^']+'): ")
"""A plugin's label at the start of its own message: ``strategy 'mbtl-gp': ``."""


def without_repeated_label(message: str, where: str) -> str:
    """``message`` without its leading plugin label where ``where`` already names the plugin
    (``strategy 'mbtl-gp': ...`` or ``distill: ...`` under ``--option: strategy 'mbtl-gp'``,
    ``strategy.options: 'mbtl-gp'`` or ``transfer.options: 'distill'``)."""
    label = _PLUGIN_LABEL.match(message)
    if label is not None and where.endswith(label.group(1)):
        return message[label.end() :]
    named = re.search(r"'([^']+)'$", where)
    if named is not None and message.startswith(f"{named.group(1)}: "):
        return message[len(named.group(1)) + 2 :]
    return message


def option_names(factory: Callable[..., Any]) -> set[str]:
    """The keyword options ``factory`` names (empty when it takes ``**options`` only), with
    those of the factory it passes the rest to (its ``forwards_options_to``, if any)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    names = {
        p.name
        for p in params
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    forwarded = getattr(factory, "forwards_options_to", None)
    return names | option_names(forwarded) if callable(forwarded) else names


def option_defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword options ``factory`` names with their default values, those of the factory
    it forwards the rest to included (where both name an option, ``factory``'s default); an
    option without a default is left out, and so is everything behind a bare ``**options``."""
    forwarded = getattr(factory, "forwards_options_to", None)
    defaults = option_defaults(forwarded) if callable(forwarded) else {}
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return defaults
    for p in params:
        if p.default is not inspect.Parameter.empty and p.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            defaults[p.name] = p.default
    return defaults


def _takes_nothing(factory: Callable[..., Any]) -> bool:
    """Whether ``factory``'s signature is known and has no parameters at all (not even
    ``**options``)."""
    try:
        return not inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def is_device_name(device: object) -> bool:
    """Whether ``device`` is a device ctxrl trains on: ``cpu``, ``cuda``, ``cuda:N`` or
    ``auto`` (a GPU when there is one)."""
    return isinstance(device, str) and (
        device in ("cpu", "cuda", "auto") or (device.startswith("cuda:") and device[5:].isdigit())
    )


def check_device_name(device: object) -> str:
    """``device`` (a string or a ``torch.device``) as the string of a device ctxrl trains on,
    else a :class:`~ctxrl.errors.ConfigError` on the ``device`` field. Whether a CUDA device
    exists here is :func:`check_device`'s question: reading results a GPU wrote needs none."""
    name = device
    if not isinstance(device, str):
        import torch

        if isinstance(device, torch.device):
            name = str(device)  # cpu, cuda, cuda:1
    if not isinstance(name, str) or not is_device_name(name):
        raise ConfigError(f"device: {device!r} is not cpu, cuda, cuda:N or auto")
    return name


def resolved_device(device: object) -> str:
    """The device ``device`` (checked by :func:`check_device_name`) trains on: ``auto`` is
    ``cuda`` when torch sees a GPU, else ``cpu``; others as they are."""
    name = check_device_name(device)
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: object) -> None:
    """``device`` is one ctxrl trains on and, for a CUDA device, exists here: a CPU-only
    torch, a missing GPU or another name (``mps``, ``tpu``) is named (a
    :class:`~ctxrl.errors.ConfigError` on the ``device`` field) before training, not when the
    first batch is moved. The config checks it before a sweep or study trains, and so do the
    algorithms when they train (the Python API)."""
    device = check_device_name(device)
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.removeprefix("cuda:")) if device.startswith("cuda:") else 0
    if index < count:
        return
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
    else:
        why = f"{count} CUDA device{'s' if count != 1 else ''} visible"
    raise ConfigError(
        f"device: {device!r} is not available ({why}); use device: cpu, or auto to take a "
        "GPU when there is one"
    )
