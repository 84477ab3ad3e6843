"""The listing commands: ``ctxrl plugins`` (what is installed and what each plugin provides),
``ctxrl envs`` (every environment and its context features) and ``ctxrl options`` (a plugin's
options with their defaults), as rich tables or JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ctxrl.cli_common import (
    _host,
    _print_tables,
    _warn_failed,
    _warn_unmatched_controls,
    json_option,
)
from ctxrl.errors import CtxrlError
from ctxrl.plugins import Host
from ctxrl.registry import Kind


# ------------------------------------------------------------------------------- plugins
@click.command()
@json_option("Print JSON instead of a table.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List plugins: version, status, hooks implemented and what each provides."""
    host = _host(ctx)
    _warn_unmatched_controls(host)  # its table shows failures itself
    infos = list(host.plugins.values())
    if as_json:
        click.echo(json.dumps([p.to_json() for p in infos], indent=2))
        return
    _print_tables([plugins_table(host)])


def plugins_table(host: Host) -> Table:
    """The plugins as a table; the names users type (plugins and what they provide) are never
    cut short, other columns wrap."""
    infos = list(host.plugins.values())
    provided = [n for p in infos for names in p.provides.values() for n in names]
    table = Table(title="ctxrl plugins", show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column("name", no_wrap=True, min_width=max((len(p.name) for p in infos), default=4))
    table.add_column("distribution", overflow="fold")
    table.add_column("version", overflow="fold")
    table.add_column("status", overflow="fold")
    table.add_column("provides", min_width=max(map(len, provided), default=8) + 1)
    table.add_column("hooks", overflow="fold")
    for p in infos:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in p.provides.items())
        status = p.status if p.error is None else f"{p.status}: {p.error}"
        cells = (p.name, p.distribution or "-", p.version or "-", status, provides)
        hooks = ", ".join(h.removeprefix("ctxrl_") for h in p.hooks)
        # escaped: a plugin's text is not rich markup ("pip install 'ctxrl[box2d]'")
        table.add_row(*map(escape, cells), hooks)
    return table


# ---------------------------------------------------------------------------------- envs
@click.command()
@json_option("Print JSON instead of tables.")
@click.pass_context
def envs(ctx: click.Context, as_json: bool) -> None:
    """List environments with their context features (default, bounds, scale, unit,
    description)."""
    host = _host(ctx)
    _warn_failed(host)
    specs = host.registry.envs()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "provider": host.registry.provider("env", e.name),
                        "gym_id": e.gym_id,
                        "action_space": e.action_space,
                        "return_bounds": list(e.return_bounds),
                        "max_episode_steps": e.max_episode_steps,
                        "batched": e.make_batched is not None,
                        "description": e.description,
                        "features": e.context_space.to_json(),
                    }
                    for e in specs
                ],
                indent=2,
            )
        )
        return
    _print_tables(envs_tables(host))


def envs_tables(host: Host) -> list[Table]:
    """One table per env: its context features; feature names are never cut short."""
    tables = []
    for e in host.registry.envs():
        table = Table(
            title=f"{e.name}  ({e.gym_id or 'no gym id'}; {e.action_space} actions; "
            f"returns {list(e.return_bounds)}; batched twin: "
            f"{'yes' if e.make_batched else 'no'})",
            title_justify="left",
            # no outer edge and shared padding: 80 columns hold every env's widest row
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
        )
        names = [f.name for f in e.context_space.features]
        table.add_column("feature", no_wrap=True, min_width=max(map(len, names), default=7))
        for column in ("default", "lower", "upper", "scale", "unit"):
            table.add_column(column, overflow="fold")
        table.add_column("description")  # wraps between words
        for f in e.context_space.features:
            table.add_row(
                escape(f.name),
                f"{f.default:g}",
                bound_text(f.lower, upper=False),
                bound_text(f.upper, upper=True),
                f"{f.scale}, integer" if f.integer else f.scale,
                escape(f.unit),
                escape(f.description),
            )
        tables.append(table)
    return tables


def bound_text(value: float, *, upper: bool) -> str:
    """A feature's bound in 6 significant digits, rounded into the range (an upper bound
    down, a lower one up) where plain rounding would leave it: Acrobot's ``max_vel_1`` bound
    4 pi showed as 125.664, a value the feature refuses."""
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

    text = f"{value:g}"
    if math.isfinite(value) and (float(text) > value if upper else float(text) < value):
        exact = Decimal(repr(value))
        step = Decimal(1).scaleb(exact.adjusted() - 5)
        text = f"{float(exact.quantize(step, rounding=ROUND_FLOOR if upper else ROUND_CEILING)):g}"
    return text


