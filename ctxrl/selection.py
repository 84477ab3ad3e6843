"""Source-task selection: the state a strategy sees, the protocol it follows, and offline replay.

Performance here is always *normalised* to [0, 1]. With a transfer matrix ``M`` (``N x N``,
row = source, column = target), the generalized performance after choosing sources
``s_1..s_k`` is ``G_k = mean_j max_{l<=k} M[s_l, j]``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ctxrl.errors import CtxrlError


@dataclass
class SelectionState:
    """What a strategy knows when it proposes the next source(s).

    Attributes:
        coords: unit-cube coordinates of the ``N`` candidate contexts, shape ``(N, d)``; the
            targets are the same contexts.
        budget: ``K``, the number of sources that will be trained in total.
        rng: the only source of randomness a strategy may use.
        selected: indices chosen so far, in order (never repeated: ``replay`` refuses a repeat).
        rows: normalised performance of each trained source on all ``N`` targets, ``(N,)``.
        full_matrix: the whole normalised matrix ``(N, N)``; only given to oracles.
        batch_size: how many sources to propose at once (``q``).
    """

    coords: np.ndarray
    budget: int
    rng: np.random.Generator
    selected: list[int] = field(default_factory=list)
    rows: dict[int, np.ndarray] = field(default_factory=dict)
    full_matrix: np.ndarray | None = None
    batch_size: int = 1

    @property
    def n(self) -> int:
        return int(self.coords.shape[0])

    @property
    def k(self) -> int:
        """Number of sources chosen so far."""
        return len(self.selected)

    def best_so_far(self) -> np.ndarray:
        """``U_j``: best normalised performance reached on each target, floored at 0, ``(N,)``."""
        best = np.zeros(self.n)
        for row in self.rows.values():
            best = np.maximum(best, np.nan_to_num(row, nan=0.0))
        return best

    def untried(self) -> list[int]:
        chosen = set(self.selected)
        return [i for i in range(self.n) if i not in chosen]


@runtime_checkable
class Strategy(Protocol):
    """A source-selection strategy: given the state, return the next source index (or ``q``).

    A strategy may also say why it chose: a method ``trace() -> Mapping[str, Any]`` returning
    what its last :meth:`propose` call computed (model parameters, scores per candidate). A
    ``mode: select`` sweep stores it with each step (see :func:`trace_of`); keep ``propose``
    cheap and convert in ``trace``, since offline replays call ``propose`` many times.
    """

    def propose(self, state: SelectionState) -> list[int]: ...


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: numpy arrays and scalars become lists and numbers, mappings
    get string keys, and non-finite floats become None (strict JSON has no inf or NaN)."""
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def trace_of(strategy: object) -> dict[str, Any]:
    """What ``strategy`` reports about its last proposal as JSON data; ``{}`` when it has no
    ``trace`` method. A trace that fails is reported in the trace, not raised: it explains a
    step and must never stop the sweep that took it."""
    trace = getattr(strategy, "trace", None)
    if not callable(trace):
        return {}
    try:
        data = trace()
    except Exception as exc:
        return {"trace_error": f"{type(exc).__name__}: {exc}"}
    safe = json_safe(data)
    return safe if isinstance(safe, dict) else {"trace": safe}


NORMALISED_TOLERANCE = 1e-9
"""How far outside [0, 1] a normalised entry or unit-cube coordinate may lie (rounding)."""


def check_normalised(matrix: np.ndarray, what: str = "the matrix") -> None:
    """A :class:`CtxrlError` unless every entry of ``matrix`` is normalised performance in
    [0, 1] or NaN (unobserved): raw returns gave G in the hundreds, or 0 everywhere for
    negative ones, and GP strategies whose noise floors assume [0, 1] chose otherwise."""
    values = np.asarray(matrix, dtype=np.float64)
    seen = values[~np.isnan(values)]
    if seen.size and (
        not np.isfinite(seen).all()
        or seen.min() < -NORMALISED_TOLERANCE
        or seen.max() > 1 + NORMALISED_TOLERANCE
    ):
        raise CtxrlError(
            f"{what} must hold normalised performance in [0, 1] (NaN: unobserved), got values "
            f"from {seen.min():g} to {seen.max():g}: normalise raw returns first, (R - lower) "
            "/ (upper - lower) clipped to [0, 1] (TransferMatrix.normalised; ctxrl select "
            "--env or --bounds)"
        )


