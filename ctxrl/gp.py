"""Generalization models: how well a policy trained on context ``x`` does on context ``x'``.

MBTL's model is ``J(pi_x, x') ~= J(pi_x, x) - gap(x, x')``: a Gaussian process over the
*training performance* ``J(pi_x, x)`` (the diagonal of the transfer matrix) and a generalization
gap that grows linearly with the distance between contexts. Here the gap has a slope per
dimension and per side (``x' < x`` and ``x' > x``), estimated from observed rows by non-negative
least squares, so it also covers asymmetric and multi-dimensional context spaces.

Shapes: ``train_X`` is ``(n, d)`` unit-cube coordinates, ``train_Y`` is ``(n,)`` normalised
performance in [0, 1]; a matrix is ``(N, N)`` with row = source, column = target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctxrl.fit_batch import current_batch


@dataclass(frozen=True)
class Posterior:
    """GP predictions at ``m`` points: ``mean`` and ``std``, both ``(m,)``."""

    mean: np.ndarray
    std: np.ndarray


_Problem = tuple[np.ndarray, np.ndarray, float, int]  # x (n, d), centred y (n,), noise, seed
# raw lengthscale (1, d), raw outputscale (), observation noise variance (fixed or learned)
_Raw = tuple[np.ndarray, np.ndarray, float]

# the smallest observation noise variance a learned noise may take (gpytorch's default floor)
MIN_NOISE_VARIANCE = 1e-4


def _initial_lengthscales(restarts: int, seed: int) -> list[float]:
    """Starting lengthscale of each restart: 0.3, then uniform in [0.05, 2.05) drawn from a
    generator seeded ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return [
        0.3 if r == 0 else float(torch.rand(1, generator=generator)) * 2 + 0.05
        for r in range(max(1, restarts))
    ]


def _fit_kernels(
    xs: np.ndarray,
    ys: np.ndarray,
    noise_stds: np.ndarray,
    seeds: Sequence[int],
    *,
    restarts: int,
    iterations: int,
    learn_noise: bool = False,
) -> list[_Raw]:
    """Fit ``P`` GPs (``xs`` ``(P, n, d)``, centred ``ys`` ``(P, n)``, observation noise
    ``noise_stds`` ``(P,)``: fixed, or with ``learn_noise`` the starting value of a learned
    one) from ``restarts`` starting lengthscales each, as one batch of ``P * restarts`` kernels
    optimised by Adam (learning rate 0.1, ``iterations`` steps) on the sum of their negative
    marginal log likelihoods. Per problem, the restart with the lowest last loss (the first on
    ties) wins; returns its raw ``(lengthscale (1, d), outputscale ())`` parameters and its
    noise variance after the last step (a learned one at least :data:`MIN_NOISE_VARIANCE`)."""
    import gpytorch
    import torch

    problems, n, dims = xs.shape
    runs = max(1, restarts)
    x = torch.as_tensor(xs, dtype=torch.float64).repeat_interleave(runs, dim=0)
    y = torch.as_tensor(ys, dtype=torch.float64).repeat_interleave(runs, dim=0)
    noise = torch.as_tensor(noise_stds, dtype=torch.float64).repeat_interleave(runs) ** 2
    if learn_noise:
        model, likelihood = PerformanceGP._build(x, y, noise.clamp_min(MIN_NOISE_VARIANCE), True)
    else:
        model, likelihood = PerformanceGP._build(x, y, noise[:, None].expand(-1, n).clone())
    inits = [v for seed in seeds for v in _initial_lengthscales(runs, seed)]
    # float32 starting values, as a lone model's lengthscale setter receives them
    start = torch.tensor(inits, dtype=torch.float32)[:, None, None].expand(-1, 1, dims)
    model.covar_module.base_kernel.lengthscale = start
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()
    likelihood.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loss = torch.full((problems * runs,), float("inf"), dtype=torch.float64)
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = -mll(model(x), y)
        loss.sum().backward()
        optimizer.step()
    last = loss.detach().reshape(problems, runs)
    raw_lengthscale = model.covar_module.base_kernel.raw_lengthscale.detach()
    raw_outputscale = model.covar_module.raw_outputscale.detach()
    variance = likelihood.noise.detach().reshape(problems * runs, -1)[:, 0]
    out = []
    for p in range(problems):
        best = p * runs + int(np.argmin(last[p].numpy()))  # the first minimum
        out.append(
            (
                raw_lengthscale[best].numpy().copy(),
                raw_outputscale[best].numpy().copy(),
                float(variance[best]),
            )
        )
    return out


