"""The figures of a sweep's report (``figures/<name>.png`` and ``.svg``): the matrix heatmap,
the selection curves, the generalization model's calibration and (1-D grids) what a strategy
chose, drawn with :mod:`ctxrl.report`, and the removal of those an earlier report drew that this
one did not. Used by :func:`ctxrl.summary.write_exports`, which draws the learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctxrl.config import SweepPlan
from ctxrl.report import (
    ContextAxis,
    plot_calibration,
    plot_generalization,
    plot_matrix,
    plot_selection,
)
from ctxrl.summary_selection import STOCHASTIC_REPEATS

FIGURES = (
    "matrix",
    "selection",
    "generalization",
    "learning_curves",
    "transfer_curves",
    "calibration",
)
"""The figures a report may draw (``figures/<name>.png`` and ``.svg``)."""


def remove_stale_figures(run_dir: Path, written: list[str]) -> None:
    """Delete figures an earlier report drew that this one did not (e.g. selection curves of
    a matrix that is no longer complete), so no figure is left beside results it no longer
    shows."""
    for name in FIGURES:
        for suffix in (".png", ".svg"):
            path = run_dir / "figures" / f"{name}{suffix}"
            if path.exists() and str(path.relative_to(run_dir)) not in written:
                path.unlink()


def grid_labels(plan: SweepPlan) -> list[str]:
    """Each grid context by its varied features' values (``length=0.5``), in grid order."""
    return [", ".join(f"{f}={c[f]:.3g}" for f in plan.grid.features) for c in plan.grid.contexts]


def context_axis(plan: SweepPlan) -> ContextAxis | None:
    """How figures draw a 1-D grid's contexts: at their values, labelled with the feature's
    name, description and unit, on a log axis when the grid is log-spaced; None for grids
    of several features."""
    if len(plan.grid.features) != 1:
        return None
    name = plan.grid.features[0]
    feature = plan.env.context_space.feature(name)
    values = np.asarray(plan.grid.axis_values[0], dtype=np.float64)
    scale = plan.config.features[name].scale or feature.scale
    label = f"{name}: {feature.description}" if feature.description else name
    label += f" ({feature.unit})" if feature.unit else ""
    return ContextAxis(values, label, log=scale == "log" and values.min() > 0, unit=feature.unit)


def write_figures(
    plan: SweepPlan, normalised: np.ndarray, summary: dict[str, Any], directory: Path
) -> list[str]:
    """Heatmap, selection curves and (1-D grids) the generalization model: PNG and SVG."""
    directory.mkdir(exist_ok=True)
    axis = context_axis(plan)
    title = f"{plan.env.name}: {', '.join(plan.grid.features)}"
    written = plot_matrix(
        normalised,
        grid_labels(plan),
        title,
        directory / "matrix",
        axis=axis,
        bounds=plan.env.return_bounds,
    )
    if "curves" in summary:
        seeds = "independent_seeds" in summary  # the curves are means over seeds' matrices
        references = {
            "independent": summary["independent_seeds"]["mean"]
            if seeds
            else summary["independent"],
            "oracle transfer": summary["oracle_transfer_seeds"]["mean"]
            if seeds
            else summary["oracle_transfer"],
        }
        if summary.get("multitask") is not None:
            references["multitask"] = summary["multitask"]
        if any("seed_ci95" in c for c in summary["curves"].values()):
            band = f"95 % CI over {len(plan.config.seeds)} seeds' matrices"
        else:
            band = f"±1 std over {STOCHASTIC_REPEATS} replays of each stochastic strategy"
        written += plot_selection(
            summary["curves"], references, title, directory / "selection", band=band
        )
        if summary.get("calibration"):
            written += plot_calibration(
                summary["calibration"],
                f"{title}: MBTL's GP + linear-gap model",
                directory / "calibration",
            )
    elif "curve" in summary:  # a select sweep of fewer sources than contexts (or stopped)
        curve = summary["curve"]
        written += plot_selection(
            {
                f"{plan.config.strategy.name} (as trained)": {
                    "mean": curve,
                    "std": [0.0] * len(curve),
                }
            },
            {},  # no reference line: the untrained contexts' own performance is unknown
            title,
            directory / "selection",
        )
    if axis is not None and (summary.get("curves") or "curve" in summary):
        if "curve" in summary:  # a select sweep: what its strategy trained
            chooser = plan.config.strategy.name
            left_out = set(summary.get("curve_left_out") or [])
            sources = [i for i in dict.fromkeys(summary["order"]) if i not in left_out]
        else:
            chooser = next(iter(summary["curves"]))
            sources = list(dict.fromkeys(summary["curves"][chooser]["order"]))
        # a source without its own-context evaluation has no training performance to fit
        sources = [i for i in sources if np.isfinite(normalised[i, i])]
        if sources:
            written += plot_generalization(
                plan.grid.grid_coords(),
                normalised,
                sources,
                f"{title}: what {chooser} chose",
                directory / "generalization",
                axis=axis,
            )
    return [str(p.relative_to(directory.parent)) for p in written]
