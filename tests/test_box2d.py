"""LunarLander and BipedalWalker: every feature acts on the physics, per instance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import requires_box2d

from ctxrl.errors import ContextError
from ctxrl.plugins import get_host

pytestmark = requires_box2d


def _run(name: str, actions: list[Any], seed: int = 0, **context: float) -> list[np.ndarray]:
    env = get_host().registry.env(name).make(context)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for action in actions:
        obs, _, terminated, truncated, _ = env.step(action)
        out.append(obs)
        if terminated or truncated:
            break
    return out


def _gymnasium_run(env: Any, actions: list[Any], seed: int) -> list[np.ndarray]:
    """The observations of gymnasium's own ``env`` played from ``reset(seed)`` through
    ``actions``, as :func:`_run` gives ctxrl's."""
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for action in actions:
        obs, *_ = env.step(action)
        out.append(obs)
    return out


QUIET = {"initial_random": 0.0}  # no random push: only the context differs


def test_lunar_lander_gravity() -> None:
    weak = _run("LunarLander", [0] * 30, gravity_y=-2.0, **QUIET)
    strong = _run("LunarLander", [0] * 30, gravity_y=-15.0, **QUIET)
    assert strong[-1][3] < weak[-1][3] < 0  # vertical velocity
    left = _run("LunarLander", [0] * 30, gravity_x=-5.0, **QUIET)
    right = _run("LunarLander", [0] * 30, gravity_x=5.0, **QUIET)
    assert left[-1][2] < 0 < right[-1][2]  # horizontal velocity


def test_lunar_lander_engines() -> None:
    weak = _run("LunarLander", [2] * 20, main_engine_power=5.0, **QUIET)
    strong = _run("LunarLander", [2] * 20, main_engine_power=30.0, **QUIET)
    assert strong[-1][3] > weak[-1][3]
    weak = _run("LunarLander", [1] * 20, side_engine_power=0.2, **QUIET)
    strong = _run("LunarLander", [1] * 20, side_engine_power=5.0, **QUIET)
    assert abs(strong[-1][5]) > abs(weak[-1][5])  # angular velocity


def test_lunar_lander_initial_random_fps_and_legs() -> None:
    calm = [_run("LunarLander", [], seed=s, initial_random=0.0)[0][2] for s in range(5)]
    wild = [_run("LunarLander", [], seed=s, initial_random=2000.0)[0][2] for s in range(5)]
    assert max(map(abs, calm)) < 1e-3 < max(map(abs, wild))
    slow = _run("LunarLander", [0] * 20, fps=25.0, **QUIET)
    fast = _run("LunarLander", [0] * 20, fps=100.0, **QUIET)
    assert slow[-1][1] < fast[-1][1]  # more simulated time per step -> lower
    soft = _run("LunarLander", [0] * 400, leg_spring_torque=1.0, **QUIET)
    stiff = _run("LunarLander", [0] * 400, leg_spring_torque=200.0, **QUIET)
    assert not np.allclose(
        soft[min(len(soft), len(stiff)) - 1], stiff[min(len(soft), len(stiff)) - 1]
    )


def test_lunar_lander_observations_stay_in_its_space_with_weak_gravity_and_strong_engines() -> None:
    """With the main engine on at 50 (5x) and gravity -0.01 the lander climbs fast: its
    vertical speed left the observation space's bounds (10) at step 57."""
    env = (
        get_host().registry.env("LunarLander").make({"gravity_y": -0.01, "main_engine_power": 50.0})
    )
    obs, _ = env.reset(seed=0)
    for _ in range(1000):
        obs, _, terminated, truncated, _ = env.step(2)
        assert env.observation_space.contains(obs), obs
        if terminated or truncated:
            break


def test_bipedal_walker_observations_stay_in_its_space_on_sampled_contexts() -> None:
    """The hull angle is not wrapped and its velocities and joint speeds grow with weak
    gravity, a low frame rate or slow motors: 14 of 150 sampled contexts left gymnasium's
    bounds within 300 random steps (the angle past pi at fps 20, step 32)."""
    spec = get_host().registry.env("BipedalWalker")
    rng = np.random.default_rng(123)
    contexts = [{"fps": 20.0}, {"gravity_y": -0.01}] + [
        c.as_dict() for c in spec.context_space.sample(40, rng)
    ]
    for index, context in enumerate(contexts):
        env = spec.make(context)
        env.action_space.seed(index)
        obs, _ = env.reset(seed=index)
        for _ in range(300):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs), (context, obs)
            if terminated or truncated:
                break
        env.close()


