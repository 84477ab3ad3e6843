"""MBTL-GP: model-based source-task selection (Cho et al., NeurIPS 2024, arXiv 2408.04498).

Each step fits a GP to the training performance of the sources trained so far, models the
generalization gap as linear in context distance, and picks the untried context that most
raises the expected generalized performance:

    a_i = mean_j max(mu_i + beta_k * sigma_i - gap(x_i, x_j) - U_j, 0)

where ``U_j`` is the best normalised performance reached on target ``j`` so far (MBTL as
published; ``residual: none, acquisition: optimistic, best: observed``). The first source is
the context nearest the middle of the space. The training performance a source adds to the GP
is its own diagonal entry ``M[s, s]``, as the paper writes it; the MBTL reference code fits the
best entry reached on ``s`` by any source chosen so far, which differs only where an earlier
source transfers to ``s`` better than ``s`` trains.

Beyond the reference: the gap slopes are estimated from the observed rows (per dimension, left
and right; never below the reference's hand-set slope) instead of hand-set; contexts may have
several dimensions; and ``q`` sources can be proposed at once (each proposal is assumed to
perform as the model expects before choosing the next), so a batched trainer can train them
together.

Defaults for noisy matrices, beyond MBTL's model: the GP's noise is measured on the observed
rows (``noise_std: rows``); a second GP over source and target learns what the observed rows
show beyond the gap model (``residual: gp``: sources on one side transferring better, targets
hard for every source, rows of failed training); a candidate is scored by the expected rise of
``G`` (``acquisition: expected``) against the model's estimate of the trained rows rather than
their noisy best entries (``best: model``). Against MBTL's own model (``residual: none,
acquisition: optimistic, best: consistent``, the default until 2026-12-04) it is at or above
Greedy and Random on more families of real and generated matrices and above the published
SD-MBTL on its synthetic benchmark; where it is behind is measured there too (RESULTS.md "MBTL-GP
on families of real matrices"; ``benchmarks/bench_mbtl_robust.py``,
``benchmarks/bench_synthetic.py``). The options that make it the reference's GP-MBTL are listed
in ``benchmarks/bench_synthetic.py`` (``mbtl-gp-reference``).

SD-MBTL (``sd-mbtl``, ``m-mbtl``) builds on it in :mod:`ctxrl_plugins.strategies.sd_mbtl`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctxrl import hookimpl
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.gp import GapModel, PerformanceGP, Posterior, RowResidualGP
from ctxrl.options import count_option, number_option
from ctxrl.reference_gp import WarmStartedGP
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
"""The multiplier of the posterior standard deviation at step ``k`` (the spec's
``beta_k^{1/2}``) with constant ``c``. The sensitivity study's variants "beta = c / k" and
"beta = c log(k + 1)" are taken as multipliers (``inverse``, ``log``), as the reference code
applies its inverse schedule to sigma directly, not as ``beta`` under a square root. ``inverse``
is the paper's ``c / k`` with ``k`` the sources observed; the reference code's inverse schedule is
``1 / (k + 1)`` with the same ``k`` (0.5 where this gives 1 after one source; ``sqrt-log``
counts ``k`` as the reference does). ``mean`` and ``ucb`` put 0 and 1.96 into
this acquisition (gap and set point included); the reference's EI and UCB variants rank
candidates by the GP's own ``mu`` and ``mu + 1.96 sigma``."""


# sources each ``start`` rule places before the acquisition takes over
START_RULES: dict[str, int] = {"middle": 1, "reference": 3}


@dataclass(frozen=True)
class RowFit:
    """One observed row fitted alone to ``level - gap``: its ``level`` (the set point) and its
    own ``left`` / ``right`` slopes ``(d,)``; a side with fewer than two usable targets takes
    the slopes given as the fallback, and a row with too few usable entries its own diagonal
    entry as the level."""

    level: float
    left: np.ndarray
    right: np.ndarray
    residual: float | None = None


