"""What a sweep config resolves to with the installed plugins, beyond what it says: the grid's
values, every hyperparameter with its defaults, each plugin option with its default
(:func:`resolved_values`). ``--dry-run`` prints it, a run directory's plan.yaml records it and
every job carries it; a resume or a worker that resolves the same config otherwise is refused,
naming the values (:func:`resolved_differences`), since the plan hash covers the config only as
written. The transfer studies keep the same kind of record of their algorithm and interventions
(:func:`ctxrl_plugins.transfer.studies.open_run_dir`)."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ctxrl.errors import CtxrlError
from ctxrl.options import check_options, option_defaults

if TYPE_CHECKING:
    from ctxrl.config import SweepPlan
    from ctxrl.context import ContextGrid
    from ctxrl.registry import Kind, Registry
    from ctxrl.sweep_config import SweepConfig


def resolved_hyperparameters(algorithm: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter ``algorithm`` (a factory's object) trains with, as plain JSON
    values: its ``hyperparameters()`` where it has that method (the built-in algorithms:
    their defaults with ``params`` on top), else ``params`` as given (preset and config)."""
    method = getattr(algorithm, "hyperparameters", None)
    values = method() if callable(method) else dict(params)
    resolved: dict[str, Any] = json.loads(json.dumps(values, default=str))
    return resolved


def resolved_values(
    config: SweepConfig,
    registry: Registry,
    grid: ContextGrid,
    built: Any,
    params: Mapping[str, Any],
    context_defaults: Mapping[str, float],
) -> dict[str, Any]:
    """What ``config`` resolves to with the installed plugins, as plain JSON values: each
    feature's grid values (6 significant digits), the env's defaults of every context
    feature (``context_defaults``: what the features the grid leaves out train at; 6
    significant digits), every hyperparameter the algorithm object
    ``built`` trains with (:func:`resolved_hyperparameters`; ``params``: the preset and the
    config's ``algorithm.params``, :func:`ctxrl.config.algorithm_params`), and the options of each
    intervention, the transfer method and (``mode: select``) the strategy, their factories'
    defaults with the config's own on top.

    ``--dry-run`` prints it; a run directory's plan.yaml records it. The plan hash covers the
    config as written; this covers what the plugins make of it, so that a run directory
    resumed by a ctxrl whose defaults changed is refused rather than mixed
    (:func:`ctxrl.sweep.prepare_run_dir`)."""
    resolved: dict[str, Any] = {
        FORMAT_KEY: RESOLVED_FORMAT,
        "grid": {
            feature: [float(f"{v:.6g}") for v in values]
            for feature, values in zip(grid.features, grid.axis_values, strict=True)
        },
        "context_defaults": {name: float(f"{v:.6g}") for name, v in context_defaults.items()},
        "hyperparameters": resolved_hyperparameters(built, params),
    }
    used: list[tuple[str, Kind, str, dict[str, Any]]] = [
        ("interventions", "intervention", entry.name, entry.options)
        for entry in config.algorithm.interventions
    ]
    if config.transfer.name != "zero-shot":
        used.append(("transfer", "transfer_method", config.transfer.name, config.transfer.options))
    if config.mode == "select":
        used.append(("strategy", "strategy", config.strategy.name, config.strategy.options))
    for field, kind, name, given in used:
        entry = resolved_options(registry, kind, name, given)
        if field == "interventions":
            resolved.setdefault("interventions", []).append(entry)
        else:
            resolved[f"{field} options"] = entry
    return resolved


def resolved_options(
    registry: Registry, kind: Kind, name: str, given: Mapping[str, Any]
) -> dict[str, Any]:
    """``{name: options}``: the options plugin ``name`` of ``kind`` runs with, as plain JSON
    values: its factory's defaults with the ``given`` ones on top, then what the built object
    reports through its optional ``resolved_options()`` method (a value another option
    decides, where the signature's default is ``None``: shrink-perturb's ``shrink`` by its
    ``when``; a default a wrapper sets for what it forwards: sd-mbtl's GP branch). An option
    nothing decides stays ``None`` (``null`` in the record)."""
    factory = registry.get(kind, name).factory
    options = {**option_defaults(factory), **given}
    built = check_options(factory, given, f"{kind.replace('_', ' ')} {name!r}")
    method = getattr(built, "resolved_options", None)
    if callable(method):
        options.update({key: value for key, value in method().items() if key in options})
    resolved: dict[str, Any] = json.loads(json.dumps({name: options}, default=str))
    return resolved


RESOLVED_KEY = "resolved"
"""plan.yaml's record of what the config resolved to when the runs trained: the grid, every
hyperparameter and plugin option with its default (:func:`resolved_values`; the plan hash
covers the config as written). Jobs carry it too, so that a worker checks it resolves alike."""

FORMAT_KEY, RESOLVED_FORMAT = "format", 2
"""A record's format. Records without it (format 1, the first sweeps that kept one) held
``null`` for an option another option decides and ``mbtl-gp``'s defaults for ``sd-mbtl``'s
GP branch, since plugins did not yet report the options they run with: they are compared
without those (:func:`check_resolved_alike`)."""


