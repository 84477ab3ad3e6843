"""SD-MBTL's synthetic benchmark: every strategy's G_50 next to the published tables.

    OMP_NUM_THREADS=1 python benchmarks/bench_synthetic.py [--noise 5] [--gp-trials 100]
        [--out synthetic.json] [--fresh]

Matrices: :mod:`ctxrl.synthetic` (8 settings, 512 contexts, trials 0..99, the reference's noise
draws), normalised with one min-max over the 100 trials of a setting as the reference does.
Columns: Random (the reference's procedure: one order per trial, :func:`reference_random_order`)
and the Myopic Oracle (one greedy order on the trial-mean matrix) on all 100 trials; ``m-mbtl``
on all 100 trials (its order does not depend on the rows: replayed once); the GP strategies
(``mbtl-gp``, ``sd-mbtl``, and ``mbtl-gp-reference``: ``mbtl-gp`` with the options that make
it the reference's GP-MBTL, see ``VARIANTS``) on the first ``--gp-trials`` trials (default all
100), replayed together (:func:`ctxrl.selection.replay_many`: each step's GPs of all trials
fitted in one batched program). Values: mean G_50 over trials with the Student-t 95 %
half-width; the aggregated row is SD-MBTL's: per setting (v - mean Random) / (mean Oracle -
mean Random), pooled over the settings' trials.
Results are saved after every cell; a rerun reuses the (cell, strategy) pairs already in
``--out`` (each one said; a GP column of another ``--gp-trials`` is computed again), so an
interrupted run continues, and ``--fresh`` computes everything.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from ctxrl.offline import mean_ci
from ctxrl.plugins import get_host
from ctxrl.selection import generalized_performance, myopic_oracle, replay, replay_many
from ctxrl.synthetic import (
    SETTINGS,
    SyntheticSetting,
    grid_points,
    reference_bounds,
    reference_random_order,
    synthetic_trials,
)

K = 50
TRIALS = 100

# SD-MBTL, synthetic tables (K = 50): mean G_50 per setting in SETTINGS order, then the
# aggregated score; columns Random, GP-MBTL, M-MBTL, M/GP-MBTL (SD-MBTL), Myopic Oracle.
PUBLISHED: dict[float, list[tuple[float, float, float, float, float]]] = {
    0.0: [
        (0.7028, 0.7250, 0.7055, 0.7250, 0.7250),
        (0.7122, 0.7110, 0.7187, 0.7187, 0.7190),
        (0.8688, 0.9091, 0.8736, 0.9091, 0.9091),
        (0.9244, 0.9364, 0.9374, 0.9374, 0.9382),
        (0.5544, 0.5714, 0.5552, 0.5714, 0.5714),
        (0.5517, 0.5714, 0.5535, 0.5714, 0.5714),
        (0.6761, 0.7000, 0.6772, 0.7000, 0.7000),
        (0.7660, 0.7857, 0.7678, 0.7857, 0.7857),
        (0.0, 0.8368, 0.3010, 0.9873, 1.0),
    ],
    5.0: [
        (0.6956, 0.7212, 0.6976, 0.7168, 0.7260),
        (0.7011, 0.6961, 0.7038, 0.7038, 0.7048),
        (0.7906, 0.8369, 0.7936, 0.8334, 0.8375),
        (0.7722, 0.7747, 0.7762, 0.7762, 0.7778),
        (0.5773, 0.6088, 0.5782, 0.6086, 0.6090),
        (0.5880, 0.6218, 0.5900, 0.6216, 0.6221),
        (0.6672, 0.7083, 0.6683, 0.7073, 0.7088),
        (0.7401, 0.7744, 0.7422, 0.7751, 0.7756),
        (0.0, 0.6032, 0.2177, 0.8714, 1.0),
    ],
    30.0: [
        (0.7083, 0.7274, 0.7091, 0.7202, 0.7319),
        (0.6879, 0.6825, 0.6879, 0.6876, 0.6952),
        (0.7036, 0.7274, 0.7045, 0.7215, 0.7295),
        (0.7125, 0.7181, 0.7125, 0.7150, 0.7205),
        (0.6815, 0.6790, 0.6818, 0.6912, 0.7135),
        (0.6840, 0.6810, 0.6844, 0.6953, 0.7234),
        (0.7240, 0.7202, 0.7244, 0.7272, 0.7586),
        (0.7246, 0.7366, 0.7250, 0.7393, 0.7670),
        (0.0, 0.2127, 0.0147, 0.3099, 1.0),
    ],
}
COLUMNS = (
    "random",
    "mbtl-gp",
    "mbtl-gp-residual",
    "mbtl-gp-residual-model",
    "mbtl-gp-model",
    "mbtl-gp-gap-only",
    "mbtl-gp-fixed-noise",
    "mbtl-gp-reference",
    "m-mbtl",
    "sd-mbtl",
    "sd-mbtl-reference",
    "myopic-oracle",
)
# each column's published counterpart (index into a PUBLISHED row)
PUBLISHED_COLUMN = {name: i for i, name in enumerate(COLUMNS)} | {
    "mbtl-gp-residual": 1,
    "mbtl-gp-residual-model": 1,
    "mbtl-gp-model": 1,
    "mbtl-gp-gap-only": 1,
    "mbtl-gp-fixed-noise": 1,
    "mbtl-gp-reference": 1,
    "m-mbtl": 2,
    "sd-mbtl": 3,
    "sd-mbtl-reference": 3,
    "myopic-oracle": 4,
}
# columns that are a registered strategy with options: ``mbtl-gp-reference`` is ctxrl's
# MBTL-GP run as SD-MBTL's reference code runs its GP-MBTL column (rounded-mean first source,
# worst-covered 2nd and 3rd, slopes fitted with one shared intercept, the reference's
# warm-started GP with its learned observation noise, the noise in the spread);
# ``sd-mbtl-reference`` is ``sd-mbtl`` whose GP branch is that GP with those slopes;
# ``mbtl-gp-fixed-noise`` is ``mbtl-gp`` with the reference's fixed GP noise and observed
# baseline, ctxrl's default before 2026-12-04 (the "mbtl-gp" column of the earlier results);
# ``mbtl-gp-residual`` is ``mbtl-gp`` with the residual GP over source and target and the
# expected gain of G as its acquisition (the ``consistent`` baseline);
# ``mbtl-gp-residual-model`` the same against the
# model's estimate of the trained rows (``best: model``, the default since; ``mbtl-gp`` is the
# same); ``mbtl-gp-model`` is MBTL's own model with ``best: model``; ``mbtl-gp-gap-only`` is
# MBTL's own model (no residual GP, the optimistic acquisition, the ``consistent`` baseline):
# the default until 2026-12-04 and the "mbtl-gp" column of the results before it
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "mbtl-gp-reference": (
        "mbtl-gp",
        {
            "start": "reference",
            "slopes": "reference",
            "spread": "predictive",
            "gp": "reference",
            "best": "observed",
            "residual": "none",
            "acquisition": "optimistic",
        },
    ),
    "sd-mbtl-reference": ("sd-mbtl", {"slopes": "reference", "gp": "reference"}),
    "mbtl-gp-fixed-noise": (
        "mbtl-gp",
        {"noise_std": 0.1, "best": "observed", "residual": "none", "acquisition": "optimistic"},
    ),
    "mbtl-gp-residual": (
        "mbtl-gp",
        {"residual": "gp", "acquisition": "expected", "best": "consistent"},
    ),
    "mbtl-gp-residual-model": (
        "mbtl-gp",
        {"residual": "gp", "acquisition": "expected", "best": "model"},
    ),
    "mbtl-gp-model": (
        "mbtl-gp",
        {"residual": "none", "acquisition": "optimistic", "best": "model"},
    ),
    "mbtl-gp-gap-only": (
        "mbtl-gp",
        {"residual": "none", "acquisition": "optimistic", "best": "consistent"},
    ),
}


ALL_TRIALS = {"random", "myopic-oracle", "m-mbtl"}
"""Columns scored on all 100 trials; every other column on the first ``--gp-trials``."""


def run_cell(
    setting: SyntheticSetting, noise: float, gp_trials: int, strategies: list[str]
) -> dict[str, list[float]]:
    """G_50 per trial for every column of one (setting, noise) cell."""
    raw = synthetic_trials(setting, noise, TRIALS)
    lower, upper = reference_bounds(raw)
    trials = (raw - lower) / (upper - lower)
    del raw
    n = trials.shape[1]
    coords = grid_points() / 7.0
    registry = get_host().registry
    out: dict[str, list[float]] = {}
    out["random"] = [
        float(generalized_performance(trials[t], reference_random_order(t, n, K))[-1])
        for t in range(TRIALS)
    ]
    out["myopic-oracle"] = myopic_oracle(trials, K)[1][:, -1].tolist()
    for name in strategies:
        base, options = VARIANTS.get(name, (name, {}))
        spec = registry.strategy(base)
        if name == "m-mbtl":  # its order ignores the rows: one replay, scored on every trial
            order = replay(spec.factory(), trials[0], coords, K, name=name).order
            out[name] = [float(generalized_performance(m, order)[-1]) for m in trials]
            continue
        make = functools.partial(spec.factory, **options)
        together = replay_many(make, trials[:gp_trials], coords, K, name=name)
        out[name] = [float(result.curve[-1]) for result in together]
    return out


def aggregated(cells: dict[str, dict[str, list[float]]], column: str) -> tuple[float, float]:
    """SD-MBTL's aggregated score of ``column`` over the settings present, with its CI."""
    pooled: list[float] = []
    for cell in cells.values():
        if column not in cell:
            continue
        base, top = np.mean(cell["random"]), np.mean(cell["myopic-oracle"])
        pooled.extend((np.array(cell[column]) - base) / (top - base))
    return mean_ci(np.array(pooled)) if pooled else (float("nan"), 0.0)


