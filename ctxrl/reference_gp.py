"""SD-MBTL's GP-MBTL model as its reference code fits it (``mbtl-gp`` option ``gp: reference``).

A gpytorch exact GP on the raw training performance of the sources (a learned constant mean,
one RBF lengthscale for every dimension, a learned observation noise), refitted after every new
source from the last fit's hyperparameters by Adam until the loss settles. ctxrl's own
:class:`ctxrl.gp.PerformanceGP` differs on purpose (centred values, a lengthscale per dimension,
fresh restarts at every step).

Shapes: ``train_X`` is ``(n, d)`` (the reference: grid-step coordinates), ``train_Y`` ``(n,)``
normalised performance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ctxrl.fit_batch import current_batch
from ctxrl.gp import Posterior


@dataclass(frozen=True)
class WarmStart:
    """The raw (unconstrained) hyperparameters a :class:`WarmStartedGP` fit starts from and
    ends at: the constant ``mean``, ``lengthscale``, ``outputscale`` and ``noise`` before
    gpytorch's softplus (all 0 is gpytorch's own start: a lengthscale, outputscale and noise
    variance of about 0.693)."""

    mean: float = 0.0
    lengthscale: float = 0.0
    outputscale: float = 0.0
    noise: float = 0.0


_WarmProblem = tuple[np.ndarray, np.ndarray, WarmStart]  # x (n, d), y (n,), start


def _fit_warm(
    problems: list[_WarmProblem], *, iterations: int, tolerance: float
) -> list[WarmStart]:
    """Fit ``P`` GPs of the same shape (each ``x`` ``(n, d)``, raw ``y`` ``(n,)``), each from its
    own start, as one batch: Adam (learning rate 0.1, fresh moments) on each GP's negative
    marginal log likelihood, for at most ``iterations`` steps; a GP stops after the step at
    which its loss changed by less than ``tolerance`` since the step before (its parameters are
    then kept while the others go on). Returns each GP's end point."""
    import gpytorch
    import torch

    x = torch.as_tensor(np.stack([p[0] for p in problems]), dtype=torch.float64)
    y = torch.as_tensor(np.stack([p[1] for p in problems]), dtype=torch.float64)
    model, likelihood = WarmStartedGP._build(x, y)
    starts = torch.tensor(
        [[p[2].mean, p[2].lengthscale, p[2].outputscale, p[2].noise] for p in problems],
        dtype=torch.float64,
    )
    parameters = [
        model.mean_module.raw_constant,
        model.covar_module.base_kernel.raw_lengthscale,
        model.covar_module.raw_outputscale,
        likelihood.noise_covar.raw_noise,
    ]
    with torch.no_grad():
        for column, parameter in enumerate(parameters):
            parameter.copy_(starts[:, column].reshape(parameter.shape))
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()
    likelihood.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    previous = torch.full((len(problems),), float("inf"), dtype=torch.float64)
    running = torch.ones(len(problems), dtype=torch.bool)
    for _ in range(iterations):
        kept = [parameter.detach().clone() for parameter in parameters]
        optimizer.zero_grad()
        loss = -mll(model(x), y)
        loss.sum().backward()
        optimizer.step()
        with torch.no_grad():  # a stopped GP keeps its parameters
            for parameter, before in zip(parameters, kept, strict=True):
                mask = running.reshape(-1, *([1] * (parameter.dim() - 1)))
                parameter.copy_(torch.where(mask, parameter, before))
        loss = loss.detach()
        running &= (previous - loss).abs() >= tolerance
        previous = torch.where(running, loss, previous)
        if not running.any():
            break
    ends = torch.stack([parameter.detach().reshape(len(problems)) for parameter in parameters], 1)
    return [WarmStart(*map(float, row)) for row in ends]


