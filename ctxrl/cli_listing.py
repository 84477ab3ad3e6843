"""The listing commands: ``ctxrl plugins`` (what is installed and what each plugin provides)
and ``ctxrl envs`` (every environment and its context features), as rich tables or JSON.
"""

from __future__ import annotations

import json
import math

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
from ctxrl.plugins import Host


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
