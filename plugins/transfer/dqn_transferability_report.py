"""The analysis of a DQN transferability study (:mod:`ctxrl_plugins.transfer.dqn_transferability`):
every transfer arm against scratch per (source, target) pair with :mod:`ctxrl.transfer_metrics`,
and its outputs: metrics JSON, a CSV of every pair, matrices ``ctxrl select`` reads, heatmaps of
the area ratio with the verdicts, learning curves per arm with bands, and ``summary.md``.

A diverged agent (a NaN or inf return anywhere on its learning curve, e.g. from an exploding
learning rate, or a transfer agent that started from a diverged source) is left out of every
metric, plot and matrix and named in ``metrics.json`` (``diverged``) and the summary; the
metrics come from the remaining seeds, and a pair with no finite seed left in either arm gets
no estimate and no verdict rather than failing the whole report."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctxrl.report import save_figure
from ctxrl.selection import json_safe
from ctxrl.transfer_metrics import curve_band, finite_seeds
from ctxrl_plugins.transfer.dqn_transferability_plan import ARMS, Pair, StudyPlan
from ctxrl_plugins.transfer.dqn_transferability_runner import ArmResult

METRICS = ("area_ratio", "jumpstart", "asymptote", "auc", "transfer_ratio")
VERDICTS = ("positive", "negative", "absent", "undetermined")
"""A pair's verdict: its interval above, below or around 0 (Sabatelli & Geurts' categories),
or no interval at all (one seed per arm)."""


def _metric(comparison: Any, name: str) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of one metric of a :class:`TransferComparison`."""
    value = getattr(comparison, name)
    if hasattr(value, "advantage"):  # a MetricComparison: transfer against scratch
        value = value.advantage
    return float(value.estimate), float(value.low), float(value.high)


def _pair_metric(pair: Mapping[str, Any], metric: str) -> tuple[str, str, str, str]:
    """``(estimate, low, high, note)`` of one metric of a pair's JSON as CSV fields: a number
    in 6 significant digits, or empty where it is undefined (every seed of an arm diverged,
    a ratio over a zero scratch area, no interval with one seed), the note saying why."""
    value = pair.get(metric) or {}
    if "advantage" in value:  # a MetricComparison: transfer against scratch
        value = value["advantage"] or {}
    numbers = tuple(
        "" if value.get(key) is None else f"{value[key]:.6g}" for key in ("estimate", "low", "high")
    )
    note = value.get("note") or pair.get("no_estimate") or ""
    return numbers[0], numbers[1], numbers[2], str(note)


def normalise(plan: StudyPlan, result: ArmResult) -> np.ndarray:
    """An arm's curves ``(agents, T)`` normalised to [0, 1] by each agent's target env's
    return bounds; a return that is not finite (a diverged agent) is NaN, not clipped to a
    bound."""
    out = np.empty_like(result.curves)
    for i, (key, _) in enumerate(result.keys):
        target = key if isinstance(key, int) else key.target
        out[i] = plan.envs[target].normalise_curves(result.curves[i])
    return out


def diverged_agents(
    plan: StudyPlan, variant: str, arm: str, result: ArmResult
) -> list[dict[str, Any]]:
    """The agents of one arm whose learning curve ``(T,)`` is not finite somewhere (a diverged
    training), each as ``{variant, arm, source, target, seed, from_step}``: ``source`` is None
    for a scratch agent (trained on ``target`` alone), ``seed`` the study's seed and
    ``from_step`` the first grid step with a non-finite return."""
    out = []
    for i in np.flatnonzero(~finite_seeds(result.curves)):
        key, seed = result.keys[i]
        source, target = (None, key) if isinstance(key, int) else (key.source, key.target)
        first = int(np.argmax(~np.isfinite(result.curves[i])))
        out.append(
            {
                "variant": variant,
                "arm": arm,
                "source": None if source is None else plan.names[source],
                "target": plan.names[target],
                "seed": int(seed),
                "from_step": int(result.steps[first]),
            }
        )
    return out


