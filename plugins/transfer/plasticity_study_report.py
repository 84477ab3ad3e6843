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

A seed whose curve is not finite somewhere (its training *diverged*: NaN or infinite
parameters) is left out of every metric, interval, comparison and figure, and named (arm, seed)
in the summary and ``metrics.json``; an arm with no finite seed left has NaN estimates (``null``
in JSON, ``n/a`` in the summary) with a note saying so. Arms whose program failed
(:class:`~ctxrl_plugins.transfer.plasticity_study.ProgramFailure`) are named with the error;
the report covers the rest, and says that comparisons are unavailable when the baseline's
program failed or every baseline seed diverged.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
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
    mean_of,
)
from ctxrl_plugins.transfer.plasticity_plan import BASELINE, StudyPlan
from ctxrl_plugins.transfer.plasticity_runner import ProgramFailure, ProgramResult

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
    """One arm's records, seeds in the study's order (diverged seeds included)."""

    seeds: list[int]
    curves: np.ndarray  # (S, T) normalised returns
    plasticity: dict[str, np.ndarray]  # {metric}.{layer} -> (S, P)

    @property
    def finite(self) -> np.ndarray:
        """``(S,)`` bool: the seeds whose curve is finite at every point (not diverged)."""
        finite: np.ndarray = np.isfinite(self.curves).all(axis=1)
        return finite

    @property
    def diverged(self) -> list[int]:
        """The seeds whose curve is not finite somewhere: their training diverged."""
        return [seed for seed, ok in zip(self.seeds, self.finite, strict=True) if not ok]

    def rows(self, keep: np.ndarray) -> ArmData:
        """The seeds where ``keep`` ``(S,)`` is True."""
        return ArmData(
            [seed for seed, kept in zip(self.seeds, keep, strict=True) if kept],
            self.curves[keep],
            {name: values[keep] for name, values in self.plasticity.items()},
        )


@dataclass
class StudyTables:
    steps: np.ndarray  # (T,)
    plasticity_steps: np.ndarray  # (P,)
    switches: list[int]
    arms: dict[str, ArmData]  # the arms whose program finished, in the plan's order
    per_seed: dict[str, dict[str, np.ndarray]]  # arm -> measure -> (S,), NaN where diverged
    estimates: dict[str, dict[str, MetricEstimate]]  # arm -> measure -> estimate
    versus: dict[str, dict[str, MetricEstimate]]  # arm -> measure -> arm minus none
    missed: dict[str, int]  # arm -> segments (over finite seeds) that never reached it
    failures: list[ProgramFailure]  # the programs that failed (their arms are not in arms)
    no_comparison: str = ""  # why there is no comparison with none (empty when there is)


def gather(
    plan: StudyPlan,
    results: Mapping[str, ProgramResult],
    failures: Sequence[ProgramFailure] = (),
) -> StudyTables:
    """Every arm's records from the programs that finished (at least one), checked to share
    one step grid; the measures of each arm's finite seeds and their comparisons with
    ``none`` (none when the baseline's program failed or every baseline seed diverged)."""
    if not results:
        raise CtxrlError("no program of the study finished: nothing to analyse")
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
    ordered = {label: arms[label] for label in plan.labels if label in arms}
    tables = StudyTables(steps, plasticity_steps, switches, ordered, {}, {}, {}, {}, list(failures))
    for label, data in ordered.items():
        tables.per_seed[label], tables.missed[label] = _measures(plan, tables, data)
        note = _diverged_note(data)
        tables.estimates[label] = {
            k: _arm_estimate(v, note) for k, v in tables.per_seed[label].items()
        }
    if BASELINE not in ordered:
        tables.no_comparison = "the baseline's program failed"
        return tables
    if not ordered[BASELINE].finite.any():
        tables.no_comparison = "every baseline seed diverged"
        return tables
    base = tables.per_seed[BASELINE]
    for label in list(ordered)[1:]:
        note = _diverged_note(ordered[label])
        tables.versus[label] = {
            k: bootstrap_estimate(
                [v[~np.isnan(v)], base[k][~np.isnan(base[k])]],
                difference_of_means,
                note=note,
            )
            for k, v in tables.per_seed[label].items()
        }
    return tables


def _diverged_note(data: ArmData) -> str:
    """What an estimate of ``data``'s arm leaves out for divergence (empty when nothing)."""
    diverged = data.diverged
    if not diverged:
        return ""
    seeds = ", ".join(str(seed) for seed in diverged)
    left = "no finite seed is left" if len(diverged) == len(data.seeds) else "left out"
    return f"diverged: seed(s) {seeds} of {len(data.seeds)} (non-finite returns); {left}"