def test_bipedal_walker_plays_the_same_episode_again_for_the_same_seed() -> None:
    """gymnasium reuses the walker's world across episodes, so with a short start pad the
    first episode of an instance differed from every later one with the same seed (by 1.87
    in an observation): an evaluation depended on what the instance had played before."""
    spec = get_host().registry.env("BipedalWalker")
    env = spec.make({"terrain_startpad": 2.0})

    def episode() -> np.ndarray:
        observations = [env.reset(seed=0)[0]]
        for t in range(200):
            action = np.array([1, -1, -1, 1], dtype=np.float32) * np.sin(t / 5)
            obs, _, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            if terminated or truncated:
                break
        return np.array(observations)

    first, second = episode(), episode()
    assert first.shape == second.shape and np.array_equal(first, second)
    env.close()


def test_lunar_lander_instances_are_independent() -> None:
    from gymnasium.envs.box2d import lunar_lander

    alone = _run("LunarLander", [2, 1, 3, 0] * 10)
    spec = get_host().registry.env("LunarLander")
    other = spec.make({"main_engine_power": 40.0, "gravity_x": 3.0, "fps": 100.0})
    other.reset(seed=0)
    default = spec.make()
    obs, _ = default.reset(seed=0)
    together = [obs]
    for action in [2, 1, 3, 0] * 10:
        other.step(action)
        together.append(default.step(action)[0])
    np.testing.assert_array_equal(np.array(together), np.array(alone))
    assert lunar_lander.MAIN_ENGINE_POWER == 13.0 and lunar_lander.FPS == 50


STRIDE = [np.array([1.0, -1.0, -1.0, 1.0], np.float32)] * 40


def test_bipedal_walker_gravity_torque_and_speeds() -> None:
    light = _run("BipedalWalker", [np.zeros(4, np.float32)] * 10, gravity_y=-1.0, initial_random=0)
    heavy = _run("BipedalWalker", [np.zeros(4, np.float32)] * 10, gravity_y=-20.0, initial_random=0)
    assert heavy[-1][3] < light[-1][3]  # vertical velocity of the hull
    weak = _run("BipedalWalker", STRIDE[:5], motors_torque=1.0, initial_random=0)
    strong = _run("BipedalWalker", STRIDE[:5], motors_torque=150.0, initial_random=0)
    assert abs(strong[-1][5]) > abs(weak[-1][5])  # hip joint speed
    slow = _run("BipedalWalker", STRIDE[:5], speed_hip=0.5, initial_random=0)
    fast = _run("BipedalWalker", STRIDE[:5], speed_hip=10.0, initial_random=0)
    assert not np.allclose(slow[-1][4:6], fast[-1][4:6])


def test_bipedal_walker_friction_push_and_lidar() -> None:
    slippery = _run("BipedalWalker", STRIDE, friction=0.0, initial_random=0)
    grippy = _run("BipedalWalker", STRIDE, friction=8.0, initial_random=0)
    n = min(len(slippery), len(grippy)) - 1
    assert not np.allclose(slippery[n][:4], grippy[n][:4])
    calm = _run("BipedalWalker", [], initial_random=0.0)[0][2]
    pushed = [abs(_run("BipedalWalker", [], seed=s, initial_random=20.0)[0][2]) for s in range(5)]
    assert abs(calm) < 1e-6 < max(pushed)
    short = _run("BipedalWalker", [], lidar_range=1.0, initial_random=0)[0][14:]
    long = _run("BipedalWalker", [], lidar_range=15.0, initial_random=0)[0][14:]
    assert not np.allclose(short, long)


@pytest.mark.parametrize("continuous", [False, True])
def test_lunar_lander_wind_and_continuous_engines_are_gymnasium_s(continuous: bool) -> None:
    """``LunarLanderContinuous`` and the wind features (continuous-control users asked for
    both) step as gymnasium's own LunarLander with ``continuous`` and ``enable_wind``; both
    powers at 0 play the episodes of before (no wind draw at reset)."""
    from gymnasium.envs.box2d.lunar_lander import LunarLander

    name = "LunarLanderContinuous" if continuous else "LunarLander"
    rng = np.random.default_rng(0)
    actions = (
        [rng.uniform(-1, 1, 2).astype(np.float32) for _ in range(60)]
        if continuous
        else [int(a) for a in rng.integers(0, 4, 60)]
    )
    for wind, turbulence in ((12.0, 1.5), (0.0, 0.0)):
        ours = _run(name, actions, seed=3, wind_power=wind, turbulence_power=turbulence)
        theirs_env = LunarLander(
            continuous=continuous,
            enable_wind=wind > 0,
            wind_power=wind or 15.0,
            turbulence_power=turbulence or 1.5,
        )
        theirs = _gymnasium_run(theirs_env, actions[: len(ours) - 1], seed=3)
        np.testing.assert_array_equal(np.array(ours), np.array(theirs))
    calm = _run(name, actions[:40], seed=3)
    windy = _run(name, actions[:40], seed=3, wind_power=20.0)
    assert not np.allclose(calm[-1], windy[-1])
    # wind switched on in the middle of an episode (set_context without a reset) steps on;
    # gymnasium's step raised AttributeError: 'LunarLander' object has no attribute 'wind_idx'
    env = get_host().registry.env(name).make({})
    env.reset(seed=0)
    env.get_wrapper_attr("set_context")({"wind_power": 10.0})
    env.step(actions[0])


