"""Reading a sweep's results: its transfer matrix, the strategies replayed on it, exports
(CSV, JSON), figures and ``summary.md``. Used by ``ctxrl sweep`` when it finishes and by
``ctxrl select`` / ``ctxrl report``, which never import the runner."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctxrl.artifacts import verify_artifact, write_text_atomic
from ctxrl.config import SweepPlan
from ctxrl.errors import UnknownNameError
from ctxrl.matrix import TransferMatrix
from ctxrl.offline import mean_ci, replay_trials
from ctxrl.plugins import get_host
from ctxrl.report import (
    ContextAxis,
    plot_calibration,
    plot_generalization,
    plot_learning_curves,
    plot_matrix,
    plot_selection,
    sample_efficiency,
)
from ctxrl.selection import generalized_performance, json_safe, myopic_oracle
from ctxrl.store import Store
from ctxrl.summary_text import summary_markdown

STORE_FILE = "store.sqlite"
STOCHASTIC_REPEATS = 100
"""replays of a stochastic strategy on a matrix (the MBTL reference uses 100 random orders)"""


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


def selection_trace(store: Store, normalised: np.ndarray) -> list[dict[str, Any]]:
    """The stored selection steps as JSON data, each with ``g_k``: G_k once its sources were
    trained, along the stored order (None for a step still training; a failed source adds
    nothing to it, and is listed in the step's ``failed``).

    ``normalised`` is the sweep's normalised ``(N, N)`` matrix (mean over seeds)."""
    steps = store.selection_steps()
    order = [i for step in steps for i in step.proposed]
    curve = generalized_performance(normalised, order)
    out = []
    for step in steps:
        data = step.to_json()
        last = step.k + len(step.proposed) - 1
        data["g_k"] = float(curve[last]) if step.trained_at is not None else None
        # proposed sources without a finished run: they add nothing to g_k
        data["failed"] = [
            i
            for i in step.proposed
            if step.trained_at is not None and np.isnan(normalised[i]).all()
        ]
        out.append(data)
    return out


def selection_curves(
    normalised: np.ndarray,
    coords: np.ndarray,
    strategies: dict[str, Any],
    budget: int,
    *,
    stochastic_repeats: int = STOCHASTIC_REPEATS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_sizes: Mapping[str, int] | None = None,
    failures: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Replay strategies on a normalised square matrix: ``{name: {mean, std, orders}}``.

    ``strategies`` maps a name to its :class:`~ctxrl.registry.StrategySpec`; stochastic ones are
    replayed with seeds ``0..stochastic_repeats-1`` (the reference uses 100 random orders).
    ``options`` gives a strategy's factory options by name (the sweep's own strategy).
    A strategy that fails (a plugin's bug: a source proposed twice, an exception) is left out
    and its error put in ``failures`` (name -> message), so that the others' curves and the
    rest of the report are still written.
    """
    try:
        lines = replay_trials(
            normalised[None],
            coords,
            strategies,
            budget,
            repeats=stochastic_repeats,
            options=options,
            batch_sizes=batch_sizes,
        )
    except Exception:  # find which: each strategy alone
        lines = {}
        for name, spec in strategies.items():
            try:
                lines.update(
                    replay_trials(
                        normalised[None],
                        coords,
                        {name: spec},
                        budget,
                        repeats=stochastic_repeats,
                        options=options,
                        batch_sizes=batch_sizes,
                    )
                )
            except Exception as exc:
                if failures is not None:
                    failures[name] = f"{type(exc).__name__}: {exc}"
    out: dict[str, dict[str, Any]] = {}
    for name, line in lines.items():
        out[name] = {
            "mean": line["curves"][0].tolist(),
            "std": line["spread"][0].tolist(),
            "order": line["orders"][0],
        }
    return out


CALIBRATION_LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)

STALE_STAGING_S = 3600.0
"""A staging folder (``.exports-*``) older than this is one a kill left behind, whoever wrote
it; a younger one is when its writer's process, on this host, is gone."""


def model_calibration(
    normalised: np.ndarray, coords: np.ndarray, observed: int = 3, sets: int = 4
) -> dict[str, Any] | None:
    """How well the generalization model (GP + gap, :func:`ctxrl.gp.predict_matrix`) predicts
    rows it has not seen: ``observed`` rows spread over the grid (``sets`` shifts) predict the
    others; RMSE and the share of held-out entries inside the central band per nominal level
    (a calibrated model covers about the level). None for fewer than ``2 * observed``
    contexts."""
    from ctxrl.gp import band_coverage, spread_observations

    if len(normalised) < 2 * observed:
        return None
    results = [
        band_coverage(normalised, chosen, CALIBRATION_LEVELS, coords=coords)
        for chosen in spread_observations(len(normalised), observed, sets, coords=coords)
    ]
    return {
        "observed": observed,
        "sets": len(results),
        "levels": list(CALIBRATION_LEVELS),
        "coverage": np.mean([c for _, c in results], axis=0).tolist(),
        "rmse": float(np.mean([r for r, _ in results])),
    }


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
    if plan.config.mode == "select" and order:
        # the sweep's own selection, as trained: G_k over the sources that finished (a failed
        # source adds nothing, not a row of 0)
        trained = [i for i in order if observed[i]]
        summary["curve_left_out"] = sorted({i for i in order if not observed[i]})
        if trained:
            summary["curve"] = generalized_performance(normalised, trained).tolist()
    complete = not np.isnan(normalised).any()
    if complete and joint and bool((normalised == normalised[0]).all()):
        # every row holds the same policy per target, made from all the sources (every seed's)
        # together, once: G_k is the same for every k and every strategy, so no strategy is
        # replayed, and there is no spread over seeds to give
        summary["joint_transfer"] = plan.config.transfer.name
        summary["independent"] = float(np.mean(np.diag(normalised)))
        summary["oracle_transfer"] = float(np.mean(normalised.max(axis=0)))
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
                    stochastic_repeats=20,
                    failures=seed_failures,
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
                summary["curves"][name].update(_over_seeds(curves))
            # SD-MBTL's reference: one greedy order on the seed-mean matrix, scored on each seed
            shared_order, oracle = myopic_oracle(np.moveaxis(per_seed, 2, 0), budget)
            summary["curves"]["myopic-oracle"] = {
                "mean": oracle.mean(axis=0).tolist(),
                "std": [0.0] * budget,
                "order": list(shared_order),
                **_over_seeds(oracle),
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
        summary["withheld"] = (
            f"{missing} of {len(plan.grid)} source rows are missing (failed or not trained "
            "yet); the strategies are replayed only on a complete matrix"
        )
    summary.update(training_log_summary(plan, store))
    summary["figures"] = write_figures(plan, normalised, summary, run_dir / "figures")
    if store.curves():
        figure = plot_learning_curves(
            store.curves(),
            {r.run_id: _source_label(plan, r.source_context) for r in store.runs()},
            plan.env.return_bounds,
            f"{plan.env.name}: learning curves",
            run_dir / "figures" / "learning_curves",
        )
        summary["figures"] += [str(p.relative_to(run_dir)) for p in figure]
    _remove_stale_figures(run_dir, summary["figures"])
    # strict JSON: a diagnostic that was never finite (PPO's explained variance of constant
    # returns) is null, not a bare NaN other parsers refuse
    (exports / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    return summary


def _over_seeds(curves: np.ndarray) -> dict[str, Any]:
    """A strategy's G_k on each seed's matrix, ``(seeds, K)``, as the summary keeps it: the
    mean over seeds per k and its 95 % Student-t half-width, and the same for mean G_1..K
    (the table's number: ``seed_g_mean``, ``seed_g_ci95``)."""
    per_k = [mean_ci(curves[:, k]) for k in range(curves.shape[1])]
    g_mean, g_half_width = mean_ci(curves.mean(axis=1))
    return {
        "seed_mean": [m for m, _ in per_k],
        "seed_ci95": [h for _, h in per_k],
        "seed_g_mean": g_mean,
        "seed_g_ci95": g_half_width,
    }


FIGURES = ("matrix", "selection", "generalization", "learning_curves", "calibration")
"""The figures a report may draw (``figures/<name>.png`` and ``.svg``)."""


def _remove_stale_figures(run_dir: Path, written: list[str]) -> None:
    """Delete figures an earlier report drew that this one did not (e.g. selection curves of
    a matrix that is no longer complete), so no figure is left beside results it no longer
    shows."""
    for name in FIGURES:
        for suffix in (".png", ".svg"):
            path = run_dir / "figures" / f"{name}{suffix}"
            if path.exists() and str(path.relative_to(run_dir)) not in written:
                path.unlink()


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


def grid_labels(plan: SweepPlan) -> list[str]:
    """Each grid context by its varied features' values (``length=0.5``), in grid order."""
    return [", ".join(f"{f}={c[f]:.3g}" for f in plan.grid.features) for c in plan.grid.contexts]


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
            "start": float(np.clip((np.mean(starts) - lower) / (upper - lower), 0, 1)),
            "end": float(np.clip((np.mean(finals) - lower) / (upper - lower), 0, 1)),
        }
    return out


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
                summary["calibration"], f"{title}: generalization model", directory / "calibration"
            )
        if axis is not None and (summary["curves"] or "curve" in summary):
            if "curve" in summary:  # a select sweep: what its strategy trained
                chooser = plan.config.strategy.name
                left_out = set(summary.get("curve_left_out") or [])
                sources = [i for i in dict.fromkeys(summary["order"]) if i not in left_out]
            else:
                chooser = next(iter(summary["curves"]))
                sources = list(dict.fromkeys(summary["curves"][chooser]["order"]))
            written += plot_generalization(
                plan.grid.grid_coords(),
                normalised,
                sources,
                f"{title}: what {chooser} chose",
                directory / "generalization",
                axis=axis,
            )
    return [str(p.relative_to(directory.parent)) for p in written]


def joint_transfer(plan: SweepPlan) -> bool:
    """Whether the sweep's transfer method is joint (:class:`~ctxrl.registry.TransferMethodSpec`:
    each target's policy is made from all the sources together, distillation's students; the
    summary then checks whether every row of the matrix is the same). A method no longer
    installed is taken as not."""
    try:
        return get_host().registry.transfer_method(plan.config.transfer.name).joint
    except UnknownNameError:
        return False


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
            }
        )
    return out
