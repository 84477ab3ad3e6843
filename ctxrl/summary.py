"""Reading a sweep's results: its transfer matrix, the strategies replayed on it, exports
(CSV, JSON), figures and ``summary.md``. Used by ``ctxrl sweep`` when it finishes and by
``ctxrl select`` / ``ctxrl report``, which never import the runner.

This module writes the exports and gathers the summary; the selection steps, the strategies
replayed and the generalization model's calibration are computed in
:mod:`ctxrl.summary_selection`, the figures drawn in :mod:`ctxrl.summary_figures`, and the
summary put in words in :mod:`ctxrl.summary_text`. Their names are re-exported here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ctxrl.artifacts import verify_artifact, write_text_atomic
from ctxrl.config import SweepPlan
from ctxrl.errors import UnknownNameError
from ctxrl.matrix import TransferMatrix
from ctxrl.offline import mean_ci
from ctxrl.plugins import get_host
from ctxrl.report import plot_learning_curves, sample_efficiency
from ctxrl.selection import generalized_performance, json_safe, myopic_oracle
from ctxrl.store import Store
from ctxrl.summary_figures import FIGURES as FIGURES
from ctxrl.summary_figures import context_axis as context_axis
from ctxrl.summary_figures import grid_labels as grid_labels
from ctxrl.summary_figures import remove_stale_figures
from ctxrl.summary_figures import write_figures as write_figures
from ctxrl.summary_selection import CALIBRATION_LEVELS as CALIBRATION_LEVELS
from ctxrl.summary_selection import STOCHASTIC_REPEATS as STOCHASTIC_REPEATS
from ctxrl.summary_selection import model_calibration as model_calibration
from ctxrl.summary_selection import over_seeds
from ctxrl.summary_selection import selection_curves as selection_curves
from ctxrl.summary_selection import selection_trace as selection_trace
from ctxrl.summary_text import sources_text, summary_markdown

STORE_FILE = "store.sqlite"


def sweep_matrix(plan: SweepPlan, store: Store) -> TransferMatrix:
    contexts = plan.grid.contexts
    return store.matrix(
        env=plan.env.name,
        sources=contexts,
        targets=contexts,
        seeds=plan.config.seeds,
        features=plan.grid.features,
    )


def trained_order(plan: SweepPlan, store: Store) -> list[int]:
    """The sources in the order the sweep trained them: every grid index for ``mode: full``,
    the stored selection order for ``mode: select`` (empty for a run whose store predates
    it), none for ``mode: multitask``."""
    if plan.config.mode == "full":
        return list(range(len(plan.grid)))
    if plan.config.mode == "select":
        return store.selection_order()
    return []


STALE_STAGING_S = 3600.0
"""A staging folder (``.exports-*``) older than this is one a kill left behind, whoever wrote
it; a younger one is when its writer's process, on this host, is gone."""


def _staging_abandoned(folder: Path) -> bool:
    """Whether a staging folder's writer is gone: it is older than :data:`STALE_STAGING_S`, or
    its process (named in the folder, ``.exports-{pid}@{host}.{random}``) no longer runs on
    this host."""
    if time.time() - folder.stat().st_mtime > STALE_STAGING_S:
        return True  # whoever wrote it (a reused process id too): staging takes seconds
    owner, _, rest = folder.name.removeprefix(".exports-").partition("@")
    host = rest.rpartition(".")[0]
    # (os.kill(pid, 0) asks whether a process exists on POSIX only: on Windows it stops it)
    if owner.isdigit() and int(owner) > 0 and host == socket.gethostname() and os.name == "posix":
        try:
            os.kill(int(owner), 0)  # signal 0: is the process there (nothing is sent)
        except ProcessLookupError:
            return True
        except OSError:  # there, another user's
            return False
    return False


