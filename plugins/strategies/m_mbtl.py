"""M-MBTL's sequential clustering of the context space (SD-MBTL, Zhou, Cho, Wu; AAAI 2026).

On a Mountain (performance falls off with L1 distance from the source, training performance the
same everywhere) the generalized performance of a set of sources is a decreasing function of the
L1 distance from every target to its nearest source, so source selection becomes clustering.
M-MBTL adds one centre per step, keeping the earlier ones fixed:

1. The first centre is the mean of all contexts, rounded to the grid (half to even).
2. Every context ``q`` is tried as the start of the new centre: a Lloyd-style fit moves it to the
   mean of the contexts it wins (a context joins it when strictly nearer than to its own centre,
   and a context it holds stays while no other centre is strictly nearer), until it moves less
   than ``tolerance`` (at most ``max_iterations`` times). Its value is the total L1 distance
   from every context to its nearest centre.
3. The start with the smallest value wins (the first on ties); its fitted centre, rounded to the
   grid, is the next source.

Every context is tried as a start; the reference code tries 400 of them, drawn at random per
trial (its full list is commented out), so its orders vary from trial to trial and this one's
do not: single trials' G_50 differ by up to 0.0016, the published 100-trial means are
reproduced (benchmarks/RESULTS.md).

As in the reference, step 2 reuses a start's value from the step before (minus the last
step's reduction of the objective) when the context cluster it formed then does not meet the
cluster of the start chosen then: only the starts near the new centre are refitted. This shortcut
changes some choices, and the published M-MBTL numbers were made with it; ``reuse=False`` refits
every start. :func:`k_median_step` is the simpler greedy k-median alternative.

Coordinates are taken in grid steps (``coords * (n_d - 1)`` for a dimension with ``n_d`` distinct
values), so rounding lands on grid contexts; a rounded centre that is not one of the contexts
(an incomplete grid) becomes the nearest context in L1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Per-dimension distance weight of the reference. Any positive constant gives the same choices
# up to floating-point rounding; this one makes exact ties break as they do there.
_WEIGHT = 0.01


def k_median_step(coords: np.ndarray, chosen: list[int], candidates: list[int]) -> int:
    """The candidate that, added to ``chosen``, most lowers the total L1 distance from every
    context to its nearest chosen one (a greedy k-median step; the first one on ties).

    ``coords`` is ``(N, d)``; with nothing chosen this is the medoid."""
    distances = np.abs(coords[:, None, :] - coords[None, :, :]).sum(axis=2)  # (N, N)
    nearest = distances[:, chosen].min(axis=1) if chosen else np.full(len(coords), np.inf)
    totals = np.minimum(nearest[:, None], distances[:, candidates]).sum(axis=0)
    return candidates[int(np.argmin(np.round(totals, 12)))]


@dataclass
class _Step:
    """What one clustering step leaves for the next: the sources after it, every start's value
    and cluster, the start chosen and the objective's reduction."""

    selected: tuple[int, ...]
    source: int
    values: np.ndarray  # (N,)
    clusters: list[np.ndarray]  # per start: indices of the contexts its fitted centre held
    chosen_start: int
    reduction: float


class SequentialClustering:
    """M-MBTL's next source given the sources so far (see the module docstring).

    Args:
        coords: ``(N, d)`` unit-cube coordinates of the contexts (a grid: ``i / (n_d - 1)``).
        reuse: the reference's shortcut of reusing unaffected starts' values.
    """

    def __init__(
        self,
        coords: np.ndarray,
        *,
        reuse: bool = True,
        max_iterations: int = 300,
        tolerance: float = 1e-6,
    ) -> None:
        coords = np.atleast_2d(np.asarray(coords, dtype=np.float64))
        self.coords = coords
        steps = np.array([max(len(np.unique(c)) - 1, 1) for c in coords.T], dtype=np.float64)
        self.points = np.round(coords * steps, 9)  # (N, d) in grid steps
        self._index = {tuple(p): i for i, p in enumerate(self.points)}
        self.reuse, self.max_iterations, self.tolerance = reuse, max_iterations, tolerance
        self._last: _Step | None = None

    def _distance(self, centre: np.ndarray) -> np.ndarray:
        """Weighted L1 distance of every context to ``centre``, ``(N,)``."""
        distance: np.ndarray = np.abs((self.points - centre) * _WEIGHT).sum(axis=1)
        return distance

    def _context_of(self, centre: np.ndarray) -> int:
        """The context at a rounded centre, else the nearest one (the first on ties)."""
        index = self._index.get(tuple(np.round(centre, 9)))
        return index if index is not None else int(np.argmin(self._distance(centre)))

    def _fit(
        self, start: np.ndarray, nearest_other: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Move a new centre from ``start`` to the mean of the contexts it holds. Returns the
        centre and the boolean mask of the contexts it held in the last assignment.

        ``nearest_other``: each context's distance to its nearest fixed centre (None: none)."""
        centre = start.copy()
        held: np.ndarray | None = None
        for _ in range(self.max_iterations):
            distance = self._distance(centre)
            if nearest_other is None:
                held = np.ones(len(self.points), dtype=bool)
            elif held is None:  # first assignment: ties go to the new centre
                held = distance <= nearest_other
            else:  # held contexts stay unless strictly nearer elsewhere; others join if nearer
                held = np.where(held, distance <= nearest_other, distance < nearest_other)
            previous = centre
            if held.any():
                centre = self.points[held].mean(axis=0)
            if np.all(np.abs(centre - previous) < self.tolerance):
                break
        assert held is not None
        return centre, held

    def _objective(self, distance_to_new: np.ndarray, nearest_other: np.ndarray | None) -> float:
        if nearest_other is None:
            return float(np.sum(distance_to_new))
        return float(np.sum(np.minimum(distance_to_new, nearest_other)))

    def next(self, selected: list[int]) -> int:
        """The next source after ``selected`` (in the order chosen)."""
        if not selected:
            centre, _ = self._fit(self.points[0], None)
            self._last = None
            return self._context_of(np.round(centre))
        fixed = self.points[list(reversed(selected))]  # (k, d), newest first as the reference
        distances = np.abs((self.points[:, None, :] - fixed[None, :, :]) * _WEIGHT).sum(axis=2)
        nearest = distances.min(axis=1)
        objective_before = float(np.sum(nearest))
        last = self._last
        reusable = (
            self.reuse
            and last is not None
            and last.selected == tuple(selected[:-1])
            and last.source == selected[-1]
        )
        values = np.empty(len(self.points))
        clusters: list[np.ndarray] = []
        for start in range(len(self.points)):
            if reusable:
                assert last is not None
                if not np.intersect1d(last.clusters[start], last.clusters[last.chosen_start]).size:
                    values[start] = last.values[start] - last.reduction
                    clusters.append(last.clusters[start])
                    continue
            centre, held = self._fit(self.points[start], nearest)
            values[start] = self._objective(self._distance(centre), nearest)
            clusters.append(np.nonzero(held)[0])
        chosen_start = int(np.argmin(values))
        centre, _ = self._fit(self.points[chosen_start], nearest)
        rounded = np.round(centre)
        objective_after = self._objective(self._distance(rounded), nearest)
        source = self._context_of(rounded)
        self._last = _Step(
            tuple(selected),
            source,
            values,
            clusters,
            chosen_start,
            objective_before - objective_after,
        )
        return source
