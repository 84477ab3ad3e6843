"""MBTL-GP beyond its own model: the row fits, the rows' noise estimate, the residual GP, the
expected gain and the model's baseline (the defaults), on noisy mountains and on kept real
matrices (benchmarks/bench_mbtl_robust.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_sumo

from ctxrl import CtxrlError
from ctxrl.gp import RESIDUAL_LENGTHSCALES, GapModel, RowResidualGP, rbf_kernel
from ctxrl.offline import load_trials, mean_ci, normalised_trials
from ctxrl.plugins import get_host
from ctxrl.selection import SelectionState, replay
from ctxrl_plugins.strategies.mbtl import MBTLStrategy, expected_gain, row_fits

N = 40
X = np.linspace(0.0, 1.0, N)


def noisy_mountain(seed: int, sigma: float) -> np.ndarray:
    """Training performance that varies with the context, slopes that change with the source
    and noise on every entry (the ``mountain`` family of bench_mbtl_robust.py)."""
    rng = np.random.default_rng(seed)
    diag = np.clip(0.8 + 0.15 * np.sin(rng.uniform(0, 6) + rng.uniform(2, 6) * X), 0, 1)
    l0, l1, r0, r1 = rng.uniform(0.2, 1.5, 4)
    left, right = l0 + (l1 - l0) * X, r0 + (r1 - r0) * (1 - X)
    below = np.maximum(X[:, None] - X[None, :], 0)
    above = np.maximum(X[None, :] - X[:, None], 0)
    rows: np.ndarray = diag[:, None] - left[:, None] * below - right[:, None] * above
    return np.clip(rows + rng.normal(0, sigma, (N, N)), 0, 1)


def test_a_row_fit_finds_its_level_slopes_and_noise() -> None:
    rng = np.random.default_rng(0)
    row = np.clip(0.8 - 1.5 * np.maximum(X[20] - X, 0) - 0.5 * np.maximum(X - X[20], 0), 0, 1)
    noisy = np.clip(row + rng.normal(0, 0.03, N), 0, 1)
    fit = row_fits(X[:, None], {20: noisy}, GapModel.constant(0.3, 1))[20]
    assert fit.level == pytest.approx(0.8, abs=0.03)
    assert fit.left[0] == pytest.approx(1.5, abs=0.2)
    assert fit.right[0] == pytest.approx(0.5, abs=0.1)
    assert fit.residual == pytest.approx(0.03, abs=0.01)
    edge = row_fits(X[:, None], {0: noisy}, GapModel.constant(0.3, 1))[0]
    assert edge.left[0] == 0.3  # nothing left of the first context: the fallback slope


def test_the_rows_noise_estimate_follows_the_entries_noise() -> None:
    spec = get_host().registry.strategy("mbtl-gp")
    for sigma in (0.02, 0.08):
        matrix = noisy_mountain(1, sigma)
        strategy = spec.factory(noise_std="rows")
        assert isinstance(strategy, MBTLStrategy)
        state = SelectionState(X[:, None], 6, np.random.default_rng(0))
        for index in (5, 20, 35):
            state.selected.append(index)
            state.rows[index] = matrix[index]
        strategy.propose(state)
        assert strategy.trace()["noise_std"] == pytest.approx(sigma, rel=0.3)


def test_the_model_baseline_is_the_models_rows_below_the_noisy_maxima() -> None:
    """``best: model`` compares candidates with the model's estimate of the trained rows: never
    above ``consistent``'s baseline (the larger of that estimate and the best observed entry)
    and, on a noisy matrix, below the noisy maxima on most targets."""
    spec = get_host().registry.strategy("mbtl-gp")
    matrix = noisy_mountain(2, 0.08)
    baselines = {}
    for best in ("consistent", "model"):
        state = SelectionState(X[:, None], 6, np.random.default_rng(0))
        for index in (3, 14, 25, 36):
            state.selected.append(index)
            state.rows[index] = matrix[index]
        strategy = spec.factory(best=best, residual="gp", acquisition="expected")
        strategy.propose(state)
        baselines[best] = np.asarray(strategy.trace()["best_so_far"])
        observed = state.best_so_far()
    assert np.all(baselines["model"] <= baselines["consistent"] + 1e-12)
    assert np.mean(baselines["model"] < observed) > 0.5


# MBTL's own model, noise and baseline: the reference's GP noise 0.1, the observed baseline, no
# residual GP, the optimistic acquisition
REFERENCE_MODEL = {
    "noise_std": 0.1,
    "best": "observed",
    "residual": "none",
    "acquisition": "optimistic",
}


def test_the_default_does_not_lose_to_greedy_on_noisy_mountains() -> None:
    """The reference's GP noise (0.1) shrinks a weak source's set point towards the mean, and
    the acquisition then re-trains beside it; with the rows' noise and the model compared with
    itself (the defaults), MBTL-GP is at least Greedy here (mean G_1..10 over four matrices)
    and above the reference setting."""
    registry = get_host().registry
    default: list[float] = []
    fixed_noise: list[float] = []
    greedy: list[float] = []
    for seed in range(4):
        matrix = noisy_mountain(seed, 0.05)
        for out, spec, options in (
            (default, registry.strategy("mbtl-gp"), {}),
            (fixed_noise, registry.strategy("mbtl-gp"), REFERENCE_MODEL),
            (greedy, registry.strategy("greedy"), {}),
        ):
            out.append(replay(spec.factory(**options), matrix, X[:, None], 10).curve.mean())
    assert np.mean(default) >= np.mean(greedy)
    assert np.mean(default) > np.mean(fixed_noise) > 0


def test_the_defaults_measure_the_noise_on_the_rows_unless_the_gp_learns_it() -> None:
    spec = get_host().registry.strategy("mbtl-gp")
    default = spec.factory()
    assert isinstance(default, MBTLStrategy)
    assert (default.noise_std, default.best_kind) == ("rows", "model")
    assert (default.residual, default.acquisition) == ("gp", "expected")
    reference = spec.factory(gp="reference")
    assert isinstance(reference, MBTLStrategy)
    assert reference.noise_std == "learned"
    with pytest.raises(CtxrlError, match="noise_std 'rows'"):
        spec.factory(gp="reference", noise_std="rows")


def test_robust_options_are_checked() -> None:
    spec = get_host().registry.strategy("mbtl-gp")
    for options, message in (
        ({"noise_std": "guess"}, "noise_std must be"),
        ({"noise_std": 0.0}, "noise_std must be"),
        ({"best": "hoped"}, "best 'hoped'"),
        ({"set_point": "peak"}, "set_point 'peak'"),
        ({"gap": "wide"}, "gap 'wide'"),
        ({"residual": "kriging"}, "residual 'kriging'"),
        ({"acquisition": "lucky"}, "acquisition 'lucky'"),
        # numbers: a NaN, an infinity, a boolean or text is refused by name (a NaN c made every
        # acquisition value NaN and the first candidate won; a fractional restarts raised a
        # bare TypeError mid-replay; an infinite noise_std failed in the Cholesky factor)
        ({"noise_std": float("inf")}, "noise_std must be"),
        ({"c": float("nan")}, "c must be a finite number >= 0"),
        ({"theta": True}, "theta must be a finite number >= 0 or 'estimate'"),
        ({"theta": float("inf")}, "theta must be a finite number"),
        ({"theta_per_index": "abc"}, "theta_per_index must be a number >= 0"),
        ({"theta_per_index": -1}, "theta_per_index must be a finite number >= 0"),
        ({"min_theta_per_index": float("nan")}, "min_theta_per_index must be"),
        ({"min_noise_std": -1}, "min_noise_std must be a finite number >= 0"),
        ({"restarts": 1.5}, "restarts must be a whole number"),
        ({"restarts": -3}, "restarts must be >= 0"),
        ({"restarts": True}, "restarts must be a whole number"),
    ):
        with pytest.raises(CtxrlError, match=re.escape(message)):
            spec.factory(**options)
    sd_mbtl = get_host().registry.strategy("sd-mbtl")
    for options, message in (
        ({"min_rows": 2.7}, "min_rows must be a whole number"),
        ({"mountain_threshold": float("nan")}, "mountain_threshold must be a finite number"),
        ({"mountain_threshold": True}, "mountain_threshold must be a finite number"),
    ):
        with pytest.raises(CtxrlError, match=re.escape(message)):
            sd_mbtl.factory(**options)
    # a Spearman score lies in [-1, 1], and restarts 0 always meant one fit: both still taken
    sd_mbtl.factory(detection="spearman", mountain_threshold=-0.25)
    spec.factory(restarts=0)


def smooth_residual(sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``(len(sources), len(targets))``: a residual that changes smoothly with both sides."""
    result: np.ndarray = 0.2 * np.sin(3 * sources)[:, None] * np.cos(2 * targets)[None, :]
    return result


