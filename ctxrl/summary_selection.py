"""The selection side of a sweep's summary: the stored selection steps of a ``mode: select``
sweep with G_k per step, the strategies replayed on the normalised matrix (on the seed-mean
matrix and on each seed's), and how well the generalization model predicts rows it has not
seen. Used by :func:`ctxrl.summary.write_exports`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ctxrl.offline import mean_ci, replay_trials
from ctxrl.selection import generalized_performance
from ctxrl.store import Store

STOCHASTIC_REPEATS = 100
"""replays of a stochastic strategy on a matrix (the MBTL reference uses 100 random orders)"""


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
    trial: int = 0,
) -> dict[str, dict[str, Any]]:
    """Replay strategies on a normalised square matrix: ``{name: {mean, std, orders}}``.

    ``strategies`` maps a name to its :class:`~ctxrl.registry.StrategySpec`; stochastic ones are
    replayed ``stochastic_repeats`` times (the reference uses 100 random orders), seeded as
    trial ``trial`` (a sweep's seed index) of :func:`~ctxrl.offline.replay_trials`, so that
    ``ctxrl select`` on the run directory replays them alike.
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
            first_trial=trial,
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
                        first_trial=trial,
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


def model_calibration(
    normalised: np.ndarray, coords: np.ndarray, observed: int = 3, sets: int = 4
) -> dict[str, Any] | None:
    """How well the generalization model (GP + gap,
    :func:`ctxrl.matrix_prediction.predict_matrix`) predicts rows it has not seen:
    ``observed`` rows spread over the grid (``sets`` shifts) predict the others; RMSE and the
    share of held-out entries inside the central band per nominal level (a calibrated model
    covers about the level). None for fewer than ``2 * observed`` contexts."""
    from ctxrl.matrix_prediction import band_coverage, spread_observations

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


def over_seeds(curves: np.ndarray) -> dict[str, Any]:
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
