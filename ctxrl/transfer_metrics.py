"""Transfer metrics over learning curves, with bootstrap confidence intervals over seeds.

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
per seed, then aggregated over seeds as a mean with a bootstrap confidence interval
(``scipy.stats.bootstrap``). Scratch and transfer runs are independent (seed ``i`` of one arm
has nothing to do with seed ``i`` of the other), so every transfer-versus-scratch statistic is
a two-sample statistic of the per-seed values (difference of means, ratio of means) and the
bootstrap resamples each arm on its own (``paired=False``).

Everything here is pure numpy / scipy; nothing imports torch or a plugin.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.integrate import trapezoid

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

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

VerdictMetric = Literal["area_ratio", "jumpstart"]
FloorOrigin = Literal["caller", "zero", "pooled_minimum"]

# Relative slack when turning ``tail * T`` into a number of points: 0.3 * 10 is
# 3.0000000000000004 and 0.29 * 100 is 28.999999999999996, both meant as whole numbers.
_TAIL_SLACK = 1e-9


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
            entirely above ``absent_band`` / below ``-absent_band``, ``absent`` otherwise.
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

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become None, tuples become lists)."""
        return _json_object(self)


@dataclass(frozen=True, eq=False)
class LearningCurves:
    """One arm's learning curves: ``returns[s, t]`` is seed ``s``'s return at ``steps[t]``.

    Args:
        steps: ``(T,)`` env steps, strictly increasing integers (integral floats accepted),
            T >= 2.
        returns: ``(S, T)`` returns, finite, S >= 1.

    Both are stored as read-only copies (int64 and float64)."""

    steps: npt.NDArray[Any]
    returns: npt.NDArray[Any]

    def __post_init__(self) -> None:
        steps = as_step_grid(self.steps)
        returns = as_returns(self.returns, steps)
        steps.flags.writeable = False
        returns.flags.writeable = False
        # Frozen dataclass: store the validated copies in place of the caller's arrays.
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "returns", returns)

    @property
    def n_seeds(self) -> int:
        return int(self.returns.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.steps.shape[0])

    def between(self, first_step: int, last_step: int) -> LearningCurves:
        """The grid points with ``first_step <= step <= last_step`` (e.g. the segment after one
        context switch), at least two of them."""
        keep = (self.steps >= first_step) & (self.steps <= last_step)
        if int(keep.sum()) < 2:
            raise ValueError(
                f"only {int(keep.sum())} grid point(s) lie in [{first_step}, {last_step}]; "
                "a curve needs at least 2"
            )
        return LearningCurves(self.steps[keep], self.returns[:, keep])


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def as_step_grid(steps: npt.ArrayLike) -> IntArray:
    """``steps`` as a ``(T,)`` int64 array, checked: 1-D, T >= 2, integral, strictly
    increasing."""
    raw = np.asarray(steps)
    if raw.ndim != 1 or raw.shape[0] < 2:
        raise ValueError(f"steps must be a 1-D grid of at least 2 points, got shape {raw.shape}")
    if not np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.complexfloating):
        raise ValueError(f"steps must be integers, got dtype {raw.dtype}")
    if not np.all(np.isfinite(raw)) or not np.array_equal(raw, np.round(raw)):
        raise ValueError("steps must be whole numbers of env steps")
    grid = raw.astype(np.int64)
    if np.any(np.diff(grid) <= 0):
        index = int(np.argmax(np.diff(grid) <= 0))
        raise ValueError(
            f"steps must be strictly increasing: step[{index}] = {grid[index]}, "
            f"step[{index + 1}] = {grid[index + 1]}"
        )
    return grid


def as_returns(returns: npt.ArrayLike, steps: IntArray) -> FloatArray:
    """``returns`` as an ``(S, T)`` float64 array matching the ``(T,)`` grid, all finite."""
    values = _as_curve_array(returns, steps)
    if not np.all(np.isfinite(values)):
        raise ValueError("returns must be finite")
    return values


def finite_seeds(returns: npt.ArrayLike) -> BoolArray:
    """``(S,)``: whether each seed's row of the ``(S, T)`` returns is finite at every grid
    point. A seed with a NaN or inf return is a diverged training; no metric can use it."""
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"returns must have shape (seeds, points), got {values.shape}")
    return np.asarray(np.isfinite(values).all(axis=1), dtype=np.bool_)


