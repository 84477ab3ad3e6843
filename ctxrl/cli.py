"""The ``ctxrl`` command line.

    ctxrl plugins [--json]          what is installed, what each plugin provides
    ctxrl envs [--json]             every environment and its context features
    ctxrl sweep [CONFIG] [--set k=v]  run (or resume) a sweep; no CONFIG = the quickstart
    ctxrl select --matrix FILE ...  replay a strategy offline on a stored matrix
    ctxrl report RUN_DIR            rewrite a run's exports and summary from its store
    ctxrl transfer STUDY CONFIG     run (or resume) a transfer study a plugin provides

Plugins add commands through the ``ctxrl_register_commands`` hook.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ctxrl import __version__
from ctxrl.config import check_output_dir, load_config, locate_run_dir, resolve_plan
from ctxrl.errors import CtxrlError
from ctxrl.matrix import TransferMatrix
from ctxrl.plugins import BLOCK_ENV, DISABLE_AUTOLOAD_ENV, Host, load_host, set_host

out = Console()
err = Console(stderr=True)


def _host(ctx: click.Context) -> Host:
    host: Host = ctx.obj["host"]
    return host


def _warn_failed(host: Host) -> None:
    for info in host.failed():
        err.print(
            f"[yellow]warning:[/] plugin {info.name!r} "
            f"({info.distribution or 'inline'}) failed to load: {info.error}"
        )


class _Root(click.Group):
    """Loads the plugins before resolving sub-commands, so plugin commands show in --help."""

    def _ensure_host(self, ctx: click.Context) -> Host:
        ctx.ensure_object(dict)
        if "host" not in ctx.obj:
            block = ctx.params.get("block") or ()
            if block:  # workers inherit the block list through the environment
                current = os.environ.get(BLOCK_ENV, "")
                os.environ[BLOCK_ENV] = ",".join(p for p in [current, *block] if p)
            if ctx.params.get("no_autoload"):
                os.environ[DISABLE_AUTOLOAD_ENV] = "1"
            host = load_host()
            set_host(host)
            ctx.obj["host"] = host
            host.register_commands(self)
        return ctx.obj["host"]  # type: ignore[no-any-return]

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._ensure_host(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._ensure_host(ctx)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtxrlError as exc:
            # soft wrap: no line breaks inside paths and names a user copies
            err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctxrl")
@click.option(
    "--block",
    multiple=True,
    metavar="NAME",
    help="Do not load this plugin (entry-point or distribution name); repeatable. "
    f"Also read from {BLOCK_ENV}.",
)
@click.option(
    "--no-autoload",
    is_flag=True,
    help=f"Load only plugins allow-listed in CTXRL_PLUGINS (as {DISABLE_AUTOLOAD_ENV}=1).",
)
@click.pass_context
def cli(ctx: click.Context, block: tuple[str, ...], no_autoload: bool) -> None:
    """ctxrl: train on a few source contexts, measure transfer to all of them, and choose
    which contexts are worth training on.

    Start with `ctxrl envs` to see the context families and `ctxrl sweep` to run the
    quickstart sweep (a small CartPole transfer matrix on CPU).
    """
    cli._ensure_host(ctx)


# ------------------------------------------------------------------------------- plugins
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List plugins: version, status, hooks implemented and what each provides."""
    host = _host(ctx)
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
        table.add_row(
            p.name,
            p.distribution or "-",
            p.version or "-",
            status,
            provides,
            ", ".join(h.removeprefix("ctxrl_") for h in p.hooks),
        )
    return table


def _print_tables(tables: list[Table]) -> None:
    """Print ``tables`` to stdout: fitted to a terminal, or, piped, one line per row at
    whatever width that takes (for grep, and nothing is cut short at 80 columns). A table
    that cannot fit the terminal without dropping columns is printed at its full width too,
    for the terminal to wrap."""
    wide = Console(width=100_000, highlight=False, force_terminal=out.is_terminal)
    for table in tables:
        unbounded = out.options.update(max_width=100_000)
        fits = Measurement.get(out, unbounded, table).minimum <= out.width
        (out if out.is_terminal and fits else wide).print(table)


# ---------------------------------------------------------------------------------- envs
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def envs(ctx: click.Context, as_json: bool) -> None:
    """List environments with their context features (default, bounds, scale)."""
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
                f.name,
                f"{f.default:g}",
                f"{f.lower:g}",
                f"{f.upper:g}",
                f.scale,
                f.unit,
                f.description,
            )
        tables.append(table)
    return tables


