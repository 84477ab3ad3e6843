"""SD-MBTL's structure detection, the myopic oracle and the synthetic benchmark's matrices."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from ctxrl import CtxrlError
from ctxrl.plugins import get_host
from ctxrl.selection import SelectionState, generalized_performance, myopic_oracle, replay
from ctxrl.synthetic import (
    SETTINGS,
    SyntheticSetting,
    grid_points,
    reference_bounds,
    reference_random_order,
    synthetic_matrix,
    synthetic_trials,
)
from ctxrl_plugins.strategies.sd_mbtl import detect_structure

# a 5 x 5 x 5 grid in grid-index units and the six sources the tests observe
GRID = np.array(list(itertools.product(range(5), repeat=3)), dtype=np.float64)
SOURCES = [0, 31, 62, 93, 124, 57, 18]


def _matrix(left: tuple[float, ...], right: tuple[float, ...], source_effect: float = 0.0):
    """``J(x, y) = 100 - sum_d [left_d (y_d - x_d)^+ + right_d (x_d - y_d)^+] + f(x)``: the
    gap falls by ``left`` per step towards larger targets and ``right`` towards smaller ones
    (negative: rises); ``f(x) = source_effect * sum(x)``."""
    diff = GRID[:, None, :] - GRID[None, :, :]  # source - target
    gap = np.maximum(-diff, 0) @ np.array(left) + np.maximum(diff, 0) @ np.array(right)
    return 100.0 - gap + source_effect * GRID.sum(axis=1)[:, None]


def _rows(matrix: np.ndarray) -> dict[int, np.ndarray]:
    return {s: matrix[s] for s in SOURCES}


def test_a_pure_l1_mountain_is_detected() -> None:
    """Falls off on both sides in every dimension, same peak everywhere: both tests hold."""
    test = detect_structure(GRID, _rows(_matrix((3, 3, 3), (3, 3, 3))))
    assert test.constant and test.constant_ratio < 1
    assert np.all(test.left_slopes > 0) and np.all(test.right_slopes < 0)
    assert test.mountain_dims == 3 and test.mountain


def test_a_non_distance_structure_is_not_a_mountain() -> None:
    """SD-MBTL's non-distance setting: in two of three dimensions performance keeps rising
    towards smaller targets (wl = (1, 1, -3)), so only one dimension is mountain-shaped."""
    test = detect_structure(GRID, _rows(_matrix((3, 3, 3), (-1, -1, 3))))
    assert test.right_slopes[2] < 0 < test.left_slopes[2]  # the third dimension falls off
    assert not test.constant and not test.mountain


def test_flat_rows_are_not_a_mountain() -> None:
    """Rows that do not fall off at all: no slope has a sign and the within-row spread is 0,
    so neither test holds (the reference divides 0 by 0 and compares NaN < 1: False)."""
    test = detect_structure(GRID, _rows(np.full((len(GRID), len(GRID)), 0.7)))
    assert test.mountain_dims == 0 and not test.constant and not test.mountain


def test_varying_training_performance_fails_the_constant_test() -> None:
    """A Mountain-shaped gap on top of a strong source effect f(x): the sources' own
    performance spreads more than a row does, so the reference takes the GP branch."""
    test = detect_structure(GRID, _rows(_matrix((3, 3, 3), (3, 3, 3), source_effect=5.0)))
    assert test.constant_ratio > 1 and not test.constant and not test.mountain


def test_sd_mbtl_clusters_first_decides_after_five_rows_and_says_why() -> None:
    spec = get_host().registry.strategy("sd-mbtl")
    matrix = _matrix((3, 3, 3), (3, 3, 3)) / 100.0
    coords = GRID / 4.0
    strategy = spec.factory()
    early = SelectionState(coords, 10, np.random.default_rng(0), SOURCES[:5], _rows(matrix))
    early.rows = {s: matrix[s] for s in SOURCES[:5]}
    assert strategy.propose(early) == spec.factory(structure="mountain").propose(early)
    assert strategy.trace()["branch"] == "mountain"  # the reference clusters until it can test
    assert "needs > 5" in strategy.trace()["reason"]
    late = SelectionState(coords, 10, np.random.default_rng(0), SOURCES[:6])
    late.rows = {s: matrix[s] for s in SOURCES[:6]}
    proposal = strategy.propose(late)
    trace = strategy.trace()
    assert trace["branch"] == "mountain" and trace["test"]["mountain"]
    assert "3 of 3 dimensions" in trace["reason"]
    assert proposal == spec.factory(structure="mountain").propose(late)
    with pytest.raises(CtxrlError, match="detection 'vote'"):
        spec.factory(detection="vote")


def test_myopic_oracle_shares_one_order_across_trials() -> None:
    """Two trials whose best single source differs: the per-trial oracle fits each trial, the
    myopic oracle picks the source best on average and scores it on both."""
    first = np.array([[1.0, 1.0, 0.0], [0.9, 0.9, 0.9], [0.0, 0.0, 0.8]])
    second = np.array([[0.2, 0.2, 0.2], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9]])
    trials = np.stack([first, second])
    order, curves = myopic_oracle(trials, 2)
    assert order[0] == 1  # mean 0.9 on both trials beats 0.667 / 0.2 and 0.267 / 0.9
    np.testing.assert_allclose(curves[:, 0], [0.9, 0.9])
    np.testing.assert_allclose(curves[0], generalized_performance(first, order))
    oracle = get_host().registry.strategy("sequential-oracle").factory
    own = replay(oracle(), second, np.zeros((3, 1)), 1, full_knowledge=True).order
    assert own == (1,)  # a tie on the second trial: the first index
    with pytest.raises(CtxrlError, match="between 1 and N = 3"):
        myopic_oracle(trials, 4)


def test_synthetic_matrices_follow_the_published_formula() -> None:
    points = grid_points()
    assert points.shape == (512, 3) and tuple(points[64 * 2 + 8 * 3 + 5]) == (2, 3, 5)
    l1 = synthetic_matrix(SyntheticSetting("linear", "linear", "l1"), 0.0, 0)
    x, y = 64 * 1 + 8 * 2 + 3, 64 * 4 + 8 * 0 + 7  # (1, 2, 3) -> (4, 0, 7)
    assert l1[x, y] == pytest.approx(500 - 3 * (3 + 2 + 4) + 4 * 6 + 3 * 11)
    assert l1[x, x] == pytest.approx(500 + 4 * 6 + 3 * 6)
    skew = synthetic_matrix(SyntheticSetting("constant", "none", "non-distance"), 0.0, 0)
    # d = x - y = (-3, 2, -4): wl = (1, 1, -3) on the negative parts, wr = 3 on the positive
    assert skew[x, y] == pytest.approx(500 - (1 * -3 + -3 * -4 + 3 * 2))
    noisy = synthetic_matrix(SyntheticSetting("constant", "none", "l1"), 5.0, 3)
    flat = synthetic_matrix(SyntheticSetting("constant", "none", "l1"), 0.0, 3)
    draws = np.random.RandomState(3).normal(size=(512, 512))
    np.testing.assert_allclose(noisy - flat, 5.0 * draws)
    assert sum(s.mountain for s in SETTINGS) == 2 and len(set(SETTINGS)) == 8
    assert reference_bounds(np.stack([flat, noisy])) == (
        min(flat.min(), noisy.min()),
        max(flat.max(), noisy.max()),
    )
    assert reference_random_order(0, 512, 50) == reference_random_order(0, 512, 50)
    assert len(set(reference_random_order(7, 512, 50))) == 50
    assert SyntheticSetting.parse("h=l1, f=linear,g=none") == SyntheticSetting(
        "linear", "none", "l1"
    )
    with pytest.raises(CtxrlError, match="h='l2'"):
        SyntheticSetting.parse("f=linear,g=none,h=l2")
    with pytest.raises(CtxrlError, match=r"\['g'\] not given"):
        SyntheticSetting.parse("f=linear,h=l1")


def test_sd_mbtl_reaches_the_mountain_branch_on_a_synthetic_mountain() -> None:
    """On a noisy synthetic Mountain (noise 5) the reference detection switches to M-MBTL
    from the 7th source on; on the source-effect setting it stays with the GP."""
    coords = grid_points() / 7.0
    spec = get_host().registry.strategy("sd-mbtl")
    for setting, branch in (
        (SyntheticSetting("constant", "none", "l1"), "mountain"),
        (SyntheticSetting("linear", "none", "l1"), "gp"),
    ):
        raw = synthetic_matrix(setting, 5.0, 0)
        matrix = (raw - raw.min()) / (raw.max() - raw.min())
        strategy = spec.factory()
        state = SelectionState(coords, 8, np.random.default_rng(0))
        picks = [0, 73, 146, 219, 292, 365]
        state.selected = list(picks)
        state.rows = {p: matrix[p] for p in picks}
        strategy.propose(state)
        assert strategy.trace()["branch"] == branch, setting.name


def _traces_by_spread(
    sources: tuple[int, ...], budget: int, **options: Any
) -> dict[str, dict[str, Any]]:
    """The ``mbtl-gp`` trace of one proposal with each ``spread`` (``latent``, ``predictive``)
    after observing ``sources`` of a noise-free 1-D mountain rising to the right (15
    contexts)."""
    from ctxrl_plugins.strategies.mbtl import MBTLStrategy

    x = np.linspace(0.0, 1.0, 15)
    matrix = np.clip(0.3 + 0.5 * x[:, None] - 0.6 * np.abs(x[:, None] - x[None, :]), 0, 1)
    traces = {}
    for spread in ("latent", "predictive"):
        state = SelectionState(coords=x[:, None], budget=budget, rng=np.random.default_rng(0))
        for source in sources:
            state.selected.append(source)
            state.rows[source] = matrix[source]
        strategy = MBTLStrategy(spread=spread, **options)
        strategy.propose(state)
        traces[spread] = strategy.trace()
    return traces


def test_predictive_spread_adds_the_observation_noise_to_each_candidates_uncertainty() -> None:
    """``spread: predictive`` scores a candidate with ``sqrt(sigma^2 + noise_std^2)``, the
    deviation of the noisy row it would measure (SD-MBTL's GP branch, its default); the GP mean
    is unchanged. A value that is neither is refused by name."""
    from ctxrl_plugins.strategies.mbtl import MBTLStrategy

    traces = _traces_by_spread((7, 0, 14), 6, noise_std=0.05)
    latent, predictive = traces["latent"]["gp"], traces["predictive"]["gp"]
    np.testing.assert_allclose(predictive["mean"], latent["mean"])
    np.testing.assert_allclose(
        np.square(predictive["std"]), np.square(latent["std"]) + 0.05**2, rtol=1e-9
    )
    assert get_host().registry.strategy("sd-mbtl").factory().gp.spread == "predictive"
    with pytest.raises(CtxrlError, match="spread 'wide'"):
        MBTLStrategy(spread="wide")


def test_a_learned_noise_sizes_the_predictive_spread_to_the_matrix() -> None:
    """``noise_std: learned`` fits the GP's observation noise at each step: on a noise-free
    matrix it is near its floor (0.01), where the fixed 0.1 would add a tenth of the
    performance range to every candidate's spread; the predictive spread adds the learned
    value, and the trace reports it. A noise that is none of the choices is refused by name."""
    from ctxrl_plugins.strategies.mbtl import MBTLStrategy

    traces = _traces_by_spread((7, 0, 14, 3, 10), 8, noise_std="learned")
    learned = traces["predictive"]["noise_std"]
    assert learned == traces["latent"]["noise_std"]
    assert 0.01 <= learned < 0.03
    latent, predictive = traces["latent"]["gp"], traces["predictive"]["gp"]
    np.testing.assert_allclose(
        np.square(predictive["std"]), np.square(latent["std"]) + learned**2, rtol=1e-9
    )
    with pytest.raises(
        CtxrlError, match="noise_std must be a finite number > 0, 'rows' or 'learned', got 'loud'"
    ):
        MBTLStrategy(noise_std="loud")


def test_mbtl_gp_as_the_reference_follows_the_reference_codes_sequence() -> None:
    """``mbtl-gp`` with ``gp``, ``slopes`` and ``start: reference``, the predictive spread and
    the observed baseline chooses, on the synthetic setting f=linear,g=linear,h=l1 at noise 5
    (trial 0, normalised over its 100 trials), the sources SD-MBTL's own code (``algs.py``,
    class ``MBTL``) chose when run on the same matrix (2026-12-04; all 50 agree, the first 12
    are checked here)."""
    from ctxrl_plugins.strategies.mbtl import MBTLStrategy

    trials = synthetic_trials(SyntheticSetting("linear", "linear", "l1"), 5.0, 100)
    lower, upper = reference_bounds(trials)
    matrix = (trials[0] - lower) / (upper - lower)
    strategy = MBTLStrategy(
        start="reference",
        slopes="reference",
        spread="predictive",
        gp="reference",
        best="observed",
        residual="none",
        acquisition="optimistic",
    )
    result = replay(strategy, matrix, grid_points() / 7.0, 12)
    assert result.order == (292, 1, 0, 437, 506, 492, 444, 376, 508, 255, 303, 126)
    assert strategy.trace()["gp"]["noise_std"] < 0.05  # learned, from gpytorch's 0.83


def test_reference_start_takes_the_rounded_mean_then_the_worst_covered_targets() -> None:
    """``start: reference`` (SD-MBTL's GP-MBTL): on the 8 x 8 x 8 grid the first source is
    the rounded mean (4, 4, 4), not the middle rule's (3, 3, 3); the 2nd and 3rd are the
    targets with the lowest best observed entry, chosen ones skipped; then the acquisition."""
    from ctxrl_plugins.strategies.mbtl import MBTLStrategy

    coords = grid_points() / 7.0
    raw = synthetic_matrix(SyntheticSetting("linear", "none", "l1"), 5.0, 0)
    matrix = (raw - raw.min()) / (raw.max() - raw.min())
    middle = replay(MBTLStrategy(), matrix, coords, 1)
    assert middle.order == (64 * 3 + 8 * 3 + 3,)
    strategy = MBTLStrategy(start="reference", slopes="signed", spread="predictive")
    result = replay(strategy, matrix, coords, 4)
    first = 64 * 4 + 8 * 4 + 4
    assert result.order[0] == first
    second = int(np.argmin(np.where(np.arange(512) == first, np.inf, matrix[first])))
    assert result.order[1] == second
    best = np.maximum(matrix[first], matrix[second])
    best[[first, second]] = np.inf
    assert result.order[2] == int(np.argmin(best))
    assert strategy.trace()["rule"] == "acquisition"
    with pytest.raises(CtxrlError, match="start 'centre'"):
        MBTLStrategy(start="centre")


def test_an_axis_of_one_point_is_not_a_dimension_of_the_mountain_test() -> None:
    """A 1-D Mountain written on a 1 x 12 (or 12 x 1) grid: the axis that varies nothing has
    slopes of 0 and cannot be mountain-shaped, so counting it made "more than half of the
    dimensions" fail; the decision is the 1-D one."""
    x = np.linspace(0.0, 1.0, 12)
    matrix = 0.9 - 0.6 * np.abs(x[:, None] - x[None, :])
    rows = {i: matrix[i] for i in (2, 6, 10)}
    alone = detect_structure(x[:, None], rows)
    for grid in (np.stack([np.zeros(12), x], axis=1), np.stack([x, np.zeros(12)], axis=1)):
        test = detect_structure(grid, rows)
        assert test.mountain == alone.mountain is True
        assert test.mountain_dims == alone.mountain_dims == 1 and len(test.left_slopes) == 1
