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

SD-MBTL (``sd-mbtl``, ``m-mbtl``) builds on it in :mod:`ctxrl_plugins.strategies.sd_mbtl`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
        slopes: ``floored`` (non-negative estimates, floored as above) or ``signed`` (plain
            least squares, no floor: performance may rise away from the source, as SD-MBTL's
            GP-MBTL fits it).
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
        slopes: str = "floored",
    ) -> None:
        if beta not in BETA_SCHEDULES:
            raise CtxrlError(
                f"strategy 'mbtl-gp': beta {beta!r} is not one of {sorted(BETA_SCHEDULES)}"
            )
        if not (theta == "estimate" or (isinstance(theta, int | float) and theta >= 0)):
            raise CtxrlError(f"strategy 'mbtl-gp': theta must be >= 0 or 'estimate', got {theta!r}")
        if slopes not in ("floored", "signed"):
            raise CtxrlError(f"strategy 'mbtl-gp': slopes {slopes!r} is not floored or signed")
        self.slopes = slopes
        self.beta, self.c = beta, float(c)
        self.theta, self.theta_per_index = theta, theta_per_index
        self.min_theta_per_index = min_theta_per_index
        self.noise_std, self.restarts = noise_std, restarts
        self._trace: dict[str, Any] = {}

    def _gap(self, state: SelectionState) -> GapModel:
        dims = state.coords.shape[1]
        # grid steps per unit of each coordinate (grid coordinates are index / (n - 1))
        steps = np.array([max(len(np.unique(state.coords[:, d])) - 1, 1) for d in range(dims)])
        if self.theta_per_index is not None:
            return GapModel(self.theta_per_index * steps, self.theta_per_index * steps)
        if self.theta == "estimate":
            if self.slopes == "signed":
                return GapModel.estimate(state.coords, state.rows, signed=True)
            estimate = GapModel.estimate(state.coords, state.rows)
            floor = self.min_theta_per_index * steps
            return GapModel(np.maximum(estimate.left, floor), np.maximum(estimate.right, floor))
        return GapModel.constant(float(self.theta), dims)

    def propose(self, state: SelectionState) -> list[int]:
        coords = state.coords
        chosen = set(state.selected)
        proposal: list[int] = []
        # arrays are kept as they are and converted only in trace(): replays call propose often
        self._trace = {"rule": "middle"}
        if not state.selected:
            middle = (coords.min(axis=0) + coords.max(axis=0)) / 2
            distance = np.round(np.abs(coords - middle).sum(axis=1), 12)
            proposal.append(int(np.argmin(distance)))
            chosen.add(proposal[0])
            self._trace["middle"] = proposal[0]
            if state.batch_size == 1:
                return proposal
        sources = sorted(state.rows) or proposal
        train_y = [state.rows[s][s] if s in state.rows else 0.5 for s in sources]
        gp = PerformanceGP(
            coords[sources], np.array(train_y), noise_std=self.noise_std, restarts=self.restarts
        )
        posterior = gp.posterior(coords)
        gap_model = self._gap(state)
        gap = gap_model.gap(coords)
        best = state.best_so_far()
        picks: list[dict[str, Any]] = []
        self._trace.update(
            rule="acquisition",
            sources=sources,
            train_y=train_y,
            gp=gp,
            posterior=posterior,
            gap=gap_model,
            best_so_far=best,
            picks=picks,
        )
        while len(proposal) < min(state.batch_size, state.n - len(state.selected)):
            k = state.k + len(proposal)
            beta = BETA_SCHEDULES[self.beta](k, self.c)
            optimistic = posterior.mean + beta * posterior.std
            gain = np.maximum(optimistic[:, None] - gap - best[None, :], 0.0).mean(axis=1)
            gain = np.round(gain, 12)
            gain[list(chosen)] = -np.inf
            index = int(np.argmax(gain))  # first index on ties
            proposal.append(index)
            chosen.add(index)
            picks.append({"index": index, "k": k, "beta": beta, "acquisition": gain})
            best = np.maximum(best, np.clip(posterior.mean[index] - gap[index], 0.0, 1.0))
        return proposal

    def trace(self) -> dict[str, Any]:
        """The last proposal: ``rule`` (``middle``: the first source, nearest the middle of
        the space; ``acquisition``: the GP rule), and for the GP rule the ``sources`` and their
        training performance ``train_y``, the fitted GP (``lengthscale``, ``outputscale``,
        ``mean_offset``) and its posterior ``mean`` / ``std`` per context ``(N,)``, the gap
        slopes ``left`` / ``right`` ``(d,)``, ``best_so_far`` ``U_j`` ``(N,)`` and one pick
        per proposed source: its index, ``k``, ``beta`` and the ``acquisition`` value ``a_i``
        of every context ``(N,)`` (None for contexts already chosen). Performance is
        normalised to [0, 1]."""
        trace = {k: v for k, v in self._trace.items() if k not in ("gp", "posterior", "gap")}
        if "gp" in self._trace:
            posterior, gap = self._trace["posterior"], self._trace["gap"]
            trace["gp"] = {
                **self._trace["gp"].hyperparameters(),
                "mean": posterior.mean,
                "std": posterior.std,
            }
            trace["gap"] = {"left": gap.left, "right": gap.right}
        return trace


@hookimpl
def ctxrl_register_strategies(register: Callable[[StrategySpec], None]) -> None:
    register(
        StrategySpec(
            "mbtl-gp",
            MBTLStrategy,
            description="MBTL: GP over training performance + linear generalization gap",
        )
    )