# --------------------------------------------------------------------------------- sweep
def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler's or ``kill``'s) into SystemExit, so that executors stop their
    workers and the store closes as on Ctrl-C; finished runs are kept either way."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field, e.g. --set features.masscart.num=20 "
    "--set algorithm.params.learning_rate=1e-3; repeatable.",
)
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; train nothing.")
@click.option(
    "--wait",
    is_flag=True,
    help="If another sweep is running in the same run directory, wait for it to finish "
    "(default: stop with an error naming it).",
)
@click.pass_context
def sweep(
    ctx: click.Context,
    config: Path | None,
    overrides: tuple[str, ...],
    dry_run: bool,
    wait: bool,
) -> None:
    """Run or resume the sweep in CONFIG (YAML). Without CONFIG: the embedded quickstart,
    a small CartPole sweep on CPU.

    Rerunning the same config continues where a killed run stopped (same plan hash) and
    skips every finished run.
    """
    from ctxrl.sweep import run_sweep

    host = _host(ctx)
    _warn_failed(host)
    cfg = load_config(config, overrides)
    plan = locate_run_dir(resolve_plan(cfg, host.registry))
    check_output_dir(cfg.output_dir)
    err.print(
        f"plan {plan.plan_hash[:10]}: {plan.env.name}, {len(plan.grid)} contexts over "
        f"{', '.join(plan.grid.features)}, {plan.algorithm.name}, seeds {cfg.seeds}, "
        f"{cfg.train_steps} steps per model, mode {cfg.mode}; run dir {plan.run_dir}"
    )
    if dry_run:
        click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    _exit_cleanly_on_sigterm()
    outcome = run_sweep(plan, host=host, argv=["ctxrl", *sys.argv[1:]], console=err, wait=wait)
    resumed = f" ({outcome.resumed} resumed from a checkpoint)" if outcome.resumed else ""
    err.print(
        f"trained {outcome.trained}{resumed}, already finished {outcome.skipped}, "
        f"failed {len(outcome.failed)}"
    )
    click.echo((outcome.run_dir / "summary.md").read_text())
    click.echo(f"results: {outcome.run_dir}")
    if outcome.failed:
        sys.exit(1)


# -------------------------------------------------------------------------------- select
def _matrix_from(
    path: Path, env_name: str | None, bounds: tuple[float, float] | None, negate: bool, host: Host
) -> tuple[TransferMatrix, tuple[float, float], np.ndarray]:
    """A matrix, its normalisation bounds and unit coordinates from a CSV file or a run dir."""
    if path.is_dir():
        from ctxrl.results import load_plan, open_store
        from ctxrl.summary import sweep_matrix

        plan = load_plan(path, host.registry)
        with open_store(path) as store:
            matrix = sweep_matrix(plan, store)
        coords = plan.grid.grid_coords()
        return matrix, bounds or plan.env.return_bounds, coords
    matrix = TransferMatrix.from_reference_csv(path, negate=negate)
    if bounds is None:
        if env_name is None:
            raise CtxrlError(
                f"{path}: give --env NAME or --bounds LOWER UPPER to normalise raw returns"
            )
        bounds = host.registry.env(env_name).return_bounds
    n = matrix.shape[0]
    coords = np.linspace(0.0, 1.0, n)[:, None] if n > 1 else np.zeros((1, 1))
    return matrix, bounds, coords


def _check_bounds(path: Path, values: np.ndarray, lower: float, upper: float, strict: bool) -> int:
    """How many raw entries normalisation clips to ``[lower, upper]`` (infinite ones
    included), said on stderr; with ``strict`` any is an error."""
    with np.errstate(invalid="ignore"):
        outside = int(np.sum((values < lower) | (values > upper)))  # NaN compares False
    if outside == 0:
        return 0
    infinite = int(np.sum(np.isinf(values)))
    message = (
        f"{path}: {outside} of {values.size} matrix entries lie outside the normalisation "
        f"bounds [{lower}, {upper}] ({infinite} of them infinite)"
    )
    if strict:
        raise CtxrlError(f"{message}; widen them with --bounds, or drop --strict to clip")
    err.print(
        f"[yellow]warning:[/] {message} and were clipped to them; pass --strict to refuse",
        highlight=False,
        soft_wrap=True,
    )
    return outside


