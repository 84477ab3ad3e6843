"""Transfer versus scratch on one (source, target) pair: :func:`compare_transfer` and its result
types, :class:`TransferComparison` with one :class:`MetricComparison` per metric.

The arms are :class:`~ctxrl.transfer_curves.LearningCurves` (finite returns); every metric is
computed per seed (:mod:`ctxrl.transfer_curves`), aggregated with confidence intervals
(:mod:`ctxrl.estimates`: Student's t and Welch's for means and their differences, bootstrap
for ratios) and read for a verdict. :mod:`ctxrl.transfer_metrics`
describes the metrics, compares curves that hold diverged seeds and exports every name.

Shapes and units: ``steps`` is ``(T,)`` env steps (strictly increasing integers, T >= 2);
``returns`` is ``(S, T)`` episode returns, one row per seed, in the environment's return units.
AUCs are in return x env steps, times to threshold in env steps.

Pure numpy / scipy; nothing imports torch or a plugin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ctxrl.estimates import (
    DEFAULT_BOOTSTRAP,
    BootstrapOptions,
    MetricEstimate,
    Verdict,
    _json_object,
    bootstrap_estimate,
    difference_of_means,
    mean_estimate,
    ratio_of_means,
    relative_difference_of_means,
    verdict,
)
from ctxrl.transfer_curves import (
    FloatArray,
    IntArray,
    LearningCurves,
    asymptotic_performance,
    check_same_grid,
    tail_points,
    time_to_threshold,
    total_reward,
)

VerdictMetric = Literal["area_ratio", "jumpstart"]
VerdictBasis = Literal["area_ratio", "jumpstart", "auc_difference"]
FloorOrigin = Literal["caller", "zero", "pooled_minimum"]


# ---------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricComparison:
    """One metric for both arms and the transfer arm's advantage.

    ``transfer`` and ``scratch`` are per-arm means over seeds. ``advantage`` is signed so that
    positive favours transfer: transfer minus scratch for returns and AUCs, scratch minus
    transfer for time to threshold (Taylor & Stone's ``t*_scratch - t*_transfer``).

    Time to threshold only: when seeds of one arm never reached the threshold (so
    ``advantage`` is NaN), ``bound`` is the advantage with those seeds counted at their
    curve's last step, the least time they could have taken: a *lower* bound on transfer's
    advantage when scratch seeds missed, an *upper* bound when transfer seeds missed
    (``bound_side``). Its interval excluding 0 on the bound's side still decides the question
    ("transfer reaches the threshold sooner" when a lower bound's interval lies above 0)."""

    transfer: MetricEstimate
    scratch: MetricEstimate
    advantage: MetricEstimate
    bound: MetricEstimate | None = None
    bound_side: Literal["lower", "upper"] | None = None

    def to_json(self) -> dict[str, Any]:
        return _json_object(self)


@dataclass(frozen=True)
class TransferComparison:
    """Transfer versus scratch on one (source, target) pair; see :func:`compare_transfer`.

    Fields:
        jumpstart: return at the first grid point; ``advantage`` is the jumpstart.
        asymptote: mean return over the last ``tail_points`` grid points.
        auc: total reward, trapezoid AUC of the raw returns (return x env steps).
        transfer_ratio: ``mean AUC_T / mean AUC_S`` on shifted returns (``1 + area_ratio``).
        area_ratio: ``(mean AUC_T - mean AUC_S) / mean AUC_S`` on shifted returns.
        time_to_threshold: first grid step reaching ``threshold`` (None without a threshold);
            with the source counted, the transfer arm's steps include ``source_steps``.
        verdict: ``positive`` / ``negative`` when the interval of ``verdict_metric`` lies
            entirely above ``absent_band`` / below ``-absent_band``, ``absent`` otherwise,
            ``undetermined`` without an interval (one seed per arm). ``verdict_basis`` says
            which interval decided: ``verdict_metric``'s, or ``auc_difference`` (the AUC
            advantage, band 0) where ``r`` has no interval because scratch's area is 0 on the
            seeds or on some resamples (a sparse task that scratch never solves).
        source_time_counted: whether the transfer curve was shifted right by ``source_steps``.
        return_floor: the value subtracted from every return before the ratios, and
            ``return_floor_origin`` where it came from: ``caller``, ``zero`` (no shift
            needed) or ``pooled_minimum`` (the lowest return of both arms).
        first_step, last_step, n_points: the grid the metrics were computed on.
        n_transfer_seeds, n_scratch_seeds: the seeds the metrics were computed from.
        n_transfer_diverged, n_scratch_diverged: seeds left out because their curves are not
            finite (see :func:`compare_transfer_finite`); 0 from :func:`compare_transfer`.
    """

    jumpstart: MetricComparison
    asymptote: MetricComparison
    auc: MetricComparison
    transfer_ratio: MetricEstimate
    area_ratio: MetricEstimate
    time_to_threshold: MetricComparison | None
    threshold: float | None
    verdict: Verdict
    verdict_metric: VerdictMetric
    absent_band: float
    source_time_counted: bool
    source_steps: int
    return_floor: float
    return_floor_origin: FloorOrigin
    tail: float
    tail_points: int
    first_step: int
    last_step: int
    n_points: int
    n_transfer_seeds: int
    n_scratch_seeds: int
    bootstrap: BootstrapOptions
    n_transfer_diverged: int = 0
    n_scratch_diverged: int = 0
    verdict_basis: VerdictBasis = "area_ratio"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become None, tuples become lists)."""
        return _json_object(self)


# ---------------------------------------------------------------------------------------------
# Transfer versus scratch
# ---------------------------------------------------------------------------------------------


def compare_transfer(
    transfer: LearningCurves,
    scratch: LearningCurves,
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
    """All transfer metrics of ``transfer`` against ``scratch``, with intervals and a verdict.

    Both arms must be recorded on the same step grid (ValueError otherwise), with the transfer
    arm's steps counted from the start of its target training.

    Args:
        threshold: return level for time to threshold (None: not computed).
        tail: fraction of final grid points averaged for the asymptote (at least one point).
        return_floor: value subtracted from every return before the ratios, so that the AUCs
            compared are areas of non-negative curves (the paper normalises returns to >= 0
            first). Prefer a bound of the environment given by the caller (its minimum
            return, or a random policy's return when the curves never dip below it, as in
            Sabatelli & Geurts): then ``r`` means the same for every pair and seed set.
            None: 0 when every return of both arms is >= 0 (no shift; the raw areas are
            already those of non-negative curves), otherwise the minimum over both arms'
            returns (all seeds, all grid points): one shift for both arms, the smallest that
            makes every return >= 0. That minimum depends on the data (the lower it is, the
            smaller ``|r|``), so ``r`` from different pairs is then only roughly comparable.
            A floor above some return is a ValueError. Dividing by ``R_max - R_floor`` as
            well would not change either ratio, so no scale is applied.
        source_steps: env steps the source policy trained for (recorded in the result).
        count_source_time: False (the paper's choice): the arms are compared at equal target
            steps. True: the transfer curve is shifted right by ``source_steps`` and the arms
            are compared at equal *total* env steps over the window where both exist, i.e.
            scratch's grid points from ``steps[0] + source_steps`` on, with the transfer
            returns there linearly interpolated (exact when ``source_steps`` is a multiple of
            the grid spacing); jumpstart, asymptote and AUCs use that window, and the
            transfer arm's time to threshold (from its whole curve) gains ``source_steps``.
        verdict_metric: the interval the verdict reads: ``area_ratio`` (r) or ``jumpstart``.
        absent_band: in the units of ``verdict_metric`` (r, or return for jumpstart); see
            :func:`verdict`.
        bootstrap_options: confidence level, resamples, method, random state.

    Intervals: per-arm values are means over seeds; the advantages and ratios are two-sample
    statistics of the per-seed values (a difference of means with Welch's interval, a ratio of
    means bootstrapped with each arm resampled on its own), since transfer and scratch seeds
    are independent runs."""
    check_same_grid(transfer, scratch)
    if source_steps < 0:
        raise ValueError(f"source_steps must be >= 0, got {source_steps}")
    threshold_transfer = (
        time_to_threshold(transfer.steps, transfer.returns, threshold)
        if threshold is not None
        else None
    )
    # scratch's time to threshold on its whole curve: the window below starts where the
    # source-shifted transfer curve does, and scratch may reach the threshold before that
    threshold_scratch = (
        time_to_threshold(scratch.steps, scratch.returns, threshold)
        if threshold is not None
        else None
    )
    if count_source_time:
        if threshold_transfer is not None:
            threshold_transfer = threshold_transfer + source_steps
        transfer, scratch = _on_total_steps(transfer, scratch, source_steps)
    options = bootstrap_options
    steps = scratch.steps

    jumpstart = _compare(transfer.returns[:, 0], scratch.returns[:, 0], options)
    count = tail_points(steps.shape[0], tail)
    asymptote = _compare(
        asymptotic_performance(transfer.returns, tail),
        asymptotic_performance(scratch.returns, tail),
        options,
    )
    auc_transfer = total_reward(steps, transfer.returns)
    auc_scratch = total_reward(steps, scratch.returns)
    auc = _compare(auc_transfer, auc_scratch, options)

    floor, origin = _return_floor(transfer.returns, scratch.returns, return_floor)
    # Subtracting the floor from every return lowers each AUC by floor x the grid's span.
    span = float(steps[-1] - steps[0])
    shifted = (auc_transfer - floor * span, auc_scratch - floor * span)
    transfer_ratio = bootstrap_estimate(shifted, ratio_of_means, options=options)
    area_ratio = bootstrap_estimate(shifted, relative_difference_of_means, options=options)

    time_comparison = None
    if threshold_transfer is not None and threshold_scratch is not None:
        budgets = (
            float(transfer.steps[-1]) + (source_steps if count_source_time else 0),
            float(scratch.steps[-1]),
        )
        time_comparison = _compare_times(threshold_transfer, threshold_scratch, options, budgets)

    deciding, band = area_ratio, absent_band
    basis: VerdictBasis = verdict_metric
    if verdict_metric == "jumpstart":
        deciding = jumpstart.advantage
    elif math.isnan(area_ratio.low) and not math.isnan(auc.advantage.low):
        # r is undefined where scratch's area is 0 (a sparse task scratch never solves, as
        # Sabatelli & Geurts's Catch-v4), on every seed or on some resamples; the difference
        # of the areas has r's sign wherever r exists, so it decides (absent_band is in r's
        # units, so no band)
        deciding, band, basis = auc.advantage, 0.0, "auc_difference"
    return TransferComparison(
        jumpstart=jumpstart,
        asymptote=asymptote,
        auc=auc,
        transfer_ratio=transfer_ratio,
        area_ratio=area_ratio,
        time_to_threshold=time_comparison,
        threshold=None if threshold is None else float(threshold),
        verdict=verdict(deciding, absent_band=band),
        verdict_metric=verdict_metric,
        verdict_basis=basis,
        absent_band=float(absent_band),
        source_time_counted=count_source_time,
        source_steps=int(source_steps),
        return_floor=floor,
        return_floor_origin=origin,
        tail=float(tail),
        tail_points=count,
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        n_points=int(steps.shape[0]),
        n_transfer_seeds=transfer.n_seeds,
        n_scratch_seeds=scratch.n_seeds,
        bootstrap=options,
    )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _compare(
    transfer_values: FloatArray, scratch_values: FloatArray, options: BootstrapOptions
) -> MetricComparison:
    return MetricComparison(
        transfer=mean_estimate(transfer_values, options=options),
        scratch=mean_estimate(scratch_values, options=options),
        advantage=bootstrap_estimate(
            (transfer_values, scratch_values), difference_of_means, options=options
        ),
    )


def _compare_times(
    transfer_times: FloatArray,
    scratch_times: FloatArray,
    options: BootstrapOptions,
    budgets: tuple[float, float],
) -> MetricComparison:
    """Times to threshold per arm, and ``t*_scratch - t*_transfer`` (positive: transfer is
    faster). The advantage needs every seed of both arms to reach the threshold: a mean over
    the seeds that did would favour the arm whose slow seeds failed, so otherwise it is NaN and
    its note counts the seeds that never reached it. When only one arm has such seeds, the
    comparison's ``bound`` counts them at ``budgets`` (the last step of each arm's curve,
    ``(transfer, scratch)``)."""
    transfer = mean_estimate(transfer_times, options=options)
    scratch = mean_estimate(scratch_times, options=options)
    if not (transfer.n_excluded or scratch.n_excluded):
        advantage = bootstrap_estimate(
            (scratch_times, transfer_times), difference_of_means, options=options
        )
        return MetricComparison(transfer=transfer, scratch=scratch, advantage=advantage)
    note = (
        f"never reached the threshold: {transfer.n_excluded} of {transfer_times.size} "
        f"transfer seeds, {scratch.n_excluded} of {scratch_times.size} scratch seeds; "
        "no advantage without every seed"
    )
    advantage = MetricEstimate(math.nan, math.nan, math.nan, note=note)
    if transfer.n_excluded and scratch.n_excluded:
        return MetricComparison(transfer=transfer, scratch=scratch, advantage=advantage)
    side: Literal["lower", "upper"] = "lower" if scratch.n_excluded else "upper"
    missed, budget = ("scratch", budgets[1]) if scratch.n_excluded else ("transfer", budgets[0])
    counted = (
        np.nan_to_num(scratch_times, nan=budgets[1]),
        np.nan_to_num(transfer_times, nan=budgets[0]),
    )
    bound = bootstrap_estimate(
        counted,
        difference_of_means,
        options=options,
        note=f"{side} bound: the {missed} seeds that never reached the threshold counted at "
        f"their curve's last step ({budget:g})",
    )
    return MetricComparison(
        transfer=transfer, scratch=scratch, advantage=advantage, bound=bound, bound_side=side
    )


def _return_floor(
    transfer_returns: FloatArray, scratch_returns: FloatArray, given: float | None
) -> tuple[float, FloorOrigin]:
    lowest = float(min(transfer_returns.min(), scratch_returns.min()))
    if given is None:
        return (0.0, "zero") if lowest >= 0.0 else (lowest, "pooled_minimum")
    if not math.isfinite(given):
        raise ValueError(f"return_floor must be finite, got {given}")
    if given > lowest:
        raise ValueError(
            f"return_floor {given} is above the lowest return {lowest}: the area ratio needs "
            "returns shifted to >= 0, so pass a lower bound (e.g. the environment's minimum "
            "return) or None for the minimum over both arms"
        )
    return float(given), "caller"


def _on_total_steps(
    transfer: LearningCurves, scratch: LearningCurves, source_steps: int
) -> tuple[LearningCurves, LearningCurves]:
    """Both arms on scratch's grid points where the source-shifted transfer curve exists."""
    total = (transfer.steps + source_steps).astype(np.float64)
    window = _total_steps_window(transfer.steps, scratch.steps, source_steps)
    # The window ends at scratch's last step, which the shifted transfer grid covers, so
    # np.interp only interpolates and never clamps.
    window_float = window.astype(np.float64)
    transfer_on_window = np.stack([np.interp(window_float, total, r) for r in transfer.returns])
    scratch_on_window = scratch.returns[:, scratch.steps >= total[0]]
    return LearningCurves(window, transfer_on_window), LearningCurves(window, scratch_on_window)


def _total_steps_window(
    transfer_steps: IntArray, scratch_steps: IntArray, source_steps: int
) -> IntArray:
    """Scratch's grid points from the first step of the source-shifted transfer grid on (at
    least two of them)."""
    window: IntArray = scratch_steps[scratch_steps >= transfer_steps[0] + source_steps]
    if window.shape[0] < 2:
        raise ValueError(
            f"counting {source_steps} source steps leaves {window.shape[0]} grid point(s) "
            f"where both arms exist (scratch ends at step {scratch_steps[-1]}); need 2"
        )
    return window
