"""The template's tests: ctxrl's contract suites, plus the plugin's own behaviour."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from rich.console import Console

from ctxrl.config import resolve_plan, validate_config
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.plugins import get_host
from ctxrl.selection import replay
from ctxrl.sweep import run_sweep
from ctxrl.testing import (
    EnvContract,
    InterventionContract,
    StrategyContract,
    TransferMethodContract,
)
from ctxrl.transfer import TransferProblem


class TestSpringEnv(EnvContract):
    """The gymnasium env and its torch twin (protocol, auto-reset, state_dict, batched PPO with
    a checkpoint resumed)."""

    env_name = "Spring"


class TestFarthestFirst(StrategyContract):
    strategy_name = "farthest-first"


class TestWeightClip(InterventionContract):
    """Per-agent clipping, checkpoints, in-place edits, frozen layers (batched PPO and DQN).
    At ``kappa`` 1 the largest initial weights sit at the bound, so the contract's short
    trainings are clipped (the contract checks that the intervention changes training)."""

    intervention_name = "weight-clip"
    options: ClassVar[dict[str, Any]] = {"kappa": 1.0}


class TestScratch(TransferMethodContract):
    """``(P, Q, E)`` returns, sources untouched, the same returns twice, a source's row the
    same alone as beside another, sources trained with ``layer-norm``."""

    transfer_method_name = "scratch"
    options: ClassVar[dict[str, Any]] = {"steps": 256}


def test_plugin_is_discovered_through_its_entry_point() -> None:
    info = get_host().plugins["template"]
    assert info.status == "loaded" and info.distribution == "ctxrl-template"
    assert info.provides == {
        "env": ["Spring"],
        "strategy": ["farthest-first"],
        "intervention": ["weight-clip"],
        "transfer_method": ["scratch"],
    }


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


class InitialWeights(Intervention):
    """Records the initial parameters (test helper: any ``Intervention`` can be passed to
    ``train_many`` directly, registered or not)."""

    name = "initial-weights"

    def __init__(self) -> None:
        self.params: dict[str, torch.Tensor] = {}

    def setup(self, view: TrainingView) -> None:
        self.params = {k: v.detach().clone() for k, v in view.initial_params.items()}


def _growth(interventions: list[Intervention]) -> float:
    """Four CartPole agents of batched PPO at learning rate 0.05, 2048 steps each: the largest
    ratio, over agents and layers, of a weight's magnitude to the layer's largest initial one."""
    host = get_host()
    env = host.registry.env("CartPole")
    params = {"num_envs": 2, "num_steps": 64, "hidden": 16, "learning_rate": 0.05}
    algorithm = host.registry.algorithm("batched-ppo").factory(params, device="cpu", env=env)
    initial = InitialWeights()
    policies = algorithm.train_many(
        env,
        [{"length": length} for length in (0.25, 0.5, 1.0, 2.0)],
        [0, 1, 2, 3],
        total_steps=2048,
        interventions=[initial, *interventions],
    )
    return max(
        float(
            (weight.abs().flatten(1).amax(1) / initial.params[name].abs().flatten(1).amax(1)).max()
        )
        for name, weight in policies.params.items()
        if name.endswith(".weight")
    )


def test_weight_clip_holds_weights_that_grow_without_it() -> None:
    """At a learning rate high enough for the weights to grow past twice their initial scale,
    the clipped agents' weights stay within kappa = 2 times it."""
    clip = get_host().registry.intervention("weight-clip").factory(kappa=2.0)
    assert _growth([]) > 2.0
    assert _growth([clip]) <= 2.0 * (1 + 1e-6)


def test_scratch_ignores_the_sources() -> None:
    """Two sources of different contexts and the same seed get the same row: only the seed
    and the target decide a scratch agent."""
    host = get_host()
    env = host.registry.env("CartPole")
    params = {"num_envs": 2, "num_steps": 32, "hidden": 16}
    algorithm = host.registry.algorithm("batched-ppo").factory(params, device="cpu", env=env)
    sources_contexts = [{"length": 0.25}, {"length": 2.0}]
    sources = algorithm.train_many(env, sources_contexts, [7, 7], total_steps=256)
    problem = TransferProblem(
        env=env,
        algorithm=algorithm,
        sources=sources,
        source_contexts=sources_contexts,
        source_seeds=[7, 7],
        targets=[{"length": 0.5}, {"length": 1.0}],
        episodes=2,
        eval_seed=0,
    )
    result = host.registry.transfer_method("scratch").factory(steps=256).transfer(problem)
    assert result.returns.shape == (2, 2, 2)
    np.testing.assert_array_equal(result.returns[0], result.returns[1])
    assert result.target_env_steps == 256


def test_the_readmes_sweep_is_valid() -> None:
    """The sweep the README shows (the template's intervention and transfer method) passes
    every check a sweep makes before training."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    from ctxrl.yaml12 import parse_yaml

    plan = resolve_plan(validate_config(parse_yaml(block)), get_host().registry)
    assert plan.config.transfer.name == "scratch"
    assert [i.name for i in plan.config.algorithm.interventions] == ["weight-clip"]