def write_exports(
    plan: SweepPlan, store: Store, matrix: TransferMatrix, run_dir: Path, *, order: list[int]
) -> Path:
    """Matrices (reference CSV per seed), runs/evaluations tables, the selection steps of a
    ``mode: select`` sweep (``selection.csv`` / ``selection.json``: proposals, strategy traces,
    G_k per step), selection curves, summary. ``order``: the trained order
    (:func:`trained_order`).

    The figures are drawn first, the exports written into a folder beside ``exports/`` and
    moved in file by file, ``summary.md`` replaced last: a report that fails part of the way
    (a full disk, an interrupt) leaves the earlier exports and summary as they were, never
    new tables beside an old summary."""
    exports = run_dir / "exports"
    exports.mkdir(exist_ok=True)
    for stale in run_dir.glob(".exports-*"):  # a report killed while it staged (SIGKILL),
        # not one staging now beside this one (a report during a sweep): staging takes seconds
        with contextlib.suppress(OSError):
            if _staging_abandoned(stale):
                shutil.rmtree(stale, ignore_errors=True)
    # the writer's process and host in the name: a later report knows when it was killed
    prefix = f".exports-{os.getpid()}@{socket.gethostname()}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=run_dir))
    try:
        summary = _write_staged(plan, store, matrix, run_dir, staging, order=order)
        markdown = summary_markdown(summary)
        for file in sorted(staging.iterdir()):
            os.replace(file, exports / file.name)
        write_text_atomic(run_dir / "summary.md", markdown)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return exports


