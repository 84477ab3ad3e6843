"""The analysis and outputs of a shifting-target plasticity study
(:mod:`ctxrl_plugins.transfer.plasticity_targets`): per arm and seed each task's final error,
AUC and dormant fraction, the loss of plasticity and the other measures of :data:`MEASURES`
with 95 % intervals (Student's t) and paired differences to ``none``, and ``metrics.json``,
``figures/targets.png`` (and ``.svg``) and ``summary.md``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctxrl.errors import CtxrlError
from ctxrl.report import save_figure
from ctxrl.transfer_metrics import MetricEstimate, curve_band, mean_estimate
from ctxrl_plugins.transfer.plasticity_plan import BASELINE
from ctxrl_plugins.transfer.plasticity_runner import ProgramFailure
from ctxrl_plugins.transfer.plasticity_study_report import (
    direction_verdict,
    failure_lines,
    finite_or_none,
    format_estimate,
    untouched_lines,
)

if TYPE_CHECKING:  # the study module imports this one
    from ctxrl_plugins.transfer.plasticity_targets import TargetsResult, TargetsStudyConfig


# ------------------------------------------------------------------------------ analysis
MEASURES: dict[str, tuple[str, int]] = {
    "plasticity_lost": ("error, last minus first tasks (positive: plasticity lost)", -1),
    "late_error": ("final error of the last tasks", -1),
    "late_auc": ("AUC (mean 1 - error) of the last tasks", +1),
    "dormant_first": ("dormant fraction after the first task", -1),
    "dormant_end": ("dormant fraction after the last task", -1),
}
"""what each summary row measures and which direction is better"""


@dataclass
class ArmRecords:
    """One arm's records, seeds in the study's order: final errors ``(S, T)``, AUCs ``(S, T)``,
    dormant fraction (mean over hidden layers) ``(S, T)``."""

    seeds: list[int]
    final_error: np.ndarray
    auc: np.ndarray
    dormant: np.ndarray


def gather(labels: Sequence[str], results: Mapping[str, TargetsResult]) -> dict[str, ArmRecords]:
    """The records of every arm of ``labels`` that ``results`` hold (a failed one's are not)."""
    arms: dict[str, ArmRecords] = {}
    for result in results.values():
        dormant_keys = [k for k in result.metrics if k.startswith("dormant.")]
        dormant = np.mean([result.metrics[k] for k in dormant_keys], axis=0)
        for label in dict.fromkeys(label for label, _ in result.agents):
            rows = [i for i, (arm, _) in enumerate(result.agents) if arm == label]
            errors = result.errors[rows]
            arms[label] = ArmRecords(
                [result.agents[i][1] for i in rows],
                errors[:, :, -1],
                (1.0 - errors).mean(axis=2),
                dormant[rows],
            )
    return {label: arms[label] for label in labels if label in arms}


def diverged_seeds(arm: ArmRecords) -> list[int]:
    """The seeds of ``arm`` whose errors are not all finite (a diverged training): every
    measure leaves them out (``n_excluded``)."""
    finite = np.isfinite(arm.final_error).all(axis=1) & np.isfinite(arm.auc).all(axis=1)
    return [seed for seed, ok in zip(arm.seeds, finite, strict=True) if not ok]


def per_seed_measures(arm: ArmRecords, window: int) -> dict[str, np.ndarray]:
    """Every measure of :data:`MEASURES` per seed ``(S,)``; NaN for a diverged seed
    (:func:`diverged_seeds`), which every estimate leaves out."""
    first, last = arm.final_error[:, :window].mean(1), arm.final_error[:, -window:].mean(1)
    measures = {
        "plasticity_lost": last - first,
        "late_error": last,
        "late_auc": arm.auc[:, -window:].mean(1),
        "dormant_first": arm.dormant[:, 0].astype(np.float64),
        "dormant_end": arm.dormant[:, -1].astype(np.float64),
    }
    diverged = np.isin(arm.seeds, diverged_seeds(arm))
    return {name: np.where(diverged, np.nan, values) for name, values in measures.items()}


def _paired(values: np.ndarray, base: np.ndarray) -> MetricEstimate:
    return mean_estimate(values - base)


def analyse(
    labels: Sequence[str], results: Mapping[str, TargetsResult], window: int
) -> tuple[dict[str, ArmRecords], dict[str, dict[str, MetricEstimate]], dict[str, Any]]:
    """Per arm the records, the estimates of every measure, and (arms other than ``none``)
    the paired differences to ``none``: ``(arms, estimates, versus)``; the arms ``results``
    hold, with no differences when ``none`` is not among them (its program failed)."""
    arms = gather(labels, results)
    first, first_arm = next(iter(arms.items()))
    for label, arm in arms.items():
        if arm.seeds != first_arm.seeds:
            raise CtxrlError(f"arm {label!r} has seeds {arm.seeds}, {first} has {first_arm.seeds}")
    measures = {label: per_seed_measures(arm, window) for label, arm in arms.items()}
    estimates = {
        label: {k: mean_estimate(v) for k, v in values.items()}
        for label, values in measures.items()
    }
    versus = {
        label: {k: _paired(v, measures[BASELINE][k]) for k, v in measures[label].items()}
        for label in arms
        if label != BASELINE and BASELINE in arms
    }
    return arms, estimates, versus


def write_outputs(
    config: TargetsStudyConfig,
    labels: Sequence[str],
    results: Mapping[str, TargetsResult],
    run_dir: Path,
    *,
    failures: Sequence[ProgramFailure] = (),
    programs: int = 0,
) -> str:
    """``metrics.json``, ``figures/targets.png`` and ``summary.md`` of the arms ``results``
    hold; ``failures`` among the study's ``programs`` programs are named in the summary.
    Returns the summary."""
    task = config.shifting_targets
    if not results:  # every program failed: the summary names the failures, nothing else
        (run_dir / "metrics.json").write_text(json.dumps({}, indent=1, allow_nan=False))
        text = "\n".join(
            ["# Plasticity study: shifting targets", "", *failure_lines(programs, failures, [])]
        )
        (run_dir / "summary.md").write_text(text)
        return text
    arms, estimates, versus = analyse(labels, results, task.window)
    data = {
        label: {
            "seeds": arm.seeds,
            # a diverged seed's errors (NaN, inf) are null: strict JSON, and named below
            "final_error": [finite_or_none(row) for row in arm.final_error],
            "auc": [finite_or_none(row) for row in arm.auc],
            "dormant": [finite_or_none(row) for row in arm.dormant],
            "diverged_seeds": diverged_seeds(arm),
            "estimates": {k: v.to_json() for k, v in estimates[label].items()},
            "versus_none": {k: v.to_json() for k, v in versus.get(label, {}).items()},
        }
        for label, arm in arms.items()
    }
    (run_dir / "metrics.json").write_text(json.dumps(data, indent=1, allow_nan=False))
    figure = _write_figure(arms, run_dir)
    text = _summary(config, arms, estimates, versus, figure)
    if failures:
        title, rest = text.split("\n", 1)
        text = "\n".join([title, "", *failure_lines(programs, failures, list(arms)), rest])
    (run_dir / "summary.md").write_text(text)
    return text


def _write_figure(arms: Mapping[str, ArmRecords], run_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run_dir / "figures").mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, arm in arms.items():
        kept = ~np.isin(arm.seeds, diverged_seeds(arm))  # as every measure, the finite seeds
        if not kept.any():
            continue
        tasks = np.arange(1, arm.final_error.shape[1] + 1)
        for ax, values, ceiling in zip(
            axes, (arm.final_error[kept], arm.dormant[kept]), (np.inf, 1.0), strict=True
        ):
            mean, low, high = curve_band(values)
            # an error and a fraction: neither is negative, and a fraction is at most 1
            low, high = np.maximum(low, 0.0), np.minimum(high, ceiling)
            (line,) = ax.plot(tasks, mean, label=label, linewidth=1.2)
            ax.fill_between(tasks, low, high, color=line.get_color(), alpha=0.15)
    axes[0].set_ylabel("fit error at the task's end (MSE / target variance)")
    axes[1].set_ylabel("dormant fraction (mean over hidden layers)")
    for ax in axes:
        ax.set_xlabel("task (target set)")
    axes[0].set_title("shifting targets: final error per task (95 % band)", fontsize=9)
    axes[1].set_title("dormant units at each task's end", fontsize=9)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, run_dir / "figures" / "targets", dpi=110)
    plt.close(fig)
    return "figures/targets.png"