def _agent_name(agent: Mapping[str, Any]) -> str:
    """``fine-tune short -> long, seed 0`` or ``scratch on long, seed 0``."""
    where = (
        f"on {agent['target']}"
        if agent["source"] is None
        else f"{agent['source']} -> {agent['target']}"
    )
    return f"{agent['arm']} {where}, seed {agent['seed']}"


def analyse(plan: StudyPlan, results: Mapping[str, Mapping[str, ArmResult]]) -> dict[str, Any]:
    """Every transfer arm of every variant against scratch on the target, per (source,
    target) pair: the comparisons (JSON), matrices of each metric ``(S, T)`` with their 95 %
    intervals, the verdicts, and the counts of positive / negative / absent / undetermined
    (no interval) pairs.

    Returns are normalised to [0, 1] by the env's return bounds before any metric (so the
    area ratio is taken on non-negative curves, as the paper does).

    Diverged agents (see :func:`diverged_agents`) are listed under ``diverged`` and left out
    of the metrics, which count them per estimate (``n_excluded``, ``note``); a pair with an
    arm that has no finite seed left keeps null matrix entries and an empty verdict, and its
    entry in ``pairs`` says why (``no_estimate``)."""
    from ctxrl.transfer_metrics import compare_transfer_finite

    config, n = plan.config, len(plan.contexts)
    threshold = 0.9 if config.threshold is None else config.threshold
    out: dict[str, Any] = {
        "variants": {},
        "threshold": threshold,
        "names": plan.names,
        "diverged": [
            agent
            for variant, arms in results.items()
            for arm, result in arms.items()
            for agent in diverged_agents(plan, variant, arm, result)
        ],
    }
    for variant, arms in results.items():
        scratch = arms["scratch"]
        steps = scratch.steps
        scratch_rows: dict[int, list[int]] = {}
        for i, (context, _) in enumerate(scratch.keys):
            scratch_rows.setdefault(int(context), []).append(i)  # type: ignore[arg-type]
        normalised = {arm: normalise(plan, r) for arm, r in arms.items()}
        variant_out: dict[str, Any] = {}
        for arm, result in arms.items():
            if arm == "scratch":
                continue
            rows: dict[tuple[int, int], list[int]] = {}
            for i, (pair, _) in enumerate(result.keys):
                assert isinstance(pair, Pair)
                rows.setdefault((pair.source, pair.target), []).append(i)
            matrices = {m: np.full((n, n, 3), np.nan) for m in METRICS}
            verdicts = np.full((n, n), "", dtype=object)
            pairs_out = []
            for (s, t), agent_rows in sorted(rows.items()):
                comparison = compare_transfer_finite(
                    result.steps,
                    normalised[arm][agent_rows],
                    steps,
                    normalised["scratch"][scratch_rows[t]],
                    threshold=threshold,
                    absent_band=config.absent_band,
                    return_floor=0.0,
                    source_steps=config.train_steps,
                )
                pair_out: dict[str, Any] = {"source": plan.names[s], "target": plan.names[t]}
                pair_out.update(comparison.to_json())
                if comparison.n_transfer_seeds and comparison.n_scratch_seeds:
                    for metric in METRICS:
                        matrices[metric][s, t] = _metric(comparison, metric)
                    verdicts[s, t] = comparison.verdict
                else:  # every seed of an arm diverged: nothing to judge (null, no verdict)
                    pair_out["verdict"] = None
                    pair_out["no_estimate"] = comparison.area_ratio.note
                pairs_out.append(pair_out)
            counts = {v: int(np.sum(verdicts == v)) for v in VERDICTS}
            variant_out[arm] = {
                "pairs": pairs_out,
                # pairs not run (``pairs: self`` / ``cross``) and missing intervals: null
                "matrices": {m: json_safe(v) for m, v in matrices.items()},
                "verdicts": verdicts.tolist(),
                "counts": counts,
            }
        out["variants"][variant] = variant_out
    return out


