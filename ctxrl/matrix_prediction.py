"""A whole transfer matrix predicted from a few observed rows, with calibrated bands.

The generalization model of :mod:`ctxrl.gp` (a GP over the training performance, a gap
growing with distance) turned into a prediction of every entry, its standard deviation (the set
point's uncertainty, the gap model's own error at that distance, widened by what the observed
rows fail to predict of each other), and the checks of that band on held-out rows that
``ctxrl report`` draws and ``benchmarks/gp_heldout.py`` measures.

Shapes: ``coords`` ``(N, d)`` unit-cube coordinates of the contexts; a matrix ``(N, N)`` of
normalised returns, row = source, column = target; ``rows`` maps an observed source's index to
its row ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ctxrl.gp import GapModel, PerformanceGP


@dataclass(frozen=True)
class GapResidual:
    """How far real rows stray from the gap model, as a function of the source-target
    distance: the error variance is ``a + b * d`` for L1 distance ``d`` (unit-cube units).

    Fitted (:meth:`estimate`, non-negative least squares on the squared errors) to how far each
    observed row strays from the gap model's shape, ``clip(c_i - gap(x_i, x_j), 0, 1)``, with
    the gap fitted on the observed rows (or the ``gap`` given) and ``c_i`` the row's median
    level. The set point's own uncertainty is the GP's part of the band, so the row's level,
    not its noisy entry ``J_ii``, anchors it. Measured alternatives (``benchmarks/gp_heldout.py``,
    RESULTS.md): anchoring on ``J_ii`` counts its noise twice (bands wider than their nominal
    coverage), and leaving the row out of the slope fit widens them further."""

    a: float
    b: float

    @classmethod
    def estimate(
        cls, coords: np.ndarray, rows: Mapping[int, np.ndarray], *, gap: GapModel | None = None
    ) -> GapResidual:
        """With no rows, a prior spread of 0.25 (a quarter of the normalised range) at every
        distance."""
        from scipy.optimize import nnls

        coords = np.atleast_2d(coords)
        if not rows:
            return cls(0.25**2, 0.0)
        squared, distance = [], []
        model = gap or GapModel.estimate(coords, rows)
        gaps = model.gap(coords)
        for i, row in rows.items():
            level = np.nanmedian(row + gaps[i])  # the row's own level: not its noisy J_ii
            error = np.clip(level - gaps[i], 0.0, 1.0) - row
            keep = (np.arange(len(row)) != i) & ~np.isnan(error)
            squared.append(error[keep] ** 2)
            distance.append(np.abs(coords[keep] - coords[i]).sum(axis=1))
        e2, d = np.concatenate(squared), np.concatenate(distance)
        if e2.size == 0:
            return cls(0.25**2, 0.0)
        (a, b), _ = nnls(np.stack([np.ones_like(d), d], axis=1), e2)
        return cls(float(a), float(b))

    def variance(self, coords: np.ndarray) -> np.ndarray:
        """``(N, N)`` error variance of every source (row) - target (column) entry."""
        coords = np.atleast_2d(coords)
        distance = np.abs(coords[:, None, :] - coords[None, :, :]).sum(axis=2)
        variance: np.ndarray = self.a + self.b * distance
        return variance


@dataclass(frozen=True)
class MatrixPrediction:
    """A predicted transfer matrix ``(N, N)`` and the standard deviation of each entry.

    ``std`` combines the GP's uncertainty about the row's set point with the gap model's own
    error (:class:`GapResidual`), widened by ``scale`` (:func:`jackknife_scale`; 1 without
    calibration); observed rows are kept as observed (``std`` 0)."""

    mean: np.ndarray
    std: np.ndarray
    residual: GapResidual | None = None
    scale: float = 1.0


def predict_matrix(
    coords: np.ndarray,
    rows: Mapping[int, np.ndarray],
    *,
    gap: GapModel | None = None,
    noise_std: float = 0.1,
    seed: int = 0,
    calibrate: bool = True,
) -> MatrixPrediction:
    """Predict the whole normalised transfer matrix from a few observed rows.

    The GP gives each source's training performance; the gap model (estimated from ``rows``
    when not given) turns it into a row: ``M[i, j] = mu_i - gap(x_i, x_j)``, clipped to [0, 1].
    The standard deviation of an entry is ``sqrt(sigma_i^2 + s_ij^2)``: the GP's ``sigma_i``
    and, with ``calibrate``, the gap model's error ``s_ij`` on the observed rows at that
    entry's distance (:class:`GapResidual`; without it the band covers only the set point's
    uncertainty and is far too narrow on real matrices), times the :func:`jackknife_scale` of
    the observed rows (with two or more of them).
    """
    prediction = _predict_matrix(coords, rows, gap, noise_std, seed, calibrate)
    if not calibrate or len(rows) < 2:
        return prediction
    scale = jackknife_scale(coords, rows, gap=gap, noise_std=noise_std, seed=seed)
    return replace(prediction, std=prediction.std * scale, scale=scale)


def jackknife_scale(
    coords: np.ndarray,
    rows: Mapping[int, np.ndarray],
    *,
    gap: GapModel | None = None,
    noise_std: float = 0.1,
    seed: int = 0,
    level: float = 0.95,
) -> float:
    """How much wider the calibrated band must be to have covered the observed rows: each
    observed row predicted from the others in turn (the set point refitted, and the gap model
    unless ``gap`` is given), its entries' errors in units of their predicted standard
    deviation pooled, and the factor (at least 1) that puts their ``level`` quantile at the
    Gaussian's (1.96 for 95 %).

    Three rows cannot show a training lottery or a heavy tail by their spread alone (three
    sources that trained alike give a confident set-point GP); what the rows do not predict of
    each other shows it. Measured on the kept real matrices (``benchmarks/gp_heldout.py``,
    RESULTS.md): the 95 % band's coverage of held-out rows from 0.78-0.89 to 0.88-0.97."""
    from scipy.stats import norm

    observed = sorted(rows)
    errors = []
    for left_out in observed:
        others = {i: rows[i] for i in observed if i != left_out}
        fit = _predict_matrix(coords, others, gap, noise_std, seed, True)
        row = np.asarray(rows[left_out], dtype=np.float64)
        z = np.abs(fit.mean[left_out] - row) / np.maximum(fit.std[left_out], 1e-9)
        errors.append(z[~np.isnan(z)])
    pooled = np.concatenate(errors)
    if pooled.size == 0:
        return 1.0
    return max(1.0, float(np.quantile(pooled, level) / norm.ppf(0.5 + level / 2)))


