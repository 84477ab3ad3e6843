"""The template's tests: ctxrl's contract suites, plus the plugin's own behaviour."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ctxrl.config import resolve_plan, validate_config
from ctxrl.plugins import get_host
from ctxrl.selection import replay
from ctxrl.sweep import run_sweep
from ctxrl.testing import EnvContract, StrategyContract


class TestSpringEnv(EnvContract):
    """The gymnasium env and its torch twin (protocol, auto-reset, state_dict, batched PPO with
    a checkpoint resumed)."""

    env_name = "Spring"


class TestFarthestFirst(StrategyContract):
    strategy_name = "farthest-first"


def test_plugin_is_discovered_through_its_entry_point() -> None:
    info = get_host().plugins["template"]
    assert info.status == "loaded" and info.distribution == "ctxrl-template"
    assert info.provides == {"env": ["Spring"], "strategy": ["farthest-first"]}


def test_stiffer_spring_pulls_back_harder() -> None:
    spec = get_host().registry.env("Spring")
    soft, stiff = spec.make({"stiffness": 0.5}), spec.make({"stiffness": 5.0})
    for env in (soft, stiff):
        env.reset(seed=0)
        env.unwrapped.state = np.array([1.0, 0.0])
    assert stiff.step(1)[0][1] < soft.step(1)[0][1] < 0


def test_farthest_first_spreads_out() -> None:
    strategy = get_host().registry.strategy("farthest-first").factory()
    coords = np.linspace(0, 1, 9)[:, None]
    assert replay(strategy, np.eye(9), coords, 3).order == (4, 0, 8)


def test_twin_follows_the_gymnasium_env_step_for_step() -> None:
    """In float64 the twin's springs retrace the gymnasium env's trajectories, one context per
    spring, with pushes that drive some of them into the +-10 limits."""
    spec = get_host().registry.env("Spring")
    contexts = [
        {"stiffness": 0.1, "mass": 0.1, "damping": 0.0},
        {"stiffness": 5.0, "mass": 2.0, "damping": 1.0},
        {"stiffness": 10.0, "mass": 10.0, "damping": 2.0},
    ]
    columns = {k: torch.tensor([c[k] for c in contexts], dtype=torch.float64) for k in contexts[0]}
    assert spec.make_batched is not None
    twin = spec.make_batched(3, contexts=columns, dtype=torch.float64)
    twin.reset()
    envs = [spec.make(c) for c in contexts]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.unwrapped.state = twin.state[i].numpy().copy()
    at_wall = torch.zeros(3, dtype=torch.bool)
    for t in range(150):
        action = torch.full((3,), 2 if t < 100 else t % 3, dtype=torch.int64)
        obs, reward, terminated, truncated, _ = twin.step(action)
        for i, env in enumerate(envs):
            env_obs, env_reward, env_terminated, env_truncated, _ = env.step(int(action[i]))
            np.testing.assert_allclose(obs[i].numpy(), env_obs, rtol=1e-6, atol=1e-6)
            assert float(reward[i]) == env_reward  # the same float64 arithmetic
            assert (bool(terminated[i]), bool(truncated[i])) == (env_terminated, env_truncated)
        at_wall |= twin.state[:, 0].abs() == 10.0
    assert bool(at_wall[0])  # the soft spring was pushed into the limit


def test_batched_sweep_with_the_twin(tmp_path: Path) -> None:
    """A small batched-PPO sweep over stiffness, with the multi-task baseline: every source is
    trained on the twin in one program and evaluated on every target; a second call resumes
    past everything."""
    config = validate_config(
        {
            "env": "Spring",
            "features": {"stiffness": {"num": 3, "low": 0.5, "high": 5.0}},
            "algorithm": {
                "name": "batched-ppo",
                "params": {"num_envs": 2, "num_steps": 16, "update_epochs": 2, "hidden": 16},
            },
            "seeds": [0],
            "train_steps": 256,
            "eval_episodes": 2,
            "multitask": True,
            "output_dir": str(tmp_path / "runs"),
        }
    )
    plan = resolve_plan(config, get_host().registry)
    quiet = Console(file=io.StringIO())
    outcome = run_sweep(plan, console=quiet)
    assert (outcome.trained, outcome.skipped, outcome.failed) == (4, 0, [])  # 3 + multi-task
    returns = outcome.matrix.mean()
    assert returns.shape == (3, 3) and np.all(np.isfinite(returns))
    assert np.all((returns >= -200.0 * 100) & (returns <= 0.0))  # -x^2 per step, |x| <= 10
    again = run_sweep(plan, console=quiet)
    assert (again.trained, again.skipped) == (0, 4)
