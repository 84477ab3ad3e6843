"""The ``ctxrl`` command line.

    ctxrl plugins [--json]          what is installed, what each plugin provides
    ctxrl envs [--json]             every environment and its context features
    ctxrl sweep [CONFIG] [--set k=v]  run (or resume) a sweep; no CONFIG = the quickstart
    ctxrl select --matrix FILE ...  replay a strategy offline on a stored matrix
    ctxrl synth --out DIR           write SD-MBTL's synthetic benchmark matrices
    ctxrl report RUN_DIR            rewrite a run's exports and summary from its store
    ctxrl transfer STUDY CONFIG     run (or resume) a transfer study a plugin provides

Plugins add commands through the ``ctxrl_register_commands`` hook.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from ctxrl import __version__
from ctxrl.config import load_config, resolve_plan
from ctxrl.errors import CtxrlError
from ctxrl.plugins import BLOCK_ENV, DISABLE_AUTOLOAD_ENV, Host, load_host, set_host
from ctxrl.run_dirs import check_output_dir, locate_run_dir

out = Console()
err = Console(stderr=True)


def _host(ctx: click.Context) -> Host:
    host: Host = ctx.obj["host"]
    return host


def _warn_failed(host: Host) -> None:
    """Plugins that failed to load, and block or allow lists that name no plugin."""
    for info in host.failed():
        err.print(
            f"[yellow]warning:[/] plugin {escape(repr(info.name))} "
            f"({escape(info.distribution or 'inline')}) failed to load: {escape(info.error or '')}",
            highlight=False,
            soft_wrap=True,
        )
    _warn_unmatched_controls(host)


def _warn_unmatched_controls(host: Host) -> None:
    for message in host.unmatched_controls():
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _restore_environment(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class _Root(click.Group):
    """Loads the plugins before resolving sub-commands, so plugin commands show in --help."""

    def _ensure_host(self, ctx: click.Context) -> Host:
        ctx.ensure_object(dict)
        if "host" not in ctx.obj:
            block = ctx.params.get("block") or ()
            # workers inherit the block list through the environment, for this invocation
            # only: the variables are restored when it ends (one process may invoke cli again)
            saved = {name: os.environ.get(name) for name in (BLOCK_ENV, DISABLE_AUTOLOAD_ENV)}
            ctx.call_on_close(lambda: _restore_environment(saved))
            if block:
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
            # escaped: a message's own brackets ("[lower, upper]") are text, not rich markup
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except OSError as exc:  # a folder that cannot be made, a full disk: named, no traceback
            where = f"{exc.filename}: " if exc.filename else ""
            message = f"{where}{exc.strerror or exc}"
            err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctxrl")
@click.option(
    "--block",
    multiple=True,
    metavar="NAME",
    is_eager=True,  # read before --help lists the commands plugins add
    help="Do not load this plugin (entry-point or distribution name); repeatable. "
    f"Also read from {BLOCK_ENV}.",
)
@click.option(
    "--no-autoload",
    is_flag=True,
    is_eager=True,
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
                escape(f.name),
                f"{f.default:g}",
                bound_text(f.lower, upper=False),
                bound_text(f.upper, upper=True),
                f.scale,
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
    help="Override a config field, e.g. --set features.length.num=10 "
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
        # the plan as it will run: a grid of several features may have changed the strategy
        click.echo(yaml.safe_dump(plan.config.model_dump(mode="json"), sort_keys=False))
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
        f"[yellow]warning:[/] {escape(message)} and were clipped to them; pass --strict to refuse",
        highlight=False,
        soft_wrap=True,
    )
    return outside


@cli.command()
@click.option(
    "--matrix",
    "matrix_paths",
    required=True,
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A reference CSV or .npy (N x N raw returns, row = source), a folder of them (one "
    "per trial) or a run directory; repeat for several trials.",
)
@click.option(
    "--strategy",
    "strategy_names",
    required=True,
    multiple=True,
    help="Strategy name (see `ctxrl plugins`); repeatable.",
)
@click.option("--budget", "-k", type=int, required=True, help="K, the number of sources.")
@click.option(
    "--contexts",
    "contexts_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The contexts' coordinates: a contexts.json (as a sweep or `ctxrl synth` writes) or "
    "a CSV with a header of feature names. Default: a contexts.json beside the matrix.",
)
@click.option("--grid", help="The contexts form this C-order grid, e.g. 8x8x8.")
@click.option(
    "--option",
    "option_items",
    multiple=True,
    help="A strategy option, KEY=VALUE (every strategy given) or STRATEGY.KEY=VALUE; repeatable.",
)
@click.option("--env", "env_name", help="Take the normalisation bounds from this env.")
@click.option("--bounds", type=(float, float), default=None, help="Normalisation bounds.")
@click.option("--negate", is_flag=True, help="The file holds costs: negate before normalising.")
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Replays of stochastic strategies on each trial (seeds 0..repeats-1).",
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
    matrix_paths: tuple[Path, ...],
    strategy_names: tuple[str, ...],
    budget: int,
    contexts_path: Path | None,
    grid: str | None,
    option_items: tuple[str, ...],
    env_name: str | None,
    bounds: tuple[float, float] | None,
    negate: bool,
    repeats: int,
    strict: bool,
    as_json: bool,
) -> None:
    """Replay strategies offline on stored matrices and print G_k for k = 1..K.

    With several trial matrices each strategy runs on every trial and G_k is the mean over
    trials with a 95 % confidence interval (SD-MBTL's tables); the myopic oracle (one greedy
    order on the trial-mean matrix, scored on each trial) is added as the reference line, and
    the first strategy's mean G_1..K is compared with every other line's trial by trial (the
    paired difference and its interval).
    """
    from ctxrl.offline import (
        load_trials,
        myopic_oracle_line,
        normalised_trials,
        parse_options,
        replay_trials,
        summarise_replays,
    )
    from ctxrl.selection import json_safe

    host = _host(ctx)
    specs = {name: host.registry.strategy(name) for name in strategy_names}
    options = parse_options(option_items, specs)
    files, raw, located, (lower, upper) = load_trials(
        matrix_paths,
        contexts=contexts_path,
        grid=grid,
        env_name=env_name,
        bounds=bounds,
        negate=negate,
        registry=host.registry,
    )
    trials = normalised_trials(raw, (lower, upper))
    clipped = sum(
        _check_bounds(path, layer, lower, upper, strict)
        for path, layer in zip(files, raw, strict=True)
    )
    n = trials.shape[1]
    if not 1 <= budget <= n:
        raise CtxrlError(f"--budget K = {budget} must be between 1 and N = {n}")
    for path, trial in zip(files, trials, strict=True):
        missing = np.argwhere(np.isnan(trial))
        if len(missing):
            first = ", ".join(f"({s}, {t})" for s, t in missing[:3])
            raise CtxrlError(
                f"{path}: {len(missing)} unobserved (NaN) entries, the first at (source, "
                f"target) {first}; replay needs all"
            )
    err.print(f"contexts: {located.describe()}", highlight=False, soft_wrap=True)
    err.print(f"trials: {len(trials)} matrix(es), bounds [{lower}, {upper}]", highlight=False)
    lines = replay_trials(trials, located.coords, specs, budget, repeats=repeats, options=options)
    if len(trials) > 1:
        lines["myopic-oracle"] = myopic_oracle_line(trials, budget)
    result = {
        "matrices": [str(f) for f in files],
        "n": n,
        "dims": located.dims,
        "contexts": located.describe(),
        "trials": len(trials),
        "budget": budget,
        "bounds": [lower, upper],
        "clipped": clipped,
        "options": {k: v for k, v in options.items() if v},
        **summarise_replays(trials, lines, reference=strategy_names[0]),
    }
    if as_json:
        click.echo(json.dumps(json_safe(result), indent=2, allow_nan=False))  # strict JSON
        return
    several = len(trials) > 1
    band = "± 95 % CI over trials" if several else "± 1 std over stochastic replays"
    # the heading as a line of its own: as the title of a narrow table it wraps a word a line
    out.print(
        f"G_k on {matrix_paths[0]}{' and more' if len(files) > 1 else ''} "
        f"(N = {n}, {len(trials)} trial(s); independent {result['independent']:.4f}, "
        f"oracle {result['oracle_transfer']:.4f}) {band}",
        highlight=False,
        soft_wrap=True,
    )
    table = Table()
    table.add_column("k")
    for name in lines:
        table.add_column(name)
    for k in range(budget):
        cells = []
        for line in result["strategies"].values():
            half = (line["ci95"] or line["std"])[k]
            cells.append(
                f"{line['mean'][k]:.4f}" + (f" ± {half:.4f}" if round(half, 4) > 0 else "")
            )
        table.add_row(str(k + 1), *cells)
    table.add_row(
        "mean",
        *[
            f"{line['mean_g']:.4f}" + (f" ± {line['mean_g_ci95']:.4f}" if several else "")
            for line in result["strategies"].values()
        ],
    )
    out.print(table)
    if result["paired"]:
        compared = ", ".join(
            f"{name} {d['mean']:+.4f} ± {d['ci95']:.4f} "
            f"(at or above on {d['at_or_above']} of {len(trials)})"
            for name, d in result["paired"]["minus"].items()
        )
        out.print(
            f"paired over the {len(trials)} trials, {strategy_names[0]}'s mean "
            f"G_1..{budget} minus: {compared}",
            highlight=False,
            soft_wrap=True,
        )
    if "myopic-oracle" in lines:
        err.print(
            "myopic-oracle: one greedy order chosen on the trial-mean matrix, scored on each "
            "trial (SD-MBTL's reference); sequential-oracle, where asked for, is greedy on each "
            "trial's own matrix.",
            highlight=False,
            soft_wrap=True,
        )


# --------------------------------------------------------------------------------- synth
@cli.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the trial matrices under this folder.",
)
@click.option(
    "--setting",
    "setting_names",
    multiple=True,
    default=("all",),
    show_default=True,
    help="f=constant|linear,g=none|linear,h=l1|non-distance, or all (the 8 table rows).",
)
@click.option(
    "--noise",
    "noises",
    type=click.FloatRange(min=0),
    multiple=True,
    default=(5.0,),
    show_default=True,
    help="Noise standard deviation sigma (the tables: 0, 5, 30); repeatable.",
)
@click.option("--trials", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npy", "csv"]),
    default="npy",
    show_default=True,
    help="npy (2 MiB a trial) or the reference CSV (about 5 MiB a trial).",
)
def synth(
    out: Path, setting_names: tuple[str, ...], noises: tuple[float, ...], trials: int, fmt: str
) -> None:
    """Write SD-MBTL's synthetic transfer matrices (512 contexts on an 8 x 8 x 8 grid, known
    structure) as trials that `ctxrl select --matrix FOLDER` replays."""
    from ctxrl.synthetic import SETTINGS, SyntheticSetting, noise_folder, write_trials

    folders: dict[str, float] = {}
    for noise in noises:
        if not math.isfinite(noise):  # the matrices' bounds would be infinite: unreadable
            raise CtxrlError(f"--noise: {noise!r} is not a finite noise level")
    for noise in noises:  # each level its own folder, before anything is written
        earlier = folders.setdefault(noise_folder(noise), noise)
        if earlier != noise:
            raise CtxrlError(
                f"--noise: {earlier!r} and {noise!r} would share the folder "
                f"{noise_folder(noise)}; give levels that differ in their first six digits"
            )
    settings = (
        list(SETTINGS)
        if "all" in setting_names
        else [SyntheticSetting.parse(name) for name in setting_names]
    )
    for setting in settings:
        for noise in noises:
            folder, (lower, upper) = write_trials(out, setting, noise, trials, fmt=fmt)
            mountain = "Mountain" if setting.mountain else "not a Mountain"
            click.echo(
                f"{folder}: {trials} trials of {setting.name} ({mountain}), noise {noise:g}, "
                f"bounds [{lower:.4f}, {upper:.4f}]"
            )


# ------------------------------------------------------------------------------ transfer
@cli.group()
def transfer() -> None:
    """Transfer studies run outside a sweep, each a sub-command a transfer plugin adds
    (``dqn``: DQN transferability, fine-tuning arms against scratch). Plasticity studies are
    ``ctxrl plasticity``; fine-tuning and distillation are a sweep's ``transfer`` methods."""


