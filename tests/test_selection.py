"""The baseline strategies reproduce hand-computed selections and G_k."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ctxrl import CtxrlError, generalized_performance
from ctxrl.plugins import get_host
from ctxrl.selection import SelectionState, replay, replay_many
from ctxrl.testing import StrategyContract


def _strategy(name: str):
    return get_host().registry.strategy(name).factory()


# Rows are sources, columns targets; normalised performance.
M = np.array(
    [
        [0.9, 0.6, 0.2, 0.1, 0.0],
        [0.7, 0.9, 0.6, 0.2, 0.1],
        [0.3, 0.7, 1.0, 0.7, 0.3],
        [0.1, 0.3, 0.6, 0.8, 0.6],
        [0.0, 0.1, 0.3, 0.7, 0.9],
    ]
)
COORDS5 = np.linspace(0, 1, 5)[:, None]


def test_generalized_performance_by_hand() -> None:
    curve = generalized_performance(M, [2, 0, 4])
    assert curve[0] == pytest.approx((0.3 + 0.7 + 1.0 + 0.7 + 0.3) / 5)
    assert curve[1] == pytest.approx((0.9 + 0.7 + 1.0 + 0.7 + 0.3) / 5)
    assert curve[2] == pytest.approx((0.9 + 0.7 + 1.0 + 0.7 + 0.9) / 5)


def test_sample_efficiency_by_hand() -> None:
    from ctxrl.report import sample_efficiency

    found = sample_efficiency([0.5, 0.8, 0.9], independent=0.8, multitask=0.7, n_contexts=100)
    assert (found["k_star"], found["factor"]) == (3, 100 / 3)  # 0.8 only matches at k = 2
    assert (found["k_match"], found["factor_match"]) == (2, 50.0)
    ceiling = sample_efficiency([0.99, 1.0, 1.0], independent=1.0, multitask=None, n_contexts=100)
    assert ceiling["k_star"] is None and ceiling["k_match"] == 2
    assert ceiling["against"] == ["independent"]


def test_a_figure_drawn_twice_is_the_same_file(tmp_path) -> None:
    """A report of unchanged results rewrites its figures byte for byte (the SVGs carried
    the time of writing and random element ids: every report changed every figure)."""
    from ctxrl.report import plot_selection

    curves = {"greedy": {"mean": [0.5, 0.8, 0.9], "std": [0.0, 0.1, 0.0]}}
    for name in ("first", "second"):
        plot_selection(curves, {"independent": 0.8}, "CartPole: length", tmp_path / name)
    for suffix in (".svg", ".png"):
        first = (tmp_path / "first").with_suffix(suffix).read_bytes()
        assert first == (tmp_path / "second").with_suffix(suffix).read_bytes(), suffix


def test_sequential_oracle_by_hand() -> None:
    # Row means: 0.36, 0.5, 0.6, 0.48, 0.4 -> row 2 first.
    # Then with U = row 2: adding row 0 -> (0.9,.7,1,.7,.3)=0.72; row 1 -> (0.7,.9,1,.7,.3)=0.72;
    # row 3 -> (.3,.7,1,.8,.6)=0.68; row 4 -> (.3,.7,1,.7,.9)=0.72: tie 0/1/4 -> first index 0.
    # Then with rows 2, 0: row 4 gives (.9,.7,1,.7,.9)=0.84, row 1 gives 0.76 -> 4.
    result = replay(_strategy("sequential-oracle"), M, COORDS5, 3, full_knowledge=True)
    assert result.order == (2, 0, 4)
    np.testing.assert_allclose(result.curve, [0.6, 0.72, 0.84])


def test_sequential_oracle_needs_the_matrix() -> None:
    with pytest.raises(CtxrlError, match="full matrix"):
        replay(_strategy("sequential-oracle"), M, COORDS5, 2)


def test_equidistant_by_hand() -> None:
    # N = 10 contexts at 0, 1/9, ..., 1; K = 3: aims 1 - 1/6 - k/3 = 5/6, 1/2, 1/6.
    # 5/6 = 0.833 -> index 7 (0.778, distance .056) vs 8 (0.889, .056): tie -> lower, 7.
    # 1/2 -> 4 (0.444) vs 5 (0.556): tie -> lower, 4. 1/6 -> 1 (0.111) vs 2 (0.222): tie -> 1.
    coords = np.linspace(0, 1, 10)[:, None]
    result = replay(_strategy("equidistant"), np.eye(10), coords, 3)
    assert result.order == (7, 4, 1)
    # Odd N = 7 at 0, 1/6, ..., 1, K = 2: aims 0.75 -> index 4 (0.667) vs 5 (0.833): tie -> 4;
    # 0.25 -> 1 (0.167) vs 2 (0.333): tie -> 1.
    assert replay(_strategy("equidistant"), np.eye(7), np.linspace(0, 1, 7)[:, None], 2).order == (
        4,
        1,
    )


def test_greedy_by_hand() -> None:
    # N = 11 contexts at 0, 0.1, ..., 1.
    # k=1: middle 0.5 -> index 5.
    # k=2: points [0, 0.5, 1], gaps equal -> first gap [0, 0.5] is the first gap -> aim
    #      (2*0 + 0.5)/3 = 0.1667 -> index 2 (0.2, distance .033) vs 1 (.067) -> 2.
    # k=3: points [0, 0.2, 0.5, 1]: largest gap [0.5, 1] is the last -> aim (0.5 + 2)/3 = 0.8333
    #      -> index 8.
    # k=4: points [0, .2, .5, .8, 1]: largest gaps .3 ([.2,.5] and [.5,.8]) -> first, middle
    #      -> midpoint 0.35 -> index 3 (0.3) vs 4 (0.4): tie -> lower, 3.
    coords = np.linspace(0, 1, 11)[:, None]
    result = replay(_strategy("greedy"), np.eye(11), coords, 4)
    assert result.order == (5, 2, 8, 3)


@pytest.mark.parametrize("name", ["greedy", "equidistant"])
def test_geometric_baselines_never_choose_a_source_twice(name: str) -> None:
    """With K near N the aim's nearest context can be one already chosen (Greedy chose index
    0 twice on 3, 5 and 10 contexts at K = N): the nearest unchosen one is taken instead."""
    for n in (3, 5, 10, 20):
        coords = np.linspace(0, 1, n)[:, None]
        order = replay(_strategy(name), np.eye(n), coords, n).order
        assert sorted(order) == list(range(n))


def test_random_is_seeded_and_without_replacement() -> None:
    a = replay(_strategy("random"), M, COORDS5, 5, seed=42)
    b = replay(_strategy("random"), M, COORDS5, 5, seed=42)
    assert a.order == b.order and sorted(a.order) == [0, 1, 2, 3, 4]
    assert a.curve[-1] == pytest.approx(M.max(axis=0).mean())
    orders = {replay(_strategy("random"), M, COORDS5, 5, seed=s).order for s in range(20)}
    assert len(orders) > 5


def test_budget_outside_range_is_named() -> None:
    with pytest.raises(CtxrlError, match="budget K = 6 must be between 1 and N = 5"):
        replay(_strategy("random"), M, COORDS5, 6)


def test_raw_returns_and_coordinates_outside_the_unit_cube_are_refused() -> None:
    """Raw returns (Pendulum's, negative: G was 0 everywhere; CartPole's: G in the hundreds,
    and MBTL-GP chose otherwise, its noise floors assuming [0, 1]) and coordinates outside
    the unit cube were taken without a word."""
    raw = np.array([[-200.0, -600.0], [-700.0, -150.0]])
    with pytest.raises(CtxrlError, match=r"normalised performance in \[0, 1\].*from -700 to"):
        generalized_performance(raw, [0, 1])
    x = np.linspace(0, 1, 6)
    matrix = np.clip(0.9 - 1.5 * np.abs(x[:, None] - x[None, :]), 0, 1)
    strategy = get_host().registry.strategy("mbtl-gp").factory
    with pytest.raises(CtxrlError, match="normalise raw returns first"):
        replay(strategy(), matrix * 500, x[:, None], 2)
    with pytest.raises(CtxrlError, match=r"coords must lie in the unit cube .* from 0 to 10"):
        replay(strategy(), matrix, x[:, None] * 10, 2)
    with pytest.raises(CtxrlError, match=r"coords must be the 6 contexts' .* shape \(5, 1\)"):
        replay(strategy(), matrix, x[:5, None], 2)
    with pytest.raises(CtxrlError, match="batch_size must be a whole number >= 1, got 0"):
        replay(strategy(), matrix, x[:, None], 2, batch_size=0)
    unobserved = matrix.copy()
    unobserved[0, 1] = np.nan  # NaN is an unobserved entry, counted as 0
    assert generalized_performance(unobserved, [0]).shape == (1,)


@pytest.mark.parametrize("n", [15, 30])
def test_mbtl_gp_spreads_its_first_batch_as_it_picks_one_by_one(n: int) -> None:
    """With ``batch_size: 2`` the first batch's second source was the middle's neighbour (7
    then 6 of 15; 14 then 15 of 30: G_2 0.55 against 0.64 picking one by one, below Random's
    G_3): the acquisition left out the predicted row of the middle, chosen in the same batch."""
    x = np.linspace(0, 1, n)
    mountain = np.clip(0.9 - 1.5 * np.abs(x[:, None] - x[None, :]), 0, 1)
    strategy = get_host().registry.strategy("mbtl-gp").factory
    one_by_one = replay(strategy(), mountain, x[:, None], 4)
    in_twos = replay(strategy(), mountain, x[:, None], 4, batch_size=2)
    assert in_twos.order[:2] == one_by_one.order[:2]
    assert abs(in_twos.order[1] - in_twos.order[0]) > n // 4
    np.testing.assert_allclose(in_twos.curve[:3], one_by_one.curve[:3])


def test_one_dimensional_strategies_reject_grids_of_two_features() -> None:
    coords = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    message = "'greedy' works on one varied feature; this grid varies 2"
    with pytest.raises(CtxrlError, match=message):
        replay(_strategy("greedy"), np.eye(4), coords, 2)


@pytest.mark.parametrize("name", ["greedy", "equidistant"])
def test_an_axis_of_one_point_does_not_count_as_varied(name: str) -> None:
    """A feature given with ``num: 1`` is a grid axis of one point: its coordinate is constant,
    and the one-feature strategies choose as they do on the varied feature alone."""
    line = np.linspace(0, 1, 11)[:, None]
    with_point = np.hstack([np.zeros((11, 1)), line])  # the one-point axis first
    assert (
        replay(_strategy(name), np.eye(11), with_point, 4).order
        == replay(_strategy(name), np.eye(11), line, 4).order
    )


@pytest.mark.parametrize("name", get_host().registry.names("strategy"))
class TestEveryRegisteredStrategy(StrategyContract):
    @pytest.fixture
    def strategy_spec(self, name: str):
        return get_host().registry.strategy(name)


class _Stride:
    """Every second context, then the last one again: fine for the first half of a budget."""

    def propose(self, state: SelectionState) -> list[int]:
        return [min(2 * state.k, state.n - 1)]


def test_the_strategy_contract_runs_a_strategy_to_every_context() -> None:
    """A strategy that runs out of candidates only late passed the contract, which stopped at
    seven of twelve sources."""
    from ctxrl import StrategySpec

    contract = StrategyContract()
    with pytest.raises(CtxrlError, match=r"'stride' proposed index 11 at step \d+, which is"):
        contract.test_proposes_a_budget_of_distinct_valid_indices(
            StrategySpec("stride", _Stride, one_dimensional=True), "1-d", 1
        )


def _noisy_mountains(trials: int, n: int = 20) -> np.ndarray:
    """``(trials, n, n)`` 1-D mountains of different heights with noise."""
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 1.0, n)
    base = np.clip(0.9 - 0.8 * np.abs(x[:, None] - x[None, :]), 0.0, 1.0)
    return np.clip(base[None] + rng.normal(0.0, 0.05, (trials, n, n)), 0.0, 1.0)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("mbtl-gp", {}),
        ("mbtl-gp", {"noise_std": "learned", "spread": "predictive"}),
        ("mbtl-gp", {"gp": "reference", "slopes": "reference", "start": "reference"}),
        ("sd-mbtl", {}),
        ("random", {}),
    ],
)
def test_replaying_many_matrices_together_equals_replaying_each(
    name: str, options: dict[str, str]
) -> None:
    """The lockstep replay fits the trials' GPs in batches (a learned observation noise and
    the reference's warm-started GP too); each trial's order and curve are those of its lone
    replay, bit for bit."""
    spec = get_host().registry.strategy(name)
    make = functools.partial(spec.factory, **options)
    matrices = _noisy_mountains(3)
    coords = np.linspace(0.0, 1.0, 20)[:, None]
    together = replay_many(make, matrices, coords, 8, seed=4, name=name)
    for matrix, result in zip(matrices, together, strict=True):
        alone = replay(make(), matrix, coords, 8, seed=4, name=name)
        assert result.order == alone.order
        np.testing.assert_array_equal(result.curve, alone.curve)


def test_replaying_many_fits_each_steps_gps_in_one_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ctxrl.gp

    calls: list[int] = []
    fit = ctxrl.gp._fit_kernels

    def counted(xs: np.ndarray, *args: object, **kwargs: object) -> object:
        calls.append(xs.shape[0])
        return fit(xs, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ctxrl.gp, "_fit_kernels", counted)
    spec = get_host().registry.strategy("mbtl-gp")
    fixed_noise = functools.partial(spec.factory, noise_std=0.1)
    replay_many(fixed_noise, _noisy_mountains(4), np.linspace(0, 1, 20)[:, None], 6)
    # steps 2..6: one program per step fits the 4 trials' GPs; at step 2 each trial's GP has
    # one point, the same middle source, whose centred value is 0: with the same noise, one
    # problem, fitted once (the default's noise is measured on each trial's rows)
    assert calls == [1, 4, 4, 4, 4]


def test_a_failing_replay_stops_with_its_error_while_the_others_finish() -> None:
    """One trial's strategy fails mid-replay; the trials waiting for a batched GP fit are not
    left waiting for it, and its error reaches the caller."""
    from ctxrl_plugins.strategies.mbtl import MBTLStrategy

    made: list[int] = []

    class FailsOnSecondTrial(MBTLStrategy):
        def __init__(self) -> None:
            super().__init__()
            self.number = len(made)
            made.append(self.number)

        def propose(self, state: SelectionState) -> list[int]:
            if self.number == 1 and state.k == 3:
                raise CtxrlError("trial 1 fails at step 4")
            return super().propose(state)

    with pytest.raises(CtxrlError, match="trial 1 fails"):
        replay_many(FailsOnSecondTrial, _noisy_mountains(3), np.linspace(0, 1, 20)[:, None], 6)


def test_a_gp_fit_that_fails_raises_in_its_replay_instead_of_hanging_the_rest() -> None:
    """Trial 1's diagonal is infinite, so its GP cannot be fitted; fitted in a batch with the
    other trials' GPs, its error still reaches the caller (the batch is refitted one by one
    to find the bad problem) and no replay is left waiting."""
    import threading

    matrices = _noisy_mountains(3)
    bad = matrices.copy()
    np.fill_diagonal(bad[1], np.inf)
    spec = get_host().registry.strategy("mbtl-gp")
    coords = np.linspace(0, 1, 20)[:, None]
    with pytest.raises(Exception) as alone:
        replay(spec.factory(), bad[1], coords, 4)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            replay_many(spec.factory, bad, coords, 4)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "replay_many hung on a failed fit"
    assert len(outcome) == 1 and type(outcome[0]) is type(alone.value)


def test_a_proposal_larger_than_the_batch_is_refused_naming_the_strategy() -> None:
    """A strategy returning every untried context passed the strategy contract: proposals
    were cut to the budget left, not to ``batch_size``, and a sweep trained them all in one
    step."""

    class AllUntried:
        def propose(self, state: SelectionState) -> list[int]:
            return state.untried()

    matrix = np.eye(6)
    coords = np.linspace(0, 1, 6)[:, None]
    with pytest.raises(CtxrlError, match=r"'all-untried' proposed 6 contexts at step 1; a step"):
        replay(AllUntried(), matrix, coords, budget=3, name="all-untried")
    whole = replay(AllUntried(), matrix, coords, budget=6, batch_size=6, name="x")
    assert list(whole.order) == list(range(6))
