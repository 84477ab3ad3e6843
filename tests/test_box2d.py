"""LunarLander and BipedalWalker: every feature acts on the physics, per instance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import requires_box2d

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


def test_box2d_envs_keep_module_constants() -> None:
    from gymnasium.envs.box2d import bipedal_walker

    _run("BipedalWalker", STRIDE[:3], motors_torque=5.0, friction=0.5, initial_random=0)
    assert bipedal_walker.MOTORS_TORQUE == 80 and bipedal_walker.FRICTION == 2.5


@pytest.mark.parametrize("name", ["LunarLander", "BipedalWalker"])
def test_gymnasium_ids(name: str) -> None:
    import gymnasium as gym

    import ctxrl_envs  # noqa: F401

    env = gym.make(f"ctxrl/{name}-v3", context={"gravity_y": -5.0})
    _, info = env.reset(seed=0)
    assert info["context"]["gravity_y"] == -5.0
