"""Every context feature changes the dynamics the way physics says it should.

Each test starts ctxrl's gymnasium env from a fixed state, applies a fixed action and compares
the result across two values of one feature, so a silently ignored feature fails its test.
Independence: envs with different contexts in one process never affect each other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from ctxrl import ContextError
from ctxrl.plugins import get_host


def _env(name: str, **context: float) -> Any:
    env = get_host().registry.env(name).make(context)
    env.reset(seed=0)
    return env


def _step_from(name: str, state: list[float], action: Any, **context: float) -> np.ndarray:
    env = _env(name, **context)
    env.unwrapped.state = np.array(state, dtype=np.float64)
    env.step(action)
    return np.asarray(env.unwrapped.state, dtype=np.float64)


def _steps_to_end(name: str, policy: Any, **context: float) -> int:
    env = _env(name, **context)
    obs, _ = env.reset(seed=0)
    for t in range(1, 10_000):
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        if terminated or truncated:
            return t
    raise AssertionError("episode did not end")


def _initial_spread(name: str, index: int, **context: float) -> float:
    env = get_host().registry.env(name).make(context)
    return max(abs(float(np.asarray(env.reset(seed=s)[0])[index])) for s in range(200))


# ------------------------------------------------------------------------------- CartPole
TILTED = [0.0, 0.0, 0.1, 0.0]  # x, x_dot, theta, theta_dot


def test_cartpole_stronger_gravity_tips_the_pole_faster() -> None:
    weak = _step_from("CartPole", TILTED, 1, gravity=5.0)
    strong = _step_from("CartPole", TILTED, 1, gravity=20.0)
    # one Euler step moves theta_dot by tau * theta_acc
    assert strong[3] > weak[3]


def test_cartpole_heavier_cart_accelerates_less() -> None:
    light = _step_from("CartPole", [0, 0, 0, 0], 1, masscart=0.5)
    heavy = _step_from("CartPole", [0, 0, 0, 0], 1, masscart=5.0)
    assert 0 < heavy[1] < light[1]


def test_cartpole_heavier_pole_slows_the_cart_as_derived_masses_say() -> None:
    # at theta = 0, x_acc = 4 F / (4 m_cart + m_pole): only right if total_mass is recomputed
    for masspole in (0.01, 0.5, 1.0):
        state = _step_from("CartPole", [0, 0, 0, 0], 1, masspole=masspole)
        assert state[1] / 0.02 == pytest.approx(4 * 10.0 / (4 * 1.0 + masspole))


def test_cartpole_longer_pole_falls_slower() -> None:
    short = _step_from("CartPole", TILTED, 1, length=0.25)
    long = _step_from("CartPole", TILTED, 1, length=2.0)
    assert abs(long[3]) < abs(short[3])


def test_cartpole_force_and_time_step() -> None:
    soft = _step_from("CartPole", [0, 0, 0, 0], 1, force_mag=5.0)
    hard = _step_from("CartPole", [0, 0, 0, 0], 1, force_mag=50.0)
    assert hard[1] == pytest.approx(10 * soft[1])
    short = _step_from("CartPole", [0, 1.0, 0, 0], 1, tau=0.01)
    long = _step_from("CartPole", [0, 1.0, 0, 0], 1, tau=0.04)
    assert long[0] == pytest.approx(4 * short[0])  # x moves by tau * x_dot


def test_cartpole_initial_state_bound() -> None:
    assert _initial_spread("CartPole", 0, initial_state_bound=0.01) <= 0.01
    assert _initial_spread("CartPole", 0, initial_state_bound=0.2) > 0.15


# ------------------------------------------------------------------------------- Pendulum
def test_pendulum_gravity_length_and_mass() -> None:
    # theta = 0 is upright; from a small angle gravity accelerates the fall.
    weak = _step_from("Pendulum", [0.3, 0.0], np.array([0.0], np.float32), g=2.0)
    strong = _step_from("Pendulum", [0.3, 0.0], np.array([0.0], np.float32), g=20.0)
    assert strong[1] == pytest.approx(10 * weak[1])
    short = _step_from("Pendulum", [0.3, 0.0], np.array([0.0], np.float32), l=0.5)
    long = _step_from("Pendulum", [0.3, 0.0], np.array([0.0], np.float32), l=2.0)
    assert long[1] == pytest.approx(short[1] / 4)
    light = _step_from("Pendulum", [0.0, 0.0], np.array([1.0], np.float32), m=0.5)
    heavy = _step_from("Pendulum", [0.0, 0.0], np.array([1.0], np.float32), m=2.0)
    assert heavy[1] == pytest.approx(light[1] / 4, rel=1e-6)


def test_pendulum_time_step_torque_and_speed_limits() -> None:
    small = _step_from("Pendulum", [0.0, 1.0], np.array([0.0], np.float32), dt=0.01)
    large = _step_from("Pendulum", [0.0, 1.0], np.array([0.0], np.float32), dt=0.1)
    assert large[0] > small[0] > 0
    env = _env("Pendulum", max_torque=5.0)
    assert env.action_space.high[0] == pytest.approx(5.0)
    weak = _step_from("Pendulum", [0.0, 0.0], np.array([5.0], np.float32), max_torque=1.0)
    strong = _step_from("Pendulum", [0.0, 0.0], np.array([5.0], np.float32), max_torque=5.0)
    assert strong[1] == pytest.approx(5 * weak[1], rel=1e-6)
    capped = _step_from(
        "Pendulum", [0.0, 0.9], np.array([2.0], np.float32), max_speed=1.0, initial_velocity_max=1.0
    )
    assert capped[1] == pytest.approx(1.0)


def test_pendulum_initial_ranges() -> None:
    assert _initial_spread("Pendulum", 2, initial_velocity_max=0.1) <= 0.1
    assert _initial_spread("Pendulum", 2, initial_velocity_max=5.0) > 4.0
    narrow = get_host().registry.env("Pendulum").make({"initial_angle_max": 0.2})
    assert min(float(narrow.reset(seed=s)[0][0]) for s in range(100)) >= math.cos(0.2) - 1e-6


# ---------------------------------------------------------------------------- MountainCar
def test_mountain_car_gravity_force_and_speed() -> None:
    weak = _step_from("MountainCar", [0.0, 0.0], 1, gravity=0.001)
    strong = _step_from("MountainCar", [0.0, 0.0], 1, gravity=0.004)
    assert strong[1] == pytest.approx(4 * weak[1]) and strong[1] < 0
    flat = -math.pi / 6  # cos(3x) = 0: only the engine acts
    slow = _step_from("MountainCar", [flat, 0.0], 2, force=0.0005)
    fast = _step_from("MountainCar", [flat, 0.0], 2, force=0.002)
    assert fast[1] == pytest.approx(4 * slow[1], rel=1e-6)
    capped = _step_from("MountainCar", [flat, 0.04], 2, max_speed=0.041)
    assert capped[1] == pytest.approx(0.041)


def _pump(obs: np.ndarray) -> int:
    return 2 if obs[1] >= 0 else 0


def test_mountain_car_goal_and_walls() -> None:
    assert _steps_to_end("MountainCar", _pump, goal_position=0.2) < _steps_to_end(
        "MountainCar", _pump, goal_position=0.5
    )
    assert _steps_to_end("MountainCar", _pump, goal_velocity=0.0) < _steps_to_end(
        "MountainCar", _pump, goal_velocity=0.1
    )
    wall = _step_from("MountainCar", [-0.95, -0.06], 0, min_position=-1.0)
    assert wall[0] == -1.0 and wall[1] == 0.0
    env = _env("MountainCar", max_position=1.0, goal_position=1.0)
    assert env.observation_space.high[0] == pytest.approx(1.0)


def test_mountain_car_start_range() -> None:
    env = (
        get_host()
        .registry.env("MountainCar")
        .make({"start_position_low": 0.1, "start_position_high": 0.2})
    )
    starts = [float(env.reset(seed=s)[0][0]) for s in range(50)]
    assert min(starts) >= 0.1 and max(starts) <= 0.2
    # a start range reaching the goal ended every episode at its first step: refused, by the
    # env and by its twin
    past = {"max_position": 1.8, "start_position_low": 1.0, "start_position_high": 1.2}
    for name in ("MountainCar", "MountainCarContinuous"):
        spec = get_host().registry.env(name)
        with pytest.raises(ContextError, match="start_position_high < goal_position"):
            spec.make(past)
        with pytest.raises(ContextError, match="start_position_high < goal_position"):
            spec.make_batched(1, contexts=past)


def test_mountain_car_continuous_power() -> None:
    flat = -math.pi / 6
    weak = _step_from(
        "MountainCarContinuous", [flat, 0.0], np.array([1.0], np.float32), power=0.001
    )
    strong = _step_from(
        "MountainCarContinuous", [flat, 0.0], np.array([1.0], np.float32), power=0.004
    )
    assert strong[1] == pytest.approx(4 * weak[1], rel=1e-5)


# -------------------------------------------------------------------------------- Acrobot
HANGING = [0.0, 0.0, 0.0, 0.0]


def test_acrobot_inertia_slows_the_response_to_torque() -> None:
    low = _step_from("Acrobot", HANGING, 2, link_moi=0.5)
    high = _step_from("Acrobot", HANGING, 2, link_moi=5.0)
    assert abs(high[3]) < abs(low[3])


@pytest.mark.parametrize(
    "feature", ["link_length_1", "link_mass_1", "link_mass_2", "link_com_pos_1", "link_com_pos_2"]
)
def test_acrobot_link_geometry_changes_the_motion(feature: str) -> None:
    state = [0.4, 0.3, 0.5, -0.5]
    a = _step_from("Acrobot", state, 2, **{feature: 0.6})
    b = _step_from("Acrobot", state, 2, **{feature: 0.9})
    assert not np.allclose(a, b)


def test_acrobot_time_step_speed_limits_and_noise() -> None:
    short = _step_from("Acrobot", [0.0, 0.0, 1.0, 0.0], 1, dt=0.05)
    long = _step_from("Acrobot", [0.0, 0.0, 1.0, 0.0], 1, dt=0.4)
    assert abs(long[0]) > abs(short[0])
    capped = _step_from("Acrobot", [0.0, 0.0, 2.0, 0.0], 2, max_vel_1=1.5)
    assert abs(capped[2]) <= 1.5
    quiet = _step_from("Acrobot", HANGING, 1, torque_noise_max=0.0)
    noisy = _step_from("Acrobot", HANGING, 1, torque_noise_max=1.0)
    assert np.allclose(quiet, 0.0) and not np.allclose(noisy, 0.0)


def test_acrobot_stays_stable_at_every_corner_of_its_context_bounds() -> None:
    """Every corner of the bounds of the features that set the dynamics' stiffness (links,
    masses, inertia, speed limits, time step: 512 contexts), 1000 random actions on the
    float32 twin: the state stays finite and bounded (wider mass, inertia and time-step
    bounds diverged, and gymnasium's step then never returned)."""
    import itertools

    spec = get_host().registry.env("Acrobot")
    names = [
        "link_length_1", "link_mass_1", "link_mass_2", "link_com_pos_1", "link_com_pos_2",
        "link_moi", "max_vel_1", "max_vel_2", "dt",
    ]  # fmt: skip
    bounds = [
        (spec.context_space.feature(n).lower, spec.context_space.feature(n).upper) for n in names
    ]
    corners = torch.tensor(list(itertools.product(*bounds)), dtype=torch.float32)
    contexts = {name: corners[:, i] for i, name in enumerate(names)}
    twin = spec.make_batched(len(corners), contexts=contexts, env_seeds=torch.arange(len(corners)))
    twin.reset()
    generator = torch.Generator().manual_seed(0)
    for _ in range(1000):
        twin.step(torch.randint(0, 3, (len(corners),), generator=generator))
        state = twin.state_dict()["state"]
        assert torch.isfinite(state).all() and state.abs().max() < 1e3


# ---------------------------------------------------------------------------- isolation
def test_two_envs_with_different_contexts_do_not_interact() -> None:
    spec = get_host().registry.env("CartPole")
    heavy = spec.make({"masscart": 8.0, "length": 2.0})
    default = spec.make()
    alone = spec.make()
    for env in (heavy, default, alone):
        env.reset(seed=5)
    for _ in range(30):
        a = default.step(1)[0]
        heavy.step(1)
        b = alone.step(1)[0]
        np.testing.assert_array_equal(a, b)
    assert default.unwrapped.total_mass == pytest.approx(1.1)
    from gymnasium.envs.classic_control import AcrobotEnv, CartPoleEnv

    assert CartPoleEnv().masscart == 1.0  # nothing written to module or class state
    spec_acrobot = get_host().registry.env("Acrobot")
    spec_acrobot.make({"link_mass_1": 5.0})
    assert AcrobotEnv.LINK_MASS_1 == 1.0


def test_batched_twin_applies_a_context_per_env() -> None:
    spec = get_host().registry.env("CartPole")
    masses = torch.tensor([0.5, 1.0, 5.0], dtype=torch.float64)
    twin = spec.make_batched(3, contexts={"masscart": masses}, dtype=torch.float64)
    twin.reset(seed=0)
    twin.state.zero_()
    twin.step(torch.ones(3, dtype=torch.long))
    expected = 4 * 10.0 / (4 * masses + 0.1) * 0.02
    torch.testing.assert_close(twin.state[:, 1], expected)
    with pytest.raises(
        ContextError, match=r"'masscart' = 20.0 \(env 1\) is outside .*\[0.1, 10.0\]"
    ):
        twin.set_context({"masscart": torch.tensor([1.0, 20.0, 1.0])})
    with pytest.raises(ContextError, match=r"needs shape \(3,\)"):
        twin.set_context({"masscart": torch.tensor([1.0, 2.0])})
    with pytest.raises(ContextError, match="no context feature 'mass'"):
        twin.set_context({"masscart": 2.0, "mass": 1.0})
    torch.testing.assert_close(twin.context["masscart"], masses)  # nothing applied half-way


def test_twin_auto_resets_and_truncates_like_gymnasium() -> None:
    twin = get_host().registry.env("Pendulum").make_batched(4, seed=1)
    twin.reset()
    for t in range(1, 201):
        _, _, terminated, truncated, _info = twin.step(torch.zeros(4))
        assert not terminated.any()
        assert bool(truncated.all()) == (t == 200)
    assert (twin.elapsed == 0).all()
    same = get_host().registry.env("Pendulum").make_batched(4, seed=1)
    np.testing.assert_array_equal(same.reset().numpy(), twin.reset(seed=1).numpy())


def test_twin_context_pool_draws_a_context_per_episode() -> None:
    twin = get_host().registry.env("CartPole").make_batched(8, seed=0, env_seeds=list(range(8)))
    pool = [{"masscart": 0.5}, {"masscart": 2.0}, {"masscart": 8.0}]
    twin.set_context_pool(pool)
    twin.reset()
    seen: set[float] = set()
    for _ in range(300):
        twin.step(torch.ones(8, dtype=torch.long))
        seen.update(round(float(v), 4) for v in twin.context["masscart"])
        assert torch.allclose(twin.derived["total_mass"], twin.context["masscart"] + 0.1)
    assert seen == {0.5, 2.0, 8.0}
    with pytest.raises(ContextError, match="masscart"):
        twin.set_context_pool([{"masscart": 50.0}])
