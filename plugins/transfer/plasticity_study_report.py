"""A plasticity study's analysis, exports, figures and summary.

Returns are normalised to [0, 1] by the env's return bounds. The curve is cut at the context
switches into *segments*: segment 0 is learned from the fresh network, segment ``k >= 1`` starts
at switch ``k`` (its first point is the return in the new context with the weights of the end
of the previous one). Per agent:

- **segment AUC**: the trapezoid area of the normalised return over the segment divided by its
  length in env steps (the mean normalised return over the segment, in [0, 1]);
- **post-switch AUC**: the mean segment AUC over segments ``k >= 1``;
- **jumpstart**: the mean over switches of the segment's first return;
- **time to threshold**: the mean over switches of the env steps from the switch to the first
  point at or above ``threshold`` (a segment that never reaches it counts its whole length, to
  the next switch, and is counted as missed; the last segment's length ends at the curve's last
  point, so there a miss reads as a success at that point, and only the missed count tells);
- **plasticity lost**: for every context the schedule visits more than once, the AUC of its
  last segment minus that of its first (the first is learned from the fresh network when it is
  segment 0, so this compares the trained network with a fresh one on the same context, as
  Ash & Adams 2020 do), averaged over such contexts; when no context repeats (a sampled
  schedule), the mean AUC of the second half of the segments minus the first half. Negative:
  the agent learns its contexts worse than it used to.
- **dormant fraction**: ReDo's tau-dormant fraction averaged over the hidden layers, at the
  record just before the first switch and at the last record.

Each arm's per-seed values get a bootstrap 95 % interval (:mod:`ctxrl.transfer_metrics`), and
each is compared with the baseline ``none`` as a difference of means over seeds with its own
interval; the verdict (better / worse / no difference) is stated only when the interval
excludes 0.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.integrate import trapezoid

from ctxrl.errors import CtxrlError
from ctxrl.transfer_metrics import (
    MetricEstimate,
    bootstrap_estimate,
    curve_band,
    difference_of_means,
    mean_estimate,
)
from ctxrl_plugins.transfer.plasticity_study import BASELINE, ProgramResult, StudyPlan

# the metrics drawn across switches (means over the hidden layers)
FIGURE_METRICS = (
    "dormant",
    "effective_rank",
    "srank",
    "stable_rank",
    "feature_norm",
    "weight_magnitude",
    "distance_from_init",
)
# what each summary row measures and which direction is better
MEASURES: dict[str, tuple[str, int]] = {
    "post_switch_auc": ("post-switch AUC (mean normalised return after switches)", +1),
    "late_auc": ("AUC of each context's last visit", +1),
    "plasticity_lost": ("last minus first visit AUC (negative: plasticity lost)", +1),
    "jumpstart": ("jumpstart (normalised return at the switch)", +1),
    "time_to_threshold": ("env steps to threshold after a switch", -1),
    "dormant_first_switch": ("dormant fraction before the first switch", -1),
    "dormant_end": ("dormant fraction at the end", -1),
}


@dataclass
class ArmData:
    """One arm's records, seeds in the study's order."""

    seeds: list[int]
    curves: np.ndarray  # (S, T) normalised returns
    plasticity: dict[str, np.ndarray]  # {metric}.{layer} -> (S, P)


@dataclass
class StudyTables:
    steps: np.ndarray  # (T,)
    plasticity_steps: np.ndarray  # (P,)
    switches: list[int]
    arms: dict[str, ArmData]
    per_seed: dict[str, dict[str, np.ndarray]]  # arm -> measure -> (S,)
    estimates: dict[str, dict[str, MetricEstimate]]  # arm -> measure -> estimate
    versus: dict[str, dict[str, MetricEstimate]]  # arm -> measure -> arm minus none
    missed: dict[str, int]  # arm -> segments (over seeds) that never reached the threshold


def gather(plan: StudyPlan, results: Mapping[str, ProgramResult]) -> StudyTables:
    """Every arm's records from the programs, checked to share one step grid."""
    steps: np.ndarray | None = None
    plasticity_steps: np.ndarray | None = None
    switches: list[int] | None = None
    arms: dict[str, ArmData] = {}
    for name, result in results.items():
        if steps is None:
            steps, plasticity_steps = result.curve_steps, result.plasticity_steps
            switches = result.switches
        elif plasticity_steps is None or not (
            np.array_equal(steps, result.curve_steps)
            and np.array_equal(plasticity_steps, result.plasticity_steps)
        ):
            raise CtxrlError(f"program {name!r} recorded on another step grid than the others")
        for label in dict.fromkeys(label for label, _ in result.agents):
            rows = [i for i, (arm, _) in enumerate(result.agents) if arm == label]
            arms[label] = ArmData(
                [result.agents[i][1] for i in rows],
                plan.env.normalise(result.curves[rows]),
                {k: v[rows] for k, v in result.plasticity.items()},
            )
    assert steps is not None and plasticity_steps is not None and switches is not None
    # a switch at the last step starts no segment
    switches = [s for s in switches if s < int(steps[-1])]
    ordered = {label: arms[label] for label in plan.labels}
    tables = StudyTables(steps, plasticity_steps, switches, ordered, {}, {}, {}, {})
    for label, data in ordered.items():
        tables.per_seed[label], tables.missed[label] = _measures(plan, tables, data)
        tables.estimates[label] = {k: mean_estimate(v) for k, v in tables.per_seed[label].items()}
    base = tables.per_seed[BASELINE]
    for label in plan.labels[1:]:
        tables.versus[label] = {
            k: bootstrap_estimate(
                [v[~np.isnan(v)], base[k][~np.isnan(base[k])]], difference_of_means
            )
            for k, v in tables.per_seed[label].items()
        }
    return tables