def _write_staged(
    plan: SweepPlan,
    store: Store,
    matrix: TransferMatrix,
    run_dir: Path,
    exports: Path,
    *,
    order: list[int],
) -> dict[str, Any]:
    """:func:`write_exports`' work: the figures into ``run_dir / "figures"``, every export
    (``summary.json`` last) into ``exports``; returns the summary."""
    for k, seed in enumerate(plan.config.seeds):
        matrix.to_reference_csv(exports / f"matrix_seed{seed}.csv", seed=k)
    (exports / "contexts.json").write_text(
        json.dumps(
            {
                "features": list(plan.grid.features),
                "contexts": [c.as_dict() for c in plan.grid.contexts],
                "return_bounds": list(plan.env.return_bounds),
            },
            indent=2,
        )
    )
    store.export(exports)
    normalised = plan.env.normalise(matrix.mean())
    lower, upper = plan.env.return_bounds
    outside = int(np.sum((matrix.mean() < lower) | (matrix.mean() > upper)))  # NaN: neither
    steps = selection_trace(store, normalised)
    if steps:
        (exports / "selection.json").write_text(json.dumps(steps, indent=2, allow_nan=False))
    multitask = plan.env.normalise(
        store.multitask_returns(
            env=plan.env.name, targets=plan.grid.contexts, seeds=plan.config.seeds
        )
    )
    observed = ~np.all(np.isnan(normalised), axis=1)  # (N,) sources with a finished run
    # observed rows without every seed's run (a killed or failing sweep): their seed means
    # average the seeds that are there
    stored = ~np.all(np.isnan(matrix.values), axis=1)  # (N, seeds)
    missing = [
        {
            "source": ", ".join(f"{f}={plan.grid.contexts[i][f]:.3g}" for f in plan.grid.features),
            "seeds": [seed for k, seed in enumerate(plan.config.seeds) if not stored[i, k]],
        }
        for i in np.flatnonzero(observed & ~stored.all(axis=1))
    ]
    summary: dict[str, Any] = {
        "env": plan.env.name,
        "features": list(plan.grid.features),
        "n_contexts": len(plan.grid),
        "seeds": plan.config.seeds,
        "order": order,
        "context_values": plan.grid.values().tolist(),
        "observed_rows": int(np.sum(observed)),
        "clipped": outside,
        "missing_seeds": missing,
        "runs": len(store.runs()),
        "damaged": [
            {"run_id": run_id, "problem": problem}
            for run_id, problem in damaged_artifacts(store).items()
        ],
        "failed": [
            {
                "run_id": run.run_id,
                "source": _source_label(plan, run.source_context)[1],
                "error": error_headline(run.error or ""),
            }
            for run in store.runs("failed")
        ],
    }
    records = transfer_records(store.path.parent)  # the run directory, also with --out
    joint = joint_transfer(plan)
    for record in records:
        record["joint"] = joint
    if records:
        summary["transfer"] = records
    if not np.isnan(multitask).all():
        per_seed = np.nanmean(multitask, axis=1)
        per_seed = per_seed[np.isfinite(per_seed)]  # the seeds whose policy is stored
        summary["multitask"], summary["multitask_ci95"] = mean_ci(per_seed)
        summary["multitask_seeds"] = int(per_seed.size)
    if plan.config.mode == "select":  # K sources, or fewer where the sweep stopped short
        summary["select_budget"] = min(len(plan.grid), plan.config.strategy.budget or 0)
    if plan.config.mode == "select" and order:
        # the sweep's own selection, as trained: G_k over the sources that finished (a failed
        # source adds nothing, not a row of 0)
        trained = [i for i in order if observed[i]]
        summary["curve_left_out"] = sorted({i for i in order if not observed[i]})
        if trained:
            summary["curve"] = generalized_performance(normalised, trained).tolist()
    complete = not np.isnan(normalised).any()
    if complete and joint and bool((normalised == normalised[0]).all()):
        # every row holds the same policy per target, made from all the sources of a seed
        # together: G_k is the same for every k and every strategy, so no strategy is
        # replayed; with several seeds the policies' spread over seeds is given
        summary["joint_transfer"] = plan.config.transfer.name
        summary["independent"] = float(np.mean(np.diag(normalised)))
        summary["oracle_transfer"] = float(np.mean(normalised.max(axis=0)))
        per_seed = plan.env.normalise(matrix.values)  # (S, T, seeds)
        if matrix.n_seeds > 1 and not np.isnan(per_seed).any():
            own = np.diagonal(per_seed, axis1=0, axis2=1).mean(axis=1)  # (seeds,)
            mean, half_width = mean_ci(own)
            summary["independent_seeds"] = {"mean": mean, "ci95": half_width}
    elif complete:
        summary["independent"] = float(np.mean(np.diag(normalised)))
        summary["oracle_transfer"] = float(np.mean(normalised.max(axis=0)))
        registry = get_host().registry
        names = [plan.config.strategy.name] if plan.config.mode == "full" else []
        names += [n for n in plan.config.compare if n not in names]
        coords = plan.grid.grid_coords()
        budget = min(len(plan.grid), plan.config.strategy.budget or 15)
        summary["budget"] = budget
        specs = {n: registry.strategy(n) for n in names}
        options = {plan.config.strategy.name: plan.config.strategy.options}
        # the sweep's strategy proposes strategy.batch_size sources a step, as it would train
        # them; the compared baselines one at a time
        batch_sizes = {plan.config.strategy.name: plan.config.strategy.batch_size}
        if plan.config.strategy.batch_size > 1:
            summary["batch_sizes"] = batch_sizes
        failures: dict[str, str] = {}
        summary["curves"] = selection_curves(
            normalised,
            coords,
            specs,
            budget,
            options=options,
            batch_sizes=batch_sizes,
            failures=failures,
        )
        if failures:  # left out of the report, with why
            summary["strategy_failures"] = failures
            names = [n for n in names if n not in failures]
            specs = {n: specs[n] for n in names}
        per_seed = plan.env.normalise(matrix.values)  # (S, T, seeds)
        if matrix.n_seeds > 1 and not np.isnan(per_seed).any():
            # G_k on each seed's own matrix: the spread between independently trained matrices
            seed_failures: dict[str, str] = {}
            seed_curves = [
                selection_curves(
                    per_seed[:, :, k],
                    coords,
                    specs,
                    budget,
                    options=options,
                    batch_sizes=batch_sizes,
                    stochastic_repeats=STOCHASTIC_REPEATS,  # as ctxrl select replays them
                    failures=seed_failures,
                    trial=k,
                )
                for k in range(matrix.n_seeds)
            ]
            for name, error in seed_failures.items():  # left out: no row without its seeds
                failures.setdefault(name, f"on a seed's matrix: {error}")
                summary["strategy_failures"] = failures
                summary["curves"].pop(name, None)
            names = [n for n in names if n not in seed_failures]
            for name in names:
                curves = np.array([c[name]["mean"] for c in seed_curves])  # (seeds, K)
                summary["curves"][name].update(over_seeds(curves))
            # SD-MBTL's reference: one greedy order on the seed-mean matrix, scored on each seed
            shared_order, oracle = myopic_oracle(np.moveaxis(per_seed, 2, 0), budget)
            summary["curves"]["myopic-oracle"] = {
                "mean": oracle.mean(axis=0).tolist(),
                "std": [0.0] * budget,
                "order": list(shared_order),
                **over_seeds(oracle),
            }
            # the reference lines estimated as the curves are: on each seed's matrix, averaged
            seeds_last = np.moveaxis(per_seed, 2, 0)  # (seeds, S, T)
            for key, values in (
                ("independent", np.diagonal(seeds_last, axis1=1, axis2=2).mean(axis=1)),
                ("oracle_transfer", seeds_last.max(axis=1).mean(axis=1)),
            ):
                mean, half_width = mean_ci(values)
                summary[f"{key}_seeds"] = {"mean": mean, "ci95": half_width}
        summary["calibration"] = model_calibration(normalised, coords)
        seeds = "independent_seeds" in summary  # estimated on each seed's matrix, as the table
        if "curve" in summary:  # a select sweep: its strategy's order as trained
            summary["sample_efficiency"] = {
                "strategy": plan.config.strategy.name,
                **sample_efficiency(  # the curve is on the seed-mean matrix, so its levels too
                    summary["curve"],
                    summary["independent"],
                    summary.get("multitask"),
                    len(plan.grid),
                ),
            }
        elif names:
            lead = names[0]
            curve = summary["curves"][lead]
            summary["sample_efficiency"] = {
                "strategy": lead,
                **sample_efficiency(
                    curve["seed_mean" if seeds and "seed_mean" in curve else "mean"],
                    summary["independent_seeds"]["mean"] if seeds else summary["independent"],
                    summary.get("multitask"),
                    len(plan.grid),
                ),
            }
    elif plan.config.mode == "full":
        missing = len(plan.grid) - summary["observed_rows"]
        gaps = np.argwhere(np.isnan(normalised) & observed[:, None])  # (G, 2) source, target
        listed = "; ".join(
            f"{sources_text(summary, [int(i)])} -> {sources_text(summary, [int(j)])}"
            for i, j in gaps[:5]
        ) + ("; ..." if len(gaps) > 5 else "")
        summary["withheld"] = (
            f"{missing} of {len(plan.grid)} source rows are missing (failed or not trained yet)"
            if missing
            else f"{len(gaps)} {'entry' if len(gaps) == 1 else 'entries'} of the observed rows "
            f"{'is' if len(gaps) == 1 else 'are'} missing (a transfer that diverged there, or "
            f"an evaluation not stored: {listed})"
        ) + "; the strategies are replayed only on a complete matrix"
    summary.update(training_log_summary(plan, store))
    summary["figures"] = write_figures(plan, normalised, summary, run_dir / "figures")
    transfer = plan.config.transfer.name
    if store.curves():
        figure = plot_learning_curves(
            store.curves(),
            {r.run_id: _source_label(plan, r.source_context) for r in store.runs()},
            plan.env.return_bounds,
            f"{plan.env.name}: learning curves"
            + ("" if transfer == "zero-shot" else f" (the sources' training, before {transfer})"),
            run_dir / "figures" / "learning_curves",
        )
        summary["figures"] += [str(p.relative_to(run_dir)) for p in figure]
    tuning, groups = transfer_curves(plan, store.path.parent)  # the run directory, also with --out
    if tuning:
        figure = plot_learning_curves(
            tuning,
            groups,
            plan.env.return_bounds,
            f"{plan.env.name}: {transfer} from each source, mean over its targets",
            run_dir / "figures" / "transfer_curves",
            ylabel="normalised return (on the targets)",
        )
        summary["figures"] += [str(p.relative_to(run_dir)) for p in figure]
    remove_stale_figures(run_dir, summary["figures"])
    # strict JSON: a diagnostic that was never finite (PPO's explained variance of constant
    # returns) is null, not a bare NaN other parsers refuse
    written = json_safe(_with_every_key(summary))
    (exports / "summary.json").write_text(json.dumps(written, indent=2, allow_nan=False))
    return summary