# ------------------------------------------------------------------------------- options
OPTION_KINDS: dict[str, Kind] = {
    "strategy": "strategy",
    "intervention": "intervention",
    "transfer": "transfer_method",
    "algorithm": "algorithm",
    "executor": "executor",
}
"""``ctxrl options KIND``: the kinds of plugin whose options a config or study sets."""

EXECUTOR_FIELDS = ("workers", "timeout_s", "log_dir")
"""An executor factory's arguments that a config sets outside its ``options`` (``workers``,
``timeout_s``) or the sweep does (``log_dir``): not listed as options."""


@click.command()
@click.argument("kind", type=click.Choice(list(OPTION_KINDS)))
@click.argument("name")
@click.option(
    "--preset", help="An algorithm's preset (its hyperparameters as a config naming it gets them)."
)
@click.option(
    "--set",
    "given",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option's value (YAML), e.g. what a required option or a mode is: the others are "
    "listed as they resolve beside it.",
)
@json_option("Print JSON instead of a table.")
@click.pass_context
def options(
    ctx: click.Context,
    kind: str,
    name: str,
    preset: str | None,
    given: tuple[str, ...],
    as_json: bool,
) -> None:
    """List the options of plugin NAME of KIND with the values they run with when a config
    does not give them (an algorithm's: every hyperparameter), as a sweep's plan.yaml and
    --dry-run record them; `null`: nothing decides it (an option another option makes
    unused, or one left to the algorithm), or, beside a "(required)" option, what the value of
    another option decides."""
    from ctxrl.config import apply_overrides, merge_params
    from ctxrl.options import option_defaults, option_names
    from ctxrl.resolution import resolved_hyperparameters, resolved_options

    registry = _host(ctx).registry
    registered = OPTION_KINDS[kind]
    spec = registry.get(registered, name)  # an unknown name: the registry's error
    if preset is not None and registered != "algorithm":
        raise CtxrlError(f"--preset: a {kind} has no presets; presets are an algorithm's")
    settings: dict[str, Any] = apply_overrides({}, given)  # as `ctxrl sweep --set` reads them
    required: list[str] = []  # options without a default, not given
    if registered == "algorithm":
        presets = spec.presets
        if preset is not None and preset not in presets:
            known = ", ".join(sorted(presets)) or "none"
            raise CtxrlError(f"--preset: {name} has no preset {preset!r}; its presets: {known}")
        params = merge_params(dict(presets[preset]) if preset is not None else {}, settings)
        values = resolved_hyperparameters(spec.factory(params, device="cpu"), params)
    elif registered == "executor":  # built only by a sweep: its signature's defaults
        fields = sorted(set(settings) & set(EXECUTOR_FIELDS))
        if fields:
            raise CtxrlError(
                f"--set: {fields[0]} is a field of a config's executor (executor.{fields[0]}), "
                "not one of its options"
            )
        unknown = sorted(set(settings) - option_names(spec.factory))
        if unknown:
            raise CtxrlError(f"--set: executor {name!r} has no option {unknown[0]!r}")
        defaults = {**option_defaults(spec.factory), **settings}
        values = {k: v for k, v in defaults.items() if k not in EXECUTOR_FIELDS}
        values = json.loads(json.dumps(values, default=str))
    else:
        factory = spec.factory
        named = option_names(factory)
        required = sorted(named - set(option_defaults(factory)) - set(settings))
        unknown = sorted(set(settings) - named)
        if required and unknown:
            raise CtxrlError(
                f"--set: {kind} {name!r} has no option {unknown[0]!r}; it takes "
                f"{', '.join(sorted(named))}"
            )
        if required:  # nothing to build the plugin with: its signature's defaults
            values = {
                **dict.fromkeys(required),
                **json.loads(json.dumps({**option_defaults(factory), **settings}, default=str)),
            }
        else:  # built, so that what another option decides is said as it runs
            values = resolved_options(registry, registered, name, settings)[name]
    if as_json:
        listing = {"kind": kind, "name": name, "options": values, "required": required}
        click.echo(json.dumps(listing, indent=2))
        return
    table = Table(
        title=f"{kind} {name}" + (f", preset {preset}" if preset else ""),
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("option", no_wrap=True, min_width=max(map(len, values), default=6))
    table.add_column("value", overflow="fold")
    for option, value in values.items():
        shown = "(required)" if option in required else json.dumps(value)
        table.add_row(escape(option), escape(shown))
    _print_tables([table])