def _segments(steps: np.ndarray, switches: Sequence[int]) -> list[np.ndarray]:
    """Index arrays of the curve points of each segment: from its switch (the point taken at
    the switch step is measured in the new context: the trainer switches before it evaluates)
    to the last point before the next switch, the last segment to the curve's end."""
    bounds = [int(steps[0]), *switches, int(steps[-1])]
    out = []
    for k, (start, stop) in enumerate(itertools.pairwise(bounds)):
        before_stop = steps <= stop if k == len(bounds) - 2 else steps < stop
        index = np.nonzero((steps >= start) & before_stop)[0]
        if len(index) >= 2:
            out.append(index)
    return out


def _measures(
    plan: StudyPlan, tables: StudyTables, data: ArmData
) -> tuple[dict[str, np.ndarray], int]:
    steps, curves = tables.steps.astype(np.float64), data.curves
    segments = _segments(tables.steps, tables.switches)
    if len(segments) < 2:
        raise CtxrlError(
            "the study's curve has fewer than two segments with two points each: no switch "
            "happened within total_steps, or curve_every is longer than a segment"
        )
    auc = np.stack(
        [
            trapezoid(curves[:, idx], steps[idx], axis=1) / (steps[idx[-1]] - steps[idx[0]])
            for idx in segments
        ],
        axis=1,
    )  # (S, K)
    threshold = plan.config.threshold
    times, missed = [], 0
    for idx in segments[1:]:
        reached = curves[:, idx] >= threshold
        start = steps[idx[0]]
        # a segment that never reaches it counts its whole length, to the next switch (its
        # last point's offset, one curve interval shorter, read the same as a late success)
        later = [float(s) for s in tables.switches if s > start]
        length = (later[0] if later else steps[-1]) - start
        offsets = steps[idx] - start
        missed += int((~reached.any(axis=1)).sum())
        times.append(np.where(reached.any(axis=1), offsets[reached.argmax(axis=1)], length))
    # each segment's context per seed: plasticity lost = last visit - first visit
    lost = np.full(len(data.seeds), math.nan)
    late = np.full(len(data.seeds), math.nan)
    for row, seed in enumerate(data.seeds):
        schedule = plan.schedules[seed]
        keys = [
            json.dumps(schedule.context_at(int(tables.steps[idx[0]])).as_dict(), sort_keys=True)
            for idx in segments
        ]
        visits: dict[str, list[int]] = {}
        for k, key in enumerate(keys):
            visits.setdefault(key, []).append(k)
        repeated = [v for v in visits.values() if len(v) > 1]
        if repeated:
            lost[row] = float(np.mean([auc[row, v[-1]] - auc[row, v[0]] for v in repeated]))
            late[row] = float(np.mean([auc[row, v[-1]] for v in repeated]))
        else:
            half = len(keys) // 2
            lost[row] = float(auc[row, half:].mean() - auc[row, :half].mean())
            late[row] = float(auc[row, half:].mean())
    dormant = _layer_mean(data.plasticity, "dormant")
    before = [i for i, s in enumerate(tables.plasticity_steps) if s == tables.switches[0]]
    first = dormant[:, before[0]] if before and dormant.size else np.full(len(data.seeds), np.nan)
    end = dormant[:, -1] if dormant.size else np.full(len(data.seeds), np.nan)
    return (
        {
            "post_switch_auc": auc[:, 1:].mean(axis=1),
            "late_auc": late,
            "plasticity_lost": lost,
            "jumpstart": np.stack([curves[:, idx[0]] for idx in segments[1:]], axis=1).mean(1),
            "time_to_threshold": np.stack(times, axis=1).mean(axis=1),
            "dormant_first_switch": first,
            "dormant_end": end,
        },
        missed,
    )