class WarmStartedGP:
    """SD-MBTL's GP-MBTL model, fitted as its reference code fits it: gpytorch's constant mean
    (learned) and scaled RBF kernel with one lengthscale shared by every dimension, a learned
    observation noise (at least 1e-4 in variance), on the raw training performance; Adam
    (learning rate 0.1) for at most ``iterations`` steps, stopping once the loss changes by
    less than ``tolerance``, from ``start``: the previous step's fit (:attr:`fitted`) when a
    selection goes on, so each step continues the last one's optimisation. Inside
    :func:`ctxrl.fit_batch.batched_fits` it is fitted with other threads' GPs of the same shape.

    Args:
        train_X: ``(n, d)`` coordinates of the trained sources (the reference: grid steps).
        train_Y: ``(n,)`` their normalised training performance.
    """

    def __init__(
        self,
        train_X: np.ndarray,
        train_Y: np.ndarray,
        *,
        start: WarmStart | None = None,
        iterations: int = 500,
        tolerance: float = 1e-5,
    ) -> None:
        import torch

        x = np.atleast_2d(np.asarray(train_X, dtype=np.float64))
        y = np.asarray(train_Y, dtype=np.float64).reshape(-1)
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"train_X {x.shape} and train_Y {y.shape} disagree")
        problem = (x, y, start or WarmStart())
        batch = current_batch()

        def fit_many(problems: list[_WarmProblem]) -> list[WarmStart]:
            return _fit_warm(problems, iterations=iterations, tolerance=tolerance)

        if batch is None:
            (self.fitted,) = fit_many([problem])
        else:
            key = ("warm", x.tobytes(), y.tobytes(), x.shape, problem[2], iterations, tolerance)
            group = ("warm", *x.shape, iterations, tolerance)
            self.fitted = batch.fit(key, group, problem, fit_many)
        self.model, self.likelihood = self._build(torch.as_tensor(x), torch.as_tensor(y))
        with torch.no_grad():
            self.model.mean_module.raw_constant.fill_(self.fitted.mean)
            self.model.covar_module.base_kernel.raw_lengthscale.fill_(self.fitted.lengthscale)
            self.model.covar_module.raw_outputscale.fill_(self.fitted.outputscale)
            self.likelihood.noise_covar.raw_noise.fill_(self.fitted.noise)
        self.noise_std = float(self.likelihood.noise.detach().reshape(-1)[0].sqrt())
        self.model.eval()
        self.likelihood.eval()

    @staticmethod
    def _build(x: Any, y: Any) -> tuple[Any, Any]:
        """The model on ``x`` ``(..., n, d)``, ``y`` ``(..., n)``; leading dimensions are a batch
        of independent GPs."""
        import gpytorch

        batch_shape = x.shape[:-2]

        class _ExactGP(gpytorch.models.ExactGP):  # type: ignore[misc]
            def __init__(self, train_x: object, train_y: object, likelihood: object) -> None:
                super().__init__(train_x, train_y, likelihood)
                self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch_shape)
                self.covar_module = gpytorch.kernels.ScaleKernel(
                    gpytorch.kernels.RBFKernel(batch_shape=batch_shape), batch_shape=batch_shape
                )

            def forward(self, inputs: object) -> object:
                return gpytorch.distributions.MultivariateNormal(
                    self.mean_module(inputs), self.covar_module(inputs)
                )

        likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=batch_shape).double()
        return _ExactGP(x, y, likelihood).double(), likelihood

    def hyperparameters(self) -> dict[str, Any]:
        """The fitted model: ``lengthscale`` (one, in the units of ``train_X``), ``outputscale``
        (variance of normalised performance), the learned ``constant_mean`` and ``noise_std``."""
        kernel = self.model.covar_module
        return {
            "lengthscale": kernel.base_kernel.lengthscale.detach().reshape(-1).tolist(),
            "outputscale": float(kernel.outputscale.detach()),
            "constant_mean": float(self.model.mean_module.constant.detach()),
            "noise_std": self.noise_std,
        }

    def posterior(self, X: np.ndarray) -> Posterior:
        """Mean and standard deviation of the latent training performance at ``X`` ``(m, d)``."""
        import torch

        x = torch.as_tensor(np.atleast_2d(X), dtype=torch.float64)
        with torch.no_grad():
            latent = self.model(x)
            mean = latent.mean.numpy()
            std = latent.variance.clamp_min(0).sqrt().numpy()
        return Posterior(mean, std)