# -------------------------------------------------------------------------------- report
REPORT_MARK = ".ctxrl-report.json"
"""In a directory given to ``ctxrl report --out``: the run directory reported there."""


def _check_report_target(out: Path, run_dir: Path) -> None:
    """``--out`` must be a new or empty directory, or one an earlier report of the same run
    directory wrote (marked with :data:`REPORT_MARK`): a report into another run's directory
    replaced its summary and left a mix of the two runs' files."""
    mark = out / REPORT_MARK
    if out.exists() and not out.is_dir():
        raise CtxrlError(f"--out: {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        try:
            reported = json.loads(mark.read_text())["run_dir"]
        except (OSError, ValueError, KeyError, TypeError):
            reported = None
        if reported != str(run_dir.resolve()):
            raise CtxrlError(
                f"--out: {out} is not empty and holds no earlier report of {run_dir}"
                + (f" (it reports {reported})" if reported else "")
                + "; give a new or empty directory"
            )
    out.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({"run_dir": str(run_dir.resolve())}))


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the exports, figures and summary.md here instead of RUN_DIR (for a run "
    "directory you cannot write); a transfer study's run directory is copied here and "
    "reported in the copy.",
)
@click.pass_context
def report(ctx: click.Context, run_dir: Path, out: Path | None) -> None:
    """Rewrite RUN_DIR's exports (matrices, tables, selection curves) and summary.md from its
    store. The store is only read; a run directory without one is refused, never reported
    as empty."""
    from ctxrl.results import open_store
    from ctxrl.run_dirs import PLAN_FILE, read_plan_file, stored_config
    from ctxrl.summary import sweep_matrix, trained_order, write_exports
    from ctxrl.sweep import sweep_holding

    host = _host(ctx)
    stored = read_plan_file(run_dir)
    if "study" in stored:
        # a transfer study's run directory: its transfer method writes the report
        spec = host.registry.transfer_method(str(stored["study"]))
        if spec.report is None:
            raise CtxrlError(f"transfer method {spec.name!r} writes no report ({run_dir})")
        if out is not None and out.resolve() != run_dir.resolve():
            # a study's report is written into its run directory: report a copy of it (into
            # a new or empty directory, or the copy an earlier report of it made)
            _check_report_target(out, run_dir)
            # not the copy's own mark, if RUN_DIR is itself an --out copy: the mark says what
            # was copied here
            ignore = shutil.ignore_patterns(REPORT_MARK)
            shutil.copytree(run_dir, out, dirs_exist_ok=True, ignore=ignore)
            err.print(f"copied {run_dir} to {out} for its report", highlight=False)
            run_dir = out
        click.echo(spec.report(run_dir))
        return
    cfg = stored_config(stored, run_dir / PLAN_FILE)
    plan = resolve_plan(cfg, host.registry, training=False)
    target = out or run_dir
    running = sweep_holding(run_dir)
    with open_store(run_dir) as store:
        if not store.runs():
            stopped = (
                f"a sweep is running there ({running})"
                if running
                else "the sweep stopped before any run finished or failed"
            )
            raise CtxrlError(
                f"{run_dir}: its store holds no run yet ({stopped}): nothing to report, "
                "nothing was written"
            )
        if running:
            err.print(
                f"[yellow]warning:[/] a sweep is running in {run_dir} ({running}): this "
                "report shows the runs stored so far; the sweep writes its own when it ends",
                highlight=False,
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
            if out is not None and out.resolve() != run_dir.resolve():
                _check_report_target(out, run_dir)
            target.mkdir(parents=True, exist_ok=True)
            exports = write_exports(plan, store, matrix, target, order=order)
        except OSError as exc:
            raise CtxrlError(
                f"cannot write the report into {target} ({exc.strerror}: {exc.filename}); "
                + (
                    "give another --out DIR"
                    if out is not None
                    else "pass --out DIR to write it elsewhere"
                )
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