def _layer_mean(plasticity: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """``metric`` averaged over the hidden layers that have it: ``(S, P)`` (empty if none)."""
    values = [v for k, v in plasticity.items() if k.split(".", 1)[0] == metric]
    if not values:
        return np.zeros((0, 0))
    with np.errstate(invalid="ignore"):
        mean: np.ndarray = np.nanmean(np.stack(values), axis=0)
    return mean


# ------------------------------------------------------------------------------ outputs
def format_estimate(estimate: MetricEstimate, digits: int = 3) -> str:
    """``estimate [low, high]``, the point alone without an interval, ``n/a`` when undefined."""
    if math.isnan(estimate.estimate):
        return "n/a"
    if math.isnan(estimate.low):
        return f"{estimate.estimate:.{digits}f}"
    return f"{estimate.estimate:.{digits}f} [{estimate.low:.{digits}f}, {estimate.high:.{digits}f}]"


def direction_verdict(estimate: MetricEstimate, better: int) -> str:
    """``better`` / ``worse`` for a difference whose interval excludes 0 (``better``: +1 when
    higher is better, -1 when lower is), ``no difference`` otherwise."""
    if math.isnan(estimate.low) or estimate.low <= 0 <= estimate.high:
        return "no difference"
    return "better" if (estimate.low > 0) == (better > 0) else "worse"


def write_outputs(plan: StudyPlan, results: Mapping[str, ProgramResult], run_dir: Path) -> str:
    """Write ``metrics.json``, ``curves.csv``, ``plasticity.csv``, the figures and
    ``summary.md``; returns the summary."""
    tables = gather(plan, results)
    _write_exports(tables, run_dir)
    figures = _write_figures(plan, tables, run_dir)
    summary = _summary(plan, tables, figures)
    (run_dir / "summary.md").write_text(summary)
    return summary


def _write_exports(tables: StudyTables, run_dir: Path) -> None:
    metrics = {
        label: {
            "per_seed": {k: [float(x) for x in v] for k, v in tables.per_seed[label].items()},
            "estimates": {k: e.to_json() for k, e in tables.estimates[label].items()},
            "versus_none": {k: e.to_json() for k, e in tables.versus.get(label, {}).items()},
            "missed_threshold_segments": tables.missed[label],
        }
        for label in tables.arms
    }
    data = {"switches": tables.switches, "arms": metrics}
    (run_dir / "metrics.json").write_text(json.dumps(data, indent=1, allow_nan=True))
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
    for stale in figures_dir.glob("*.png"):
        stale.unlink()
    written = []

    def mark_switches(ax: Any) -> None:
        for step in tables.switches:
            ax.axvline(step, color="0.6", linewidth=0.6, linestyle=":")

    fig, ax = plt.subplots(figsize=(9, 4))
    for label, arm in tables.arms.items():
        mean, low, high = curve_band(arm.curves)
        low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)  # returns lie in [0, 1]
        (line,) = ax.plot(tables.steps, mean, label=label, linewidth=1.2)
        ax.fill_between(tables.steps, low, high, color=line.get_color(), alpha=0.15)
    mark_switches(ax)
    ax.set_xlabel("env steps per agent (dotted: context switches)")
    ax.set_ylabel("normalised return in the current context")
    ax.set_title(f"{plan.env.name}: return across switches (mean, 95 % band over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(figures_dir / "returns.png", dpi=110)
    plt.close(fig)
    written.append("figures/returns.png")

    metrics = [m for m in FIGURE_METRICS if _layer_mean(tables.arms[BASELINE].plasticity, m).size]
    if metrics:
        cols = 2
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(10, 2.6 * rows), squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for label, arm in tables.arms.items():
                values = _layer_mean(arm.plasticity, metric)
                mean, low, high = curve_band(values)
                (line,) = ax.plot(tables.plasticity_steps, mean, label=label, linewidth=1.0)
                ax.fill_between(
                    tables.plasticity_steps, low, high, color=line.get_color(), alpha=0.12
                )
            mark_switches(ax)
            ax.set_title(f"{metric} (mean over hidden layers)", fontsize=9)
            ax.set_xlabel("env steps per agent", fontsize=8)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(figures_dir / "plasticity.png", dpi=110)
        plt.close(fig)
        written.append("figures/plasticity.png")
    return written


def _summary(plan: StudyPlan, tables: StudyTables, figures: Sequence[str]) -> str:
    config = plan.config
    lines = [
        f"# Plasticity study: {plan.env.name}, {config.algorithm}",
        "",
        f"{len(plan.labels)} arms x {len(config.seeds)} seeds, {config.total_steps} env steps "
        f"per agent, {len(tables.switches)} context switches (at "
        f"{', '.join(str(s) for s in tables.switches[:12])}"
        f"{', ...' if len(tables.switches) > 12 else ''}); schedule "
        f"`{json.dumps(config.schedule, sort_keys=True)}`. Returns normalised to [0, 1] by the "
        f"env's return bounds; 95 % bootstrap intervals over seeds; time to threshold at "
        f"{config.threshold}.",
        "",
        "## Each arm",
        "",
        "| arm | " + " | ".join(MEASURES[m][0] for m in MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for label in plan.labels:
        row = [
            format_estimate(tables.estimates[label][m], 0 if m == "time_to_threshold" else 3)
            for m in MEASURES
        ]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    base = tables.estimates[BASELINE]
    lost = base["plasticity_lost"]
    lines += [
        "",
        "## Does the baseline lose plasticity?",
        "",
        f"With no intervention, last-visit minus first-visit AUC is {format_estimate(lost)}"
        + (
            " (it learns its contexts worse than it used to: plasticity lost)."
            if lost.high < 0
            else " (no loss shown: the interval does not lie below 0)."
        )
        + " Its dormant fraction goes from "
        f"{format_estimate(base['dormant_first_switch'])} before the first switch to "
        f"{format_estimate(base['dormant_end'])} at the end.",
    ]
    if len(plan.labels) > 1:
        lines += [
            "",
            "## Each intervention against no intervention (difference of means, arm - none)",
            "",
            "| arm | " + " | ".join(MEASURES[m][0] for m in MEASURES) + " |",
            "|---|" + "---|" * len(MEASURES),
        ]
        for label in plan.labels[1:]:
            cells = []
            for measure, (_, better) in MEASURES.items():
                estimate = tables.versus[label][measure]
                digits = 0 if measure == "time_to_threshold" else 3
                verdict = direction_verdict(estimate, better)
                cells.append(f"{format_estimate(estimate, digits)} ({verdict})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    missed = {k: v for k, v in tables.missed.items() if v}
    if missed:
        lines += [
            "",
            "Segments that never reached the threshold (their whole length counted): "
            + ", ".join(f"{k} {v}" for k, v in missed.items())
            + f" of {len(config.seeds) * len(tables.switches)} per arm.",
        ]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)