def generalized_performance(matrix: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """``G_k`` for ``k = 1..len(order)``: ``mean_j max_{l<=k} M[order[l], j]``.

    Args:
        matrix: normalised ``(N, N)`` matrix in [0, 1] (checked); NaN counts as 0 (an
            unobserved transfer).
        order: source indices in the order they were chosen.

    Returns:
        float array of shape ``(len(order),)``.
    """
    check_normalised(matrix)
    m = np.nan_to_num(np.asarray(matrix, dtype=np.float64), nan=0.0)
    best = np.zeros(m.shape[1])
    out = np.empty(len(order))
    for k, source in enumerate(order):
        best = np.maximum(best, m[source])
        out[k] = best.mean()
    return out


@dataclass(frozen=True)
class SelectionResult:
    """One replay of a strategy: the chosen order and ``G_k`` for ``k = 1..K``."""

    strategy: str
    order: tuple[int, ...]
    curve: np.ndarray
    seed: int


def _initial_state(
    matrix: np.ndarray,
    coords: np.ndarray,
    budget: int,
    *,
    seed: int,
    full_knowledge: bool,
    batch_size: int,
) -> SelectionState:
    n = matrix.shape[0]
    if matrix.shape != (n, n):
        raise CtxrlError(f"selection needs a square matrix, got shape {matrix.shape}")
    check_normalised(matrix)
    if not 1 <= budget <= n:
        raise CtxrlError(f"budget K = {budget} must be between 1 and N = {n}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CtxrlError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    points = np.asarray(coords, dtype=np.float64)
    if points.ndim not in (1, 2) or points.shape[0] != n:
        raise CtxrlError(
            f"coords must be the {n} contexts' unit-cube coordinates, (N, d), got shape "
            f"{points.shape}"
        )
    if not np.isfinite(points).all() or not (
        points.min() >= -NORMALISED_TOLERANCE and points.max() <= 1 + NORMALISED_TOLERANCE
    ):
        raise CtxrlError(
            f"coords must lie in the unit cube [0, 1]^d, got values from {points.min():g} to "
            f"{points.max():g} (ContextSpace.to_unit maps contexts there; strategies' "
            "lengthscales and distances assume it)"
        )
    return SelectionState(
        coords=points.reshape(n, -1),
        budget=budget,
        rng=np.random.default_rng(seed),
        full_matrix=matrix if full_knowledge else None,
        batch_size=batch_size,
    )


def checked_proposal(proposal: object, state: SelectionState, name: str) -> list[int]:
    """A strategy's proposal as context indices, cut to the budget left: a sequence of at most
    ``state.batch_size`` whole numbers in ``0..N-1``, none chosen before or twice. Anything
    else is a :class:`~ctxrl.errors.CtxrlError` naming the strategy (a third-party strategy's
    mistake is reported, not trained: a negative index would pick a context from the end)."""
    if isinstance(proposal, str | bytes) or not isinstance(proposal, Sequence | np.ndarray):
        raise CtxrlError(
            f"strategy {name!r} must propose a list of context indices, got {proposal!r}"
        )
    if len(proposal) > state.batch_size:  # a sweep would train them all in one step
        raise CtxrlError(
            f"strategy {name!r} proposed {len(proposal)} contexts at step {state.k + 1}; a step "
            f"takes at most batch_size = {state.batch_size} (state.batch_size)"
        )
    indices: list[int] = []
    for index in list(proposal)[: state.budget - state.k]:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise CtxrlError(
                f"strategy {name!r} proposed {index!r} at step {state.k + 1}: not a whole "
                "number (a context index)"
            )
        if not 0 <= int(index) < state.n:
            raise CtxrlError(f"strategy {name!r} proposed index {index} outside 0..{state.n - 1}")
        if int(index) in state.rows or int(index) in indices:
            raise CtxrlError(
                f"strategy {name!r} proposed index {index} at step {state.k + 1}, which is "
                "already chosen"
            )
        indices.append(int(index))
    if not indices:
        raise CtxrlError(f"strategy {name!r} proposed nothing at step {state.k + 1}")
    return indices


def _reveal(state: SelectionState, proposal: object, matrix: np.ndarray, name: str) -> None:
    """Add a proposal's sources to ``state`` and reveal their rows of ``matrix``."""
    for index in checked_proposal(proposal, state, name):
        state.selected.append(index)
        state.rows[index] = matrix[index]


def replay(
    strategy: Strategy,
    matrix: np.ndarray,
    coords: np.ndarray,
    budget: int,
    *,
    seed: int = 0,
    name: str = "",
    full_knowledge: bool = False,
    batch_size: int = 1,
) -> SelectionResult:
    """Run ``strategy`` offline on a normalised matrix, revealing a row when it is chosen.

    Args:
        matrix: normalised ``(N, N)`` matrix.
        coords: unit-cube coordinates of the contexts, ``(N, d)``.
        budget: ``K``, number of sources to choose; ``1 <= K <= N``.
        full_knowledge: give the strategy the whole matrix (oracles only).
    """
    state = _initial_state(
        matrix, coords, budget, seed=seed, full_knowledge=full_knowledge, batch_size=batch_size
    )
    while state.k < budget:
        _reveal(state, strategy.propose(state), matrix, name)
    order = tuple(state.selected)
    return SelectionResult(name, order, generalized_performance(matrix, order), seed)


def replay_many(
    make_strategy: Callable[[], Strategy],
    matrices: Sequence[np.ndarray] | np.ndarray,
    coords: np.ndarray,
    budget: int,
    *,
    seed: int | Sequence[int] = 0,
    name: str = "",
    full_knowledge: bool = False,
    batch_size: int = 1,
) -> list[SelectionResult]:
    """:func:`replay` of a fresh strategy on each of ``T`` matrices ``(T, N, N)``, together;
    ``seed``: one for every replay, or one per matrix (``T``).

    Each replay runs in its own thread; the Gaussian processes their strategies fit
    (:class:`ctxrl.gp.PerformanceGP`, :class:`ctxrl.reference_gp.WarmStartedGP`) are fitted
    together, one batched program per round in which every replay waits for a fit
    (:func:`ctxrl.fit_batch.batched_fits`), instead of one by one, so GP strategies replay
    many trial or seed matrices in about the time of one. The results are those of
    :func:`replay` on each matrix (tests/test_selection.py); the first error of any replay is
    raised once all have stopped.
    """
    from ctxrl.fit_batch import FitBatch, batched_fits

    if isinstance(seed, int | np.integer):  # numpy's integers too
        seeds = [int(seed)] * len(matrices)
    else:
        seeds = [int(s) for s in seed]
    if len(seeds) != len(matrices):
        raise ValueError(f"{len(seeds)} seeds for {len(matrices)} matrices")
    if len(matrices) == 1:
        return [
            replay(
                make_strategy(),
                matrices[0],
                coords,
                budget,
                seed=seeds[0],
                name=name,
                full_knowledge=full_knowledge,
                batch_size=batch_size,
            )
        ]
    batch = FitBatch(len(matrices))
    results: list[SelectionResult | None] = [None] * len(matrices)
    errors: list[BaseException] = []

    def one(t: int) -> None:
        try:
            with batched_fits(batch):
                results[t] = replay(
                    make_strategy(),
                    matrices[t],
                    coords,
                    budget,
                    seed=seeds[t],
                    name=name,
                    full_knowledge=full_knowledge,
                    batch_size=batch_size,
                )
        except BaseException as exc:  # raised in the caller's thread below
            errors.append(exc)
        finally:
            batch.leave()

    threads = [
        threading.Thread(target=one, args=(t,), name=f"replay-{t}", daemon=True)
        for t in range(len(matrices))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def nearest_index(values: np.ndarray, aim: float, exclude: Sequence[int] = ()) -> int:
    """Index of the value nearest ``aim`` in a sorted 1-D array, leaving out the indices in
    ``exclude`` (the sources already chosen); the lower one on ties."""
    distances = np.round(np.abs(np.asarray(values, dtype=np.float64) - aim), 12)
    distances[list(exclude)] = np.inf
    return int(np.argmin(distances))


def first_crossing(curve: np.ndarray, *levels: float) -> int | None:
    """Smallest ``k`` (1-based) with ``curve[k-1]`` above every level, or None."""
    threshold = max(levels)
    above = np.nonzero(np.asarray(curve) > threshold)[0]
    return int(above[0]) + 1 if above.size else None


def myopic_oracle(matrices: np.ndarray, budget: int) -> tuple[tuple[int, ...], np.ndarray]:
    """SD-MBTL's Myopic Oracle: ONE greedy order for all trials, scored on each trial.

    Each step adds the source that most raises the generalized performance averaged over the
    trial matrices (``mean_{t, j} max_{l<=k} M_t[s_l, j]``; the first index on ties). Unlike a
    sequential oracle run on each trial's own matrix (which fits that trial's noise), the order
    is the same for every trial, as an oracle that knows the expected matrix would choose.

    Args:
        matrices: normalised ``(T, N, N)`` trial (or seed) matrices; NaN counts as 0.
        budget: ``K``, ``1 <= K <= N``.

    Returns:
        the order ``(K,)`` and ``G_k`` of that order on each trial, ``(T, K)``.
    """
    m = np.nan_to_num(np.asarray(matrices, dtype=np.float64), nan=0.0)
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise CtxrlError(f"myopic oracle needs (T, N, N) matrices, got shape {m.shape}")
    n = m.shape[1]
    if not 1 <= budget <= n:
        raise CtxrlError(f"budget K = {budget} must be between 1 and N = {n}")
    best = np.full((m.shape[0], n), -np.inf)  # (T, targets): best over the order so far
    available = np.ones(n, dtype=bool)
    order: list[int] = []
    for _ in range(budget):
        value = np.maximum(best[:, None, :], m).mean(axis=(0, 2))  # (N,) per candidate
        value[~available] = -np.inf
        source = int(np.argmax(value))
        order.append(source)
        available[source] = False
        best = np.maximum(best, m[:, source, :])
    curves = np.stack([generalized_performance(trial, order) for trial in m])
    return tuple(order), curves
