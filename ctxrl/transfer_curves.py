"""One arm's learning curves, their checks, and the metrics computed per seed from them.

:class:`LearningCurves` holds an arm's curves, checked on the way in (:func:`as_step_grid`,
:func:`as_returns`; :func:`finite_seeds` tells the seeds a metric can use); the per-seed
metrics of one arm are :func:`total_reward` (AUC), :func:`asymptotic_performance` and
:func:`time_to_threshold`. :mod:`ctxrl.transfer_comparison` compares two arms with them, and
:mod:`ctxrl.transfer_metrics` exports every name.

Shapes and units: ``steps`` is ``(T,)`` env steps (strictly increasing integers, T >= 2);
``returns`` is ``(S, T)`` episode returns, one row per seed, in the environment's return units.
AUCs are in return x env steps, times to threshold in env steps.

Pure numpy / scipy; nothing imports torch or a plugin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.integrate import trapezoid

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Relative slack when turning ``tail * T`` into a number of points: 0.3 * 10 is
# 3.0000000000000004 and 0.29 * 100 is 28.999999999999996, both meant as whole numbers.
_TAIL_SLACK = 1e-9


# ---------------------------------------------------------------------------------------------
# One arm's learning curves
# ---------------------------------------------------------------------------------------------


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
