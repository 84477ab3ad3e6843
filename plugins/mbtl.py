"""MBTL-GP: model-based source-task selection (Cho et al., NeurIPS 2024, arXiv 2408.04498).

Each step fits a GP to the training performance of the sources trained so far, models the
generalization gap as linear in context distance, and picks the untried context that most
raises the expected generalized performance:

    a_i = mean_j max(mu_i + beta_k * sigma_i - gap(x_i, x_j) - U_j, 0)

where ``U_j`` is the best normalised performance reached on target ``j`` so far. The first
source is the context nearest the middle of the space.

Beyond the reference: the gap slopes are estimated from the observed rows (per dimension, left
and right; never below the reference's hand-set slope) instead of hand-set; contexts may have
several dimensions; and ``q`` sources can be proposed at once (each proposal is assumed to
perform as the model expects before choosing the next), so a batched trainer can train them
together.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ctxrl import hookimpl
from ctxrl.errors import CtxrlError
from ctxrl.gp import GapModel, PerformanceGP
from ctxrl.registry import StrategySpec
from ctxrl.selection import SelectionState

BETA_SCHEDULES: dict[str, Callable[[int, float], float]] = {
    "sqrt-log": lambda k, c: math.sqrt(math.log(k + 1)),  # the reference default
    "constant": lambda k, c: c,
    "inverse": lambda k, c: c / max(k, 1),
    "log": lambda k, c: c * math.log(k + 1),
    "ucb": lambda k, c: 1.96,
    "mean": lambda k, c: 0.0,  # EI-like: the GP mean only
}


class MBTLStrategy:
    """MBTL-GP.

    Args:
        beta: exploration schedule, one of :data:`BETA_SCHEDULES`; ``c`` is its constant.
        theta: gap slope in normalised performance per unit-cube distance, or ``"estimate"``
            (default) to fit left/right slopes per dimension from the observed rows.
        theta_per_index: the reference's slope per grid index (e.g. 0.005 for CartPole); for a
            1-D grid of N contexts it equals ``theta / (N - 1)``. Overrides ``theta``.
        min_theta_per_index: floor of estimated slopes, per grid index (default: the
            reference's 0.005). Rows whose own context is not their best point make the estimate
            say "no decline"; without a floor MBTL would then chase GP uncertainty alone.
        noise_std: GP observation noise on normalised performance (reference: 0.1).
        restarts: GP fits from different starting lengthscales.
    """

    def __init__(
        self,
        beta: str = "sqrt-log",
        c: float = 1.0,
        theta: float | str = "estimate",
        theta_per_index: float | None = None,
        min_theta_per_index: float = 0.005,
        noise_std: float = 0.1,
        restarts: int = 2,
    ) -> None:
        if beta not in BETA_SCHEDULES:
            raise CtxrlError(
                f"strategy 'mbtl-gp': beta {beta!r} is not one of {sorted(BETA_SCHEDULES)}"
            )
        if not (theta == "estimate" or (isinstance(theta, int | float) and theta >= 0)):
            raise CtxrlError(f"strategy 'mbtl-gp': theta must be >= 0 or 'estimate', got {theta!r}")
        self.beta, self.c = beta, float(c)
        self.theta, self.theta_per_index = theta, theta_per_index
        self.min_theta_per_index = min_theta_per_index
        self.noise_std, self.restarts = noise_std, restarts

    def _gap(self, state: SelectionState) -> GapModel:
        dims = state.coords.shape[1]
        # grid steps per unit of each coordinate (grid coordinates are index / (n - 1))
        steps = np.array([max(len(np.unique(state.coords[:, d])) - 1, 1) for d in range(dims)])
        if self.theta_per_index is not None:
            return GapModel(self.theta_per_index * steps, self.theta_per_index * steps)
        if self.theta == "estimate":
            estimate = GapModel.estimate(state.coords, state.rows)
            floor = self.min_theta_per_index * steps
            return GapModel(np.maximum(estimate.left, floor), np.maximum(estimate.right, floor))
        return GapModel.constant(float(self.theta), dims)

    def propose(self, state: SelectionState) -> list[int]:
        coords = state.coords
        chosen = set(state.selected)
        proposal: list[int] = []
        if not state.selected:
            middle = (coords.min(axis=0) + coords.max(axis=0)) / 2
            distance = np.round(np.abs(coords - middle).sum(axis=1), 12)
            proposal.append(int(np.argmin(distance)))
            chosen.add(proposal[0])
            if state.batch_size == 1:
                return proposal
        sources = sorted(state.rows) or proposal
        train_y = [state.rows[s][s] if s in state.rows else 0.5 for s in sources]
        posterior = PerformanceGP(
            coords[sources], np.array(train_y), noise_std=self.noise_std, restarts=self.restarts
        ).posterior(coords)
        gap = self._gap(state).gap(coords)
        best = state.best_so_far()
        while len(proposal) < min(state.batch_size, state.n - len(state.selected)):
            k = state.k + len(proposal)
            optimistic = posterior.mean + BETA_SCHEDULES[self.beta](k, self.c) * posterior.std
            gain = np.maximum(optimistic[:, None] - gap - best[None, :], 0.0).mean(axis=1)
            gain = np.round(gain, 12)
            gain[list(chosen)] = -np.inf
            index = int(np.argmax(gain))  # first index on ties
            proposal.append(index)
            chosen.add(index)
            best = np.maximum(best, np.clip(posterior.mean[index] - gap[index], 0.0, 1.0))
        return proposal


@hookimpl
def ctxrl_register_strategies(register: Callable[[StrategySpec], None]) -> None:
    register(
        StrategySpec(
            "mbtl-gp",
            MBTLStrategy,
            description="MBTL: GP over training performance + linear generalization gap",
        )
    )