class PerformanceGP:
    """An exact GP (gpytorch) over training performance, fitted by maximising the marginal
    likelihood.

    Kernel: a scaled RBF with one lengthscale per context dimension. The observation noise is
    fixed (``noise_std``, the reference uses 0.1 on normalised performance) or, with
    ``learn_noise``, fitted with the kernel from ``noise_std`` as its starting value (at least
    ``sqrt(MIN_NOISE_VARIANCE)`` = 0.01), as SD-MBTL's reference code fits its GP; the fitted
    value is :attr:`noise_std`. The outputscale and lengthscales are fitted with Adam from
    several starting lengthscales (``restarts``, fitted together as one batch), keeping the
    best marginal likelihood. Inside :func:`ctxrl.fit_batch.batched_fits` it is fitted with
    other threads' GPs.

    Args:
        train_X: ``(n, d)`` unit-cube coordinates of the trained sources.
        train_Y: ``(n,)`` their normalised training performance.
    """

    def __init__(
        self,
        train_X: np.ndarray,
        train_Y: np.ndarray,
        *,
        noise_std: float = 0.1,
        learn_noise: bool = False,
        restarts: int = 2,
        iterations: int = 40,
        seed: int = 0,
    ) -> None:
        import torch

        x = np.atleast_2d(np.asarray(train_X, dtype=np.float64))
        y = np.asarray(train_Y, dtype=np.float64).reshape(-1)
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"train_X {x.shape} and train_Y {y.shape} disagree")
        self.mean_offset = float(y.mean())
        centred = y - self.mean_offset
        runs = max(1, restarts)
        problem = (x, centred, float(noise_std), seed)

        def fit_many(problems: list[_Problem]) -> list[_Raw]:
            return _fit_kernels(
                np.stack([p[0] for p in problems]),
                np.stack([p[1] for p in problems]),
                np.array([p[2] for p in problems]),
                [p[3] for p in problems],
                restarts=runs,
                iterations=iterations,
                learn_noise=learn_noise,
            )

        batch = current_batch()
        if batch is None:
            ((raw_lengthscale, raw_outputscale, variance),) = fit_many([problem])
        else:
            group = ("kernels", *x.shape, learn_noise, runs, iterations)
            key = (*group, x.tobytes(), centred.tobytes(), float(noise_std), seed)
            raw_lengthscale, raw_outputscale, variance = batch.fit(key, group, problem, fit_many)
        self.noise_std = float(np.sqrt(variance))
        tx, ty = torch.as_tensor(x), torch.as_tensor(centred)
        self.model, self.likelihood = self._build(
            tx, ty, torch.full((x.shape[0],), variance, dtype=torch.float64)
        )
        kernel = self.model.covar_module
        with torch.no_grad():
            kernel.base_kernel.raw_lengthscale.copy_(torch.as_tensor(raw_lengthscale))
            kernel.raw_outputscale.copy_(torch.as_tensor(raw_outputscale))
        self.model.eval()
        self.likelihood.eval()

    @staticmethod
    def _build(x: Any, y: Any, noise: Any, learn_noise: bool = False) -> tuple[Any, Any]:
        """An exact GP on ``x`` ``(..., n, d)``, ``y`` ``(..., n)``; leading dimensions are a
        batch of independent GPs. The noise variance is fixed, ``noise`` ``(..., n)``, or with
        ``learn_noise`` a parameter (one per GP, at least :data:`MIN_NOISE_VARIANCE`) that
        starts at ``noise`` ``(...)``."""
        import gpytorch

        batch_shape = x.shape[:-2]

        class _ExactGP(gpytorch.models.ExactGP):  # type: ignore[misc]
            def __init__(self, train_x: object, train_y: object, likelihood: object) -> None:
                super().__init__(train_x, train_y, likelihood)
                self.mean_module = gpytorch.means.ZeroMean(batch_shape=batch_shape)
                dims = train_x.shape[-1]  # type: ignore[attr-defined]
                self.covar_module = gpytorch.kernels.ScaleKernel(
                    gpytorch.kernels.RBFKernel(ard_num_dims=dims, batch_shape=batch_shape),
                    batch_shape=batch_shape,
                )

            def forward(self, inputs: object) -> object:
                return gpytorch.distributions.MultivariateNormal(
                    self.mean_module(inputs), self.covar_module(inputs)
                )

        if learn_noise:
            likelihood = gpytorch.likelihoods.GaussianLikelihood(
                batch_shape=batch_shape,
                noise_constraint=gpytorch.constraints.GreaterThan(MIN_NOISE_VARIANCE),
            ).double()
            likelihood.noise = noise.reshape(*batch_shape, 1)
        else:
            likelihood = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(
                noise=noise, batch_shape=batch_shape
            )
        model = _ExactGP(x, y, likelihood).double()
        return model, likelihood

    def hyperparameters(self) -> dict[str, Any]:
        """The fitted kernel: ``lengthscale`` per context dimension (unit-cube distance),
        ``outputscale`` (variance of normalised performance) and ``mean_offset`` (the mean of
        the training targets, the prior mean)."""
        kernel = self.model.covar_module
        return {
            "lengthscale": kernel.base_kernel.lengthscale.detach().reshape(-1).tolist(),
            "outputscale": float(kernel.outputscale.detach()),
            "mean_offset": self.mean_offset,
        }

    def posterior(self, X: np.ndarray) -> Posterior:
        """Mean and standard deviation of the latent training performance at ``X`` ``(m, d)``."""
        import gpytorch
        import torch

        x = torch.as_tensor(np.atleast_2d(X), dtype=torch.float64)
        with torch.no_grad(), gpytorch.settings.fast_pred_var():
            latent = self.model(x)
            mean = latent.mean.numpy() + self.mean_offset
            std = latent.variance.clamp_min(0).sqrt().numpy()
        return Posterior(mean, std)