@cli.command()
@click.option(
    "--matrix",
    "matrix_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="A reference CSV (N x N raw returns, row = source) or a run directory.",
)
@click.option(
    "--strategy",
    "strategy_names",
    required=True,
    multiple=True,
    help="Strategy name (see `ctxrl plugins`); repeatable.",
)
@click.option("--budget", "-k", type=int, required=True, help="K, the number of sources.")
@click.option("--env", "env_name", help="Take the normalisation bounds from this env.")
@click.option("--bounds", type=(float, float), default=None, help="Normalisation bounds.")
@click.option("--negate", is_flag=True, help="The file holds costs: negate before normalising.")
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Replays of stochastic strategies (seeds 0..repeats-1).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse a matrix with entries outside the normalisation bounds (default: clip them "
    "to the bounds and say how many).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def select(
    ctx: click.Context,
    matrix_path: Path,
    strategy_names: tuple[str, ...],
    budget: int,
    env_name: str | None,
    bounds: tuple[float, float] | None,
    negate: bool,
    repeats: int,
    strict: bool,
    as_json: bool,
) -> None:
    """Replay strategies offline on a stored matrix and print G_k for k = 1..K."""
    from ctxrl.summary import selection_curves

    host = _host(ctx)
    matrix, (lower, upper), coords = _matrix_from(matrix_path, env_name, bounds, negate, host)
    clipped = _check_bounds(matrix_path, matrix.values, lower, upper, strict)
    normalised = matrix.normalised(lower, upper).mean()
    n = normalised.shape[0]
    if not 1 <= budget <= n:
        raise CtxrlError(f"--budget K = {budget} must be between 1 and N = {n}")
    if np.isnan(normalised).any():
        raise CtxrlError(f"{matrix_path}: the matrix has unobserved entries; replay needs all")
    specs = {name: host.registry.strategy(name) for name in strategy_names}
    curves = selection_curves(normalised, coords, specs, budget, stochastic_repeats=repeats)
    result = {
        "matrix": str(matrix_path),
        "n": n,
        "budget": budget,
        "bounds": [lower, upper],
        "clipped": clipped,
        "independent": float(np.mean(np.diag(normalised))),
        "oracle_transfer": float(np.mean(normalised.max(axis=0))),
        "strategies": curves,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table(
        title=f"G_k on {matrix_path} (N = {n}; independent "
        f"{result['independent']:.4f}, oracle {result['oracle_transfer']:.4f})"
    )
    table.add_column("k")
    for name in curves:
        table.add_column(name)
    for k in range(budget):
        cells = []
        for c in curves.values():
            std = f" ± {c['std'][k]:.4f}" if c["std"][k] > 0 else ""
            cells.append(f"{c['mean'][k]:.4f}{std}")
        table.add_row(str(k + 1), *cells)
    table.add_row("mean", *[f"{np.mean(c['mean']):.4f}" for c in curves.values()])
    out.print(table)


# ------------------------------------------------------------------------------ transfer
@cli.group()
def transfer() -> None:
    """Transfer studies that train target policies from source policies (fine-tuning arms,
    distillation, plasticity); each is a sub-command a transfer plugin adds."""


# -------------------------------------------------------------------------------- report
@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the exports, figures and summary.md here instead of RUN_DIR (for a run "
    "directory you cannot write).",
)
@click.pass_context
def report(ctx: click.Context, run_dir: Path, out: Path | None) -> None:
    """Rewrite RUN_DIR's exports (matrices, tables, selection curves) and summary.md from its
    store. The store is only read; a run directory without one is refused, never reported
    as empty."""
    from ctxrl.config import PLAN_FILE, read_plan_file, stored_config
    from ctxrl.results import open_store
    from ctxrl.summary import sweep_matrix, trained_order, write_exports

    host = _host(ctx)
    stored = read_plan_file(run_dir)
    if "study" in stored:
        # a transfer study's run directory: its transfer method writes the report
        spec = host.registry.transfer_method(str(stored["study"]))
        if spec.report is None:
            raise CtxrlError(f"transfer method {spec.name!r} writes no report ({run_dir})")
        click.echo(spec.report(run_dir))
        return
    cfg = stored_config(stored, run_dir / PLAN_FILE)
    plan = resolve_plan(cfg, host.registry, training=False)
    target = out or run_dir
    with open_store(run_dir) as store:
        if not store.runs():
            raise CtxrlError(
                f"{run_dir}: its store holds no run yet (the sweep stopped before any run "
                "finished or failed): nothing to report, nothing was written"
            )
        matrix = sweep_matrix(plan, store)
        order = trained_order(plan, store)
        if cfg.mode == "select" and not order:
            err.print(
                f"[yellow]warning:[/] {run_dir} stores no trained selection step (a sweep "
                "stopped in its first step, or from a ctxrl before selection steps were "
                "stored): no G_k along the trained order"
            )
        try:
            target.mkdir(parents=True, exist_ok=True)
            exports = write_exports(plan, store, matrix, target, order=order)
        except PermissionError as exc:
            raise CtxrlError(
                f"cannot write the report into {target} ({exc.strerror}: {exc.filename}); "
                "pass --out DIR to write it elsewhere"
            ) from None
    damaged = json.loads((exports / "summary.json").read_text()).get("damaged", [])
    if damaged:
        one = len(damaged) == 1
        count = f"{len(damaged)} saved {'policy is' if one else 'policies are'}"
        err.print(
            f"[yellow]warning:[/] {count} damaged: "
            + "; ".join(d["problem"] for d in damaged)
            + f"; rerun `ctxrl sweep` to train {'it' if one else 'them'} again",
            highlight=False,
            soft_wrap=True,
        )
    click.echo((target / "summary.md").read_text())
    click.echo(f"exports: {exports}")


def main() -> None:
    cli(prog_name="ctxrl")


if __name__ == "__main__":  # pragma: no cover
    main()