def test_bipedal_walker_hardcore_is_gymnasium_s_hardcore_terrain() -> None:
    """``BipedalWalkerHardcore`` (gymnasium's ``hardcore=True``: stumps, pits and stairs) steps
    as gymnasium's own env at the default context, and its contexts act on it."""
    from gymnasium.envs.box2d.bipedal_walker import BipedalWalker

    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 4).astype(np.float32) for _ in range(80)]
    ours = _run("BipedalWalkerHardcore", actions, seed=4)
    theirs = _gymnasium_run(BipedalWalker(hardcore=True), actions[: len(ours) - 1], seed=4)
    np.testing.assert_array_equal(np.array(ours), np.array(theirs))
    heavy = _run("BipedalWalkerHardcore", actions[:30], seed=4, gravity_y=-20.0)
    assert not np.allclose(heavy[-1], ours[min(30, len(ours) - 1)])


def test_box2d_envs_keep_module_constants() -> None:
    from gymnasium.envs.box2d import bipedal_walker

    _run("BipedalWalker", STRIDE[:3], motors_torque=5.0, friction=0.5, initial_random=0)
    assert bipedal_walker.MOTORS_TORQUE == 80 and bipedal_walker.FRICTION == 2.5


@pytest.mark.parametrize(
    "name", ["LunarLander", "LunarLanderContinuous", "BipedalWalker", "BipedalWalkerHardcore"]
)
def test_gymnasium_ids(name: str) -> None:
    import gymnasium as gym

    import ctxrl_envs  # noqa: F401

    env = gym.make(f"ctxrl/{name}-v3", context={"gravity_y": -5.0})
    _, info = env.reset(seed=0)
    assert info["context"]["gravity_y"] == -5.0


def _lander(seed: int = 0, **context: float) -> Any:
    env = get_host().registry.env("LunarLander").make({**QUIET, **context})
    env.reset(seed=seed)
    return env.unwrapped


def test_lunar_lander_scale_and_engine_geometry() -> None:
    # A larger scale is a smaller world in metres: the same fall is a larger share of the screen.
    small = _run("LunarLander", [0] * 20, scale=15.0, **QUIET)
    large = _run("LunarLander", [0] * 20, scale=60.0, **QUIET)
    assert large[0][1] - large[-1][1] > small[0][1] - small[-1][1] > 0
    # The main engine's impulse scales with its offset below the centre.
    near = _run("LunarLander", [2] * 20, main_engine_y_location=1.0, **QUIET)
    far = _run("LunarLander", [2] * 20, main_engine_y_location=10.0, **QUIET)
    assert far[-1][3] > near[-1][3]
    # The side engines' lever scales their sideways impulse; their height changes the torque.
    short = _run("LunarLander", [1] * 20, side_engine_away=2.0, **QUIET)
    long = _run("LunarLander", [1] * 20, side_engine_away=30.0, **QUIET)
    assert abs(long[-1][2]) > abs(short[-1][2])
    low = _run("LunarLander", [1] * 20, side_engine_height=1.0, **QUIET)
    high = _run("LunarLander", [1] * 20, side_engine_height=30.0, **QUIET)
    assert not np.isclose(low[-1][5], high[-1][5])


def test_lunar_lander_leg_geometry() -> None:
    narrow, wide = _lander(leg_away=5.0), _lander(leg_away=40.0)
    spread = [abs(e.legs[0].position.x - e.legs[1].position.x) for e in (narrow, wide)]
    assert spread[1] > spread[0]
    thin, thick = _lander(leg_w=1.0, leg_h=4.0), _lander(leg_w=8.0, leg_h=16.0)
    assert thick.legs[0].mass > thin.legs[0].mass
    hang = []
    for leg_down in (5.0, 40.0):
        env = _lander(leg_down=leg_down)
        for _ in range(10):
            env.step(0)
        hang.append(env.lander.position.y - env.legs[0].position.y)
    assert hang[1] > hang[0]