@dataclass(frozen=True)
class GapModel:
    """Linear generalization gap: ``gap(x, x') = sum_d left_d (x_d - x'_d)^+ + right_d
    (x'_d - x_d)^+`` in normalised performance per unit-cube distance.

    Attributes:
        left, right: ``(d,)`` non-negative slopes towards smaller / larger context values.
    """

    left: np.ndarray
    right: np.ndarray

    @classmethod
    def constant(cls, theta: float, dims: int) -> GapModel:
        return cls(np.full(dims, theta), np.full(dims, theta))

    @classmethod
    def estimate(
        cls,
        coords: np.ndarray,
        rows: Mapping[int, np.ndarray],
        *,
        prior: float = 0.5,
        signed: bool = False,
    ) -> GapModel:
        """Fit the slopes to observed rows by least squares (non-negative unless ``signed``).

        Each observed row ``i`` gives targets ``j`` with ``J(pi_i, i) - J(pi_i, j) ~=
        gap(x_i, x_j)``. With no usable distance in a direction, that slope takes ``prior``.
        A negative slope (``signed``) says performance *rises* away from the source in that
        direction (SD-MBTL's non-distance structures). ``coords`` is ``(N, d)``; ``rows`` maps
        a source index to its ``(N,)`` row.
        """
        from scipy.optimize import nnls

        coords = np.atleast_2d(coords)
        dims = coords.shape[1]
        features, targets = [], []
        for i, row in rows.items():
            row = np.asarray(row, dtype=np.float64)
            if np.isnan(row[i]):
                continue
            keep = ~np.isnan(row)
            keep[i] = False
            diff = coords[i][None, :] - coords[keep]  # (m, d): source - target
            features.append(np.concatenate([np.maximum(diff, 0), np.maximum(-diff, 0)], axis=1))
            targets.append(row[i] - row[keep])
        if not features:
            return cls.constant(prior, dims)
        design, target = np.concatenate(features), np.concatenate(targets)
        if signed:
            slopes = np.linalg.lstsq(design, target, rcond=None)[0]
        else:
            slopes, _ = nnls(design, target)
        used = design.sum(axis=0) > 0
        slopes = np.where(used, slopes, prior)
        return cls(slopes[:dims], slopes[dims:])

    @classmethod
    def estimate_with_intercept(
        cls, coords: np.ndarray, rows: Mapping[int, np.ndarray]
    ) -> GapModel:
        """SD-MBTL's reference fit of the slopes: every observed entry at once,
        ``J(pi_i, j) ~= w_0 - sum_d [left_d max(x_id - y_jd, 0) + right_d max(y_jd - x_id, 0)]``,
        by least squares with one intercept ``w_0`` shared by all rows (not each row's own
        diagonal entry, as :meth:`estimate`), slopes of either sign, and the minimum-norm
        solution (pseudo-inverse) where a direction has no data. ``coords`` is ``(N, d)``;
        ``rows`` maps a source index to its ``(N,)`` row (NaN entries are left out)."""
        coords = np.atleast_2d(coords)
        dims = coords.shape[1]
        features, targets = [], []
        for i, row in rows.items():
            row = np.asarray(row, dtype=np.float64)
            keep = ~np.isnan(row)
            diff = coords[i][None, :] - coords[keep]  # (m, d): source - target
            features.append(
                np.concatenate(
                    [np.ones((len(diff), 1)), -np.maximum(diff, 0), -np.maximum(-diff, 0)], axis=1
                )
            )
            targets.append(row[keep])
        if not features:
            return cls.constant(0.0, dims)
        design, target = np.concatenate(features), np.concatenate(targets)
        slopes = np.linalg.pinv(design.T @ design) @ design.T @ target
        return cls(slopes[1 : dims + 1], slopes[dims + 1 :])

    def gap(self, coords: np.ndarray) -> np.ndarray:
        """``(N, N)`` gaps between every source (row) and target (column)."""
        coords = np.atleast_2d(coords)
        diff = coords[:, None, :] - coords[None, :, :]  # source - target
        gaps: np.ndarray = np.maximum(diff, 0) @ self.left + np.maximum(-diff, 0) @ self.right
        return gaps