def table(noise: float, cells: dict[str, dict[str, list[float]]]) -> str:
    published = PUBLISHED.get(noise)
    lines = [
        f"| setting (noise {noise:g}) | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for row, setting in enumerate(SETTINGS):
        cell = cells.get(setting.name)
        if cell is None:
            continue
        values = []
        for name in COLUMNS:
            if name not in cell:
                values.append("-")
                continue
            mean, half = mean_ci(np.array(cell[name]))
            paper = f" ({published[row][PUBLISHED_COLUMN[name]]:.4f})" if published else ""
            values.append(f"{mean:.4f} ± {half:.4f}{paper} [{len(cell[name])}]")
        shade = " (Mountain)" if setting.mountain else ""
        lines.append(f"| {setting.name}{shade} | " + " | ".join(values) + " |")
    agg = []
    for name in COLUMNS:
        if not any(name in cell for cell in cells.values()):
            agg.append("-")  # not run
            continue
        mean, half = aggregated(cells, name)
        paper = f" ({published[8][PUBLISHED_COLUMN[name]]:.4f})" if published else ""
        agg.append(f"{mean:.4f} ± {half:.4f}{paper}")
    lines.append("| aggregated | " + " | ".join(agg) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--noise", type=float, nargs="+", default=[5.0])
    parser.add_argument("--gp-trials", type=int, default=TRIALS)
    parser.add_argument("--strategies", nargs="+", default=["m-mbtl", "sd-mbtl", "mbtl-gp"])
    parser.add_argument("--settings", nargs="+", default=None, help="f=..,g=..,h=.. names")
    parser.add_argument("--out", type=Path, default=Path("synthetic.json"))
    parser.add_argument(
        "--fresh", action="store_true", help="compute every cell, reusing nothing in --out"
    )
    args = parser.parse_args()
    if not 1 <= args.gp_trials <= TRIALS:
        parser.error(f"--gp-trials must be in 1..{TRIALS}, got {args.gp_trials}")
    settings = [SyntheticSetting.parse(s) for s in args.settings] if args.settings else SETTINGS
    results: dict[str, dict[str, dict[str, list[float]]]] = (
        json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for noise in args.noise:
        cells = results.setdefault(f"{noise:g}", {})
        for setting in settings:
            # a stored column asked for again with another trial count is computed again (the
            # columns not asked for stay as stored)
            done = {
                name: values
                for name, values in cells.get(setting.name, {}).items()
                if name not in args.strategies
                or name in ALL_TRIALS
                or len(values) == args.gp_trials
            }
            missing = [name for name in args.strategies if name not in done]
            reused = [name for name in args.strategies if name in done]
            if reused:
                print(
                    f"noise {noise:g} {setting.name}: {', '.join(reused)} reused from "
                    f"{args.out} (--fresh computes them again)",
                    flush=True,
                )
            if done and not missing:
                continue
            start = time.perf_counter()
            cells[setting.name] = {**run_cell(setting, noise, args.gp_trials, missing), **done}
            args.out.write_text(json.dumps(results))
            print(
                f"noise {noise:g} {setting.name}: {time.perf_counter() - start:.0f} s", flush=True
            )
        print(table(noise, cells))
        print("(published values in parentheses; [n] = trials)")


if __name__ == "__main__":
    main()