SUMMARY_KEYS: tuple[str, ...] = (
    # always computed
    "env", "features", "n_contexts", "seeds", "order", "context_values", "observed_rows",
    "clipped", "missing_seeds", "runs", "damaged", "failed", "figures",
    # null where they do not apply: a transfer method's records, the multi-task policy, a
    # select sweep's budget and its own trained curve, the reference lines and the replayed
    # strategies (on a complete matrix), why they were withheld (an incomplete one), the
    # training logs' summaries
    "transfer", "multitask", "multitask_ci95", "multitask_seeds", "select_budget",
    "curve_left_out", "curve", "joint_transfer", "independent", "oracle_transfer",
    "independent_seeds", "oracle_transfer_seeds", "budget", "batch_sizes", "curves",
    "strategy_failures", "calibration", "sample_efficiency", "withheld", "diagnostics",
    "learning_curves",
)  # fmt: skip
"""Every top-level key of ``exports/summary.json``, each present in every sweep's file (null
where it does not apply), so a script reads ``summary["independent"]`` without a KeyError."""


def _with_every_key(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with :data:`SUMMARY_KEYS` it lacks as null (appended, its own order kept)."""
    return {**summary, **{key: None for key in SUMMARY_KEYS if key not in summary}}


def damaged_artifacts(store: Store) -> dict[str, str]:
    """Finished runs whose saved policy is missing or damaged (run id -> what is wrong);
    artifacts are found beside the store, in its run directory."""
    run_dir = store.path.parent
    damaged = {}
    for run in store.runs("finished"):
        if run.artifact:
            problem = verify_artifact(run_dir / run.artifact)
            if problem is not None:
                damaged[run.run_id] = problem
    return damaged


def error_headline(error: str) -> str:
    """One line saying why a run failed: the exception line of a traceback (its first line,
    ``RuntimeError: diverged``), else the error's first non-empty line."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return "(no error message stored)"
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        after = [line for line in lines[starts[-1] + 1 :] if not line[:1].isspace()]
        if after:
            return after[0]
    return lines[0]


def _source_label(plan: SweepPlan, context_json: str) -> tuple[float, str]:
    """A run's place among the grid's contexts and its label (``length=0.5``)."""
    context = json.loads(context_json) if context_json else {}
    label = ", ".join(f"{f}={context[f]:.3g}" for f in plan.grid.features if f in context)
    canonical = [c.as_dict() for c in plan.grid.contexts]
    matches = [i for i, c in enumerate(canonical) if all(c[f] == context.get(f) for f in c)]
    return (float(matches[0]) if matches else -1.0), label or "all"


def training_log_summary(plan: SweepPlan, store: Store) -> dict[str, Any]:
    """The diagnostics table: for each diagnostic, its mean over runs at the first and the
    last record (training start and end) over the runs where it is finite, how many runs
    recorded it and in how many some record is not finite (``nonfinite``: an infinite
    gradient norm, a diverging loss)."""
    table: dict[str, dict[str, float]] = {}

    def finite_mean(values: list[float]) -> float:
        kept = [v for v in values if math.isfinite(v)]
        return float(np.mean(kept)) if kept else float("nan")

    for name, runs in store.diagnostics().items():
        table[name] = {
            "runs": len(runs),
            "first": finite_mean([points[0][1] for points in runs.values() if points]),
            "last": finite_mean([points[-1][1] for points in runs.values() if points]),
            "nonfinite": sum(
                1 for points in runs.values() if not all(math.isfinite(v) for _, v in points)
            ),
        }
    curves = store.curves()
    out: dict[str, Any] = {}
    if table:
        out["diagnostics"] = table
    if curves:
        lower, upper = plan.env.return_bounds
        finals = [points[-1][1] for points in curves.values()]
        starts = [points[0][1] for points in curves.values()]
        out["learning_curves"] = {
            "runs": len(curves),
            # what they show: the sources' own training (a transfer method trains after it)
            "transfer": plan.config.transfer.name,
            "start": float(np.clip((np.mean(starts) - lower) / (upper - lower), 0, 1)),
            "end": float(np.clip((np.mean(finals) - lower) / (upper - lower), 0, 1)),
        }
    return out


def joint_transfer(plan: SweepPlan) -> bool:
    """Whether the sweep's transfer method is joint (:class:`~ctxrl.registry.TransferMethodSpec`:
    each target's policy is made from all the sources together, distillation's students; the
    summary then checks whether every row of the matrix is the same). A method no longer
    installed is taken as not."""
    try:
        return get_host().registry.transfer_method(plan.config.transfer.name).joint
    except UnknownNameError:
        return False


def transfer_curves(
    plan: SweepPlan, run_dir: Path
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, tuple[float, str]]]:
    """The learning curves a transfer method recorded of its own training (``fine-tune``:
    ``details["curves"]`` of ``transfer/*.json``, ``env_steps`` ``(points,)`` and
    ``mean_return`` ``(P, Q, points)``): per source of each record, ``(env steps, mean return
    over its targets)``, and the source's place and label (its seeds share the label), as
    :func:`~ctxrl.report.plot_learning_curves` takes them. Records without curves, or that
    cannot be read (listed by :func:`transfer_records`), add nothing."""
    curves: dict[str, list[tuple[int, float]]] = {}
    groups: dict[str, tuple[float, str]] = {}
    for path in sorted((run_dir / "transfer").glob("*.json")):
        try:
            data = json.loads(path.read_text())
            recorded = data["details"]["curves"]
            steps = [int(step) for step in recorded["env_steps"]]
            returns = np.asarray(recorded["mean_return"], dtype=np.float64)  # (P, Q, points)
            sources = data["sources"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if returns.ndim != 3 or returns.shape[0] != len(sources) or returns.shape[2] != len(steps):
            continue
        for p, context in enumerate(sources):
            key = f"{path.stem}:{p}"
            curves[key] = list(zip(steps, returns[p].mean(axis=0).tolist(), strict=True))
            groups[key] = _source_label(plan, json.dumps(context))
    return curves, groups


def transfer_records(run_dir: Path) -> list[dict[str, Any]]:
    """What the sweep's transfer method recorded per group or run (``transfer/*.json``): its
    name, sources, target-env steps and the one-line ``summary`` of its details, if any. A
    record that cannot be read is listed as such, never dropped silently."""
    out: list[dict[str, Any]] = []
    for path in sorted((run_dir / "transfer").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            out.append({"file": path.name, "error": f"unreadable ({exc})"})
            continue
        details = data.get("details", {})
        out.append(
            {
                "file": path.name,
                "method": data.get("method"),
                "sources": len(data.get("sources", [])),
                "target_env_steps": data.get("target_env_steps", 0),
                "summary": details.get("summary", "") if isinstance(details, dict) else "",
                "students": details.get("students") if isinstance(details, dict) else None,
                # a count that takes episodes at their time limit (distill's teachers)
                "steps_at_most": bool(
                    isinstance(details, dict) and details.get("target_env_steps_at_most")
                ),
            }
        )
    return out
