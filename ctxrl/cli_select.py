"""The offline selection commands: ``ctxrl select`` (replay strategies on stored transfer
matrices and print G_k) and ``ctxrl synth`` (write SD-MBTL's synthetic matrices for it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
from rich.markup import escape
from rich.table import Table

from ctxrl.cli_common import _host, _print_tables, err, json_option, out
from ctxrl.errors import CtxrlError, UnknownNameError


# -------------------------------------------------------------------------------- select
def _check_bounds(path: Path, values: np.ndarray, lower: float, upper: float, strict: bool) -> int:
    """How many raw entries normalisation clips to ``[lower, upper]`` (infinite ones
    included), said on stderr; with ``strict`` any is an error, and all of them always is."""
    with np.errstate(invalid="ignore"):
        outside = int(np.sum((values < lower) | (values > upper)))  # NaN compares False
    if outside == 0:
        return 0
    infinite = int(np.sum(np.isinf(values)))
    if outside == int(np.sum(~np.isnan(values))):  # nothing left to compare
        raise CtxrlError(
            f"{path}: every entry lies outside the normalisation bounds [{lower}, {upper}] "
            f"(the entries run from {np.nanmin(values):g} to {np.nanmax(values):g}), so every "
            "one would be clipped to the same value: give the bounds of this matrix's returns "
            "(--bounds, --env) and check its sign (--negate)"
        )
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


def _with_band(value: float, half: float | None) -> str:
    """A table cell: ``value`` and, where it is a finite width that shows at 4 decimals,
    ``± half``."""
    shown = half is not None and math.isfinite(half) and round(half, 4) > 0
    return f"{value:.4f}" + (f" ± {half:.4f}" if shown else "")


@click.command()
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
@click.option(
    "--budget", "-k", type=click.IntRange(min=1), required=True, help="K, the number of sources."
)
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
@json_option("Print JSON.")
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
        check_one_dimensional,
        load_trials,
        myopic_oracle_line,
        normalised_trials,
        parse_options,
        replay_trials,
        summarise_replays,
    )
    from ctxrl.selection import json_safe

    host = _host(ctx)
    repeated = sorted({name for name in strategy_names if strategy_names.count(name) > 1})
    if repeated:
        raise CtxrlError(f"--strategy {repeated[0]} is given twice; name each strategy once")
    try:
        specs = {name: host.registry.strategy(name) for name in strategy_names}
    except UnknownNameError as exc:
        raise CtxrlError(f"--strategy: {exc}") from None
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
    matrices = "1 matrix" if len(trials) == 1 else f"{len(trials)} matrices"
    err.print(f"trials: {matrices}, bounds [{lower}, {upper}]", highlight=False)
    if n > 1 and bool((trials == trials[:, :1, :]).all()):
        err.print(
            "every row of the matrix is the same (one policy per target, made from all the "
            "sources together, as a joint transfer method such as distill makes them): G_k is "
            "flat and the same for every strategy, so source selection is not measured here",
            highlight=False,
            soft_wrap=True,
        )
    check_one_dimensional(specs, located)  # before any strategy replays
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
    cells = [
        [_with_band(line["mean"][k], (line["ci95"] or line["std"])[k]) for k in range(budget)]
        + [_with_band(line["mean_g"], line["mean_g_ci95"] if several else None)]
        for line in result["strategies"].values()
    ]  # per strategy: G_1..G_K, then the mean
    band = ""
    if any("±" in cell for column in cells for cell in column):
        band = " ± 95 % CI over trials" if several else " ± 1 std over stochastic replays"
    # the heading as a line of its own: as the title of a narrow table it wraps a word a line
    out.print(
        f"G_k on {matrix_paths[0]}"
        + (f" and {len(matrix_paths) - 1} more" if len(matrix_paths) > 1 else "")
        + " "
        f"(N = {n}, {len(trials)} trial(s); independent {result['independent']:.4f}, "
        f"oracle {result['oracle_transfer']:.4f}){band}",
        highlight=False,
        soft_wrap=True,
    )
    table = Table()
    table.add_column("k")
    for name in lines:
        table.add_column(name)
    for row, label in enumerate([*(str(k + 1) for k in range(budget)), "mean"]):
        table.add_row(label, *[column[row] for column in cells])
    _print_tables([table])  # piped: one line per row, no cell wrapped or cut
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
@click.command()
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
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Trials 0..N-1 of each setting and noise level, normalised by the bounds of the "
    "published tables' 100 trials (of all N when N > 100), so a trial scores the same however "
    "many are written.",
)
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

    if not str(out).strip() or out == Path():  # click makes "" the current folder
        raise CtxrlError("--out: name the folder to write the trials under")
    folders: dict[str, float] = {}
    for noise in noises:
        if not math.isfinite(noise):  # the matrices' bounds would be infinite: unreadable
            raise CtxrlError(f"--noise: {noise!r} is not a finite noise level")
    for noise in noises:  # each level its own folder, written once, before anything is written
        earlier = folders.get(noise_folder(noise))
        if earlier == noise:
            raise CtxrlError(f"--noise {noise:g} is given twice")
        folders[noise_folder(noise)] = noise
        if earlier is not None:
            raise CtxrlError(
                f"--noise: {earlier!r} and {noise!r} would share the folder "
                f"{noise_folder(noise)}; give levels that differ in their first six digits"
            )
    settings = (
        list(SETTINGS)
        if "all" in setting_names
        else [SyntheticSetting.parse(name) for name in setting_names]
    )
    if len(set(settings)) < len(settings):  # each setting its own folder, written once
        again = next(s for i, s in enumerate(settings) if s in settings[:i])
        raise CtxrlError(f"--setting {again.name} is given twice")
    for setting in settings:
        for noise in noises:
            folder, (lower, upper), removed = write_trials(out, setting, noise, trials, fmt=fmt)
            mountain = "Mountain" if setting.mountain else "not a Mountain"
            click.echo(
                f"{folder}: {trials} trials of {setting.name} ({mountain}), noise {noise:g}, "
                f"bounds [{lower:.4f}, {upper:.4f}]"
                + (f"; removed {len(removed)} earlier trial files" if removed else "")
            )