def write_outputs(
    plan: StudyPlan, results: Mapping[str, Mapping[str, ArmResult]], run_dir: Path
) -> str:
    """Exports (metrics JSON, a CSV of every pair, matrices readable by ``ctxrl select``),
    figures (heatmaps of r with the verdicts, learning curves per arm with bands) and
    ``summary.md``; returns the summary."""
    analysis = analyse(plan, results)
    exports, figures = run_dir / "exports", run_dir / "figures"
    exports.mkdir(exist_ok=True)
    figures.mkdir(exist_ok=True)
    (exports / "metrics.json").write_text(
        json.dumps(analysis, indent=2, allow_nan=False, default=_json_default)
    )
    header = [
        "variant",
        "arm",
        "source",
        "target",
        "metric",
        "estimate",
        "low",
        "high",
        "verdict",
        "note",
    ]
    rows: list[list[str]] = [header]
    written: list[Path] = []
    for variant, arms in analysis["variants"].items():
        for arm, data in arms.items():
            for pair in data["pairs"]:  # every pair that ran; one not run has no row
                for metric in METRICS:
                    estimate, low, high, note = _pair_metric(pair, metric)
                    verdict = pair.get("verdict") or ""
                    key = [variant, arm, pair["source"], pair["target"], metric]
                    rows.append([*key, estimate, low, high, verdict, note])
            # matrices ctxrl select reads: one header-less S x T CSV (row = source)
            area = np.array(data["matrices"]["area_ratio"], dtype=np.float64)[..., 0]
            np.savetxt(exports / f"matrix_r_{variant}_{arm}.csv", area, delimiter=",")
        for arm, result in results[variant].items():
            if arm == "scratch":
                continue
            # the normalised mean return over the whole curve of source s fine-tuned on t:
            # a performance matrix in [0, 1] (ctxrl select --bounds 0 1)
            perf = np.full((len(plan.contexts),) * 2, np.nan)
            normalised = normalise(plan, result)
            span = float(result.steps[-1] - result.steps[0])
            for (s, t), agent_rows in _rows(result).items():
                auc = np.trapezoid(normalised[agent_rows], result.steps, axis=1) / span
                auc = auc[np.isfinite(auc)]  # diverged agents left out; none left: NaN
                perf[s, t] = float(np.mean(auc)) if auc.size else np.nan
            np.savetxt(exports / f"matrix_performance_{variant}_{arm}.csv", perf, delimiter=",")
        written += _plot_study(plan, results[variant], arms, variant, figures)
    with (exports / "pairs.csv").open("w", newline="") as stream:
        csv.writer(stream, lineterminator="\n").writerows(rows)
    summary = _summary_markdown(plan, analysis, [p.relative_to(run_dir) for p in written])
    (run_dir / "summary.md").write_text(summary)
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    raise TypeError(f"not JSON: {type(value).__name__}")


def _rows(result: ArmResult) -> dict[tuple[int, int], list[int]]:
    rows: dict[tuple[int, int], list[int]] = {}
    for i, (pair, _) in enumerate(result.keys):
        assert isinstance(pair, Pair)
        rows.setdefault((pair.source, pair.target), []).append(i)
    return rows