def row_fits(
    coords: np.ndarray, rows: dict[int, np.ndarray], fallback: GapModel
) -> dict[int, RowFit]:
    """Fit every observed row alone: ``row_j ~= level - sum_d left_d (x_d - y_d)^+ + right_d
    (y_d - x_d)^+`` by least squares with non-negative slopes, over the targets not floored
    at 0 (a floored entry says only "at most 0"). The level averages the whole row's noise
    instead of trusting the one diagonal entry. ``coords`` is ``(N, d)``."""
    from scipy.optimize import lsq_linear

    dims = coords.shape[1]
    fits: dict[int, RowFit] = {}
    for i, row in rows.items():
        row = np.nan_to_num(np.asarray(row, dtype=np.float64), nan=0.0)
        keep = row > 0.0
        keep[i] = True
        diff = coords[i][None, :] - coords[keep]  # source - target
        design = np.concatenate(
            [np.ones((len(diff), 1)), -np.maximum(diff, 0), -np.maximum(-diff, 0)], axis=1
        )
        support = (design[:, 1:] < 0).sum(axis=0) >= 2
        if len(diff) < 2 * dims + 2:
            fits[i] = RowFit(float(row[i]), fallback.left.copy(), fallback.right.copy())
            continue
        used = np.concatenate([[True], support])
        lower = np.r_[-np.inf, np.zeros(int(support.sum()))]
        solved = lsq_linear(design[:, used], row[keep], bounds=(lower, np.inf)).x
        slopes = np.concatenate([fallback.left, fallback.right])
        slopes[support] = solved[1:]
        error = row[keep] - design[:, used] @ solved
        residual = float(np.sqrt(np.sum(error**2) / max(len(error) - int(used.sum()), 1)))
        fits[i] = RowFit(float(solved[0]), slopes[:dims], slopes[dims:], residual)
    return fits


def local_gap(
    coords: np.ndarray, fits: dict[int, RowFit], floor: np.ndarray, width: float = 0.1
) -> np.ndarray:
    """``(N, N)`` gaps whose slopes change with the source: each candidate's slopes are the
    per-row slopes of the observed sources averaged with weights ``exp(-distance / width)``
    (L1 distance in unit-cube units), floored at ``floor`` ``(d,)``."""
    sources = sorted(fits)
    distance = np.abs(coords[:, None, :] - coords[sources][None, :, :]).sum(axis=2)
    weights = np.exp(-(distance - distance.min(axis=1, keepdims=True)) / width)
    weights /= weights.sum(axis=1, keepdims=True)
    left = np.maximum(weights @ np.stack([fits[s].left for s in sources]), floor)
    right = np.maximum(weights @ np.stack([fits[s].right for s in sources]), floor)
    diff = coords[:, None, :] - coords[None, :, :]  # source - target
    gaps: np.ndarray = (np.maximum(diff, 0) * left[:, None, :]).sum(axis=2) + (
        np.maximum(-diff, 0) * right[:, None, :]
    ).sum(axis=2)
    return gaps