def check_same_grid(transfer: LearningCurves, scratch: LearningCurves) -> None:
    """Raise ValueError unless both arms were recorded on the same step grid, naming both
    lengths or the first differing step."""
    _check_same_steps(transfer.steps, scratch.steps)


def _check_same_steps(transfer_steps: IntArray, scratch_steps: IntArray) -> None:
    """:func:`check_same_grid` on the two ``(T,)`` step grids."""
    if transfer_steps.shape[0] != scratch_steps.shape[0]:
        raise ValueError(
            "transfer and scratch curves are on different grids: "
            f"{transfer_steps.shape[0]} vs {scratch_steps.shape[0]} points"
        )
    differ = np.flatnonzero(transfer_steps != scratch_steps)
    if differ.size:
        index = int(differ[0])
        raise ValueError(
            f"transfer and scratch curves are on different grids: first mismatch at index "
            f"{index}, transfer step {transfer_steps[index]} vs scratch step "
            f"{scratch_steps[index]}"
        )


# ---------------------------------------------------------------------------------------------
# Per-seed metrics of one arm
# ---------------------------------------------------------------------------------------------


def tail_points(n_points: int, tail: float) -> int:
    """How many final grid points make up the ``tail`` fraction of an ``n_points`` grid:
    ``floor(tail * n_points)``, at least 1."""
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"tail must be a fraction in (0, 1], got {tail}")
    return max(1, math.floor(tail * n_points * (1.0 + _TAIL_SLACK)))


def total_reward(steps: npt.ArrayLike, returns: npt.ArrayLike) -> FloatArray:
    """Area under each seed's curve by the trapezoid rule over env steps: ``(S,)`` in
    return x env steps."""
    grid = as_step_grid(steps)
    values = as_returns(returns, grid)
    return np.asarray(trapezoid(values, x=grid.astype(np.float64), axis=1), dtype=np.float64)


def asymptotic_performance(returns: npt.ArrayLike, tail: float = 0.1) -> FloatArray:
    """Each seed's mean return over the last ``tail`` fraction of its grid points (at least
    one point, see :func:`tail_points`): ``(S,)`` in return units."""
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"returns must have shape (seeds, points), got {values.shape}")
    count = tail_points(values.shape[1], tail)
    return np.asarray(values[:, -count:].mean(axis=1), dtype=np.float64)


def time_to_threshold(steps: npt.ArrayLike, returns: npt.ArrayLike, threshold: float) -> FloatArray:
    """Each seed's first grid step with ``return >= threshold``: ``(S,)`` env steps, NaN for a
    seed that never reaches it on the grid."""
    grid = as_step_grid(steps)
    values = as_returns(returns, grid)
    reached = values >= threshold
    first = np.argmax(reached, axis=1)
    out = np.asarray(grid[first], dtype=np.float64)
    out[~reached.any(axis=1)] = np.nan
    return out


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
    statistics of the per-seed values (difference / ratio of means) bootstrapped with each arm
    resampled independently, since transfer and scratch seeds are independent runs."""
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

    deciding = area_ratio if verdict_metric == "area_ratio" else jumpstart.advantage
    return TransferComparison(
        jumpstart=jumpstart,
        asymptote=asymptote,
        auc=auc,
        transfer_ratio=transfer_ratio,
        area_ratio=area_ratio,
        time_to_threshold=time_comparison,
        threshold=None if threshold is None else float(threshold),
        verdict=verdict(deciding, absent_band=absent_band),
        verdict_metric=verdict_metric,
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
    (so the verdict is ``absent``, as for any NaN interval), the seed counts say 0, and
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


def _as_curve_array(returns: npt.ArrayLike, steps: IntArray) -> FloatArray:
    """``returns`` as a fresh ``(S, T)`` float64 array matching the ``(T,)`` grid, S >= 1
    (finite or not)."""
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] != steps.shape[0]:
        raise ValueError(
            f"returns must have shape (seeds, {steps.shape[0]}) to match the step grid, "
            f"got {values.shape}"
        )
    return values.copy()


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


__all__ = [
    "DEFAULT_BOOTSTRAP",
    "BootstrapOptions",
    "LearningCurves",
    "MetricComparison",
    "MetricEstimate",
    "TransferComparison",
    "Verdict",
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