def test_the_residual_gp_predicts_unseen_rows_and_measures_the_noise() -> None:
    observed = np.array([2, 9, 16, 23, 30, 37])
    rng = np.random.default_rng(0)
    residuals = smooth_residual(X[observed], X) + rng.normal(0, 0.02, (len(observed), N))
    gp = RowResidualGP(X[observed, None], X[:, None], residuals)
    assert gp.noise_std == 0.02  # from the grid 0.01, 0.02, 0.05, ...
    mean, std = gp.predict(X[:, None])
    unseen = np.setdiff1d(np.arange(N), observed)
    truth = smooth_residual(X[unseen], X)
    assert np.sqrt(np.mean((mean[unseen] - truth) ** 2)) < 0.02
    assert np.sqrt(np.mean(truth**2)) > 0.08  # predicting 0 would be far off
    assert std[observed].mean() < std[unseen].mean()


def test_with_one_row_the_residual_gp_shares_it_with_every_source() -> None:
    """One observed row cannot tell the source lengthscales apart (its 1 x 1 kernel is 1 at
    all of them): the row's residual pattern is taken as shared by every source, so a far
    candidate's predicted residual follows it instead of falling back to 0."""
    rng = np.random.default_rng(2)
    residual = 0.2 * np.cos(4 * X) + rng.normal(0, 0.02, N)
    gp = RowResidualGP(X[[N // 2], None], X[:, None], residual[None, :])
    assert gp.source_scale == RESIDUAL_LENGTHSCALES[-1]
    mean, _ = gp.predict(X[[0, N - 1], None])  # the two ends, half the space away
    for row in mean:
        assert np.corrcoef(row, residual)[0, 1] > 0.9
        assert np.abs(row).max() > 0.5 * np.abs(residual).max()


def test_the_residual_gp_posterior_is_the_dense_gp_posterior() -> None:
    """The Kronecker shortcut gives the posterior of the ``kN x kN`` GP, written out."""
    observed = np.array([3, 11, 19])
    targets = X[::4, None]
    rng = np.random.default_rng(1)
    residuals = smooth_residual(X[observed], targets[:, 0]) + rng.normal(0, 0.05, (3, 10))
    gp = RowResidualGP(X[observed, None], targets, residuals)
    candidates = X[[0, 7, 11], None]
    mean, std = gp.predict(candidates)
    signal = gp.signal_std**2
    prior = signal * np.kron(
        rbf_kernel(X[observed, None], X[observed, None], gp.source_scale),
        rbf_kernel(targets, targets, gp.target_scale),
    )
    cross = signal * np.kron(
        rbf_kernel(candidates, X[observed, None], gp.source_scale),
        rbf_kernel(targets, targets, gp.target_scale),
    )
    solve = np.linalg.solve(prior + gp.noise_std**2 * np.eye(len(prior)), cross.T)
    dense_mean = (solve.T @ residuals.ravel()).reshape(3, 10)
    dense_std = np.sqrt(np.diag(signal * np.eye(30) - cross @ solve)).reshape(3, 10)
    np.testing.assert_allclose(mean, dense_mean, atol=1e-9)
    np.testing.assert_allclose(std, dense_std, atol=1e-7)


def test_the_expected_gain_is_the_mean_expected_improvement() -> None:
    rng = np.random.default_rng(2)
    mean, std = rng.uniform(0, 1, (3, 5)), rng.uniform(0.01, 0.3, (3, 5))
    best = rng.uniform(0, 1, 5)
    draws = mean + std * rng.standard_normal((200_000, 3, 5))
    sampled = np.maximum(draws - best, 0).mean(axis=(0, 2))
    np.testing.assert_allclose(expected_gain(mean, std, best), sampled, atol=2e-3)
    certain = expected_gain(mean, np.zeros_like(std), best)
    np.testing.assert_allclose(certain, np.maximum(mean - best, 0).mean(axis=1), atol=1e-12)


def kept_trials(folder: str, env: str, seeds: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The normalised matrices ``(T, N, N)`` of ``seeds`` of a sweep kept in benchmarks/results,
    read as ``ctxrl select`` reads them, and their contexts' coordinates ``(N, d)``."""
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / folder
    files = [root / f"matrix_seed{seed}.csv" for seed in seeds]
    registry = get_host().registry
    _, raw, located, bounds = load_trials(
        files, contexts=None, grid=None, env_name=env, bounds=None, negate=False, registry=registry
    )
    return normalised_trials(raw, bounds), located.coords


def kept_matrix(folder: str, env: str, seeds: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The mean normalised matrix of ``seeds`` of a kept sweep (:func:`kept_trials`) and its
    contexts' coordinates."""
    trials, coords = kept_trials(folder, env, seeds)
    return trials.mean(axis=0), coords


@pytest.mark.parametrize(
    ("folder", "env", "seeds", "budget"),
    [
        ("cartpole-length-100k", "CartPole", (0, 1, 2), 15),  # policies for short poles generalise
        pytest.param(  # training failed at most inflows
            "traffic-inflow-10", "TrafficSignal", (0,), 5, marks=requires_sumo
        ),
    ],
)
def test_the_residual_gp_and_expected_gain_are_at_least_greedy_and_random_where_mbtl_is_not(
    folder: str, env: str, seeds: tuple[int, ...], budget: int
) -> None:
    """Two kept real matrices whose structure a gap growing with distance does not describe:
    MBTL's own model (gap only, optimistic acquisition; the default until 2026-12-04) falls
    below Greedy and Random on both (benchmarks/RESULTS.md); with the residual GP and the
    expected gain it does not."""
    matrix, coords = kept_matrix(folder, env, seeds)
    registry = get_host().registry

    def mean_g(name: str, runs: int = 1, **options: object) -> float:
        spec = registry.strategy(name)
        return float(
            np.mean(
                [
                    replay(spec.factory(**options), matrix, coords, budget, seed=s).curve.mean()
                    for s in range(runs)
                ]
            )
        )

    residual = mean_g("mbtl-gp", residual="gp", acquisition="expected", best="consistent")
    gap_only = mean_g("mbtl-gp", residual="none", acquisition="optimistic", best="consistent")
    greedy, random = mean_g("greedy"), mean_g("random", runs=100)
    assert residual >= max(greedy, random)
    assert gap_only < min(greedy, random)


def family_g(folder: str, name: str, runs: int = 1) -> np.ndarray:
    """Mean G_1..15 of strategy ``name`` (default options) on each of the 12 per-seed matrices
    of a kept 20-context family (``benchmarks/sweeps/<folder>.yaml``) and on each one's mirror
    image (the contexts in reverse order), ``(24,)``."""
    trials, coords = kept_trials(folder, "CartPole", tuple(range(12)))
    spec = get_host().registry.strategy(name)
    matrices = [m for trial in trials for m in (trial, trial[::-1, ::-1].copy())]
    return np.array(
        [
            np.mean(
                [replay(spec.factory(), m, coords, 15, seed=s).curve.mean() for s in range(runs)]
            )
            for m in matrices
        ]
    )


@pytest.mark.long
def test_on_families_of_real_matrices_mbtl_leads_greedy_and_random() -> None:
    """Twelve seeds of two real 20-context CartPole sweeps at 30k steps, each matrix also
    mirrored (benchmarks/RESULTS.md, "MBTL-GP on families of real matrices"). Pole length: the
    short poles train on every seed, a structure the model learns, and MBTL-GP leads Greedy
    and Random by margins whose 95 % intervals over the 24 matrices exclude 0 (+0.21 and
    +0.15). Cart mass (seed 0 is the CI sweep's matrix): a few light carts train, differently
    per seed, and one matrix decides little; over the family MBTL-GP leads Random with the
    interval excluding 0 (+0.07) and Greedy on average (+0.04, whose interval holds 0; MBTL's
    own model, the default before, was level with Greedy at -0.001)."""
    for folder, greedy_excludes_0 in (
        ("cartpole-length-20-30k", True),
        ("cartpole-masscart-20-30k", False),
    ):
        mbtl = family_g(folder, "mbtl-gp")
        greedy, random = family_g(folder, "greedy"), family_g(folder, "random", runs=30)
        versus_greedy, versus_random = mean_ci(mbtl - greedy), mean_ci(mbtl - random)
        assert versus_random[0] - versus_random[1] > 0, (folder, versus_random)
        lower = versus_greedy[0] - versus_greedy[1] if greedy_excludes_0 else versus_greedy[0]
        assert lower > 0, (folder, versus_greedy)


@pytest.mark.parametrize(("name", "options"), [("mbtl-gp", {}), ("sd-mbtl", {"structure": "gp"})])
def test_a_failed_sources_nan_entries_count_as_zero(name: str, options: dict[str, str]) -> None:
    """A select sweep replays the strategy on rows where a failed run is NaN: its own entry
    (the GP's training target) counts as 0, as in G_k, instead of a NaN GP fit (a crash) or an
    argmax over NaN acquisitions."""
    x = np.linspace(0.0, 1.0, 7)
    matrix = np.clip(0.9 - 0.8 * np.abs(x[:, None] - x[None, :]), 0.0, 1.0)
    matrix[3, 3] = np.nan  # the middle source's own entry
    matrix[5] = np.nan  # a failed run: its whole row
    strategy = get_host().registry.strategy(name).factory(**options)
    result = replay(strategy, matrix, x[:, None], 5)
    assert len(set(result.order)) == 5 and all(0 <= i < 7 for i in result.order)
    assert np.all(np.isfinite(result.curve))
