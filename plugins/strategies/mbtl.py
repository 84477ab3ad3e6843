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

Also here: SD-MBTL's structure detection (``sd-mbtl``) and its clustering branch (``m-mbtl``).
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
        self._trace: dict[str, Any] = {}

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


def k_median_step(coords: np.ndarray, chosen: list[int], candidates: list[int]) -> int:
    """The candidate that, added to ``chosen``, most lowers the total L1 distance from every
    context to its nearest chosen one (a greedy k-median step; the first one on ties).

    ``coords`` is ``(N, d)`` in the unit cube; with nothing chosen this is the medoid."""
    distances = np.abs(coords[:, None, :] - coords[None, :, :]).sum(axis=2)  # (N, N)
    nearest = distances[:, chosen].min(axis=1) if chosen else np.full(len(coords), np.inf)
    totals = [np.minimum(nearest, distances[:, c]).sum() for c in candidates]
    return candidates[int(np.argmin(np.round(totals, 12)))]


def mountain_score(coords: np.ndarray, rows: dict[int, np.ndarray]) -> float:
    """How consistently performance falls with distance from the source, in ``[-1, 1]``.

    For every observed row (source ``s``) and every context dimension ``d`` with spread, the
    Spearman correlation between the row and ``-|x_d - s_d|`` over all targets; the score is
    the smallest of them (a "Mountain" must hold in every row and every dimension). 1: every
    row peaks at its source and declines monotonically away from it."""
    from scipy.stats import spearmanr

    scores = []
    for source, row in rows.items():
        valid = ~np.isnan(row)
        for d in range(coords.shape[1]):
            closeness = -np.abs(coords[valid, d] - coords[source, d])
            if np.ptp(closeness) == 0 or np.ptp(row[valid]) == 0:
                continue
            rho = spearmanr(closeness, row[valid]).statistic
            scores.append(float(rho))
    return min(scores) if scores else 0.0


class SDMBTLStrategy:
    """SD-MBTL's structure-detecting selection (Zhou, Cho, Wu; AAAI 2026, arXiv 2601.08120).

    When the observed rows show a "Mountain" (performance peaks at the source and falls off
    with distance, in every dimension: :func:`mountain_score` >= ``mountain_threshold``), the
    next source comes from M-MBTL, a sequential clustering of the context space with L1
    distance (greedy k-median: the context that most lowers the distance from every target to
    its nearest source); otherwise from GP-MBTL (:class:`MBTLStrategy` with per-dimension,
    left/right slopes estimated from the rows).

    Args:
        structure: ``auto`` (detect each step), ``mountain`` (always M-MBTL) or ``gp``.
        mountain_threshold: smallest per-row, per-dimension Spearman correlation of performance
            with closeness to the source that counts as a Mountain.
        **gp_options: options of ``mbtl-gp`` for the GP branch.
    """

    def __init__(
        self, structure: str = "auto", mountain_threshold: float = 0.5, **gp_options: object
    ) -> None:
        if structure not in ("auto", "mountain", "gp"):
            raise CtxrlError(
                f"strategy 'sd-mbtl': structure {structure!r} is not auto, mountain or gp"
            )
        self.structure = structure
        self.mountain_threshold = float(mountain_threshold)
        self.gp = MBTLStrategy(**gp_options)  # type: ignore[arg-type]
        self._trace: dict[str, Any] = {}

    def _structure(self, state: SelectionState) -> tuple[bool, float | None]:
        """Whether the rows look like a Mountain, and the :func:`mountain_score` that says so
        (None when it was not computed: no rows yet, or the structure is fixed)."""
        if self.structure != "auto":
            return self.structure == "mountain", None
        if not state.rows:
            return False, None
        score = mountain_score(state.coords, state.rows)
        return score >= self.mountain_threshold, score

    def is_mountain(self, state: SelectionState) -> bool:
        return self._structure(state)[0]

    def propose(self, state: SelectionState) -> list[int]:
        mountain, score = self._structure(state)
        self._trace = {"structure": self.structure, "mountain_score": score}
        if state.selected and not mountain:
            self._trace["branch"] = "gp"
            return self.gp.propose(state)
        self._trace["branch"] = "mountain" if state.selected else "medoid"
        chosen = list(state.selected)
        proposal: list[int] = []
        while len(proposal) < min(state.batch_size, state.n - len(state.selected)):
            candidates = [i for i in range(state.n) if i not in chosen]
            index = k_median_step(state.coords, chosen, candidates)
            chosen.append(index)
            proposal.append(index)
        return proposal

    def trace(self) -> dict[str, Any]:
        """The last proposal: ``branch`` (``medoid``: the first source; ``mountain``: a
        k-median step; ``gp``: GP-MBTL, whose trace follows), ``structure`` and
        ``mountain_score`` (None where not computed)."""
        trace = dict(self._trace)
        if trace.get("branch") == "gp":
            trace.update(self.gp.trace())
        return trace


def _m_mbtl(**options: Any) -> SDMBTLStrategy:
    return SDMBTLStrategy(structure="mountain", **options)


@hookimpl
def ctxrl_register_strategies(register: Callable[[StrategySpec], None]) -> None:
    register(
        StrategySpec(
            "mbtl-gp",
            MBTLStrategy,
            description="MBTL: GP over training performance + linear generalization gap",
        )
    )
    register(
        StrategySpec(
            "sd-mbtl",
            SDMBTLStrategy,
            description="SD-MBTL: M-MBTL clustering on Mountain-shaped transfer, else GP-MBTL",
        )
    )
    register(
        StrategySpec(
            "m-mbtl",
            _m_mbtl,
            description="M-MBTL: sequential L1 clustering of the context space (k-median)",
        )
    )
