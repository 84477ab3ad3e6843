"""Transfer metrics against curves computed by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from ctxrl.estimates import BootstrapMethod
from ctxrl.transfer_metrics import (
    BootstrapOptions,
    LearningCurves,
    MetricEstimate,
    asymptotic_performance,
    bootstrap_estimate,
    compare_transfer,
    compare_transfer_finite,
    difference_of_means,
    finite_seeds,
    mean_estimate,
    ratio_of_means,
    tail_points,
    time_to_threshold,
    total_reward,
    verdict,
)

GRID = np.array([0, 10, 20])
FIVE_POINTS = np.arange(0, 50, 10)


def flat(levels: list[float], steps: np.ndarray = FIVE_POINTS) -> LearningCurves:
    """One constant curve per seed at each of ``levels``."""
    return LearningCurves(steps, np.outer(levels, np.ones(steps.shape[0])))


# --- one arm ----------------------------------------------------------------------------------


def test_auc_is_the_trapezoid_rule_on_an_uneven_grid() -> None:
    # 10 * (0 + 2) / 2 + 20 * (2 + 4) / 2 = 10 + 60
    auc = total_reward([0, 10, 30], [[0.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(auc, [70.0, 30.0])


def test_asymptote_averages_the_tail_with_at_least_one_point() -> None:
    returns = np.arange(10.0)[None, :]
    assert asymptotic_performance(returns, tail=0.1)[0] == 9.0
    assert asymptotic_performance(returns, tail=0.3)[0] == 8.0  # 0.3 * 10 is 3.0000000000000004
    assert asymptotic_performance(returns, tail=0.01)[0] == 9.0  # floor(0.1) -> 1 point
    assert tail_points(100, 0.29) == 29  # 0.29 * 100 is 28.999999999999996
    assert tail_points(10, 1.0) == 10
    with pytest.raises(ValueError, match="tail"):
        tail_points(10, 0.0)


def test_time_to_threshold_is_the_first_step_reaching_it_or_nan() -> None:
    returns = [[0.0, 5.0, 3.0, 9.0], [0.0, 1.0, 2.0, 3.0], [7.0, 0.0, 0.0, 0.0]]
    times = time_to_threshold([0, 100, 200, 300], returns, threshold=5.0)
    assert times[0] == 100.0 and math.isnan(times[1]) and times[2] == 0.0


def test_grid_and_returns_are_checked() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        LearningCurves(np.array([0, 10, 10]), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="whole numbers"):
        LearningCurves(np.array([0.0, 0.5]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"shape \(seeds, 3\)"):
        LearningCurves(GRID, np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        LearningCurves(GRID, np.array([[0.0, np.nan, 1.0]]))
    curves = LearningCurves(np.array([0.0, 10.0, 20.0]), np.array([[1, 2, 3]]))
    assert curves.steps.dtype == np.int64 and not curves.returns.flags.writeable
    window = flat([1.0, 2.0]).between(10, 30)
    assert window.steps.tolist() == [10, 20, 30] and window.returns.shape == (2, 3)


# --- comparisons ------------------------------------------------------------------------------


def test_area_ratio_and_transfer_ratio_by_hand() -> None:
    # Scratch: 5 * (0 + 1) + 5 * (1 + 2) = 20 per seed; transfer: 5 * 5 + 5 * 7 = 60.
    scratch = LearningCurves(GRID, np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]))
    transfer = LearningCurves(GRID, np.array([[2.0, 3.0, 4.0], [2.0, 3.0, 4.0]]))
    result = compare_transfer(transfer, scratch)
    assert (result.return_floor, result.return_floor_origin) == (0.0, "zero")
    assert result.auc.transfer.estimate == 60.0 and result.auc.scratch.estimate == 20.0
    assert result.area_ratio.estimate == pytest.approx(2.0)  # (60 - 20) / 20
    assert result.transfer_ratio.estimate == pytest.approx(3.0)
    assert result.jumpstart.advantage.estimate == 2.0
    assert result.asymptote.advantage.estimate == 2.0
    # Every seed equal within each arm: every resample gives the point.
    assert (result.area_ratio.low, result.area_ratio.high) == (2.0, 2.0)
    assert "all seeds equal" in result.area_ratio.note
    assert result.verdict == "positive"


def test_negative_returns_are_shifted_by_the_pooled_minimum_or_a_given_floor() -> None:
    scratch = LearningCurves(GRID, np.array([[-10.0, -6.0, -2.0]]))
    transfer = LearningCurves(GRID, np.array([[-8.0, -4.0, 0.0]]))
    pooled = compare_transfer(transfer, scratch)
    # Shift by -10: scratch [0, 4, 8] -> 5 * 4 + 5 * 12 = 80; transfer [2, 6, 10] -> 120.
    assert (pooled.return_floor, pooled.return_floor_origin) == (-10.0, "pooled_minimum")
    assert pooled.area_ratio.estimate == pytest.approx(0.5)
    # Shift by -20: scratch [10, 14, 18] -> 280; transfer [12, 16, 20] -> 320.
    given = compare_transfer(transfer, scratch, return_floor=-20.0)
    assert given.return_floor_origin == "caller"
    assert given.area_ratio.estimate == pytest.approx(40.0 / 280.0)
    assert given.transfer_ratio.estimate == pytest.approx(320.0 / 280.0)
    # The raw total reward is not shifted: 5 * (-12) + 5 * (-4) and 5 * (-16) + 5 * (-8).
    assert given.auc.transfer.estimate == -80.0 and given.auc.scratch.estimate == -120.0
    with pytest.raises(ValueError, match="above the lowest return -10"):
        compare_transfer(transfer, scratch, return_floor=-5.0)


def test_curves_that_never_reach_the_threshold() -> None:
    transfer = LearningCurves(GRID, np.array([[0.0, 6.0, 6.0], [0.0, 0.0, 5.0], [0.0, 1.0, 1.0]]))
    scratch = LearningCurves(GRID, np.array([[0.0, 0.0, 5.0], [0.0, 0.0, 9.0]]))
    result = compare_transfer(transfer, scratch, threshold=5.0)
    times = result.time_to_threshold
    assert times is not None
    assert times.transfer.per_seed[:2] == (10.0, 20.0) and math.isnan(times.transfer.per_seed[2])
    assert times.transfer.estimate == 15.0 and times.transfer.n_excluded == 1
    assert "1 of 3 seeds" in times.transfer.note
    assert times.scratch.estimate == 20.0 and times.scratch.n_excluded == 0
    assert math.isnan(times.advantage.estimate)
    assert "1 of 3 transfer seeds, 0 of 2 scratch seeds" in times.advantage.note
    # only transfer seeds missed: counted at the last step (20), an upper bound on the
    # advantage: scratch 20 - transfer (10 + 20 + 20) / 3
    assert times.bound_side == "upper" and times.bound is not None
    assert times.bound.estimate == pytest.approx(20.0 - 50.0 / 3)
    assert "upper bound: the transfer seeds" in times.bound.note
    # scratch seeds missed instead: a lower bound; both arms missed: no bound
    slow = LearningCurves(GRID, np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 9.0]]))
    fast = LearningCurves(GRID, np.array([[0.0, 6.0, 6.0], [0.0, 9.0, 9.0]]))
    lower = compare_transfer(fast, slow, threshold=5.0).time_to_threshold
    assert lower is not None and lower.bound is not None and lower.bound_side == "lower"
    assert lower.bound.estimate == pytest.approx(20.0 - 10.0)  # scratch (20, 20), transfer 10
    assert math.isnan(lower.advantage.estimate)
    neither = compare_transfer(slow, slow, threshold=5.0).time_to_threshold
    assert neither is not None and neither.bound is None and neither.bound_side is None
    # Every seed reaches 1.0 (transfer at 10, 20, 10; scratch at 20, 20): 20 - 40 / 3.
    reached = compare_transfer(transfer, scratch, threshold=1.0).time_to_threshold
    assert reached is not None and reached.advantage.estimate == pytest.approx(20.0 - 40.0 / 3)
    assert reached.bound is None
    assert json.dumps(result.to_json(), allow_nan=False)


def test_unequal_grids_are_an_error_naming_them() -> None:
    with pytest.raises(ValueError, match="5 vs 3 points"):
        compare_transfer(flat([1.0]), flat([1.0], GRID))
    shifted = LearningCurves(np.array([0, 10, 25, 30, 40]), np.ones((1, 5)))
    with pytest.raises(ValueError, match="index 2, transfer step 20 vs scratch step 25"):
        compare_transfer(flat([1.0]), shifted)


def test_a_sparse_task_scratch_never_solves_gets_its_verdict_from_the_auc_difference() -> None:
    """Sabatelli & Geurts's Catch-v4: scratch never scores, a pretrained agent does. r is then
    undefined (scratch's area is 0), and the verdict was "undetermined" although every
    transfer seed scored; it is read from the AUC difference instead, and says so. A scratch
    arm that scores on some seeds keeps r's verdict."""
    solved = flat([0.6, 0.8, 0.7, 0.9, 0.5])
    never = flat([0.0] * 5)
    result = compare_transfer(solved, never, return_floor=0.0)
    assert math.isnan(result.area_ratio.estimate) and math.isnan(result.area_ratio.low)
    assert result.auc.advantage.low > 0
    assert (result.verdict, result.verdict_basis) == ("positive", "auc_difference")
    assert result.to_json()["verdict_basis"] == "auc_difference"
    same = compare_transfer(never, never, return_floor=0.0)  # nothing to tell apart
    assert same.verdict == "absent" and same.verdict_basis == "auc_difference"
    sometimes = flat([0.0, 0.0, 0.2, 0.0, 0.1])  # r exists on the seeds, not on some resamples
    partly = compare_transfer(solved, sometimes, return_floor=0.0)
    assert partly.verdict == "positive" and partly.verdict_basis == "auc_difference"
    usual = compare_transfer(solved, flat([0.3, 0.2, 0.4, 0.3, 0.2]), return_floor=0.0)
    assert usual.verdict == "positive" and usual.verdict_basis == "area_ratio"
    one_seed = compare_transfer(flat([0.6]), flat([0.0]), return_floor=0.0)
    assert one_seed.verdict == "undetermined"


def test_an_interval_straddling_zero_is_absent() -> None:
    result = compare_transfer(flat([1.5, 2.5, 3.5, 0.5, 4.5]), flat([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert result.area_ratio.estimate == pytest.approx(-1.0 / 6.0)
    assert result.area_ratio.low < 0.0 < result.area_ratio.high
    assert result.verdict == "absent"


def test_clearly_positive_and_clearly_negative_transfer() -> None:
    good = flat([10.0, 10.5, 11.0, 9.5, 10.2])
    poor = flat([5.0, 5.5, 4.8, 5.2, 5.1])
    positive = compare_transfer(good, poor)
    assert positive.area_ratio.low > 0.0 and positive.verdict == "positive"
    assert positive.area_ratio.low <= positive.area_ratio.estimate <= positive.area_ratio.high
    negative = compare_transfer(poor, good, verdict_metric="jumpstart")
    assert negative.jumpstart.advantage.estimate == pytest.approx(5.12 - 10.24)
    assert negative.jumpstart.advantage.high < 0.0
    assert (negative.verdict, negative.verdict_metric) == ("negative", "jumpstart")
    # The paper's band: |r| <= 0.05 is absent, applied to the whole interval.
    steady, slightly_better = flat([5.0, 5.01, 4.99, 5.0, 5.0]), flat([5.15, 5.16, 5.14, 5.15])
    nearly = compare_transfer(slightly_better, steady)
    assert nearly.area_ratio.estimate == pytest.approx(0.03) and nearly.verdict == "positive"
    assert compare_transfer(slightly_better, steady, absent_band=0.05).verdict == "absent"


def test_one_seed_gives_points_without_intervals() -> None:
    result = compare_transfer(flat([2.0]), flat([1.0]), threshold=1.5, return_floor=0.0)
    assert result.area_ratio.estimate == pytest.approx(1.0)
    assert math.isnan(result.area_ratio.low) and math.isnan(result.area_ratio.high)
    assert "fewer than two seeds" in result.area_ratio.note
    assert result.verdict == "undetermined"  # no interval: not "no transfer"
    data = result.to_json()
    assert data["area_ratio"]["low"] is None and data["bootstrap"]["random_state"] == 0
    json.dumps(data, allow_nan=False)


def test_source_time_is_recorded_and_optionally_counted() -> None:
    transfer = LearningCurves(FIVE_POINTS, np.array([[4.0, 5.0, 6.0, 7.0, 8.0]]))
    scratch = LearningCurves(FIVE_POINTS, np.array([[0.0, 1.0, 2.0, 3.0, 4.0]]))
    uncounted = compare_transfer(transfer, scratch, source_steps=20, threshold=4.0)
    assert not uncounted.source_time_counted and uncounted.source_steps == 20
    assert uncounted.jumpstart.advantage.estimate == 4.0
    counted = compare_transfer(
        transfer, scratch, source_steps=20, count_source_time=True, threshold=4.0
    )
    # Total steps 20, 30, 40: transfer's target steps 0, 10, 20 against scratch's 20, 30, 40.
    assert counted.source_time_counted
    assert (counted.first_step, counted.last_step, counted.n_points) == (20, 40, 3)
    assert counted.jumpstart.advantage.estimate == 2.0  # 4 - 2
    assert counted.auc.transfer.estimate == 100.0  # 5 * 9 + 5 * 11
    assert counted.auc.scratch.estimate == 60.0  # 5 * 5 + 5 * 7
    times = counted.time_to_threshold
    assert times is not None
    assert times.transfer.estimate == 20.0 and times.scratch.estimate == 40.0  # 0 + 20, 40
    # Unaligned: 5 source steps puts transfer's target steps 5, 15, 25, 35 on scratch's grid.
    unaligned = compare_transfer(transfer, scratch, source_steps=5, count_source_time=True)
    assert unaligned.first_step == 10 and unaligned.jumpstart.transfer.estimate == 4.5
    with pytest.raises(ValueError, match="need 2"):
        compare_transfer(transfer, scratch, source_steps=35, count_source_time=True)
    # scratch reaching the threshold before the shifted window starts: its time is taken on
    # its whole curve (10), not from the window's first step (20); transfer, at 0 + 20, is
    # 10 steps slower
    early = LearningCurves(FIVE_POINTS, np.array([[0.0, 5.0, 4.0, 4.0, 4.0]] * 2))
    level = LearningCurves(FIVE_POINTS, np.array([[5.0] * 5] * 2))
    times = compare_transfer(
        level, early, source_steps=20, count_source_time=True, threshold=5.0
    ).time_to_threshold
    assert times is not None
    assert times.scratch.estimate == 10.0 and times.transfer.estimate == 20.0
    assert times.advantage.estimate == -10.0


def test_diverged_seeds_are_left_out_of_every_metric_and_counted() -> None:
    """A seed whose curve holds NaN or inf (a diverged training) made LearningCurves raise
    "returns must be finite", so one diverged agent failed a whole study's report; the
    metrics come from the finite seeds, and each estimate counts the diverged ones."""
    steps = FIVE_POINTS
    transfer = np.array(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [np.nan] * 5,
            [2.0, 3.0, 4.0, 5.0, 6.0],
            [0.0, 1.0, 3.0, 5.0, 5.5],
        ]
    )
    scratch = np.array(
        [[0.0, 1.0, 1.5, 2.0, 2.5], [0.5, 1.0, 2.0, 3.0, np.inf], [0.2, 0.8, 1.0, 2.0, 3.0]]
    )
    assert finite_seeds(transfer).tolist() == [True, False, True, True]
    result = compare_transfer_finite(steps, transfer, steps, scratch, threshold=4.0)
    expected = compare_transfer(
        LearningCurves(steps, transfer[[0, 2, 3]]),
        LearningCurves(steps, scratch[[0, 2]]),
        threshold=4.0,
    )
    assert (result.n_transfer_seeds, result.n_scratch_seeds) == (3, 2)
    assert (result.n_transfer_diverged, result.n_scratch_diverged) == (1, 1)
    assert result.verdict == expected.verdict
    for name in ("transfer_ratio", "area_ratio"):
        got, want = getattr(result, name), getattr(expected, name)
        assert (got.estimate, got.low, got.high) == (want.estimate, want.low, want.high)
        assert got.n_excluded == 2 and "1 of 4 transfer seeds, 1 of 3 scratch seeds" in got.note
    jumpstart = result.jumpstart
    assert jumpstart.advantage.estimate == expected.jumpstart.advantage.estimate
    # one-arm values keep the input's seed order, NaN for the diverged seed
    assert jumpstart.transfer.per_seed[0] == 1.0 and math.isnan(jumpstart.transfer.per_seed[1])
    assert jumpstart.transfer.per_seed[2:] == (2.0, 0.0)
    assert jumpstart.transfer.n_excluded == 1 and "1 of 4 seeds diverged" in jumpstart.transfer.note
    times = result.time_to_threshold
    assert times is not None and times.scratch.n_excluded == 3  # 2 never reached it, 1 diverged
    json.dumps(result.to_json(), allow_nan=False)
    # nothing diverged: exactly compare_transfer
    clean = compare_transfer_finite(steps, transfer[[0, 2]], steps, scratch[[0, 2]])
    assert clean == compare_transfer(
        LearningCurves(steps, transfer[[0, 2]]), LearningCurves(steps, scratch[[0, 2]])
    )


def test_an_arm_with_no_finite_seed_gives_nan_estimates_that_say_so() -> None:
    steps = FIVE_POINTS
    finite = np.outer([1.0, 2.0], np.ones(5))
    diverged = np.full((2, 5), np.nan)
    result = compare_transfer_finite(steps, diverged, steps, finite, threshold=1.5)
    assert (result.n_transfer_seeds, result.n_transfer_diverged) == (0, 2)
    assert (result.n_scratch_seeds, result.n_scratch_diverged) == (0, 0)
    for estimate in (result.area_ratio, result.jumpstart.advantage, result.auc.scratch):
        assert math.isnan(estimate.estimate) and math.isnan(estimate.low)
        assert "no finite seed left in the transfer arm" in estimate.note
    assert result.area_ratio.n_excluded == 2 and result.verdict == "undetermined"
    assert (result.first_step, result.last_step, result.n_points) == (0, 40, 5)
    data = result.to_json()
    json.dumps(data, allow_nan=False)
    assert data["area_ratio"]["estimate"] is None and data["return_floor"] is None
    both = compare_transfer_finite(steps, diverged, steps, diverged[:1], return_floor=0.0)
    assert "no finite seed left in the transfer and scratch arms" in both.area_ratio.note
    assert both.return_floor == 0.0 and both.time_to_threshold is None
    with pytest.raises(ValueError, match="different grids"):
        compare_transfer_finite(steps, diverged, GRID, finite[:, :3])


# --- estimates --------------------------------------------------------------------------------


def test_bootstrap_is_reproducible_and_resamples_arms_independently() -> None:
    transfer = np.array([3.1, 4.7, 6.2, 7.9, 5.3, 2.2])
    scratch = np.array([1.3, 2.9, 2.4, 0.7, 1.8])  # another number of seeds: no pairing
    first = bootstrap_estimate((transfer, scratch), ratio_of_means)
    again = bootstrap_estimate((transfer, scratch), ratio_of_means)
    assert first == again
    assert first.estimate == pytest.approx((29.4 / 6) / (9.1 / 5))
    other = bootstrap_estimate(
        (transfer, scratch), ratio_of_means, options=BootstrapOptions(random_state=1)
    )
    assert other.estimate == first.estimate and (other.low, other.high) != (first.low, first.high)


def test_means_and_differences_of_means_get_student_and_welch_intervals() -> None:
    """By hand: Welch's interval of a difference of means, Student's of one mean; with 2 or 3
    seeds they reach past the seeds' range, which no resampling of them can (the expanded
    percentile interval of a mean of 3 normal values covered the true mean 71 % of the time,
    of 2 values 52 %)."""
    from scipy.stats import t as student

    transfer = np.array([3.1, 4.7, 6.2, 7.9, 5.3, 2.2])
    scratch = np.array([1.3, 2.9, 2.4, 0.7, 1.8])
    va, vb = transfer.var(ddof=1) / 6, scratch.var(ddof=1) / 5
    df = (va + vb) ** 2 / (va**2 / 5 + vb**2 / 4)
    half = student.ppf(0.975, df) * np.sqrt(va + vb)
    welch = bootstrap_estimate((transfer, scratch), difference_of_means)
    centre = 29.4 / 6 - 9.1 / 5
    assert (welch.low, welch.high) == pytest.approx((centre - half, centre + half))
    three = np.array([0.2, 0.5, 0.3])
    mean = mean_estimate(three)
    half = student.ppf(0.975, 2) * three.std(ddof=1) / np.sqrt(3)
    assert (mean.low, mean.high) == pytest.approx((three.mean() - half, three.mean() + half))
    assert mean.low < three.min() and mean.high > three.max()
    # every other method still resamples
    percentile = mean_estimate(three, options=BootstrapOptions(method="percentile"))
    assert three.min() <= percentile.low < percentile.high <= three.max()
    rng = np.random.default_rng(0)
    for n in (2, 3):  # coverage of the true mean 0
        studies = [rng.normal(size=n) for _ in range(400)]
        rate = np.mean([(e := mean_estimate(v)).low <= 0.0 <= e.high for v in studies])
        assert 0.92 <= rate <= 0.98, (n, rate)


def test_the_default_intervals_cover_their_level_with_five_seeds() -> None:
    """With 5 seeds per arm and no true difference, 95 % percentile intervals of the difference
    of means excluded 0 in about 12 % of studies (their verdicts wrong); the default (Welch's
    interval for a difference) in about 5 %. 400 simulated studies of two normal arms, the same
    draws for both methods. A ratio of means keeps the expanded percentile bootstrap: it covers
    the true ratio at about its level too."""
    from ctxrl.estimates import expanded_confidence_level

    five = np.array([0.3, 1.2, -0.4, 2.0, 0.9])
    assert expanded_confidence_level(0.95, [five]) == pytest.approx(0.99809, abs=1e-5)
    # two arms of equal spread: the pooled degrees of freedom, 2 (n - 1)
    assert expanded_confidence_level(0.95, [five, five + 3.0]) == pytest.approx(0.99007, abs=1e-5)
    many = np.random.default_rng(1).normal(size=1000)
    assert expanded_confidence_level(0.95, [many]) == pytest.approx(0.95, abs=1e-3)
    # an arm of 2 seeds whose spread dominates: its one degree of freedom decides
    wide, narrow = np.array([-3.0, 3.0]), np.linspace(-0.1, 0.1, 10)
    assert expanded_confidence_level(0.95, [wide, narrow]) > 0.9999
    with pytest.raises(ValueError, match="at least two values"):
        expanded_confidence_level(0.95, [five[:1], five])
    rng = np.random.default_rng(0)
    studies = [(rng.normal(size=5), rng.normal(size=5)) for _ in range(400)]
    excluded = {}
    for method in ("percentile", "expanded"):
        options = BootstrapOptions(method=method, n_resamples=2000)  # type: ignore[arg-type]
        excluded[method] = np.mean(
            [
                bootstrap_estimate(arms, difference_of_means, options=options).excludes_zero()
                for arms in studies
            ]
        )
    assert excluded["percentile"] > 0.09
    assert 0.02 <= excluded["expanded"] <= 0.08
    assert BootstrapOptions().method == "expanded"
    options = BootstrapOptions(n_resamples=1000)
    ratios = [(rng.normal(1.2, 0.3, 5), rng.normal(1.0, 0.3, 5)) for _ in range(200)]
    covered = [
        (e := bootstrap_estimate(arms, ratio_of_means, options=options)).low <= 1.2 <= e.high
        for arms in ratios
    ]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_degenerate_estimates_do_not_raise() -> None:
    equal = mean_estimate([3.0, 3.0, 3.0], options=BootstrapOptions(method="BCa"))
    assert (equal.estimate, equal.low, equal.high) == (3.0, 3.0, 3.0)
    missing = mean_estimate([math.nan, math.nan])
    assert math.isnan(missing.estimate) and missing.n_excluded == 2
    assert verdict(missing) == "undetermined"
    assert verdict(MetricEstimate(0.0, 0.0, 0.0)) == "absent"
    assert verdict(MetricEstimate(-1.0, -2.0, -0.5)) == "negative"
    # t and Welch intervals of spreads below or past float range: the point, or no interval
    tiny = np.array([0.0, 1e-320])
    level = bootstrap_estimate((tiny, tiny), difference_of_means)
    assert (level.low, level.high) == (0.0, 0.0)
    huge = mean_estimate([1e200, -1e200, 3e200])
    assert math.isnan(huge.low) and "past float range" in huge.note
    assert verdict(huge) == "undetermined"


def test_an_interval_undefined_on_some_resamples_is_no_interval() -> None:
    # a scratch arm whose resamples can all be 0: the ratio is inf on those, and the percentile
    # interval comes out as [3, inf], which read as excluding 0 ("positive")
    transfer, scratch = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 0.0, 1.0])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ratio = bootstrap_estimate((transfer, scratch), ratio_of_means)
    assert ratio.estimate == pytest.approx(10.0)
    assert math.isnan(ratio.low) and math.isnan(ratio.high)
    assert "no interval" in ratio.note
    assert verdict(ratio) == "undetermined" and not ratio.excludes_zero()


@pytest.mark.parametrize("method", ["expanded", "percentile", "BCa"])
def test_degenerate_bootstraps_do_not_warn(method: BootstrapMethod) -> None:
    """``ctxrl transfer dqn`` and ``ctxrl report`` printed scipy's ``DegenerateDataWarning: The
    BCa confidence interval cannot be calculated`` and numpy's ``invalid value encountered in
    subtract`` for intervals that the estimate already reports as "no interval"."""
    options = BootstrapOptions(method=method)
    transfer, scratch = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio = bootstrap_estimate((transfer, scratch), ratio_of_means, options=options)
        equal = mean_estimate([3.0, 3.0, 3.0], options=options)
        one = mean_estimate([2.5], options=options)
        spread = bootstrap_estimate((transfer, scratch), difference_of_means, options=options)
    assert ratio.estimate == pytest.approx(10.0)
    assert math.isnan(ratio.low) and math.isnan(ratio.high)
    assert ratio.note == "bootstrap interval not finite (some resamples undefined): no interval"
    assert (equal.estimate, equal.low, equal.high) == (3.0, 3.0, 3.0)
    assert one.estimate == 2.5 and math.isnan(one.low) and math.isnan(one.high)
    assert spread.estimate == pytest.approx(2.25) and spread.low < 2.25 < spread.high


def test_curve_bands_use_students_t_over_the_seeds() -> None:
    """The DQN study's curve figure shaded 1.96 standard errors: 29 % too narrow at 5 seeds,
    40 % at 3 (``t(0.975, 2) = 4.30``)."""
    from scipy.stats import t as student

    from ctxrl.transfer_metrics import curve_band

    curves = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 6.0]])  # (S, T)
    mean, low, high = curve_band(curves)
    np.testing.assert_allclose(mean, [1.0, 3.0])
    half = student.ppf(0.975, 2) * curves.std(axis=0, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose(high - mean, half)
    np.testing.assert_allclose(mean - low, half)
    one = curve_band(curves[:1])
    assert all(np.array_equal(band, curves[0]) for band in one)
    # NaN points (a diverged seed) are left out of the count too: 2 finite seeds of 4 at the
    # second point have t(0.975, 1) = 12.71, not t(0.975, 3) with sqrt(4)
    gappy = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, np.nan], [3.0, np.nan]])
    mean, low, high = curve_band(gappy)
    np.testing.assert_allclose(high[1] - mean[1], student.ppf(0.975, 1) * np.sqrt(2) / np.sqrt(2))
    np.testing.assert_allclose(
        high[0] - mean[0], student.ppf(0.975, 3) * gappy[:, 0].std(ddof=1) / 2
    )
    alone = curve_band(np.array([[1.0, np.nan], [np.nan, np.nan]]))  # one value, then none
    assert alone[0][0] == alone[1][0] == alone[2][0] == 1.0 and np.isnan(alone[0][1])
