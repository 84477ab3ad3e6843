"""A plasticity study's report: ``metrics.json``, ``curves.csv``, ``plasticity.csv``, the
figures and ``summary.md`` (:func:`write_outputs`). The measures, their intervals and the
comparisons with the baseline are defined and computed in
:mod:`~ctxrl_plugins.transfer.plasticity_analysis`; ``summary.md`` is written in words in
:mod:`~ctxrl_plugins.transfer.plasticity_summary`. Their names are re-exported here."""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctxrl.report import save_figure
from ctxrl.transfer_metrics import curve_band
from ctxrl_plugins.transfer.plasticity_analysis import MEASURES as MEASURES
from ctxrl_plugins.transfer.plasticity_analysis import WEIGHT_METRICS, layer_mean
from ctxrl_plugins.transfer.plasticity_analysis import ArmData as ArmData
from ctxrl_plugins.transfer.plasticity_analysis import StudyTables as StudyTables
from ctxrl_plugins.transfer.plasticity_analysis import gather as gather
from ctxrl_plugins.transfer.plasticity_plan import StudyPlan
from ctxrl_plugins.transfer.plasticity_runner import ProgramFailure, ProgramResult
from ctxrl_plugins.transfer.plasticity_summary import direction_verdict as direction_verdict
from ctxrl_plugins.transfer.plasticity_summary import failure_lines as failure_lines
from ctxrl_plugins.transfer.plasticity_summary import format_estimate as format_estimate
from ctxrl_plugins.transfer.plasticity_summary import summary_markdown
from ctxrl_plugins.transfer.plasticity_summary import untouched_lines as untouched_lines