def _arm_estimate(values: np.ndarray, note: str) -> MetricEstimate:
    """Mean over seeds of one arm's ``(S,)`` per-seed values (NaN for a diverged seed or an
    undefined value, left out and counted) with its bootstrap interval; ``note`` says which
    seeds diverged."""
    kept = values[~np.isnan(values)]
    excluded = int(values.size - kept.size)
    return bootstrap_estimate(
        [kept],
        mean_of,
        per_seed=[float(v) for v in values],
        n_excluded=excluded,
        note=note or (f"{excluded} of {values.size} seeds left out (NaN)" if excluded else ""),
    )


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
    """Each measure's ``(S,)`` per-seed values (NaN for a diverged seed, left out: a NaN
    curve read as never reaching the threshold) and the segments of the finite seeds that
    never reached the threshold."""
    segments = _segments(tables.steps, tables.switches)
    if len(segments) < 2:
        raise CtxrlError(
            "the study's curve has fewer than two segments with two points each: no switch "
            "happened within total_steps, or curve_every is longer than a segment"
        )
    finite = data.finite
    per_seed = {name: np.full(len(data.seeds), math.nan) for name in MEASURES}
    if not finite.any():
        return per_seed, 0
    measured, missed = _finite_measures(plan, tables, data.rows(finite), segments)
    for name, values in measured.items():
        per_seed[name][finite] = values
    return per_seed, missed


