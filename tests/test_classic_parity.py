"""Parity with gymnasium's own physics, for every classic-control env and every feature.

The reference is gymnasium's env class with the context's attributes set by hand, consistently
(derived quantities included), independent of ctxrl's own code. ctxrl's gymnasium env and its
torch twin must produce the same trajectory under the same seeds and actions for 200 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import requires_pygame
from gymnasium.envs import classic_control as gcc

from ctxrl import ContextError
from ctxrl.plugins import get_host

STEPS = 200


def _cartpole(c: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    env = gcc.CartPoleEnv()
    env.gravity, env.masscart, env.masspole = c["gravity"], c["masscart"], c["masspole"]
    env.length, env.force_mag, env.tau = c["length"], c["force_mag"], c["tau"]
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length
    b = c["initial_state_bound"]
    return env, {"low": -b, "high": b}


def _pendulum(c: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    env = gcc.PendulumEnv()
    env.g, env.m, env.l, env.dt = c["g"], c["m"], c["l"], c["dt"]
    env.max_speed, env.max_torque = c["max_speed"], c["max_torque"]
    return env, {"x_init": c["initial_angle_max"], "y_init": c["initial_velocity_max"]}


def _mountain_car(c: dict[str, float], continuous: bool = False) -> tuple[Any, dict[str, Any]]:
    env = gcc.Continuous_MountainCarEnv() if continuous else gcc.MountainCarEnv()
    for name in (
        "min_position",
        "max_position",
        "max_speed",
        "goal_position",
        "goal_velocity",
        "force",
        "gravity",
        "power",
    ):
        if name in c:
            setattr(env, name, c[name])
    return env, {"low": c["start_position_low"], "high": c["start_position_high"]}


def _acrobot(c: dict[str, float]) -> tuple[Any, dict[str, Any]]:
    env = gcc.AcrobotEnv()
    env.LINK_LENGTH_1 = c["link_length_1"]
    env.LINK_MASS_1, env.LINK_MASS_2 = c["link_mass_1"], c["link_mass_2"]
    env.LINK_COM_POS_1, env.LINK_COM_POS_2 = c["link_com_pos_1"], c["link_com_pos_2"]
    env.LINK_MOI, env.dt = c["link_moi"], c["dt"]
    env.MAX_VEL_1, env.MAX_VEL_2 = c["max_vel_1"], c["max_vel_2"]
    env.torque_noise_max = c["torque_noise_max"]
    b = c["initial_state_bound"]
    return env, {"low": -b, "high": b}


REFERENCES: dict[str, Callable[[dict[str, float]], tuple[Any, dict[str, Any]]]] = {
    "CartPole": _cartpole,
    "Pendulum": _pendulum,
    "MountainCar": _mountain_car,
    "MountainCarContinuous": lambda c: _mountain_car(c, continuous=True),
    "Acrobot": _acrobot,
}


def _contexts(env_name: str, feature: str) -> list[dict[str, float]]:
    """Three valid full contexts that vary ``feature``: near the low end, default, high end."""
    spec = get_host().registry.env(env_name)
    f = spec.context_space.feature(feature)
    out = []
    for u in (0.1, None, 0.6):
        value = f.default if u is None else float(f.from_unit(u))
        if f.name == "torque_noise_max":
            value = 0.0  # noise draws differ between generators: checked separately
        try:
            spec.make({feature: value}).close()
        except ContextError:  # violates a cross-feature constraint at this value
            continue
        out.append(spec.context_space.validate({feature: value}).as_dict())
    assert out, f"no valid context for {env_name}.{feature}"
    return out


def _cases() -> list[tuple[str, str]]:
    registry = get_host().registry
    return [
        (name, f.name) for name in REFERENCES for f in registry.env(name).context_space.features
    ]


def _actions(env: Any, rng: np.random.Generator) -> Any:
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return int(rng.integers(space.n))
    return rng.uniform(space.low, space.high).astype(np.float32)


@pytest.mark.parametrize(("env_name", "feature"), _cases())
def test_gymnasium_env_and_twin_match_reference(env_name: str, feature: str) -> None:
    spec = get_host().registry.env(env_name)
    contexts = _contexts(env_name, feature)
    steps_limit = spec.max_episode_steps
    assert steps_limit is not None
    references = []
    for c in contexts:
        env, options = REFERENCES[env_name](c)
        references.append((gym.wrappers.TimeLimit(env, steps_limit), options))
    ours = [spec.make(c) for c in contexts]
    twin = spec.make_batched(
        len(contexts),
        contexts={
            k: torch.tensor([c[k] for c in contexts], dtype=torch.float64) for k in contexts[0]
        },
        dtype=torch.float64,
        seed=0,
    )
    twin.reset(seed=0)
    rng = np.random.default_rng(1)
    episode = [0] * len(contexts)

    def restart(i: int) -> np.ndarray:
        ref, options = references[i]
        seed = 1000 * i + episode[i]
        ref_obs, _ = ref.reset(seed=seed, options=options)
        our_obs, _ = ours[i].reset(seed=seed)
        np.testing.assert_array_equal(our_obs, ref_obs)
        twin.state[i] = torch.as_tensor(np.asarray(ref.unwrapped.state, dtype=np.float64))
        twin.elapsed[i] = 0
        return ref_obs

    for i in range(len(contexts)):
        restart(i)
    for _ in range(STEPS):
        actions = [_actions(references[i][0], rng) for i in range(len(contexts))]
        twin_action = torch.as_tensor(np.array(actions)).reshape(len(contexts), -1).squeeze(-1)
        _, twin_reward, twin_term, twin_trunc, info = twin.step(twin_action)
        for i, action in enumerate(actions):
            ref_obs, ref_reward, ref_term, ref_trunc, _ = references[i][0].step(action)
            our_obs, our_reward, our_term, our_trunc, _ = ours[i].step(action)
            np.testing.assert_array_equal(our_obs, ref_obs)
            assert (our_reward, our_term, our_trunc) == (ref_reward, ref_term, ref_trunc)
            np.testing.assert_allclose(info["final_obs"][i].numpy(), ref_obs, rtol=1e-5, atol=1e-5)
            assert float(twin_reward[i]) == pytest.approx(float(ref_reward), rel=1e-6, abs=1e-6)
            assert bool(twin_term[i]) == ref_term and bool(twin_trunc[i]) == ref_trunc
            if ref_term or ref_trunc:
                episode[i] += 1
                restart(i)


@pytest.mark.parametrize("env_name", ["CartPole", "Pendulum", "MountainCar"])
def test_float32_twin_tracks_reference(env_name: str) -> None:
    """The default float32 twin stays within float32 tolerance of gymnasium over 200 steps."""
    spec = get_host().registry.env(env_name)
    c = spec.context_space.default().as_dict()
    ref, options = REFERENCES[env_name](c)
    twin = spec.make_batched(1, seed=0)
    twin.reset()
    ref.reset(seed=3, options=options)
    twin.state[0] = torch.as_tensor(np.asarray(ref.state, dtype=np.float32))
    rng = np.random.default_rng(2)
    for _ in range(STEPS):
        action = _actions(ref, rng)
        ref_obs, _, terminated, _, _ = ref.step(action)
        _, _, _, _, info = twin.step(torch.as_tensor(np.array([action])).reshape(1, -1).squeeze(-1))
        np.testing.assert_allclose(info["final_obs"][0].numpy(), ref_obs, rtol=1e-4, atol=1e-4)
        if terminated:
            break


def test_gymnasium_make_with_context() -> None:
    import ctxrl_envs  # noqa: F401  (registers the ctxrl/ ids)

    env = gym.make("ctxrl/CartPole-v1", context={"masscart": 2.0}, visible=["masscart"])
    obs, info = env.reset(seed=0)
    assert info["context"]["masscart"] == 2.0
    assert obs.shape == (5,)
    assert env.unwrapped.total_mass == pytest.approx(2.1)
    assert env.spec is not None and env.spec.max_episode_steps == 500


@requires_pygame
def test_gymnasium_ids_serialise_and_collect_frames() -> None:
    """Every ``ctxrl/`` id is registered by import path: its spec serialises (``to_json``, as
    dataset recorders store it) and makes the same env back, and gymnasium's
    ``rgb_array_list`` render mode, which needs the entry point's metadata, collects frames."""
    from conftest import HAS_BOX2D
    from gymnasium.envs.registration import EnvSpec as GymSpec

    import ctxrl_envs  # noqa: F401  (registers the ctxrl/ ids)

    ids = [i for i in gym.registry if i.startswith("ctxrl/")]
    assert {"ctxrl/CartPole-v1", "ctxrl/Catch-v0", "ctxrl/BipedalWalker-v3"} <= set(ids)
    for gym_id in ids:
        if "v3" in gym_id and not HAS_BOX2D:
            continue
        spec = gym.spec(gym_id)
        assert isinstance(spec.entry_point, str), gym_id
        again = gym.make(GymSpec.from_json(spec.to_json()), context=None)
        again.reset(seed=0)
        env = gym.make(gym_id, render_mode="rgb_array_list")
        env.reset(seed=0)
        env.step(env.action_space.sample())
        frames = env.render()
        assert len(frames) == 2 and frames[0].ndim == 3, gym_id


@requires_pygame
def test_an_entry_registered_without_a_path_still_makes_its_env() -> None:
    """``register_with_gymnasium()`` without an import path (as plugins called it before it
    took one) registers the entry object itself: the env and its render modes work."""
    import dataclasses

    from ctxrl_envs.classic_control import ENTRIES

    entry = dataclasses.replace(ENTRIES["CartPole"], version="v99")
    try:
        entry.register_with_gymnasium()
        env = gym.make(
            "ctxrl/CartPole-v99", context={"masscart": 2.0}, render_mode="rgb_array_list"
        )
        _, info = env.reset(seed=0)
        assert info["context"]["masscart"] == 2.0 and len(env.render()) == 1
    finally:
        gym.registry.pop("ctxrl/CartPole-v99", None)