def check_resolved_alike(
    recorded: Any, resolved: Mapping[str, Any] | None, what: str, remedy: str
) -> None:
    """Refuse a plan that resolves to ``resolved`` when ``recorded`` (a record of
    :func:`resolved_values`, or a study's, read from plan.yaml or a job) differs, naming each
    value that differs with both: a :class:`CtxrlError` saying ``what`` differs and the
    ``remedy``. Nothing to compare (no record: a plan.yaml from before it; a plan resolved
    without training) passes."""
    if not isinstance(recorded, dict) or resolved is None:
        return
    if FORMAT_KEY not in recorded:  # format 1: what it could not know is not compared
        recorded = {
            key: _without_nulls(value)
            for key, value in recorded.items()
            if key != "strategy options"
        }
    differing = resolved_differences(recorded, resolved)
    if differing:
        raise CtxrlError(f"{what} ({'; '.join(differing)}): {remedy}")


def check_job_resolution(job: dict[str, Any], plan: SweepPlan) -> None:
    """Refuse a job (a run, a shard) whose worker resolves the sweep's config otherwise than
    the sweep did (another installation on a Ray node or in a worker's environment), naming
    the values, before it trains."""
    check_resolved_alike(
        job.get(RESOLVED_KEY),
        plan.resolved,
        f"this worker ({socket.gethostname()}) resolves the sweep's config otherwise than the "
        "sweep did",
        "install the same versions on every worker",
    )


def resolved_differences(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Where two records of :func:`resolved_values` differ, as ``"path: THEN there, NOW
    now"`` lines (dotted paths, the interventions by position: ``interventions.0.redo.tau``).
    Values compare as values (``10`` equals ``10.0``, NaN equals NaN; a list or mapping whole
    inside an option); a value on one side only (an option added or removed since) is not
    compared, unless the other side holds a group of values under its name."""
    old, new = dotted_leaves(then), dotted_leaves(now)
    differing = {
        name for name in old.keys() & new.keys() if _comparable(old[name]) != _comparable(new[name])
    }
    for mine, other in ((old, new), (new, old)):  # a value here, a group of values there
        differing |= {name for name in mine.keys() - other.keys() if _holds_group(other, name)}

    def shown(leaves: dict[str, Any], name: str) -> str:
        if name in leaves:
            return json.dumps(leaves[name], sort_keys=True, default=str)
        return json.dumps(
            {k[len(name) + 1 :]: v for k, v in leaves.items() if k.startswith(f"{name}.")},
            sort_keys=True,
            default=str,
        )

    return [f"{n}: {shown(old, n)} there, {shown(new, n)} now" for n in sorted(differing)]


def merge_resolved(then: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """``now``, with the values ``then`` has and ``now`` does not (an option this version
    dropped): kept in the record, so that a later version bringing it back with another
    default is still compared with what trained the runs."""
    merged = dict(now)
    for key, value in then.items():
        if key not in now:
            merged[key] = value
        elif isinstance(value, Mapping) and isinstance(now[key], Mapping):
            merged[key] = merge_resolved(value, now[key])
        elif key == "interventions" and isinstance(value, list) and isinstance(now[key], list):
            merged[key] = [
                merge_resolved(a, b) if isinstance(a, Mapping) and isinstance(b, Mapping) else b
                for a, b in zip(value, now[key], strict=False)
            ] + list(now[key][len(value) :])
    return merged


def dotted_leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """``data``'s values by dotted path (``algorithm.params.gamma``): mappings are opened (an
    empty one is a value), and the top-level ``interventions`` list of a record of
    :func:`resolved_values` by position; any other list is one value."""
    if isinstance(data, Mapping) and data:
        items: list[tuple[Any, Any]] = list(data.items())
    elif prefix == "interventions." and isinstance(data, list) and data:
        items = list(enumerate(data))
    else:
        return {prefix[:-1]: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(dotted_leaves(value, f"{prefix}{key}."))
    return out


def _without_nulls(data: Any) -> Any:
    """``data`` without its ``None`` values, in mappings and in lists of mappings (the
    interventions), and without the mappings that leaves empty, for comparing a record of
    format 1."""
    if isinstance(data, Mapping):
        kept = {k: _without_nulls(v) for k, v in data.items() if v is not None}
        return {k: v for k, v in kept.items() if v != {} or data[k] == {}}
    if isinstance(data, list):
        return [_without_nulls(v) if isinstance(v, Mapping) else v for v in data]
    return data


def _holds_group(leaves: Mapping[str, Any], name: str) -> bool:
    return any(key.startswith(f"{name}.") for key in leaves)


def _comparable(value: Any) -> str:
    """``value`` as text that is equal for equal values: numbers as floats (not booleans),
    NaN as one text, mappings with sorted keys."""

    def canonical(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int | float):
            return "nan" if math.isnan(v) else float(v)
        if isinstance(v, Mapping):
            return {str(k): canonical(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [canonical(x) for x in v]
        return str(v)

    return json.dumps(canonical(value), sort_keys=True)