def _plot_study(
    plan: StudyPlan,
    results: Mapping[str, ArmResult],
    analysis: Mapping[str, Any],
    variant: str,
    directory: Path,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, names = len(plan.contexts), plan.names
    written: list[Path] = []
    arms = [a for a in analysis if a != "scratch"]
    # heatmaps of the area ratio, verdicts marked
    fig, axes = plt.subplots(
        1, len(arms), figsize=(4.0 * len(arms), 3.4), squeeze=False, layout="constrained"
    )
    marks = {"positive": "+", "negative": "-", "absent": "o", "undetermined": "?"}
    for ax, arm in zip(axes[0], arms, strict=True):
        r = np.array(analysis[arm]["matrices"]["area_ratio"], dtype=np.float64)[..., 0]
        limit = max(0.05, float(np.nanmax(np.abs(r)))) if np.isfinite(r).any() else 1.0
        image = ax.imshow(r, cmap="RdBu", vmin=-limit, vmax=limit, origin="lower")
        for s, t in np.ndindex(r.shape):
            verdict = analysis[arm]["verdicts"][s][t]
            if verdict:
                dark = abs(r[s, t]) > 0.6 * limit  # light text on the dark end of the scale
                ax.text(
                    t,
                    s,
                    f"{r[s, t]:+.2f}\n{marks[verdict]}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
        for pair in analysis[arm]["pairs"]:
            if "no_estimate" in pair:  # run, but an arm has no finite seed left
                t, s = names.index(pair["target"]), names.index(pair["source"])
                ax.text(t, s, "diverged", ha="center", va="center", fontsize=6, color="grey")
        ax.set_xticks(range(n), names, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(f"{arm}: area ratio r", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(
        f"{plan.env.name}, {variant}: transfer (+ positive, - negative, o absent, ? no interval; "
        "95% CI)",
        fontsize=9,
    )
    written += save_figure(fig, directory / f"area_ratio_{variant}")
    plt.close(fig)
    # learning curves per target: scratch and every arm, mean over seeds and pairs of the
    # panel with the Student-t 95 % band of the mean over seeds shaded
    fig, axes = plt.subplots(
        n, n, figsize=(2.6 * n, 2.2 * n), squeeze=False, sharex=True, sharey=True
    )
    scratch = results["scratch"]
    colours: dict[str, Any] = {arm: plt.get_cmap("tab10")(i) for i, arm in enumerate(ARMS)}
    for (s, t), ax in np.ndenumerate(axes):
        panels = {"scratch": [i for i, (c, _) in enumerate(scratch.keys) if c == t]}
        for arm in arms:
            rows = _rows(results[arm]).get((s, t), [])
            if rows:
                panels[arm] = rows
        for arm, rows in panels.items():
            result = results[arm]
            values = normalise(plan, result)[rows]
            values = values[finite_seeds(values)]  # diverged agents left out
            if not values.shape[0]:
                continue
            mean, low, high = curve_band(values)  # Student-t over the seeds
            ax.plot(result.steps, mean, color=colours[arm], linewidth=1.0, label=arm)
            if values.shape[0] > 1:
                ax.fill_between(result.steps, low, high, color=colours[arm], alpha=0.2)
        ax.set_title(f"{names[s]} -> {names[t]}", fontsize=7)
        ax.tick_params(labelsize=6)
    # every arm's line, from any panel: a panel whose agents all diverged has none
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        axes[0, 0].legend(list(handles.values()), list(handles), fontsize=6)
    fig.supxlabel("target env steps")
    fig.supylabel("normalised return")
    written += save_figure(fig, directory / f"curves_{variant}", dpi=120)
    plt.close(fig)
    return written


def _summary_markdown(plan: StudyPlan, analysis: Mapping[str, Any], figures: list[Path]) -> str:
    config = plan.config
    lines = [
        f"# DQN transferability: {plan.env.name}",
        "",
        f"Contexts {', '.join(plan.names)}; pairs: {config.pairs}; seeds {config.seeds}; "
        f"{config.train_steps:,} env steps per agent and arm, curve every "
        f"{config.curve_every:,} steps ({config.curve_episodes} episodes). Returns normalised "
        f"to [0, 1] by the env's return bounds {list(plan.env.return_bounds)}. Source training "
        "time not counted (each transfer curve starts at the target's step 0)."
        + (
            " The hybrid arm starts from the fine-tune and only-head arms' final weights, so "
            "it has used twice their target steps before its own."
            if "hybrid" in config.arms
            else ""
        )
        + (
            " Verdicts: positive / negative only when the bootstrap 95 % interval of r excludes 0."
            if config.absent_band == 0.0
            else f" Verdicts: positive / negative only when the bootstrap 95 % interval of r "
            f"lies entirely above {config.absent_band:g} / below -{config.absent_band:g} "
            "(absent_band), absent otherwise."
        )
        + (
            f" Source agents: the sweep in {config.sources_from} (matched by context and "
            "seed), not the scratch arm."
            if config.sources_from is not None
            else ""
        ),
        "",
    ]
    diverged = analysis["diverged"]
    if diverged:
        lines += [
            f"**{len(diverged)} diverged agent(s)** (a return that is not finite: NaN or inf), "
            "left out of every metric, matrix and plot; each estimate in exports/metrics.json "
            "counts them (`n_excluded`, `note`), and a pair with no finite seed left in an arm "
            "has no estimate and no verdict:",
            "",
            *(
                f"- {agent['variant']}: {_agent_name(agent)} (not finite from step "
                f"{agent['from_step']:,})"
                for agent in diverged
            ),
            "",
        ]
    for variant, arms in analysis["variants"].items():
        lines += [
            f"## {variant}",
            "",
            "| arm | positive | negative | absent | undetermined (no interval) | mean r |",
            "|---|---|---|---|---|---|",
        ]
        for arm, data in arms.items():
            r = np.array(data["matrices"]["area_ratio"], dtype=np.float64)[..., 0]
            counts = data["counts"]
            mean_r = f"{np.mean(r[np.isfinite(r)]):+.3f}" if np.isfinite(r).any() else "n/a"
            lines.append(
                f"| {arm} | {counts['positive']} | {counts['negative']} | "
                f"{counts['absent']} | {counts.get('undetermined', 0)} | {mean_r} |"
            )
        lines += [
            "",
            "| arm | source -> target | r [95% CI] | jumpstart [95% CI] | verdict |",
            "|---|---|---|---|---|",
        ]
        for arm, data in arms.items():
            r = np.array(data["matrices"]["area_ratio"], dtype=np.float64)
            jump = np.array(data["matrices"]["jumpstart"], dtype=np.float64)
            no_estimate = {
                (pair["source"], pair["target"]) for pair in data["pairs"] if "no_estimate" in pair
            }
            by_auc = {  # r undefined (scratch's area 0): the AUC difference decided
                (pair["source"], pair["target"])
                for pair in data["pairs"]
                if pair.get("verdict_basis") == "auc_difference"
            }
            for s, t in np.ndindex(r.shape[:2]):
                if data["verdicts"][s][t]:
                    basis = (
                        " (from the AUC difference: r has no interval, scratch's area being 0 "
                        "on its seeds or on some resamples of them)"
                        if (plan.names[s], plan.names[t]) in by_auc
                        else ""
                    )
                    lines.append(
                        f"| {arm} | {plan.names[s]} -> {plan.names[t]} | "
                        f"{_with_interval(r[s, t])} | {_with_interval(jump[s, t])} | "
                        f"{data['verdicts'][s][t]}{basis} |"
                    )
                elif (plan.names[s], plan.names[t]) in no_estimate:
                    lines.append(
                        f"| {arm} | {plan.names[s]} -> {plan.names[t]} | n/a | n/a | "
                        f"none: every seed of an arm diverged |"
                    )
        lines.append("")
    lines.append("Figures: " + ", ".join(f"[{p}]({p})" for p in figures if p.suffix == ".png"))
    return "\n".join(lines) + "\n"


def _with_interval(estimate: np.ndarray) -> str:
    """``(3,)`` mean, interval low and high as ``+0.123 [+0.010, +0.250]``; the interval is
    said to be missing where it is not finite (one seed, or every resample alike)."""
    mean, low, high = (float(v) for v in estimate)
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:+.3f} (no interval)"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
