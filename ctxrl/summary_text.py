"""The sweep summary as markdown (``summary.md``): what :func:`ctxrl.summary.write_exports`
computed (``exports/summary.json``), in words and tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def counted(number: int, noun: str) -> str:
    """``1 agent``, ``2 agents``: a count with its noun, plural (by an ``s``) unless 1."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def sources_text(summary: Mapping[str, Any], indices: Sequence[int]) -> str:
    """Grid indices as the contexts they stand for: ``length = 0.5, 1, 2`` (one varied
    feature) or ``(masscart=1, length=0.5), ...``; the indices themselves for a summary that
    does not store the contexts' values."""
    values = summary.get("context_values")
    if values is None:
        return str(list(indices))
    features = summary["features"]
    if len(features) == 1:
        return f"{features[0]} = " + ", ".join(f"{values[i][0]:.3g}" for i in indices)
    return ", ".join(
        "(" + ", ".join(f"{f}={v:.3g}" for f, v in zip(features, values[i], strict=True)) + ")"
        for i in indices
    )


def _batch(summary: Mapping[str, Any], name: str) -> str:
    """`` (q = 2)`` beside a strategy replayed proposing more than one source a step."""
    q = summary.get("batch_sizes", {}).get(name, 1)
    return f" (q = {q})" if q > 1 else ""


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md`` of a sweep's summary: the dict the exports gather, or the
    ``summary.json`` read back (where a key that does not apply is null, as if absent)."""
    summary = {key: value for key, value in summary.items() if value is not None}
    lines = [
        f"# {summary['env']}: {', '.join(summary['features'])}",
        "",
        f"{summary['n_contexts']} context{'s' if summary['n_contexts'] != 1 else ''}, "
        f"seeds {summary['seeds']}, "
        f"{summary['observed_rows']} source rows observed.",
        "",
    ]
    clipped = summary.get("clipped", 0)
    if clipped:
        lines += [
            f"{clipped} matrix entries lie outside the return bounds and count as 0 or 1 "
            "(normalised and clipped); wider bounds would keep them apart: `return_bounds: "
            "[lower, upper]` in the sweep's config (a full zero-shot or fine-tune sweep is "
            "reported anew without training), or `ctxrl select --bounds` offline.",
            "",
        ]
    missing = summary.get("missing_seeds", [])
    if missing:
        lines += [
            f"**{len(missing)} source row(s) lack some seeds' runs** (their entries average the "
            "seeds that are stored, and no interval over seeds is given; rerun `ctxrl sweep` to "
            "finish them):",
            "",
        ]
        lines += [f"- {m['source']}: seed(s) {m['seeds']}" for m in missing]
        lines.append("")
    failed = summary.get("failed", [])
    if failed:
        lines += [
            f"**{len(failed)} of {summary['runs']} runs failed** (left out of the matrix: a "
            "source whose every seed failed has no row; rerun `ctxrl sweep` to retry them, "
            "after changing the settings of a run that diverged: with the same ones it "
            "diverges again):",
            "",
        ]
        lines += [f"- `{f['run_id']}` ({f['source']}): {f['error']}" for f in failed]
        lines.append("")
    damaged = summary.get("damaged", [])
    if damaged:
        one = len(damaged) == 1
        lines += [
            f"**{len(damaged)} saved {'policy is' if one else 'policies are'} damaged** (the "
            f"matrix keeps {'its' if one else 'their'} evaluations; rerun `ctxrl sweep` to "
            f"train {'it' if one else 'them'} again):",
            "",
        ]
        lines += [f"- `{d['run_id']}`: {d['problem']}" for d in damaged]
        lines.append("")
    if "withheld" in summary:
        lines += [f"Selection curves withheld: {summary['withheld']}.", ""]
    transfer = summary.get("transfer", [])
    if transfer:
        lines += [
            "Transfer method (each group's or run's record in `transfer/`; the matrix holds the "
            "returns of the policies it made):",
            "",
        ]
        for record in transfer:
            if "error" in record:
                lines.append(f"- `{record['file']}`: {record['error']}")
                continue
            per = (
                "in all, spread over the targets (one student for every source and target)"
                if record.get("joint") and record.get("students") == 1
                else "per target (for all sources together)"
                if record.get("joint")
                else "per (source, target) pair"
            )
            lines.append(
                f"- `{record['file']}`: {record['method']} from {record['sources']} source "
                "policies, "
                + ("at most " if record.get("steps_at_most") else "")
                + f"{record['target_env_steps']:,} target-env steps {per}"
                + (f"; {record['summary']}" if record["summary"] else "")
            )
        lines.append("")
    if "multitask" in summary:
        methods = sorted(
            {str(r["method"]) for r in transfer if r.get("method") not in (None, "zero-shot")}
        )
        lines += [
            f"- Multi-task (one policy on the mixture of all contexts): "
            f"{summary['multitask']:.4f}"
            + (
                f" +- {summary['multitask_ci95']:.4f} (95 % interval over "
                f"{summary['multitask_seeds']} seeds)"
                if summary.get("multitask_seeds", 1) > 1
                else ""
            )
            + (
                f"; evaluated zero-shot, as it trained: {', '.join(methods)} makes the matrix's "
                "policies, not this one"
                if methods
                else ""
            ),
            "",
        ]
    if "joint_transfer" in summary:
        seeds = summary.get("independent_seeds")
        spread = f" (over seeds: {seeds['mean']:.4f} +- {seeds['ci95']:.4f}, 95 %)" if seeds else ""
        lines += [
            f"- The {summary['joint_transfer']} policies on their own targets (all "
            f"{summary['n_contexts']} targets): {summary['independent']:.4f}{spread}",
            "",
            f"{summary['joint_transfer']} is a joint transfer method: each target's policy is made "
            f"from all {summary['observed_rows']} sources together (of its seed), so every row "
            "of the matrix is the same, G_k is the same at every k for every strategy, and "
            "source selection is not measured here (no strategy is replayed). Its record above "
            "compares the policies with the sources' zero-shot returns; to choose sources "
            "first, select them in a zero-shot sweep and transfer from those "
            "(benchmarks/bench_distill.py).",
        ]
    elif "independent" in summary:
        trained_by = [
            r["method"] for r in summary.get("transfer", []) if r.get("target_env_steps", 0) > 0
        ]
        # the diagonal of a matrix a training transfer method made: the sources trained on
        # further, not the independently trained models alone
        after = f", each after {trained_by[0]} on its own context" if trained_by else ""
        seeds = "independent_seeds" in summary
        if seeds:  # every number below on each seed's matrix, then averaged over the seeds
            independent, oracle = summary["independent_seeds"], summary["oracle_transfer_seeds"]
            lines += [
                f"- Independent (all {summary['n_contexts']} models{after}): "
                f"{independent['mean']:.4f} +- {independent['ci95']:.4f}",
                f"- Oracle transfer (all models, best source per target): {oracle['mean']:.4f} "
                f"+- {oracle['ci95']:.4f}",
                "",
                f"Normalised generalized performance G_k, k = 1..{summary['budget']}, on each "
                f"seed's matrix and averaged over the {len(summary['seeds'])} seeds (+- the "
                "95 % Student-t interval over seeds; the sources listed are each strategy's "
                "order on the seed-mean matrix, a stochastic one's first replay):",
                "",
                "| strategy | mean G_k (+- 95% CI over seeds) | G_1 | G_K "
                "| first 5 chosen sources |",
                "|---|---|---|---|---|",
            ]
        else:
            lines += [
                f"- Independent (all {summary['n_contexts']} models{after}): "
                f"{summary['independent']:.4f}",
                f"- Oracle transfer (all models, best source per target): "
                f"{summary['oracle_transfer']:.4f}",
                "",
                f"Normalised generalized performance G_k, k = 1..{summary['budget']} "
                "(mean over replays; a stochastic strategy's sources listed are its first "
                "replay's):",
                "",
                "| strategy | mean G_k | G_1 | G_K | first 5 chosen sources |",
                "|---|---|---|---|---|",
            ]
        for name, curve in summary["curves"].items():
            values = curve["seed_mean"] if seeds and "seed_mean" in curve else curve["mean"]
            ci = f" +- {curve['seed_g_ci95']:.4f}" if seeds and "seed_g_ci95" in curve else ""
            lines.append(
                f"| {name}{_batch(summary, name)} | {np.mean(values):.4f}{ci} | "
                f"{values[0]:.4f} | {values[-1]:.4f} | "
                f"{sources_text(summary, curve['order'][:5])} |"
            )
        for name, error in summary.get("strategy_failures", {}).items():
            lines += ["", f"**Strategy {name} failed and is left out**: {error}"]
        if "myopic-oracle" in summary["curves"]:
            lines += [
                "",
                "myopic-oracle: one greedy order chosen on the seed-mean matrix and scored on each "
                "seed's matrix (SD-MBTL's reference, G_k its mean over seeds); "
                "sequential-oracle, where listed, is greedy on each seed's own matrix.",
            ]
        calibration = summary.get("calibration")
        if calibration:
            coverage = dict(zip(calibration["levels"], calibration["coverage"], strict=True))
            lines += [
                "",
                f"MBTL's generalization model (a GP of training performance and a linear gap, "
                "not mbtl-gp's defaults, which add a residual GP and floored slopes) on held-out "
                f"rows ({calibration['observed']} observed rows, {calibration['sets']} sets): "
                f"RMSE {calibration['rmse']:.3f}; the 95 % band covers {coverage[0.95]:.0%} of "
                f"held-out entries, the 50 % band {coverage[0.5]:.0%} (a calibrated model covers "
                "about the nominal level; figures/calibration).",
            ]
        efficiency = summary.get("sample_efficiency", {})
        if efficiency:
            trained_transfer = any(
                r.get("target_env_steps", 0) > 0 for r in summary.get("transfer", [])
            )
            uncounted = (
                " It counts source trainings only: the transfer method's target-env steps "
                "(above) come on top of each of the k* sources."
                if trained_transfer
                else ""
            )
            if efficiency.get("factor"):
                lines += [
                    "",
                    f"Sample efficiency of {efficiency['strategy']}: it beats "
                    f"{' and '.join(efficiency['against'])} at k* = {efficiency['k_star']}, "
                    f"a factor N / k* = {efficiency['factor']:.1f}.{uncounted}",
                ]
            else:
                lines += [
                    "",
                    f"{efficiency['strategy']} does not beat "
                    f"{' and '.join(efficiency['against'])} within K = {summary['budget']}.",
                ]
                if efficiency.get("factor_match"):
                    lines[-1] += (
                        f" It reaches them (>=) at k = {efficiency['k_match']}, N / k = "
                        f"{efficiency['factor_match']:.1f}.{uncounted}"
                    )
    if "curve" in summary:
        left_out = summary.get("curve_left_out") or []
        trained = [i for i in summary["order"] if i not in left_out]
        # each value beside the source whose row it adds (a failed source adds none)
        if "curves" in summary:
            lines.append("")
        lines.append(
            "G_k along the trained order"
            + (" (on the seed-mean matrix)" if len(summary["seeds"]) > 1 else "")
            + ": "
            + "; ".join(
                f"{sources_text(summary, [i])}: {v:.3f}"
                for i, v in zip(trained, summary["curve"], strict=True)
            )
            + (f" (failed sources left out: {sources_text(summary, left_out)})" if left_out else "")
        )
    chosen = len(dict.fromkeys(summary.get("order") or []))
    budget = summary.get("select_budget")
    if budget and chosen < budget:
        lines += [
            "",
            f"The sweep has trained {chosen} of its K = {budget} sources (it is still running, "
            "was killed, or its strategy failed): rerun `ctxrl sweep` with the same config to "
            "go on.",
        ]
    if "learning_curves" in summary:
        curves = summary["learning_curves"]
        transfer = curves.get("transfer", "zero-shot")
        before = "" if transfer == "zero-shot" else f", the sources' training before {transfer}"
        lines += [
            "",
            f"Learning curves ({curves['runs']} runs{before}, own context, normalised): "
            f"{curves['start']:.3f} at step 0 -> {curves['end']:.3f} at the end.",
        ]
    if summary.get("diagnostics"):
        lines += [
            "",
            "Training diagnostics (mean over the runs where they are finite):",
            "",
            "| diagnostic | runs | first record | last record |",
            "|---|---|---|---|",
        ]
        for name, row in sorted(summary["diagnostics"].items()):
            first, last = (
                f"{row[key]:.4g}" if row[key] is not None and np.isfinite(row[key]) else "n/a"
                for key in ("first", "last")
            )
            lines.append(f"| {name} | {row['runs']} | {first} | {last} |")
        broken = {
            name: row
            for name, row in sorted(summary["diagnostics"].items())
            if row.get("nonfinite")
        }
        if broken:
            lines += ["", "Diagnostics that are not finite (NaN or inf) in some records:", ""]
        for name, row in broken.items():
            why = (
                ": an infinite norm of finite gradients makes the per-agent clipping scale the "
                "step to 0, so those updates did nothing; a NaN norm means the gradients "
                "themselves were not finite (check the reward scale and the learning rate)"
                if name == "grad_norm"
                else ""
            )
            lines.append(
                f"- `{name}` in {row['nonfinite']} of {row['runs']} runs (a first or last "
                f"record that is not finite is left out of the means above){why}"
            )
    if summary.get("figures"):
        lines += [
            "",
            "Figures: "
            + ", ".join(f"[{f}]({f})" for f in summary["figures"] if f.endswith(".png")),
        ]
    return "\n".join(lines) + "\n"
