"""Baseline source-selection strategies, with the logic of the MBTL reference.

Coordinates are the unit-cube coordinates of the candidate contexts (``state.coords``); the 1-D
baselines (equidistant, greedy) need a single varied feature. "Nearest" always breaks ties
towards the lower context. Two places where the reference differs: its unrounded arithmetic
puts some exact half-way aims of ``equidistant`` a hair above the half, so it takes the upper
context there (N = 40, K = 15: 20 and 7 where this takes 19 and 6; N = 50 at K = 3 or 25: 25
against 24; none at N = 50 or 100 with K = 15 or K = N); and it never excludes a chosen
context, so at K close to N its ``greedy`` and ``equidistant`` can pick one twice, where these
take the next-nearest untried one.

- ``random``: a uniformly random untried context each step (seeded by the state's rng).
- ``equidistant``: centres of K equal bins, from high to low (coarse-to-fine).
- ``greedy``: middle first, then the largest gap between chosen contexts and the range ends.
- ``sequential-oracle``: greedy on the true matrix (offline only); each source at most once.
- ``exhaustive``: every context in increasing order (trains all N).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ctxrl import hookimpl
from ctxrl.errors import CtxrlError
from ctxrl.registry import StrategySpec
from ctxrl.selection import SelectionState, Strategy, nearest_index


def _one_dimensional(state: SelectionState, name: str) -> np.ndarray:
    """The one varied coordinate ``(N,)`` of the contexts (an axis of a single point, a
    constant column, does not count)."""
    varied = [j for j in range(state.coords.shape[1]) if np.ptp(state.coords[:, j]) > 0]
    if len(varied) > 1:
        raise CtxrlError(
            f"strategy {name!r} works on one varied feature; this grid varies {len(varied)}"
        )
    values: np.ndarray = state.coords[:, varied[0] if varied else 0]
    if np.any(np.diff(values) < 0):
        raise CtxrlError(f"strategy {name!r} needs contexts in increasing order")
    return values


class RandomStrategy:
    """A random untried context per step (Random baseline)."""

    def propose(self, state: SelectionState) -> list[int]:
        untried = state.untried()
        count = min(state.batch_size, len(untried))
        return [int(i) for i in state.rng.choice(untried, size=count, replace=False)]


class EquidistantStrategy:
    """Aim at ``x_k = max - (max - min) / (2K) - (max - min) k / K``, ``k = 0..K-1``."""

    def __init__(self) -> None:
        self._aims: list[float] = []

    def propose(self, state: SelectionState) -> list[int]:
        values = _one_dimensional(state, "equidistant")
        low, high, budget = values.min(), values.max(), state.budget
        proposal: list[int] = []
        self._aims = []
        for k in range(state.k, min(state.k + state.batch_size, budget)):
            aim = high - (high - low) / (2 * budget) - (high - low) * k / budget
            self._aims.append(float(aim))
            proposal.append(nearest_index(values, aim, exclude=[*state.selected, *proposal]))
        return proposal

    def trace(self) -> dict[str, Any]:
        """``aims``: the unit-cube coordinate aimed at for each proposed source."""
        return {"aims": list(self._aims)}


class GreedyStrategy:
    """Geometry-only greedy: fill the largest gap (Temporal Transfer Learning)."""

    def __init__(self) -> None:
        self._aims: list[float] = []

    def propose(self, state: SelectionState) -> list[int]:
        values = _one_dimensional(state, "greedy")
        chosen = list(state.selected)
        proposal = []
        self._aims = []
        for _ in range(state.batch_size):
            aim = self._aim(values, chosen)
            index = nearest_index(values, aim, exclude=chosen)  # never a source twice
            self._aims.append(aim)
            chosen.append(index)
            proposal.append(index)
        return proposal

    def trace(self) -> dict[str, Any]:
        """``aims``: the unit-cube coordinate aimed at for each proposed source (the middle,
        then a point in the largest gap)."""
        return {"aims": list(self._aims)}

    @staticmethod
    def _aim(values: np.ndarray, chosen: list[int]) -> float:
        """The coordinate the next source aims at, given the chosen ones."""
        low, high = float(values.min()), float(values.max())
        if not chosen:
            return (low + high) / 2
        points = sorted([low, high, *(float(values[i]) for i in chosen)])
        gaps = np.diff(points)
        g = int(np.argmax(np.round(gaps, 12)))  # first gap on ties
        a, b = points[g], points[g + 1]
        if g == 0:
            aim = (2 * a + b) / 3
        elif g == len(gaps) - 1:
            aim = (a + 2 * b) / 3
        else:
            aim = (a + b) / 2
        return aim


class SequentialOracleStrategy:
    """Greedy with the true matrix: the row maximising ``mean_j max`` over chosen rows."""

    def propose(self, state: SelectionState) -> list[int]:
        if state.full_matrix is None:
            raise CtxrlError("strategy 'sequential-oracle' needs the full matrix (offline only)")
        matrix = np.nan_to_num(state.full_matrix, nan=0.0)
        best = np.zeros(matrix.shape[1])
        for i in state.selected:
            best = np.maximum(best, matrix[i])
        chosen = set(state.selected)
        proposal = []
        for _ in range(min(state.batch_size, state.n - len(chosen))):
            scores = np.round(np.maximum(matrix, best[None, :]).mean(axis=1), 12)
            scores[list(chosen)] = -np.inf  # each source once
            index = int(np.argmax(scores))  # first index on ties
            proposal.append(index)
            chosen.add(index)
            best = np.maximum(best, matrix[index])
        return proposal


class ExhaustiveStrategy:
    """Every context, in increasing index order."""

    def propose(self, state: SelectionState) -> list[int]:
        untried = state.untried()
        return untried[: state.batch_size]


def _no_options(cls: type[Strategy]) -> Callable[..., Strategy]:
    def factory(**options: object) -> Strategy:
        if options:
            raise CtxrlError(f"no option {sorted(options)[0]!r}; it takes no options")
        return cls()

    return factory


@hookimpl
def ctxrl_register_strategies(register: Callable[[StrategySpec], None]) -> None:
    register(
        StrategySpec(
            "random",
            _no_options(RandomStrategy),
            stochastic=True,
            description="uniformly random untried context each step",
        )
    )
    register(
        StrategySpec(
            "equidistant",
            _no_options(EquidistantStrategy),
            description="centres of K equal bins, coarse to fine (1-D)",
            one_dimensional=True,
        )
    )
    register(
        StrategySpec(
            "greedy",
            _no_options(GreedyStrategy),
            description="middle first, then the largest gap (1-D)",
            one_dimensional=True,
        )
    )
    register(
        StrategySpec(
            "sequential-oracle",
            _no_options(SequentialOracleStrategy),
            requires_full_matrix=True,
            description="greedy on the true matrix (offline reference; greedy, so not a bound "
            "on every k)",
        )
    )
    register(
        StrategySpec(
            "exhaustive",
            _no_options(ExhaustiveStrategy),
            description="every context in order (trains all N)",
        )
    )