def _number(value: float) -> str:
    """``value`` to 3 decimals, ``n/a`` when there is none (every seed diverged)."""
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _summary(
    config: TargetsStudyConfig,
    arms: Mapping[str, ArmRecords],
    estimates: Mapping[str, Mapping[str, MetricEstimate]],
    versus: Mapping[str, Mapping[str, MetricEstimate]],
    figure: str,
) -> str:
    task = config.shifting_targets
    seeds = len(config.seeds)
    lines = [
        "# Plasticity study: shifting targets",
        "",
        f"{task.tasks} target sets x {task.steps_per_task} Adam steps (learning rate "
        f"{task.learning_rate}, batch {task.batch_size}) on {task.points} fixed inputs "
        f"({task.input_dim} features, targets N(0, {task.target_scale}^2)); network "
        f"{task.activation} {'x'.join(map(str, task.hidden))}; {len(arms)} arms x {seeds} seeds. "
        f"Error: MSE / target variance at a task's end; first/last = mean over the first/last "
        f"{task.window} tasks. Mean [95 % CI, Student's t] over seeds; differences to none are "
        "paired by seed (same data and initial weights).",
        "",
        "| arm | error, first tasks | error, last tasks | plasticity lost | dormant, first "
        "-> last |",
        "|---|---|---|---|---|",
    ]
    for label, arm in arms.items():
        kept = ~np.isin(arm.seeds, diverged_seeds(arm))  # the seeds every measure uses
        first = f"{arm.final_error[kept, : task.window].mean():.3f}" if kept.any() else "n/a"
        e = estimates[label]
        lines.append(
            f"| {label} | {first} | {format_estimate(e['late_error'])} | "
            f"{format_estimate(e['plasticity_lost'])} "
            f"| {_number(e['dormant_first'].estimate)} -> {format_estimate(e['dormant_end'])} |"
        )
    diverged = [
        f"{label} seed {seed}" for label, arm in arms.items() for seed in diverged_seeds(arm)
    ]
    if diverged:
        lines += [
            "",
            f"Diverged (errors not finite), left out of every measure: {', '.join(diverged)}.",
        ]
    if versus:
        lines += [
            "",
            "Against none (arm - none):",
            "",
            "| arm | " + " | ".join(MEASURES[k][0] for k in MEASURES) + " |",
            "|---|" + "---|" * len(MEASURES),
        ]
        for label, values in versus.items():
            cells = [
                "n/a"  # undefined, as the env study prints it
                if math.isnan(values[k].estimate)
                else f"{format_estimate(values[k])} ({direction_verdict(values[k], better)})"
                for k, (_, better) in MEASURES.items()
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        untouched = [
            label
            for label in versus
            if np.array_equal(arms[label].final_error, arms[BASELINE].final_error, equal_nan=True)
            and np.array_equal(arms[label].dormant, arms[BASELINE].dormant, equal_nan=True)
        ]
        lines += untouched_lines(untouched)
    lines += ["", f"![final error and dormant units per task]({figure})", ""]
    return "\n".join(lines)
