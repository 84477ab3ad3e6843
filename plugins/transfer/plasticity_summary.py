"""A plasticity study's ``summary.md``: each arm's measures with their intervals, whether the
baseline loses plasticity, each intervention against no intervention with its verdict, and
the sections on failed programs, diverged seeds and arms that trained exactly as the baseline.
:func:`format_estimate`, :func:`direction_verdict`, :func:`failure_lines` and
:func:`untouched_lines` are shared with the shifting-targets study
(:mod:`~ctxrl_plugins.transfer.plasticity_targets`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from ctxrl.transfer_metrics import MetricEstimate
from ctxrl_plugins.transfer.plasticity_analysis import MEASURES, StudyTables
from ctxrl_plugins.transfer.plasticity_plan import BASELINE, StudyPlan
from ctxrl_plugins.transfer.plasticity_runner import ProgramFailure


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


def summary_markdown(plan: StudyPlan, tables: StudyTables, figures: Sequence[str]) -> str:
    config = plan.config
    labels = list(tables.arms)
    trained = int(tables.steps[-1]) if len(tables.steps) else config.total_steps  # the last point
    steps = (
        f"{trained} env steps per agent"
        if trained == config.total_steps
        else f"{trained} env steps per agent (total_steps {config.total_steps} in whole iterations)"
    )
    lines = [
        f"# Plasticity study: {plan.env.name}, {config.algorithm}",
        "",
        f"{len(plan.labels)} arms x {len(config.seeds)} seeds, {steps}, "
        f"{len(tables.switches)} context switches (at "
        f"{', '.join(str(s) for s in tables.switches[:12])}"
        f"{', ...' if len(tables.switches) > 12 else ''}); schedule "
        f"`{json.dumps(config.schedule, sort_keys=True)}`. Returns normalised to [0, 1] by the "
        f"env's return bounds; 95 % intervals over seeds (Student's t); time to threshold at "
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
                " (no interval: one seed says nothing either way)."
                if math.isnan(lost.high)
                else " (it learns its contexts worse than it used to: plasticity lost)."
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
            "## Each intervention against no intervention (arm - none, paired by seed)",
            "",
        ]
    if others and tables.no_comparison:
        lines.append(f"Unavailable: {tables.no_comparison}.")
    elif others:
        lines += [
            "| arm | " + " | ".join(MEASURES[m][0] for m in MEASURES) + " |",
            "|---|" + "---|" * len(MEASURES),
        ]

        def never_reached(arm: str) -> bool:  # every segment of every finite seed missed
            segments = int(tables.arms[arm].finite.sum()) * len(tables.switches)
            return segments > 0 and tables.missed.get(arm, 0) == segments

        for label in others:
            cells = []
            for measure, (_, better) in MEASURES.items():
                estimate = tables.versus[label][measure]
                digits = 0 if measure == "time_to_threshold" else 3
                if (
                    measure == "time_to_threshold"
                    and never_reached(label)
                    and never_reached(BASELINE)
                ):  # both censored at the segments' lengths: "0, no difference" said nothing
                    cells.append("n/a (neither reached the threshold)")
                    continue
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