def rbf_kernel(a: np.ndarray, b: np.ndarray, lengthscale: float) -> np.ndarray:
    """``(m, n)`` squared-exponential kernel between ``a`` ``(m, d)`` and ``b`` ``(n, d)``
    (unit-cube coordinates; one ``lengthscale`` for every dimension), unit output scale."""
    squared = (((a[:, None, :] - b[None, :, :]) / lengthscale) ** 2).sum(axis=2)
    kernel: np.ndarray = np.exp(-0.5 * squared)
    return kernel


# the hyperparameter grid of RowResidualGP: lengthscales in unit-cube units, the residual's
# output and noise standard deviations in normalised performance
RESIDUAL_LENGTHSCALES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
RESIDUAL_SIGNAL_STDS = (0.01, 0.03, 0.1, 0.2, 0.4)
RESIDUAL_NOISE_STDS = (0.01, 0.02, 0.05, 0.1, 0.2)

_Eigen = tuple[np.ndarray, np.ndarray, np.ndarray]  # kernel, eigenvalues, eigenvectors


def _eigen(coords: np.ndarray, lengthscale: float) -> _Eigen:
    kernel = rbf_kernel(coords, coords, lengthscale)
    values, vectors = np.linalg.eigh(kernel)
    return kernel, np.clip(values, 0.0, None), vectors