def _walker(**context: float) -> Any:
    env = get_host().registry.env("BipedalWalker").make({"initial_random": 0.0, **context})
    env.reset(seed=0)
    return env.unwrapped


def test_bipedal_walker_gravity_x_and_fps() -> None:
    still = [np.zeros(4, np.float32)] * 10
    left = _run("BipedalWalker", still, gravity_x=-5.0, initial_random=0)
    right = _run("BipedalWalker", still, gravity_x=5.0, initial_random=0)
    assert left[-1][2] < 0 < right[-1][2]  # horizontal velocity of the hull
    fell = []
    for fps in (25.0, 100.0):
        env = _walker(fps=fps)
        env.step(np.zeros(4, np.float32))  # the first step settles the legs' springs
        start = env.hull.position.y
        for _ in range(5):
            env.step(np.zeros(4, np.float32))
        fell.append(start - env.hull.position.y)
    assert fell[0] > fell[1] > 0  # more simulated time per step -> the limp walker sinks faster


def test_bipedal_walker_terrain() -> None:
    coarse, fine = _walker(terrain_step=0.8), _walker(terrain_step=0.3)
    assert np.diff(coarse.terrain_x).mean() == pytest.approx(0.8)
    assert np.diff(fine.terrain_x).mean() == pytest.approx(0.3)
    assert len(_walker(terrain_length=120.0).terrain_x) == 120
    assert len(_walker(terrain_length=300.0).terrain_x) == 300
    # the rounded features are integer features: rounded halves up, as every other is
    assert len(_walker(terrain_length=120.5).terrain_x) == 121
    with pytest.raises(ContextError, match="terrain_height"):  # it only lifted the world
        _walker(terrain_height=2.0)
    for pad in (5, 40):
        flat = np.flatnonzero(np.abs(np.diff(_walker(terrain_startpad=pad).terrain_y)) > 1e-9)
        assert flat[0] >= pad  # the ground stays flat over the start pad
    # The finish line lies terrain_grass segments before the end: the longer grass, the sooner.
    finish = {}
    for grass in (2.0, 30.0):
        env = _walker(terrain_grass=grass, terrain_length=100.0)
        shift = env._ctxrl_globals["TERRAIN_STEP"] * 80 - env.hull.position.x
        for body in [env.hull, *env.legs]:  # carry the whole walker 80 segments along
            body.position = (body.position.x + shift, body.position.y)
        finish[grass] = env.step(np.zeros(4, np.float32))[2]
    assert finish == {2.0: False, 30.0: True}


def test_bipedal_walker_leg_geometry() -> None:
    thin, thick = _walker(leg_w=0.1), _walker(leg_w=0.5)
    assert thick.legs[0].mass > thin.legs[0].mass and thick.legs[1].mass > thin.legs[1].mass
    short, long = _walker(leg_h=0.6), _walker(leg_h=1.8)
    assert long.legs[0].mass > short.legs[0].mass
    assert long.hull.position.y > short.hull.position.y  # starts higher above its longer legs
    high, low = _walker(leg_down=0.0), _walker(leg_down=-0.8)
    drop = [w.hull.position.y - w.legs[0].position.y for w in (high, low)]
    assert drop[1] > drop[0]


def test_human_rendering_plays_at_the_context_s_frame_rate() -> None:
    registry = get_host().registry
    for name in ("LunarLander", "BipedalWalker"):
        env = registry.env(name).make({"fps": 25.0})
        assert env.metadata["render_fps"] == 25.0, name
        env.reset(seed=0, options={"context": {"fps": 60.0}})
        assert env.metadata["render_fps"] == 60.0, name
        env.close()


def test_a_deep_copy_keeps_the_context_s_physics() -> None:
    """gymnasium's box2d envs copy by rebuilding from their constructor (EzPickle): a copy
    kept the wrapper's context (gravity -2 in its info) under the default physics (-10)."""
    import copy

    registry = get_host().registry
    for name, context, action in (
        ("LunarLander", {"gravity_y": -2.0, "main_engine_power": 20.0}, 2),
        ("BipedalWalker", {"gravity_y": -4.0, "motors_torque": 5.0}, np.ones(4, np.float32)),
    ):
        original = registry.env(name).make(context)
        original.reset(seed=0)
        copied = copy.deepcopy(original)
        fresh = registry.env(name).make(context)

        def play(env: Any, action: Any = action) -> np.ndarray:
            observations = [env.reset(seed=1)[0]]
            for _ in range(30):
                observations.append(env.step(action)[0])
            return np.array(observations)

        assert copied.unwrapped is not original.unwrapped
        np.testing.assert_array_equal(play(copied), play(fresh), err_msg=name)
