"""The analysis of a DQN transferability study (:mod:`ctxrl_plugins.transfer.dqn_transferability`):
every transfer arm against scratch per (source, target) pair with :mod:`ctxrl.transfer_metrics`,
and its outputs: metrics JSON, a CSV of every pair, matrices ``ctxrl select`` reads, heatmaps of
the area ratio with the verdicts, learning curves per arm with bands, and ``summary.md``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctxrl.selection import json_safe
from ctxrl.transfer_metrics import curve_band
from ctxrl_plugins.transfer.dqn_transferability_plan import ARMS, Pair, StudyPlan
from ctxrl_plugins.transfer.dqn_transferability_runner import ArmResult

METRICS = ("area_ratio", "jumpstart", "asymptote", "auc", "transfer_ratio")


def _metric(comparison: Any, name: str) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of one metric of a :class:`TransferComparison`."""
    value = getattr(comparison, name)
    if hasattr(value, "advantage"):  # a MetricComparison: transfer against scratch
        value = value.advantage
    return float(value.estimate), float(value.low), float(value.high)


def normalise(plan: StudyPlan, result: ArmResult) -> np.ndarray:
    """An arm's curves ``(agents, T)`` normalised to [0, 1] by each agent's target env's
    return bounds."""
    out = np.empty_like(result.curves)
    for i, (key, _) in enumerate(result.keys):
        target = key if isinstance(key, int) else key.target
        out[i] = plan.envs[target].normalise(result.curves[i])
    return out


def analyse(plan: StudyPlan, results: Mapping[str, Mapping[str, ArmResult]]) -> dict[str, Any]:
    """Every transfer arm of every variant against scratch on the target, per (source,
    target) pair: the comparisons (JSON), matrices of each metric ``(S, T)`` with their 95 %
    intervals, the verdicts, and the counts of positive / negative / absent pairs.

    Returns are normalised to [0, 1] by the env's return bounds before any metric (so the
    area ratio is taken on non-negative curves, as the paper does)."""
    from ctxrl.transfer_metrics import LearningCurves, compare_transfer

    config, n = plan.config, len(plan.contexts)
    threshold = 0.9 if config.threshold is None else config.threshold
    out: dict[str, Any] = {"variants": {}, "threshold": threshold, "names": plan.names}
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
                comparison = compare_transfer(
                    LearningCurves(result.steps, normalised[arm][agent_rows]),
                    LearningCurves(steps, normalised["scratch"][scratch_rows[t]]),
                    threshold=threshold,
                    return_floor=0.0,
                    source_steps=config.train_steps,
                )
                for metric in METRICS:
                    matrices[metric][s, t] = _metric(comparison, metric)
                verdicts[s, t] = comparison.verdict
                pairs_out.append(
                    {"source": plan.names[s], "target": plan.names[t], **comparison.to_json()}
                )
            counts = {v: int(np.sum(verdicts == v)) for v in ("positive", "negative", "absent")}
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
    rows = ["variant,arm,source,target,metric,estimate,low,high,verdict"]
    written: list[Path] = []
    for variant, arms in analysis["variants"].items():
        for arm, data in arms.items():
            for metric, matrix in data["matrices"].items():
                values = np.array(matrix, dtype=np.float64)
                for s, t in np.ndindex(values.shape[:2]):
                    if np.isfinite(values[s, t, 0]):
                        est, low, high = values[s, t]
                        rows.append(
                            f"{variant},{arm},{plan.names[s]},{plan.names[t]},{metric},"
                            f"{est:.6g},{low:.6g},{high:.6g},{data['verdicts'][s][t]}"
                        )
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
                perf[s, t] = float(np.mean(auc))
            np.savetxt(exports / f"matrix_performance_{variant}_{arm}.csv", perf, delimiter=",")
        written += _plot_study(plan, results[variant], arms, variant, figures)
    (exports / "pairs.csv").write_text("\n".join(rows) + "\n")
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
    marks = {"positive": "+", "negative": "-", "absent": "o"}
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
        ax.set_xticks(range(n), names, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(f"{arm}: area ratio r", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(
        f"{plan.env.name}, {variant}: transfer (+ positive, - negative, o absent; 95% CI)",
        fontsize=9,
    )
    for suffix in (".png", ".svg"):
        path = directory / f"area_ratio_{variant}{suffix}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        written.append(path)
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
            mean, low, high = curve_band(values)  # Student-t over the seeds
            ax.plot(result.steps, mean, color=colours[arm], linewidth=1.0, label=arm)
            if len(rows) > 1:
                ax.fill_between(result.steps, low, high, color=colours[arm], alpha=0.2)
        ax.set_title(f"{names[s]} -> {names[t]}", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    fig.supxlabel("target env steps")
    fig.supylabel("normalised return")
    for suffix in (".png", ".svg"):
        path = directory / f"curves_{variant}{suffix}"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
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
        "time not counted (each transfer curve starts at the target's step 0); the hybrid arm "
        "starts from the fine-tune and only-head arms' final weights, so it has used twice "
        "their target steps before its own. Verdicts: positive / negative only when the "
        "bootstrap 95 % interval of r excludes 0."
        + (
            f" Source agents: the sweep in {config.sources_from} (matched by context and "
            "seed), not the scratch arm."
            if config.sources_from is not None
            else ""
        ),
        "",
    ]
    for variant, arms in analysis["variants"].items():
        lines += [
            f"## {variant}",
            "",
            "| arm | positive | negative | absent | mean r |",
            "|---|---|---|---|---|",
        ]
        for arm, data in arms.items():
            r = np.array(data["matrices"]["area_ratio"], dtype=np.float64)[..., 0]
            counts = data["counts"]
            lines.append(
                f"| {arm} | {counts['positive']} | {counts['negative']} | "
                f"{counts['absent']} | {np.nanmean(r):+.3f} |"
            )
        lines += [
            "",
            "| arm | source -> target | r [95% CI] | jumpstart [95% CI] | verdict |",
            "|---|---|---|---|---|",
        ]
        for arm, data in arms.items():
            r = np.array(data["matrices"]["area_ratio"], dtype=np.float64)
            jump = np.array(data["matrices"]["jumpstart"], dtype=np.float64)
            for s, t in np.ndindex(r.shape[:2]):
                if data["verdicts"][s][t]:
                    lines.append(
                        f"| {arm} | {plan.names[s]} -> {plan.names[t]} | "
                        f"{r[s, t, 0]:+.3f} [{r[s, t, 1]:+.3f}, {r[s, t, 2]:+.3f}] | "
                        f"{jump[s, t, 0]:+.3f} [{jump[s, t, 1]:+.3f}, {jump[s, t, 2]:+.3f}] | "
                        f"{data['verdicts'][s][t]} |"
                    )
        lines.append("")
    lines.append("Figures: " + ", ".join(f"[{p}]({p})" for p in figures if p.suffix == ".png"))
    return "\n".join(lines) + "\n"