def _finite_measures(
    plan: StudyPlan, tables: StudyTables, data: ArmData, segments: Sequence[np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """:func:`_measures` on seeds whose curves ``(S, T)`` are finite throughout."""
    steps, curves = tables.steps.astype(np.float64), data.curves
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
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a point no layer has: NaN
        mean: np.ndarray = np.nanmean(np.stack(values), axis=0)
    return mean


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`~ctxrl.transfer_metrics.curve_band` of ``(S, T)`` values, a point no seed has
    (NaN) left NaN without numpy's warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return curve_band(values)


# ------------------------------------------------------------------------------ outputs
def format_estimate(estimate: MetricEstimate, digits: int = 3) -> str:
    """``estimate [low, high]``, the point alone without an interval, ``n/a`` when undefined;
    ``digits`` decimals, or two significant digits for a number that would read as 0 with
    them (a difference of -4e-05 is not "-0.000 [-0.000, -0.000] (worse)")."""
    if math.isnan(estimate.estimate):
        return "n/a"

    def number(value: float) -> str:
        return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10**-digits else f"{value:.1e}"

    if math.isnan(estimate.low):
        return number(estimate.estimate)
    return f"{number(estimate.estimate)} [{number(estimate.low)}, {number(estimate.high)}]"


def direction_verdict(estimate: MetricEstimate, better: int) -> str:
    """``better`` / ``worse`` for a difference whose interval excludes 0 (``better``: +1 when
    higher is better, -1 when lower is), ``no difference`` otherwise, ``no interval`` when
    there is none (one seed: nothing said either way)."""
    if math.isnan(estimate.low) or math.isnan(estimate.high):
        return "no interval"
    if estimate.low <= 0 <= estimate.high:
        return "no difference"
    return "better" if (estimate.low > 0) == (better > 0) else "worse"


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
        for stale in (run_dir / "figures").glob("*.png"):
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
    summary = _summary(plan, tables, figures)
    (run_dir / "summary.md").write_text(summary)
    return summary


def _finite_or_none(values: Sequence[float] | np.ndarray) -> list[float | None]:
    """Per-seed values for JSON: NaN (a diverged seed) and infinities as ``null``."""
    return [float(x) if math.isfinite(x) else None for x in values]


def _failed_json(failures: Sequence[ProgramFailure]) -> list[dict[str, Any]]:
    return [{k: v for k, v in failure.to_json().items() if k != "details"} for failure in failures]


def _write_exports(tables: StudyTables, run_dir: Path) -> None:
    metrics = {
        label: {
            "per_seed": {k: _finite_or_none(v) for k, v in tables.per_seed[label].items()},
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
    for stale in figures_dir.glob("*.png"):
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
    fig.savefig(figures_dir / "returns.png", dpi=110)
    plt.close(fig)
    written.append("figures/returns.png")

    metrics = [
        m for m in FIGURE_METRICS if any(_layer_mean(a.plasticity, m).size for a in drawn.values())
    ]
    if metrics:
        cols = 2
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(10, 2.6 * rows), squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for label, arm in drawn.items():
                values = _layer_mean(arm.plasticity, metric)
                if not values.size:
                    continue
                mean, low, high = _band(values)
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


def failure_lines(
    programs: int, failures: Sequence[ProgramFailure], reported: Sequence[str]
) -> list[str]:
    """The summary's section on the ``failures`` among a study's ``programs`` programs (none
    when nothing failed); ``reported``: the arms the report covers."""
    if not failures:
        return []
    lost = [arm for failure in failures for arm in failure.arms]
    lines = [
        "## Failed programs",
        "",
        f"{len(failures)} of {programs} batched program(s) failed; their arms "
        f"({', '.join(lost)}) have no results"
        + (f" (the report covers {', '.join(reported)})" if reported else "")
        + ". Rerun the study to retry them: the finished programs are not trained again.",
        "",
    ]
    lines += [f"- {failure.describe()}" for failure in failures]
    return [*lines, ""]


def _same_as_baseline(tables: StudyTables) -> list[str]:
    """The arms whose every curve and plasticity record equals the baseline's, seed by seed:
    their interventions never changed a weight within the budget."""
    base = tables.arms.get(BASELINE)
    if base is None:
        return []
    return [
        label
        for label, arm in tables.arms.items()
        if label != BASELINE
        and arm.seeds == base.seeds
        and np.array_equal(arm.curves, base.curves, equal_nan=True)
        and arm.plasticity.keys() == base.plasticity.keys()
        and all(
            np.array_equal(values, base.plasticity[name], equal_nan=True)
            for name, values in arm.plasticity.items()
        )
    ]


def untouched_lines(labels: Sequence[str]) -> list[str]:
    """The summary's note on arms that trained exactly as the baseline (none when none did)."""
    if not labels:
        return []
    return [
        "",
        f"{', '.join(labels)} trained exactly as none: every record is equal, seed by seed, so "
        "their interventions changed nothing within this budget (one that acts every N "
        "gradient steps, as `redo` and `reset` do, may never have acted: check its options "
        "against the number of updates).",
    ]


def _diverged_lines(tables: StudyTables) -> list[str]:
    """The summary's section on diverged seeds (none when every seed is finite)."""
    lines = []
    for label, arm in tables.arms.items():
        diverged = arm.diverged
        if not diverged:
            continue
        seeds = ", ".join(str(seed) for seed in diverged)
        what = (
            "no finite seed is left, so its metrics are n/a"
            if len(diverged) == len(arm.seeds)
            else "they are left out of every metric, interval and figure"
        )
        lines.append(
            f"- **{label} diverged**: seed(s) {seeds} ({len(diverged)} of {len(arm.seeds)}) "
            f"have non-finite returns (NaN or infinite); {what}."
        )
    if not lines:
        return []
    return ["## Diverged seeds", "", *lines, ""]


def _summary(plan: StudyPlan, tables: StudyTables, figures: Sequence[str]) -> str:
    config = plan.config
    labels = list(tables.arms)
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
        *failure_lines(len(plan.programs), tables.failures, labels),
        *_diverged_lines(tables),
        "## Each arm",
        "",
        "| arm | " + " | ".join(MEASURES[m][0] for m in MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for label in labels:
        row = [
            format_estimate(tables.estimates[label][m], 0 if m == "time_to_threshold" else 3)
            for m in MEASURES
        ]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines += ["", "## Does the baseline lose plasticity?", ""]
    if tables.no_comparison:
        lines.append(
            f"Not known: {tables.no_comparison}, so there is no baseline, and comparisons with "
            "no intervention are unavailable."
        )
    else:
        base = tables.estimates[BASELINE]
        lost = base["plasticity_lost"]
        lines.append(
            f"With no intervention, last-visit minus first-visit AUC is {format_estimate(lost)}"
            + (
                " (it learns its contexts worse than it used to: plasticity lost)."
                if lost.high < 0
                else " (no loss shown: the interval does not lie below 0)."
            )
            + " Its dormant fraction goes from "
            f"{format_estimate(base['dormant_first_switch'])} before the first switch to "
            f"{format_estimate(base['dormant_end'])} at the end."
        )
    others = labels[1:] if labels and labels[0] == BASELINE else labels
    if others:
        lines += [
            "",
            "## Each intervention against no intervention (difference of means, arm - none)",
            "",
        ]
    if others and tables.no_comparison:
        lines.append(f"Unavailable: {tables.no_comparison}.")
    elif others:
        lines += [
            "| arm | " + " | ".join(MEASURES[m][0] for m in MEASURES) + " |",
            "|---|" + "---|" * len(MEASURES),
        ]
        for label in others:
            cells = []
            for measure, (_, better) in MEASURES.items():
                estimate = tables.versus[label][measure]
                digits = 0 if measure == "time_to_threshold" else 3
                if math.isnan(estimate.estimate):
                    cells.append("n/a")
                    continue
                verdict = direction_verdict(estimate, better)
                cells.append(f"{format_estimate(estimate, digits)} ({verdict})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += untouched_lines(_same_as_baseline(tables))
    missed = {k: v for k, v in tables.missed.items() if v}
    if missed:
        finite = {label: int(arm.finite.sum()) for label, arm in tables.arms.items()}
        lines += [
            "",
            "Segments that never reached the threshold (their whole length counted): "
            + ", ".join(f"{k} {v} of {finite[k] * len(tables.switches)}" for k, v in missed.items())
            + " (switches x finite seeds).",
        ]
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)