def expected_gain(mean: np.ndarray, std: np.ndarray, best: np.ndarray) -> np.ndarray:
    """``(N,)`` expected rise of ``G`` from adding each candidate: ``mean_j E[max(X_ij - U_j,
    0)]`` for a Gaussian entry ``X_ij ~ N(mean_ij, std_ij^2)`` (``(N, N)`` each; row =
    candidate) and the best performance so far ``U_j`` ``(N,)``: the expected improvement,
    per target, averaged over the targets."""
    from scipy.stats import norm

    lead = mean - best[None, :]
    spread = np.maximum(std, 1e-12)
    z = lead / spread
    gain: np.ndarray = (lead * norm.cdf(z) + spread * norm.pdf(z)).mean(axis=1)
    return gain


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
        slopes: ``floored`` (non-negative estimates, floored as above), ``signed`` (plain
            least squares of each row's fall-off from its own diagonal entry, no floor:
            performance may rise away from the source) or ``reference`` (SD-MBTL's GP-MBTL:
            every observed entry fitted at once with one shared intercept, slopes of either
            sign; :meth:`ctxrl.gp.GapModel.estimate_with_intercept`).
        noise_std: GP observation noise on normalised performance (the reference: 0.1), or
            ``"rows"`` (the default): the spread of the observed rows about their own linear
            fits (the pooled residual standard deviation of :func:`row_fits`, at least
            ``min_noise_std``), re-estimated every step; or ``"learned"``: fitted with the GP's
            kernel at every step (from 0.1, at least 0.01), as SD-MBTL's reference code fits
            it (the default with ``gp: reference``, which learns its own). With ``spread:
            predictive`` the noise is the optimism a candidate keeps, so a fixed 0.1 on a
            noise-free matrix keeps choosing uncertain far candidates; a learned one shrinks
            with the matrix's noise (benchmarks/RESULTS.md).
        min_noise_std: floor of the ``rows`` noise estimate.
        restarts: GP fits from different starting lengthscales.
        set_point: what the GP learns for each trained source: ``diagonal`` (the reference:
            its own entry ``J(pi_x, x)``, one noisy number) or ``row`` (the row's level: the
            intercept of a fit of the whole row to ``level - gap``, with that row's own
            non-negative left/right slopes; see :func:`row_fits`): the level averages the
            noise of the whole row instead of trusting one entry.
        gap: ``global`` (one slope pair for all sources, fitted to every observed row) or
            ``local`` (a candidate's slopes are those of the observed rows fitted one by one,
            averaged with weights falling off with distance: slopes that change with the
            context).
        best: what a candidate must beat on each target: ``observed`` (the reference: the best
            observed entry ``U_j``), ``consistent`` (the larger of ``U_j`` and the model's own
            prediction for the trained sources, ``max_s mu_s - gap(x_s, x_j)``) or ``model``
            (the default: the model's prediction for the trained sources alone). The GP
            shrinks a weak source's set point towards the mean, so next to it the model's
            candidate row beats the observed row by that shrinkage alone; comparing the model
            with itself there removes the phantom gain. ``model`` goes further: the best noisy
            entry of each target is biased upwards (the maximum of noisy measurements), so
            against it a candidate near a trained source gains nothing and the acquisition
            turns to uncertain far candidates or to re-measuring noise; against the model's
            estimate of the trained rows every candidate is scored on the transfer the model
            expects, and with ``acquisition: expected`` the new entry's spread leaves out the
            entries' noise (the expected rise of the true G, not of its noisy measurement).
        spread: the uncertainty ``sigma_i`` of a candidate's training performance in the
            acquisition: ``latent`` (the GP's posterior standard deviation of the noise-free
            performance) or ``predictive`` (``sqrt(sigma_i^2 + noise_std^2)``: the new row is
            itself a noisy measurement, as SD-MBTL's reference code scores it). Near the best
            source the latent deviation is tiny, so a candidate's model row stays below the
            noisy best entries seen and scores nothing there; with the noise's optimism added,
            the acquisition keeps sampling near the best source instead of chasing far,
            uncertain edges (benchmarks/RESULTS.md, the synthetic benchmark).
        start: the first sources before the acquisition: ``middle`` (one source, the context
            nearest the middle of the space) or ``reference`` (SD-MBTL's GP-MBTL: the grid
            point at the rounded mean of the grid, in grid steps, then for the 2nd and 3rd
            source the target whose best observed performance is lowest, i.e. the one the
            chosen sources cover worst).
        gp: how the GP is fitted: ``restarts`` (ctxrl's: centred training performance, one
            lengthscale per dimension, 40 Adam steps from two starting lengthscales at every
            step) or ``reference`` (SD-MBTL's reference code,
            :class:`ctxrl.reference_gp.WarmStartedGP`: a learned constant mean and observation
            noise, one lengthscale in grid steps, refitted after every new source from the
            last fit's hyperparameters, up to 500 Adam steps until the loss changes by less
            than 1e-5). ``reference`` learns its own noise (``noise_std`` must be left unset or
            be ``learned``) and takes the diagonal as the set point.
        residual: ``none`` (MBTL's model: a candidate's row is its set point minus the gap) or
            ``gp`` (the default): the observed rows' residuals from that model are fitted by a
            GP over source and target (:class:`ctxrl.gp.RowResidualGP`) and a candidate's row
            is the model's plus the predicted residual, its spread the set point's and the
            residual's together. It learns what a gap growing with distance cannot say:
            sources on one side transferring better, targets hard for every source, rows of
            failed training.
        acquisition: ``optimistic`` (the reference: ``mean_j max(row_ij + beta_k sd_ij - U_j,
            0)``) or ``expected`` (the default): the expected rise of ``G`` itself, ``mean_j
            E[max(X_ij - U_j, 0)]`` with the new entry ``X_ij`` Gaussian around the predicted
            row, its spread the row's and the entries' noise (:func:`expected_gain`); ``beta``
            and ``c`` are then unused.
    """

    def __init__(
        self,
        beta: str = "sqrt-log",
        c: float = 1.0,
        theta: float | str = "estimate",
        theta_per_index: float | None = None,
        min_theta_per_index: float = 0.005,
        noise_std: float | str | None = None,
        min_noise_std: float = 0.01,
        restarts: int = 2,
        slopes: str = "floored",
        set_point: str = "diagonal",
        gap: str = "global",
        best: str = "model",
        spread: str = "latent",
        start: str = "middle",
        gp: str = "restarts",
        residual: str = "gp",
        acquisition: str = "expected",
    ) -> None:
        if noise_std is None:  # reference's GP learns its noise; ctxrl's measures it on the rows
            noise_std = "learned" if gp == "reference" else "rows"
        if not isinstance(beta, str) or beta not in BETA_SCHEDULES:
            raise CtxrlError(
                f"strategy 'mbtl-gp': beta {beta!r} is not one of {sorted(BETA_SCHEDULES)}"
            )
        if theta != "estimate":
            try:
                theta = number_option(theta, "strategy 'mbtl-gp': theta", positive=False)
            except ConfigError:
                raise ConfigError(
                    f"strategy 'mbtl-gp': theta must be a finite number >= 0 or 'estimate', "
                    f"got {theta!r}"
                ) from None
        c = number_option(c, "strategy 'mbtl-gp': c", positive=False)
        if theta_per_index is not None:
            theta_per_index = number_option(
                theta_per_index, "strategy 'mbtl-gp': theta_per_index", positive=False
            )
        min_theta_per_index = number_option(
            min_theta_per_index, "strategy 'mbtl-gp': min_theta_per_index", positive=False
        )
        min_noise_std = number_option(
            min_noise_std, "strategy 'mbtl-gp': min_noise_std", positive=False
        )
        # 0 is taken as 1 (one fit), as it always was
        restarts = count_option(restarts, "strategy 'mbtl-gp': restarts", minimum=0)
        if slopes not in ("floored", "signed", "reference"):
            raise CtxrlError(
                f"strategy 'mbtl-gp': slopes {slopes!r} is not floored, signed or reference"
            )
        if noise_std not in ("rows", "learned"):
            try:
                noise_std = number_option(noise_std, "strategy 'mbtl-gp': noise_std")
            except ConfigError:
                raise ConfigError(
                    "strategy 'mbtl-gp': noise_std must be a finite number > 0, 'rows' or "
                    f"'learned', got {noise_std!r}"
                ) from None
        if set_point not in ("diagonal", "row"):
            raise CtxrlError(f"strategy 'mbtl-gp': set_point {set_point!r} is not diagonal or row")
        if gap not in ("global", "local"):
            raise CtxrlError(f"strategy 'mbtl-gp': gap {gap!r} is not global or local")
        if best not in ("observed", "consistent", "model"):
            raise CtxrlError(
                f"strategy 'mbtl-gp': best {best!r} is not observed, consistent or model"
            )
        if spread not in ("latent", "predictive"):
            raise CtxrlError(f"strategy 'mbtl-gp': spread {spread!r} is not latent or predictive")
        if not isinstance(start, str) or start not in START_RULES:
            raise CtxrlError(f"strategy 'mbtl-gp': start {start!r} is not middle or reference")
        if residual not in ("none", "gp"):
            raise CtxrlError(f"strategy 'mbtl-gp': residual {residual!r} is not none or gp")
        if acquisition not in ("optimistic", "expected"):
            raise CtxrlError(
                f"strategy 'mbtl-gp': acquisition {acquisition!r} is not optimistic or expected"
            )
        if gp not in ("restarts", "reference"):
            raise CtxrlError(f"strategy 'mbtl-gp': gp {gp!r} is not restarts or reference")
        if gp == "reference" and not (noise_std in (0.1, "learned") and set_point == "diagonal"):
            raise CtxrlError(
                "strategy 'mbtl-gp': gp 'reference' learns its noise from the diagonal; it takes "
                f"neither noise_std {noise_std!r} nor set_point {set_point!r}"
            )
        self.gp_kind = gp
        self.residual, self.acquisition = residual, acquisition
        # residual: gp: the target kernel's eigendecompositions, kept while the contexts stay
        self._target_cache: dict[float, Any] = {}
        self._target_coords: np.ndarray | None = None
        # gp: reference: the (source, diagonal entry) pairs of the last fit, in selection order,
        # and that fit
        self._warm_sources: list[tuple[int, float]] = []
        self._warm_gp: WarmStartedGP | None = None
        self.best_kind = best
        self.spread, self.start = spread, start
        self.slopes = slopes
        self.set_point, self.gap_kind = set_point, gap
        self.beta, self.c = beta, c
        self.theta, self.theta_per_index = theta, theta_per_index
        self.min_theta_per_index = min_theta_per_index
        self.noise_std, self.restarts = noise_std, restarts
        self.min_noise_std = min_noise_std
        self._trace: dict[str, Any] = {}

    def resolved_options(self) -> dict[str, Any]:
        """``noise_std`` as ``gp`` decided it where it was not given: what a run directory
        records (:mod:`ctxrl.resolution`)."""
        return {"noise_std": self.noise_std}

    @staticmethod
    def _steps(state: SelectionState) -> np.ndarray:
        """Grid steps per unit of each coordinate (grid coordinates are index / (n - 1))."""
        dims = state.coords.shape[1]
        return np.array([max(len(np.unique(state.coords[:, d])) - 1, 1) for d in range(dims)])

    def _first(self, state: SelectionState) -> int:
        """The first source: nearest the middle of the space (``start: middle``) or the
        reference's grid point at the rounded mean of the contexts in grid steps (``start:
        reference``; numpy's rounding, half to even). Ties go to the first index."""
        coords = state.coords
        if self.start == "reference":
            steps = self._steps(state)
            low = coords.min(axis=0)
            aim = low + np.round((coords - low).mean(axis=0) * steps) / steps
        else:
            aim = (coords.min(axis=0) + coords.max(axis=0)) / 2
        return int(np.argmin(np.round(np.abs(coords - aim).sum(axis=1), 12)))

    def _gap(self, state: SelectionState) -> GapModel:
        dims = state.coords.shape[1]
        steps = self._steps(state)
        if self.theta_per_index is not None:
            return GapModel(self.theta_per_index * steps, self.theta_per_index * steps)
        if self.theta == "estimate":
            if self.slopes == "reference":
                return GapModel.estimate_with_intercept(state.coords, state.rows)
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
            proposal.append(self._first(state))
            chosen.add(proposal[0])
            self._trace["middle"] = proposal[0]
            if state.batch_size == 1:
                return proposal
        if self.start == "reference" and state.selected and state.k < START_RULES["reference"]:
            # the worst-covered targets (lowest best observed performance) not chosen yet; a
            # batch stops at the rule's last source, the acquisition takes the next one
            if self.gp_kind == "reference":  # the reference fits its GP after every source
                self._warm_started(state, proposal)
            best = state.best_so_far()
            wanted = min(state.batch_size, START_RULES["reference"] - state.k)
            for index in np.argsort(best):  # ties as the reference breaks them: numpy's sort
                if len(proposal) == wanted:
                    break
                if int(index) not in chosen:
                    proposal.append(int(index))
                    chosen.add(int(index))
            self._trace.update(rule="worst-covered", best_so_far=best)
            return proposal
        sources = sorted(state.rows) or proposal
        # a trained source's own entry; NaN (a failed run) counts as 0, as it does in G_k
        train_y = [
            float(np.nan_to_num(state.rows[s][s], nan=0.0)) if s in state.rows else 0.5
            for s in sources
        ]
        gap_model = self._gap(state)
        fits: dict[int, RowFit] = {}
        noise_std = 0.1 if self.noise_std in ("rows", "learned") else float(self.noise_std)
        if state.rows and (
            self.set_point == "row" or self.gap_kind == "local" or self.noise_std == "rows"
        ):
            fits = row_fits(coords, state.rows, gap_model)
            if self.set_point == "row":
                train_y = [fits[s].level for s in sources]
            residuals = [f.residual for f in fits.values() if f.residual is not None]
            if self.noise_std == "rows" and residuals:
                noise_std = max(float(np.sqrt(np.mean(np.square(residuals)))), self.min_noise_std)
        gp: PerformanceGP | WarmStartedGP
        if self.gp_kind == "reference":
            gp = self._warm_started(state, proposal)
            posterior = gp.posterior(coords * self._steps(state))
        else:
            gp = PerformanceGP(
                coords[sources],
                np.array(train_y),
                noise_std=noise_std,
                learn_noise=self.noise_std == "learned",
                restarts=self.restarts,
            )
            posterior = gp.posterior(coords)
        self._trace["noise_std"] = gp.noise_std
        if self.spread == "predictive":
            posterior = Posterior(posterior.mean, np.sqrt(posterior.std**2 + gp.noise_std**2))
        if fits and self.gap_kind == "local":
            floor = (
                self.min_theta_per_index * self._steps(state)
                if self.slopes == "floored"
                else np.full(coords.shape[1], -np.inf)
            )
            gap = local_gap(coords, fits, floor)
        else:
            gap = gap_model.gap(coords)
        # each candidate's predicted row and its spread, (N, N); without a residual model the
        # row is the set point minus the gap and the spread the set point's alone
        rows_mean = posterior.mean[:, None] - gap
        rows_std = np.broadcast_to(posterior.std[:, None], gap.shape)
        entry_noise = gp.noise_std
        if self.residual == "gp" and state.rows:
            rows_mean, rows_std, entry_noise = self._with_residual(state, rows_mean, posterior.std)
        best = state.best_so_far()
        if self.best_kind != "observed" and state.rows:
            modelled = np.clip(rows_mean[sorted(state.rows)], 0.0, 1.0).max(axis=0)
            best = modelled if self.best_kind == "model" else np.maximum(best, modelled)
        if self.best_kind == "model":  # the expected rise of the true G: no entry noise
            entry_noise = 0.0
        for index in proposal:  # chosen in this batch already (the middle): its predicted row
            best = np.maximum(best, np.clip(rows_mean[index], 0.0, 1.0))  # counts, as below
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
            if self.acquisition == "expected":
                raw = expected_gain(rows_mean, np.sqrt(rows_std**2 + entry_noise**2), best)
            elif self.residual == "gp":
                raw = np.maximum(rows_mean + beta * rows_std - best[None, :], 0.0).mean(axis=1)
            else:  # the reference's order of operations, so its ties break as they did
                optimistic = (posterior.mean + beta * posterior.std)[:, None] - gap
                raw = np.maximum(optimistic - best[None, :], 0.0).mean(axis=1)
            gain = np.round(raw, 12)
            gain[list(chosen)] = -np.inf
            index = int(np.argmax(gain))  # first index on ties
            if self.gp_kind == "reference":  # its ties: numpy's default sort, unrounded
                index = next(int(i) for i in np.argsort(-raw) if int(i) not in chosen)
            proposal.append(index)
            chosen.add(index)
            picks.append({"index": index, "k": k, "beta": beta, "acquisition": gain})
            best = np.maximum(best, np.clip(rows_mean[index], 0.0, 1.0))
        return proposal

    def _with_residual(
        self, state: SelectionState, rows_mean: np.ndarray, set_point_std: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``residual: gp``: the model's rows ``(N, N)`` corrected by a GP over the observed
        rows' residuals (:class:`ctxrl.gp.RowResidualGP`), clipped to [0, 1], their spread
        ``sqrt(sigma_i^2 + s_ij^2)`` (set point and residual) and the entries' own noise
        standard deviation as the residual GP measured it."""
        coords = state.coords
        if self._target_coords is None or not np.array_equal(self._target_coords, coords):
            self._target_cache, self._target_coords = {}, coords.copy()
        sources = sorted(state.rows)
        model = np.clip(rows_mean, 0.0, 1.0)
        observed = np.stack([np.nan_to_num(state.rows[s], nan=0.0) for s in sources])
        residual = RowResidualGP(
            coords[sources], coords, observed - model[sources], target_cache=self._target_cache
        )
        self._trace["residual"] = residual.hyperparameters()
        residual_mean, residual_std = residual.predict(coords)
        spread = np.sqrt(set_point_std[:, None] ** 2 + residual_std**2)
        return np.clip(model + residual_mean, 0.0, 1.0), spread, residual.noise_std

    def _warm_started(self, state: SelectionState, proposal: list[int]) -> WarmStartedGP:
        """``gp: reference``: the GP fitted on every observed source's diagonal entry (grid-step
        coordinates), once per new observation: from the last fit's hyperparameters while the
        selection goes on, from gpytorch's defaults for a new one. Called at every step, as
        the reference refits after every new source."""
        steps = self._steps(state)
        observed = [
            (s, float(np.nan_to_num(state.rows[s][s], nan=0.0)))
            for s in state.selected
            if s in state.rows
        ]
        if not observed:  # a first batch proposed together: the middle source, assumed at 0.5
            return WarmStartedGP(state.coords[proposal] * steps, np.full(len(proposal), 0.5))
        if self._warm_gp is None or observed != self._warm_sources:
            goes_on = observed[: len(self._warm_sources)] == self._warm_sources
            newest_first = observed[::-1]  # the reference keeps its newest row first
            self._warm_gp = WarmStartedGP(
                state.coords[[s for s, _ in newest_first]] * steps,
                np.array([value for _, value in newest_first]),
                start=self._warm_gp.fitted if self._warm_gp is not None and goes_on else None,
            )
            self._warm_sources = observed
        return self._warm_gp

    def trace(self) -> dict[str, Any]:
        """The last proposal: ``rule`` (``middle``: the first source, see ``start``;
        ``worst-covered``: the reference start's 2nd and 3rd sources, with ``best_so_far``;
        ``acquisition``: the GP rule), and for the GP rule the ``sources`` and their
        training performance ``train_y``, the fitted GP (``lengthscale``, ``outputscale``,
        ``mean_offset``; with ``gp: reference`` ``constant_mean`` and ``noise_std``, the
        lengthscale in grid steps) and its posterior ``mean`` / ``std`` per context ``(N,)``,
        the gap slopes ``left`` / ``right`` ``(d,)``, the GP's ``noise_std`` at this step,
        ``best_so_far`` ``U_j`` ``(N,)`` (with ``best=consistent``, raised to the model's rows
        of the trained sources; with ``best=model``, those rows) and one pick per proposed
        source: its index, ``k``, ``beta`` and the ``acquisition`` value ``a_i`` of every
        context ``(N,)`` (None for contexts already chosen); with ``residual: gp`` the
        residual GP's ``residual`` hyperparameters (lengthscales of source and target, signal
        and noise standard deviations). Performance is normalised to [0, 1]."""
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