class RowResidualGP:
    """A GP over what the observed rows show beyond a transfer model's rows.

    ``R[s, t] = M[s, t] - model[s, t]`` for the ``k`` observed sources ``s`` and all ``N``
    targets ``t`` is modelled as ``f(x_s, y_t) + noise`` with the product kernel
    ``sf^2 k(x_s, x_s') k(y_t, y_t')`` (squared exponential, one lengthscale per side) and
    i.i.d. noise ``sn^2``: a residual that changes smoothly with the source *and* the target
    (sources on one side transferring better than the gap says, targets that are harder for
    every source). The observations form a ``k x N`` grid, so the covariance is a Kronecker
    product and the exact posterior and marginal likelihood cost two eigendecompositions
    (``k x k`` and ``N x N``) instead of one of ``kN x kN`` (Saatci 2012, ch. 5). The
    hyperparameters maximise the marginal likelihood over the grid
    :data:`RESIDUAL_LENGTHSCALES` x :data:`RESIDUAL_SIGNAL_STDS` x
    :data:`RESIDUAL_NOISE_STDS`. With a single source the likelihood is the same at every source
    lengthscale; the longest is taken, so that the one row's residual (over the targets) is
    expected of every source until a second row shows how far it reaches.

    Args:
        sources: ``(k, d)`` coordinates of the observed sources.
        targets: ``(N, d)`` coordinates of the targets.
        residuals: ``(k, N)`` residual rows.
        target_cache: eigendecompositions of the target kernel per lengthscale, filled and
            reused across fits on the same ``targets`` (a selection refits every step).
    """

    def __init__(
        self,
        sources: np.ndarray,
        targets: np.ndarray,
        residuals: np.ndarray,
        *,
        target_cache: dict[float, _Eigen] | None = None,
    ) -> None:
        cache = {} if target_cache is None else target_cache
        signal = np.array(RESIDUAL_SIGNAL_STDS)[:, None, None, None] ** 2
        noise = np.array(RESIDUAL_NOISE_STDS)[None, :, None, None] ** 2
        # with one source its 1 x 1 kernel is 1 at every lengthscale and the likelihood cannot
        # tell them apart: the one row's residual is taken as shared by all sources (the
        # longest lengthscale) until a second row shows how far it reaches
        source_scales = RESIDUAL_LENGTHSCALES if len(sources) > 1 else RESIDUAL_LENGTHSCALES[-1:]
        best = (-np.inf, source_scales[0], RESIDUAL_LENGTHSCALES[0], 0.0, 0.0)
        source_eigen = {scale: _eigen(sources, scale) for scale in source_scales}
        for source_scale in source_scales:
            _, lam, u = source_eigen[source_scale]
            for target_scale in RESIDUAL_LENGTHSCALES:
                if target_scale not in cache:
                    cache[target_scale] = _eigen(targets, target_scale)
                _, eig, v = cache[target_scale]
                rotated = (u.T @ residuals @ v) ** 2  # (k, N)
                variance = signal * np.outer(lam, eig)[None, None] + noise  # (S, S', k, N)
                loglik = -0.5 * ((rotated / variance).sum((2, 3)) + np.log(variance).sum((2, 3)))
                i, j = np.unravel_index(int(np.argmax(loglik)), loglik.shape)
                if loglik[i, j] > best[0]:
                    best = (
                        float(loglik[i, j]),
                        source_scale,
                        target_scale,
                        RESIDUAL_SIGNAL_STDS[i],
                        RESIDUAL_NOISE_STDS[j],
                    )
        _, self.source_scale, self.target_scale, self.signal_std, self.noise_std = best
        self.sources = sources
        _, lam, self._u = source_eigen[self.source_scale]
        self._target_kernel, eig, self._v = cache[self.target_scale]
        self._weights = 1.0 / (self.signal_std**2 * np.outer(lam, eig) + self.noise_std**2)
        self._alpha = self._u @ ((self._u.T @ residuals @ self._v) * self._weights) @ self._v.T

    def hyperparameters(self) -> dict[str, float]:
        return {
            "source_lengthscale": self.source_scale,
            "target_lengthscale": self.target_scale,
            "signal_std": self.signal_std,
            "noise_std": self.noise_std,
        }

    def predict(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The residual rows of sources at ``candidates`` ``(m, d)``: posterior mean and
        standard deviation of ``f`` (without the noise), both ``(m, N)``."""
        cross = rbf_kernel(candidates, self.sources, self.source_scale)  # (m, k)
        signal = self.signal_std**2
        mean = signal * cross @ self._alpha @ self._target_kernel
        projected = (cross @ self._u) ** 2  # (m, k)
        target_part = (self._target_kernel @ self._v) ** 2  # (N, N)
        variance = signal - signal**2 * projected @ self._weights @ target_part.T
        return mean, np.sqrt(np.clip(variance, 0.0, None))


_MOVED_TO_MATRIX_PREDICTION = frozenset(
    {
        "GapResidual",
        "MatrixPrediction",
        "band_coverage",
        "held_out_error",
        "jackknife_scale",
        "predict_matrix",
        "spread_observations",
    }
)
"""Names that lived here until the matrix prediction moved to :mod:`ctxrl.matrix_prediction`."""


def __getattr__(name: str) -> Any:
    """``ctxrl.gp.predict_matrix`` and its neighbours, from :mod:`ctxrl.matrix_prediction`
    (where they are now), with a :class:`DeprecationWarning`."""
    if name not in _MOVED_TO_MATRIX_PREDICTION:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    from ctxrl import matrix_prediction

    warnings.warn(
        f"ctxrl.gp.{name} is now ctxrl.matrix_prediction.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(matrix_prediction, name)
