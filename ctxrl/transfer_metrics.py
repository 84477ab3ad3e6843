"""Transfer metrics over learning curves, with confidence intervals over seeds.

The metrics of Taylor & Stone (2009) and the area ratio of Sabatelli & Geurts (2021, "On the
transferability of deep-Q networks"), computed from learning curves recorded on a grid of
environment steps:

- **jumpstart**: return at the first grid point, transfer minus scratch;
- **asymptotic performance**: mean return over the last ``tail`` fraction of the grid points;
- **total reward**: area under the curve (AUC) by the trapezoid rule over env steps;
- **transfer ratio**: ``AUC_T / AUC_S``, and the **area ratio** ``r = (AUC_T - AUC_S) / AUC_S``,
  both on returns shifted to be >= 0 (see :func:`compare_transfer`);
- **time to threshold**: the first grid step at which the return reaches a threshold.

Diverged seeds: a curve with a NaN or inf return (a training that blew up) has no area, mean or
first step, and clipping it into range would make numbers up. :class:`LearningCurves` refuses
one; :func:`compare_transfer_finite` takes raw ``(S, T)`` arrays, leaves such seeds out of
every metric and counts them in each estimate's ``n_excluded`` and ``note``, and an arm with no
finite seed left gives NaN estimates that say so, not an error.

Shapes and units: ``steps`` is ``(T,)`` env steps (strictly increasing integers, T >= 2);
``returns`` is ``(S, T)`` episode returns, one row per seed, in the environment's return units.
AUCs are in return x env steps, times to threshold in env steps.

Statistics (:mod:`ctxrl.estimates`, whose names this module also exports): a metric is computed
per seed, then aggregated over seeds as a mean with a confidence interval (Student's t).
Scratch and transfer runs are independent (seed ``i`` of one arm has nothing to do with seed
``i`` of the other), so every transfer-versus-scratch statistic is a two-sample statistic of the
per-seed values: a difference of means gets Welch's interval, a ratio of means a bootstrap one
(``scipy.stats.bootstrap``) that resamples each arm on its own (``paired=False``).

Where things are: one arm's curves, their checks and per-seed metrics in
:mod:`ctxrl.transfer_curves`; :func:`compare_transfer` and its result types in
:mod:`ctxrl.transfer_comparison`; the diverged-seed handling (:func:`compare_transfer_finite`)
here. This module exports all their names.

Everything here is pure numpy / scipy; nothing imports torch or a plugin.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxrl.estimates import (
    DEFAULT_BOOTSTRAP,
    BootstrapOptions,
    MetricEstimate,
    Verdict,
    bootstrap_estimate,
    curve_band,
    difference_of_means,
    mean_estimate,
    mean_of,
    ratio_of_means,
    relative_difference_of_means,
    verdict,
)
from ctxrl.estimates import _json_object as _json_object
from ctxrl.transfer_comparison import FloorOrigin as FloorOrigin
from ctxrl.transfer_comparison import (
    MetricComparison,
    TransferComparison,
    VerdictBasis,
    VerdictMetric,
    _total_steps_window,
    compare_transfer,
)
from ctxrl.transfer_curves import (
    BoolArray,
    IntArray,
    LearningCurves,
    _as_curve_array,
    _check_same_steps,
    as_returns,
    as_step_grid,
    asymptotic_performance,
    check_same_grid,
    finite_seeds,
    tail_points,
    time_to_threshold,
    total_reward,
)
from ctxrl.transfer_curves import FloatArray as FloatArray

# ---------------------------------------------------------------------------------------------
# Transfer versus scratch, diverged seeds left out
# ---------------------------------------------------------------------------------------------


def compare_transfer_finite(
    transfer_steps: npt.ArrayLike,
    transfer_returns: npt.ArrayLike,
    scratch_steps: npt.ArrayLike,
    scratch_returns: npt.ArrayLike,
    *,
    threshold: float | None = None,
    tail: float = 0.1,
    return_floor: float | None = None,
    source_steps: int = 0,
    count_source_time: bool = False,
    verdict_metric: VerdictMetric = "area_ratio",
    absent_band: float = 0.0,
    bootstrap_options: BootstrapOptions = DEFAULT_BOOTSTRAP,
) -> TransferComparison:
    """:func:`compare_transfer` on the seeds whose curves are finite, for curves that may hold
    diverged seeds (a NaN or inf return anywhere, see :func:`finite_seeds`).

    Args:
        transfer_steps, scratch_steps: each arm's ``(T,)`` step grid (the same grid).
        transfer_returns, scratch_returns: ``(S_transfer, T)`` and ``(S_scratch, T)`` returns,
            possibly not finite.
        threshold, ...: as for :func:`compare_transfer`.

    Every metric is computed from the finite seeds only. The diverged seeds are counted in
    ``n_transfer_diverged`` / ``n_scratch_diverged`` and in every estimate's ``n_excluded`` and
    ``note``; a one-arm estimate's ``per_seed`` keeps the input's seed order with NaN for them.
    When an arm has no finite seed left, every estimate is NaN with a note saying which arm
    (so the verdict is ``undetermined``, as for any NaN interval), the seed counts say 0, and
    ``return_floor`` is NaN unless given."""
    transfer_grid, scratch_grid = as_step_grid(transfer_steps), as_step_grid(scratch_steps)
    transfer_values = _as_curve_array(transfer_returns, transfer_grid)
    scratch_values = _as_curve_array(scratch_returns, scratch_grid)
    transfer_kept, scratch_kept = finite_seeds(transfer_values), finite_seeds(scratch_values)
    options: dict[str, Any] = {
        "threshold": threshold,
        "tail": tail,
        "source_steps": source_steps,
        "count_source_time": count_source_time,
        "verdict_metric": verdict_metric,
        "absent_band": absent_band,
        "bootstrap_options": bootstrap_options,
    }
    if transfer_kept.any() and scratch_kept.any():
        result = compare_transfer(
            LearningCurves(transfer_grid, transfer_values[transfer_kept]),
            LearningCurves(scratch_grid, scratch_values[scratch_kept]),
            return_floor=return_floor,
            **options,
        )
    else:
        empty = [
            arm
            for arm, kept in (("transfer", transfer_kept), ("scratch", scratch_kept))
            if not kept.any()
        ]
        result = _undefined_comparison(
            transfer_grid,
            scratch_grid,
            f"no metric: no finite seed left in the {' and '.join(empty)} "
            + ("arms" if len(empty) > 1 else "arm"),
            return_floor=return_floor,
            **options,
        )
    return _with_diverged(result, transfer_kept, scratch_kept)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _joined(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


def _undefined_comparison(
    transfer_steps: IntArray,
    scratch_steps: IntArray,
    reason: str,
    *,
    threshold: float | None,
    tail: float,
    return_floor: float | None,
    source_steps: int,
    count_source_time: bool,
    verdict_metric: VerdictMetric,
    absent_band: float,
    bootstrap_options: BootstrapOptions,
) -> TransferComparison:
    """A comparison with every estimate NaN and ``reason`` as its note (an arm without a
    seed to compute from), on the grid :func:`compare_transfer` would have used, after its
    checks of the arguments."""
    _check_same_steps(transfer_steps, scratch_steps)
    if source_steps < 0:
        raise ValueError(f"source_steps must be >= 0, got {source_steps}")
    if return_floor is not None and not math.isfinite(return_floor):
        raise ValueError(f"return_floor must be finite, got {return_floor}")
    steps = (
        _total_steps_window(transfer_steps, scratch_steps, source_steps)
        if count_source_time
        else scratch_steps
    )
    undefined = MetricEstimate(math.nan, math.nan, math.nan, note=reason)
    comparison = MetricComparison(transfer=undefined, scratch=undefined, advantage=undefined)
    return TransferComparison(
        jumpstart=comparison,
        asymptote=comparison,
        auc=comparison,
        transfer_ratio=undefined,
        area_ratio=undefined,
        time_to_threshold=None if threshold is None else comparison,
        threshold=None if threshold is None else float(threshold),
        verdict=verdict(undefined, absent_band=absent_band),
        verdict_metric=verdict_metric,
        verdict_basis=verdict_metric,
        absent_band=float(absent_band),
        source_time_counted=count_source_time,
        source_steps=int(source_steps),
        return_floor=math.nan if return_floor is None else float(return_floor),
        return_floor_origin="pooled_minimum" if return_floor is None else "caller",
        tail=float(tail),
        tail_points=tail_points(steps.shape[0], tail),
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        n_points=int(steps.shape[0]),
        n_transfer_seeds=0,
        n_scratch_seeds=0,
        bootstrap=bootstrap_options,
    )


def _with_diverged(
    result: TransferComparison, transfer_kept: BoolArray, scratch_kept: BoolArray
) -> TransferComparison:
    """``result`` (computed on the kept seeds) with the left-out diverged seeds counted: in
    each estimate's ``n_excluded`` and ``note``, and as NaN in one-arm ``per_seed`` values,
    which go back to the input's seed order. Unchanged when nothing diverged."""
    n_transfer, n_scratch = int((~transfer_kept).sum()), int((~scratch_kept).sum())
    if not (n_transfer or n_scratch):
        return result
    both = (
        f"diverged (non-finite returns), left out: {n_transfer} of {transfer_kept.size} "
        f"transfer seeds, {n_scratch} of {scratch_kept.size} scratch seeds"
    )

    def one_arm(estimate: MetricEstimate, kept: BoolArray) -> MetricEstimate:
        count = int((~kept).sum())
        if not count:
            return estimate
        per_seed = estimate.per_seed
        if len(per_seed) == int(kept.sum()) and per_seed:
            in_order = np.full(kept.size, math.nan)
            in_order[kept] = per_seed
            per_seed = tuple(float(v) for v in in_order)
        return dataclasses.replace(
            estimate,
            per_seed=per_seed,
            n_excluded=estimate.n_excluded + count,
            note=_joined(
                f"{count} of {kept.size} seeds diverged (non-finite returns), left out",
                estimate.note,
            ),
        )

    def two_arm(estimate: MetricEstimate) -> MetricEstimate:
        return dataclasses.replace(
            estimate,
            n_excluded=estimate.n_excluded + n_transfer + n_scratch,
            note=_joined(both, estimate.note),
        )

    def compared(comparison: MetricComparison) -> MetricComparison:
        return dataclasses.replace(
            comparison,
            transfer=one_arm(comparison.transfer, transfer_kept),
            scratch=one_arm(comparison.scratch, scratch_kept),
            advantage=two_arm(comparison.advantage),
            bound=None if comparison.bound is None else two_arm(comparison.bound),
        )

    times = result.time_to_threshold
    return dataclasses.replace(
        result,
        jumpstart=compared(result.jumpstart),
        asymptote=compared(result.asymptote),
        auc=compared(result.auc),
        transfer_ratio=two_arm(result.transfer_ratio),
        area_ratio=two_arm(result.area_ratio),
        time_to_threshold=None if times is None else compared(times),
        n_transfer_diverged=n_transfer,
        n_scratch_diverged=n_scratch,
    )


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "BootstrapOptions",
    "LearningCurves",
    "MetricComparison",
    "MetricEstimate",
    "TransferComparison",
    "Verdict",
    "VerdictBasis",
    "VerdictMetric",
    "as_returns",
    "as_step_grid",
    "asymptotic_performance",
    "bootstrap_estimate",
    "check_same_grid",
    "compare_transfer",
    "compare_transfer_finite",
    "curve_band",
    "difference_of_means",
    "finite_seeds",
    "mean_estimate",
    "mean_of",
    "ratio_of_means",
    "relative_difference_of_means",
    "tail_points",
    "time_to_threshold",
    "total_reward",
    "verdict",
]
