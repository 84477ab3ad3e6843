"""SD-MBTL: structure-detecting source selection (Zhou, Cho, Wu; AAAI 2026, arXiv 2601.08120).

SD-MBTL decomposes the transfer performance ``J(pi_x, y) = f(x) + g(y) + h(x, y) + C`` and looks
at the rows observed so far for a *Mountain*: training performance that does not depend on the
source (``f`` constant) and a generalization gap ``h`` that falls off on both sides of the source
in most context dimensions. On a Mountain the best sources are the ones that cover the context
space, so the next source comes from M-MBTL, a sequential clustering with the L1 distance;
otherwise from GP-MBTL (:class:`~ctxrl_plugins.strategies.mbtl.MBTLStrategy`).

The detection follows the reference code (:func:`detect_structure`): the first sources come from
M-MBTL (the reference starts in its clustering branch); once more than ``min_rows`` (5) rows are
observed the tests run, and again after every new row. Each step's decision and the statistics
behind it are in the strategy trace, so a sweep summary can say which branch ran at each ``k``
and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ctxrl import hookimpl
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.options import count_option, option_defaults
from ctxrl.registry import StrategySpec
from ctxrl.selection import SelectionState
from ctxrl_plugins.strategies.m_mbtl import SequentialClustering, k_median_step
from ctxrl_plugins.strategies.mbtl import MBTLStrategy

DETECTIONS = ("reference", "spearman")
CLUSTERINGS = ("reference", "k-median")


@dataclass(frozen=True)
class StructureTest:
    """The two tests of SD-MBTL's Mountain detection on the observed rows.

    Attributes:
        rows: ``k``, the number of observed source rows the tests used.
        constant_ratio: spread of the sources' own (column-centred) performance over the mean
            spread within a row; training performance counts as constant when it is below 1.
        left_slopes, right_slopes: ``(d,)`` least-squares slopes of the column-centred
            performance on ``min(x_d - y_d, 0)`` and ``max(x_d - y_d, 0)`` (source ``x``,
            target ``y``), in performance units per unit of coordinate. A gap that falls off
            on both sides of the source has a positive left and a negative right slope.
        mountain_dims: dimensions where exactly one of the two slopes is positive (the
            reference's test: opposite signs, a slope of exactly 0 counting as not positive).
    """

    rows: int
    constant_ratio: float
    left_slopes: np.ndarray
    right_slopes: np.ndarray
    mountain_dims: int

    @property
    def constant(self) -> bool:
        return bool(self.constant_ratio < 1.0)

    @property
    def mountain_shaped(self) -> bool:
        """More than half of the context dimensions are mountain-shaped."""
        return 2 * self.mountain_dims > len(self.left_slopes)

    @property
    def mountain(self) -> bool:
        """Both tests hold: SD-MBTL takes the M-MBTL branch."""
        return self.constant and self.mountain_shaped

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "constant_ratio": self.constant_ratio,
            "constant": self.constant,
            "left_slopes": self.left_slopes.tolist(),
            "right_slopes": self.right_slopes.tolist(),
            "mountain_dims": self.mountain_dims,
            "mountain_shaped": self.mountain_shaped,
            "mountain": self.mountain,
        }


def detect_structure(coords: np.ndarray, rows: Mapping[int, np.ndarray]) -> StructureTest:
    """SD-MBTL's Mountain tests on the observed rows, as the reference code does them.

    Every column (target) is centred by its mean over the observed rows, which removes the
    target effect ``g(y)``. *Constant training performance*: the standard deviation of the
    sources' own centred entries ``J_c[i, x_i]`` over the ``k`` sources, divided by the mean
    over rows of each row's standard deviation over all targets, is below 1. *Mountain slopes*:
    one least-squares fit (pseudo-inverse) of all centred entries on
    ``[1, min(x_d - y_d, 0), max(x_d - y_d, 0) for each dimension d]``; a dimension is
    mountain-shaped when exactly one of its two slopes is positive (so a valley passes too,
    as in the reference).

    Args:
        coords: ``(N, d)`` context coordinates (any positive scaling per dimension: the signs
            and the ratio do not depend on it); a dimension with a single value is left out
            (the slopes are those of the varied dimensions).
        rows: source index -> its ``(N,)`` row (raw or normalised performance); NaN entries
            (unobserved targets) are left out of both tests.
    """
    coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
    # an axis of one point (a 1 x 12 grid) varies nothing: it is neither fitted nor counted
    coords = coords[:, np.ptp(coords, axis=0) > 0]
    sources = sorted(rows)
    dims = coords.shape[1]
    if len(sources) < 2:
        raise CtxrlError(f"structure detection needs at least 2 observed rows, got {len(sources)}")
    observed = np.array([rows[s] for s in sources], dtype=np.float64)  # (k, N)
    centred = observed - np.nanmean(observed, axis=0, keepdims=True)
    own = centred[np.arange(len(sources)), sources]
    within = float(np.nanmean(np.nanstd(centred, axis=1)))
    spread = float(np.nanstd(own))
    ratio = spread / within if within > 0 else float("inf")  # flat rows: no evidence
    diff = coords[sources][:, None, :] - coords[None, :, :]  # (k, N, d): source - target
    design = np.concatenate(
        [np.ones((*diff.shape[:2], 1)), np.minimum(diff, 0.0), np.maximum(diff, 0.0)], axis=2
    ).reshape(-1, 1 + 2 * dims)
    target = centred.reshape(-1)
    keep = ~np.isnan(target)
    coefficients = np.linalg.pinv(design[keep]) @ target[keep]
    # slopes within rounding of 0 (rows with no fall-off) have no sign
    scale = float(np.nanmax(np.abs(target))) if keep.any() else 0.0
    coefficients[np.abs(coefficients) <= 1e-9 * max(scale, 1e-300)] = 0.0
    left, right = coefficients[1 : 1 + dims], coefficients[1 + dims :]
    return StructureTest(
        rows=len(sources),
        constant_ratio=ratio,
        left_slopes=left,
        right_slopes=right,
        mountain_dims=int(np.sum((left > 0) ^ (right > 0))),
    )


def mountain_score(coords: np.ndarray, rows: Mapping[int, np.ndarray]) -> float:
    """The ``spearman`` detection: how consistently performance falls with distance from the
    source, in ``[-1, 1]``.

    For every observed row and every context dimension with spread, the Spearman correlation
    between the row and ``-|x_d - s_d|`` over all targets; the score is the smallest of them.
    Kept as a named alternative to the reference's tests: it sees Mountains in 1-D rows, but
    on several dimensions that share the fall-off a per-dimension correlation stays near
    ``1 / sqrt(d)`` and it never fires (see ``benchmarks/RESULTS.md``)."""
    from scipy.stats import spearmanr

    scores = []
    for source, row in rows.items():
        valid = ~np.isnan(row)
        for d in range(coords.shape[1]):
            closeness = -np.abs(coords[valid, d] - coords[source, d])
            if np.ptp(closeness) == 0 or np.ptp(row[valid]) == 0:
                continue
            scores.append(float(spearmanr(closeness, row[valid]).statistic))
    return min(scores) if scores else 0.0


class SDMBTLStrategy:
    """SD-MBTL: M-MBTL clustering where the observed rows form a Mountain, else GP-MBTL.

    Args:
        structure: ``auto`` (detect each step), ``mountain`` (always M-MBTL: the ``m-mbtl``
            strategy) or ``gp`` (always GP-MBTL).
        detection: ``reference`` (:func:`detect_structure`, SD-MBTL's tests) or ``spearman``
            (:func:`mountain_score` >= ``mountain_threshold``, this project's earlier rule).
        clustering: the M-MBTL branch: ``reference`` (:class:`SequentialClustering`, the
            published algorithm) or ``k-median`` (:func:`k_median_step`, a greedy k-median).
        min_rows: the structure is decided once more than this many rows are observed (the
            reference: 5); before that the M-MBTL branch runs, as in the reference.
        mountain_threshold: the ``spearman`` detection's threshold.
        **gp_options: options of ``mbtl-gp`` for the GP branch (defaults ``slopes: signed``,
            ``spread: predictive``, and the reference's ``noise_std: 0.1``, ``best: observed``
            where ``mbtl-gp`` alone measures its noise on the rows; ``slopes: reference`` and
            ``gp: reference`` give the reference code's slope fit and GP, see ``mbtl-gp``).
    """

    forwards_options_to: ClassVar[type] = MBTLStrategy
    """Options it does not name itself go to its GP-MBTL branch (listed with its own in an
    error on an unknown option)."""

    def __init__(
        self,
        structure: str = "auto",
        detection: str = "reference",
        clustering: str = "reference",
        min_rows: int = 5,
        mountain_threshold: float = 0.5,
        **gp_options: object,
    ) -> None:
        if structure not in ("auto", "mountain", "gp"):
            raise CtxrlError(
                f"strategy 'sd-mbtl': structure {structure!r} is not auto, mountain or gp"
            )
        if detection not in DETECTIONS:
            raise CtxrlError(
                f"strategy 'sd-mbtl': detection {detection!r} is not one of {list(DETECTIONS)}"
            )
        if clustering not in CLUSTERINGS:
            raise CtxrlError(
                f"strategy 'sd-mbtl': clustering {clustering!r} is not one of {list(CLUSTERINGS)}"
            )
        min_rows = count_option(min_rows, "strategy 'sd-mbtl': min_rows", minimum=0)
        if isinstance(mountain_threshold, bool) or not (
            isinstance(mountain_threshold, int | float) and math.isfinite(mountain_threshold)
        ):  # a Spearman score lies in [-1, 1]: a negative threshold is meaningful
            raise ConfigError(
                "strategy 'sd-mbtl': mountain_threshold must be a finite number, got "
                f"{mountain_threshold!r}"
            )
        mountain_threshold = float(mountain_threshold)
        self.structure, self.detection, self.clustering = structure, detection, clustering
        self._clusterer: SequentialClustering | None = None
        self.min_rows, self.mountain_threshold = min_rows, mountain_threshold
        # the GP branch: signed slopes (non-Mountain structures may rise away from the
        # source) and a candidate's uncertainty including the observation noise, as the
        # reference scores it, with the reference's fixed noise and observed baseline: the
        # setting measured on SD-MBTL's synthetic benchmark (benchmarks/RESULTS.md)
        defaults = {
            "slopes": "signed",
            "spread": "predictive",
            "noise_std": 0.1,
            "best": "observed",
            "residual": "none",
            "acquisition": "optimistic",
        }
        self._gp_options = {**defaults, **gp_options}
        try:
            self.gp = MBTLStrategy(**self._gp_options)  # type: ignore[arg-type]
        except CtxrlError as exc:  # said as sd-mbtl's, which the user named
            said = str(exc).removeprefix("strategy 'mbtl-gp': ")
            raise type(exc)(f"strategy 'sd-mbtl': its GP branch's {said}") from None
        self._trace: dict[str, Any] = {}

    def resolved_options(self) -> dict[str, Any]:
        """Its own options and its GP branch's as they run (that branch's defaults are not
        ``mbtl-gp``'s); with ``structure: mountain`` (``m-mbtl``) the GP branch never runs,
        and its options are ``None``. What a run directory records
        (:mod:`ctxrl.resolution`)."""
        branch = {**self._gp_options, **self.gp.resolved_options()}
        if self.structure == "mountain":
            branch = dict.fromkeys(option_defaults(MBTLStrategy))
        return {
            **branch,
            "structure": self.structure,
            "detection": self.detection,
            "clustering": self.clustering,
            "min_rows": self.min_rows,
            "mountain_threshold": self.mountain_threshold,
        }

    def _decide(self, state: SelectionState) -> tuple[bool, dict[str, Any]]:
        """Whether the next source comes from M-MBTL, and why (for the trace)."""
        if self.structure != "auto":
            return self.structure == "mountain", {"reason": f"structure fixed to {self.structure}"}
        observed = len(state.rows)
        needed = self.min_rows if self.detection == "spearman" else max(self.min_rows, 1)
        if observed <= needed:
            return True, {"reason": f"{observed} rows observed, the test needs > {needed}"}
        if self.detection == "spearman":
            score = mountain_score(state.coords, state.rows)
            mountain = score >= self.mountain_threshold
            return mountain, {"mountain_score": score, "reason": f"spearman score {score:.3f}"}
        test = detect_structure(state.coords, state.rows)
        reason = (
            f"training performance {'constant' if test.constant else 'varies'} "
            f"(ratio {test.constant_ratio:.3f}); {test.mountain_dims} of "
            f"{len(test.left_slopes)} dimensions mountain-shaped"
        )
        return test.mountain, {"test": test.as_dict(), "reason": reason}

    def is_mountain(self, state: SelectionState) -> bool:
        return self._decide(state)[0]

    def propose(self, state: SelectionState) -> list[int]:
        mountain, why = self._decide(state)
        self._trace = {"structure": self.structure, "detection": self.detection, "k": state.k}
        self._trace.update(why)
        if not mountain and state.selected:
            self._trace["branch"] = "gp"
            return self.gp.propose(state)
        self._trace["branch"] = "mountain" if state.selected else "medoid"
        chosen = list(state.selected)
        proposal: list[int] = []
        while len(proposal) < min(state.batch_size, state.n - len(state.selected)):
            index = self._cluster_step(state.coords, chosen)
            chosen.append(index)
            proposal.append(index)
        return proposal

    def _cluster_step(self, coords: np.ndarray, chosen: list[int]) -> int:
        """The M-MBTL branch's next source; a context chosen before (the reference's rounded
        centre can land on one) is replaced by the k-median step, so no source repeats."""
        candidates = [i for i in range(len(coords)) if i not in set(chosen)]
        if self.clustering == "k-median":
            return k_median_step(coords, chosen, candidates)
        if self._clusterer is None or not np.array_equal(self._clusterer.coords, coords):
            self._clusterer = SequentialClustering(coords)
        index = self._clusterer.next(chosen)
        return index if index not in chosen else k_median_step(coords, chosen, candidates)

    def trace(self) -> dict[str, Any]:
        """The last proposal: ``branch`` (``medoid``: the first source; ``mountain``: an
        M-MBTL clustering step; ``gp``: GP-MBTL, whose trace follows), ``k`` (sources chosen
        before it), ``reason`` (one line: why this branch) and, once the reference detection
        ran, ``test`` (:meth:`StructureTest.as_dict`)."""
        trace = dict(self._trace)
        if trace.get("branch") == "gp":
            trace.update(self.gp.trace())
        return trace


def _m_mbtl(clustering: str = "reference", **others: Any) -> SDMBTLStrategy:
    """M-MBTL: :class:`SDMBTLStrategy` with ``structure: mountain``, whose clustering branch
    is all it runs, so ``clustering`` is its one option; sd-mbtl's structure detection and GP
    branch options would do nothing here, and are refused by name."""
    if others:
        raise CtxrlError(
            f"strategy 'm-mbtl': it takes only the option clustering, not "
            f"{', '.join(sorted(others))}: it is sd-mbtl with structure 'mountain' always, "
            "which never runs the structure tests or the GP branch those options are for; use "
            "sd-mbtl for them"
        )
    if clustering not in CLUSTERINGS:
        raise CtxrlError(
            f"strategy 'm-mbtl': clustering {clustering!r} is not one of {list(CLUSTERINGS)}"
        )
    return SDMBTLStrategy(structure="mountain", clustering=clustering)


@hookimpl
def ctxrl_register_strategies(register: Callable[[StrategySpec], None]) -> None:
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
            description="M-MBTL: sequential L1 clustering of the context space",
        )
    )