def _predict_matrix(
    coords: np.ndarray,
    rows: Mapping[int, np.ndarray],
    gap: GapModel | None,
    noise_std: float,
    seed: int,
    calibrate: bool,
) -> MatrixPrediction:
    """:func:`predict_matrix` without the jackknife scale."""
    coords = np.atleast_2d(coords)
    n = coords.shape[0]
    observed = sorted(rows)
    fitted = gap or GapModel.estimate(coords, rows)
    gp = PerformanceGP(
        coords[observed],
        np.nan_to_num(np.array([rows[i][i] for i in observed]), nan=0.0),  # failed: 0
        noise_std=noise_std,
        seed=seed,
    )
    post = gp.posterior(coords)
    mean = np.clip(post.mean[:, None] - fitted.gap(coords), 0.0, 1.0)
    residual = GapResidual.estimate(coords, rows, gap=gap) if calibrate else None
    extra = residual.variance(coords) if residual else np.zeros((n, n))
    std = np.sqrt(post.std[:, None] ** 2 + extra)
    for i in observed:
        mean[i] = rows[i]
        std[i] = 0.0
    return MatrixPrediction(mean, std, residual)


def band_coverage(
    matrix: np.ndarray,
    observed: list[int],
    levels: Sequence[float] = (0.95,),
    *,
    gap: GapModel | None = None,
    coords: np.ndarray | None = None,
    calibrate: bool = True,
) -> tuple[float, list[float]]:
    """Predict the rows of ``matrix`` not in ``observed`` from those that are.

    Returns the root-mean-square error on the held-out rows and, per nominal ``level``, the
    share of held-out entries inside the central band (mean +- z std; z = 1.96 for 95 %): a
    calibrated model covers about ``level``. ``matrix`` is a normalised ``(N, N)`` matrix;
    ``coords`` its contexts' ``(N, d)`` coordinates (default: a 1-D grid ``linspace(0, 1, N)``).
    """
    from scipy.stats import norm

    n = matrix.shape[0]
    coords = np.linspace(0.0, 1.0, n)[:, None] if coords is None else np.atleast_2d(coords)
    prediction = predict_matrix(
        coords, {i: matrix[i] for i in observed}, gap=gap, calibrate=calibrate
    )
    held = [i for i in range(n) if i not in observed]
    error = np.abs(prediction.mean[held] - matrix[held])
    std = np.maximum(prediction.std[held], 1e-9)
    coverage = [float(np.mean(error <= norm.ppf(0.5 + level / 2) * std)) for level in levels]
    return float(np.sqrt(np.mean(error**2))), coverage


def held_out_error(
    matrix: np.ndarray,
    observed: list[int],
    *,
    gap: GapModel | None = None,
    coords: np.ndarray | None = None,
    calibrate: bool = True,
) -> tuple[float, float]:
    """``(rmse, coverage of the 95 % band)`` of :func:`band_coverage`."""
    rmse, (coverage,) = band_coverage(
        matrix, observed, (0.95,), gap=gap, coords=coords, calibrate=calibrate
    )
    return rmse, coverage


def spread_observations(
    n: int, count: int, sets: int = 8, coords: np.ndarray | None = None
) -> list[list[int]]:
    """At most ``sets`` ways of observing ``count`` rows spread evenly over ``n`` contexts
    (equal spacing, the sets shifted by evenly spread offsets), as held-out checks use them.

    With ``coords`` ``(n, d)`` of contexts that vary along more than one dimension, evenly
    spaced indices would walk one axis of the grid and leave the others unobserved (on a
    3 x 2 grid, every observed row at one value of the second feature), so each set is
    instead grown farthest-first in the coordinates (L1 distance, ties to the lower index)
    from one of ``sets`` evenly spaced first rows."""
    if coords is not None:
        points = np.asarray(coords, dtype=np.float64).reshape(n, -1)
        varying = points[:, np.ptp(points, axis=0) > 0]
        if varying.shape[1] > 1:
            span = np.ptp(varying, axis=0)
            unit = (varying - varying.min(axis=0)) / span
            distance = np.abs(unit[:, None, :] - unit[None, :, :]).sum(axis=-1)
            firsts = sorted({int(i) for i in np.linspace(0, n - 1, min(sets, n)).round()})
            chosen_sets: list[list[int]] = []
            for first in firsts:
                chosen = [first]
                while len(chosen) < min(count, n):
                    nearest = distance[:, chosen].min(axis=1)
                    nearest[chosen] = -np.inf  # never a row twice (repeated coordinates)
                    chosen.append(int(np.argmax(nearest)))  # the first of equals
                chosen = sorted(chosen)
                if chosen not in chosen_sets:
                    chosen_sets.append(chosen)
            return chosen_sets
    step = max(n // count, 1)
    offsets = sorted({int(o) for o in np.linspace(0, step - 1, min(sets, step)).round()})
    return [[o + step * k for k in range(count) if o + step * k < n] for o in offsets]