# the metrics drawn across switches (means over the layers recording them)
FIGURE_METRICS = (
    "dormant",
    "effective_rank",
    "srank",
    "stable_rank",
    "feature_norm",
    "weight_magnitude",
    "distance_from_init",
)


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~ctxrl.transfer_metrics.curve_band` of ``(S, T)`` values, a point no seed has
    (NaN) left NaN without numpy's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return curve_band(values)


def write_outputs(
    plan: StudyPlan,
    results: Mapping[str, ProgramResult],
    run_dir: Path,
    *,
    failures: Sequence[ProgramFailure] = (),
) -> str:
    """Write ``metrics.json``, ``curves.csv``, ``plasticity.csv``, the figures and
    ``summary.md`` for the programs that finished, naming those in ``failures``; returns the
    summary."""
    if not results:  # every program failed: the summary and metrics.json say why
        for stale in [run_dir / "curves.csv", run_dir / "plasticity.csv"]:
            stale.unlink(missing_ok=True)
        for stale in [*(run_dir / "figures").glob("*.png"), *(run_dir / "figures").glob("*.svg")]:
            stale.unlink()
        data = {"switches": [], "arms": {}, "diverged": [], "failed": _failed_json(failures)}
        (run_dir / "metrics.json").write_text(json.dumps(data, indent=1, allow_nan=False))
        title = f"# Plasticity study: {plan.env.name}, {plan.config.algorithm}"
        summary = "\n".join([title, "", *failure_lines(len(plan.programs), failures, [])])
        (run_dir / "summary.md").write_text(summary)
        return summary
    tables = gather(plan, results, failures)
    _write_exports(tables, run_dir)
    figures = _write_figures(plan, tables, run_dir)
    summary = summary_markdown(plan, tables, figures)
    (run_dir / "summary.md").write_text(summary)
    return summary


def finite_or_none(values: Sequence[float] | np.ndarray) -> list[float | None]:
    """Per-seed values for JSON: NaN (a diverged seed) and infinities as ``null``."""
    return [float(x) if math.isfinite(x) else None for x in values]


def _failed_json(failures: Sequence[ProgramFailure]) -> list[dict[str, Any]]:
    return [{k: v for k, v in failure.to_json().items() if k != "details"} for failure in failures]


def _write_exports(tables: StudyTables, run_dir: Path) -> None:
    metrics = {
        label: {
            "per_seed": {k: finite_or_none(v) for k, v in tables.per_seed[label].items()},
            "estimates": {k: e.to_json() for k, e in tables.estimates[label].items()},
            "versus_none": {k: e.to_json() for k, e in tables.versus.get(label, {}).items()},
            "missed_threshold_segments": tables.missed[label],
            "diverged_seeds": arm.diverged,
        }
        for label, arm in tables.arms.items()
    }
    data = {
        "switches": tables.switches,
        "arms": metrics,
        "diverged": [
            {"arm": label, "seed": seed}
            for label, arm in tables.arms.items()
            for seed in arm.diverged
        ],
        "failed": _failed_json(tables.failures),
        "versus_none_unavailable": tables.no_comparison or None,
    }
    (run_dir / "metrics.json").write_text(json.dumps(data, indent=1, allow_nan=False))
    with (run_dir / "curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "seed", "step", "normalised_return"])
        for label, arm in tables.arms.items():
            for row, seed in enumerate(arm.seeds):
                for step, value in zip(tables.steps, arm.curves[row], strict=True):
                    writer.writerow([label, seed, int(step), f"{value:.6g}"])
    with (run_dir / "plasticity.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "seed", "step", "metric", "layer", "value"])
        for label, arm in tables.arms.items():
            for name, values in sorted(arm.plasticity.items()):
                metric, layer = name.split(".", 1)
                for row, seed in enumerate(arm.seeds):
                    for step, value in zip(tables.plasticity_steps, values[row], strict=True):
                        writer.writerow([label, seed, int(step), metric, layer, f"{value:.6g}"])


def _write_figures(plan: StudyPlan, tables: StudyTables, run_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir = run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    for stale in [*figures_dir.glob("*.png"), *figures_dir.glob("*.svg")]:
        stale.unlink()
    written = []

    def mark_switches(ax: Any) -> None:
        for step in tables.switches:
            ax.axvline(step, color="0.6", linewidth=0.6, linestyle=":")

    # the finite seeds of each arm (an arm every seed of which diverged is not drawn)
    drawn = {label: arm.rows(arm.finite) for label, arm in tables.arms.items()}
    drawn = {label: arm for label, arm in drawn.items() if arm.seeds}
    fig, ax = plt.subplots(figsize=(9, 4))
    for label, arm in drawn.items():
        mean, low, high = _band(arm.curves)
        low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)  # returns lie in [0, 1]
        (line,) = ax.plot(tables.steps, mean, label=label, linewidth=1.2)
        ax.fill_between(tables.steps, low, high, color=line.get_color(), alpha=0.15)
    mark_switches(ax)
    ax.set_xlabel("env steps per agent (dotted: context switches)")
    ax.set_ylabel("normalised return in the current context")
    ax.set_title(f"{plan.env.name}: return across switches (mean, 95 % band over seeds)")
    if drawn:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, figures_dir / "returns", dpi=110)
    plt.close(fig)
    written.append("figures/returns.png")

    metrics = [
        m for m in FIGURE_METRICS if any(layer_mean(a.plasticity, m).size for a in drawn.values())
    ]
    if metrics:
        cols = 2
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(10, 2.6 * rows), squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for label, arm in drawn.items():
                values = layer_mean(arm.plasticity, metric)
                if not values.size:
                    continue
                mean, low, high = _band(values)
                low = np.maximum(low, 0.0)  # fractions, ranks and norms: none is negative
                if metric == "dormant":  # a fraction of the units
                    high = np.minimum(high, 1.0)
                (line,) = ax.plot(tables.plasticity_steps, mean, label=label, linewidth=1.0)
                ax.fill_between(
                    tables.plasticity_steps, low, high, color=line.get_color(), alpha=0.12
                )
            mark_switches(ax)
            # the weight metrics are recorded for the output layers too
            layers = "every layer" if metric in WEIGHT_METRICS else "hidden layers"
            ax.set_title(f"{metric} (mean over {layers})", fontsize=9)
            ax.set_xlabel("env steps per agent", fontsize=8)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        save_figure(fig, figures_dir / "plasticity", dpi=110)
        plt.close(fig)
        written.append("figures/plasticity.png")
    return written
