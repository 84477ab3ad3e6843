"""Batched DQN: independence of agents, learning, Double / Dueling options, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctxrl import ConfigError, CtxrlError
from ctxrl.plugins import get_host
from ctxrl.registry import AlgorithmSpec, EnvSpec
from ctxrl.testing import AlgorithmContract

FAST = {
    "learning_starts": 200,
    "train_frequency": 64,
    "gradient_steps": 16,
    "buffer_size": 5000,
    "hidden": [64, 64],
}


def _algo(**params: object):
    return get_host().registry.algorithm("batched-dqn").factory(params, device="cpu")


@pytest.mark.parametrize("options", [{}, {"double": True, "dueling": True, "num_envs": 2}])
def test_an_agent_trains_the_same_alone_and_in_a_batch_of_16(options: dict) -> None:
    spec = get_host().registry.env("CartPole")
    params = {**FAST, **options}
    alone = _algo(**params).train_many(spec, [{"masscart": 1.0}], [3], total_steps=1200)
    contexts = [{"masscart": 0.2 + 0.5 * i} for i in range(16)]
    seeds = list(range(100, 116))
    contexts[5], seeds[5] = {"masscart": 1.0}, 3
    batch = _algo(**params).train_many(spec, contexts, seeds, total_steps=1200)
    for name, value in alone.params.items():
        assert torch.equal(value[0], batch.params[name][5]), name
    assert not torch.equal(alone.params["q.0.weight"][0], batch.params["q.0.weight"][4])


@pytest.mark.parametrize("mixture", [None, [{"masscart": 0.5}, {"masscart": 5.0}]])
def test_checkpoint_resume_continues_exactly(tmp_path: Path, mixture: list | None) -> None:
    """Killed after its replay buffers wrapped around, a run resumes to the same weights."""
    spec = get_host().registry.env("CartPole")
    params = {**FAST, "buffer_size": 300, "num_envs": 2, "double": True}
    contexts, seeds = [{"masscart": 1.0}, {"masscart": 3.0}], [0, 1]
    reference = _algo(**params).train_many(spec, contexts, seeds, total_steps=1600, mixture=mixture)

    class Killed(Exception):
        pass

    def kill(done: int, total: int) -> None:
        if done == 550:  # env steps per agent: 1100, checkpoint at 800
            raise Killed

    checkpoint = tmp_path / "ckpt"
    run = {"total_steps": 1600, "checkpoint": checkpoint, "checkpoint_every": 800}
    with pytest.raises(Killed):
        _algo(**params).train_many(spec, contexts, seeds, progress=kill, mixture=mixture, **run)
    assert checkpoint.with_suffix(".safetensors").is_file()
    resumed = _algo(**params).train_many(spec, contexts, seeds, mixture=mixture, **run)
    for name, value in reference.params.items():
        assert torch.equal(value, resumed.params[name]), name


@pytest.mark.long
def test_batched_dqn_learns_cartpole() -> None:
    """CI-sized: 4 agents x 60k steps with the defaults shortened (learning from 2k steps,
    exploration over 40%, target copies every 250 steps); measured 235, 408, 498, 473. Random
    play scores about 22 and a constant action about 9."""
    spec = get_host().registry.env("CartPole")
    algo = _algo(learning_starts=2000, exploration_fraction=0.4, target_network_frequency=250)
    policies = algo.train_many(spec, [{}] * 4, [0, 1, 2, 3], total_steps=60_000)
    returns = algo.evaluate_many(policies, spec, [{}], episodes=5, seed=0).mean(axis=(1, 2))
    assert returns.mean() > 250, returns


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"double": True}, {"dueling": True}])
def test_batched_dqn_variants_solve_cartpole(options: dict) -> None:
    """The full budget of the defaults (CleanRL's): 500k steps (benchmarks/RESULTS.md)."""
    spec = get_host().registry.env("CartPole")
    algo = _algo(**options)
    policies = algo.train_many(spec, [{}] * 4, [0, 1, 2, 3], total_steps=500_000)
    returns = algo.evaluate_many(policies, spec, [{}], episodes=10, seed=0).mean(axis=(1, 2))
    assert np.mean(returns >= 475) >= 0.75, returns


@pytest.mark.long
@pytest.mark.parametrize(
    "options",
    [  # the default run compiles the variant with every option; the plain one is slow-marked
        pytest.param({}, marks=pytest.mark.slow),
        {"double": True, "dueling": True, "huber": True},
    ],
)
def test_the_compiled_step_and_loss_train_as_the_eager_ones(options: dict) -> None:
    """``compile: on`` runs each env step (greedy action, exploration, the twin's branch-free
    step) and the TD loss as compiled graphs. Fused kernels may round differently from eager
    ones: after 16 gradient steps the weights agree to 1e-4 (greedy actions, hence the
    replayed data, are the same unless two Q-values tie to rounding). An agent trained
    alone still equals itself in the batch to the same tolerance; the first iteration's
    compilation is reported as ``compile_s``."""
    torch.compiler.reset()
    spec = get_host().registry.env("CartPole")
    params = {**FAST, **options}
    contexts, seeds = [{"masscart": 1.0}, {"masscart": 3.0}], [3, 4]
    algorithms = {mode: _algo(compile=mode, **params) for mode in ("off", "on")}
    trained = {
        mode: algorithm.train_many(spec, contexts, seeds, total_steps=264)
        for mode, algorithm in algorithms.items()
    }
    # compiling (or loading inductor's on-disk cache, under a second) is timed
    assert algorithms["off"].compile_s == 0.0 and algorithms["on"].compile_s > 0.1
    for name, value in trained["off"].params.items():
        torch.testing.assert_close(trained["on"].params[name], value, rtol=1e-4, atol=1e-4)
    alone = _algo(compile="on", **params).train_many(spec, contexts[1:], [4], total_steps=264)
    torch.testing.assert_close(alone.params["q.0.weight"][0], trained["on"].params["q.0.weight"][1])
    evaluations = [
        _algo(compile=mode).evaluate_many(trained["off"], spec, contexts, episodes=2, seed=0)
        for mode in ("off", "on")
    ]
    np.testing.assert_allclose(evaluations[1], evaluations[0], rtol=1e-4)


def test_options_and_spaces_are_checked() -> None:
    with pytest.raises(ConfigError, match="batched-dqn has no hyperparameter 'eps'"):
        _algo(eps=0.1)
    with pytest.raises(ConfigError, match=r"algorithm\.params\.compile: batched-dqn takes one of"):
        _algo(compile="fast")
    short = _algo(compile="auto", **FAST)  # below DQN's CPU break-even point: eager
    short.train_many(get_host().registry.env("CartPole"), [{}], [0], total_steps=300)
    assert not short.compiling
    with pytest.raises(CtxrlError, match="discrete actions"):
        _algo().train_many(get_host().registry.env("Pendulum"), [{}], [0], total_steps=10)
    # values that trained without learning: a target network never updated (tau 0), a
    # start_e that max(end_e, ...) silently replaced, no gradient step in the steps trained
    with pytest.raises(ConfigError, match="tau: Input should be greater than 0"):
        _algo(tau=0.0)
    with pytest.raises(ConfigError, match=r"start_e must be >= end_e, got 0\.01 < 0\.5"):
        _algo(start_e=0.01, end_e=0.5)
    with pytest.raises(ConfigError, match="but an agent trains 1000: it would never learn"):
        _algo(num_envs=4, learning_starts=1000).check_budget(1001)  # 250 iterations of 4
    # a batch larger than the buffer: repeated transitions, and minutes for a tiny training
    with pytest.raises(ConfigError, match=r"batch_size: batched-dqn draws 129 .* buffer of 128"):
        _algo(buffer_size=128, batch_size=129)


class TestBatchedDQNContract(AlgorithmContract):
    algorithm_name = "batched-dqn"
    params = FAST
    total_steps = 600

    @pytest.fixture
    def algorithm_spec(self) -> AlgorithmSpec:
        return get_host().registry.algorithm("batched-dqn")

    @pytest.fixture
    def env_spec(self) -> EnvSpec:
        return get_host().registry.env("CartPole")


def test_gradient_clipping_can_be_turned_off_as_cleanrl_trains() -> None:
    """The default clips each agent's gradient at SB3's norm 10; CleanRL's DQN does not clip,
    which ``max_grad_norm: null`` now gives (a norm no gradient reaches trains the same)."""
    registry = get_host().registry
    spec = registry.env("CartPole")

    def trained(clip: float | None) -> dict[str, torch.Tensor]:
        params = {"learning_starts": 200, "train_frequency": 2, "max_grad_norm": clip}
        algorithm = registry.algorithm("batched-dqn").factory(params, env=spec)
        return dict(algorithm.train_many(spec, [{}], [0], total_steps=600).params)

    unclipped, huge = trained(None), trained(1e30)
    assert all(torch.equal(unclipped[k], huge[k]) for k in unclipped)


def test_a_soft_target_update_carries_a_plasticity_injection_over() -> None:
    """With ``tau < 1`` the target network was averaged parameter by parameter with an online
    network just injected: the old block with the fresh one and the switch to 0.5, a target of
    neither network (its outputs moved by about the outputs' own size). The injection is now
    carried over first: the target keeps its outputs and lines up with the online slots."""
    from ctxrl.interventions import NetworkSpec
    from ctxrl_plugins.algorithms.dqn import _inject_target
    from ctxrl_plugins.training.networks import StackedMLP, stack_agents

    net = StackedMLP("q", NetworkSpec(hidden=(8, 8), injections=1), 3, {"head": (2, 1.0)})
    online = stack_agents(
        [net.init_agent(torch.Generator().manual_seed(s)) for s in range(2)], torch.device("cpu")
    )
    target = {k: v.clone() for k, v in online.items()}
    for name, value in target.items():  # a target some updates behind the online network
        if name.endswith("weight") and "injection" not in name:
            value += 0.1
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(9))
    before = net(target, x)
    # agent 0 injected as the intervention does: its block into `old`, a fresh one drawn
    block = [k for k in online if k.startswith("q.injection0.old.")]
    for old in block:
        live = "q." + old.removeprefix("q.injection0.old.")
        fresh = "q.injection0.fresh." + live.removeprefix("q.")
        online[old][0] = online[live][0]
        online[live][0] = torch.randn(online[live][0].shape)
        online[fresh][0] = online[live][0]
    online["q.injection0.on"][0] = 1.0
    _inject_target(target, online)
    torch.testing.assert_close(net(target, x), before, atol=1e-6, rtol=0)
    assert float(target["q.injection0.on"][0].reshape(-1)[0]) == 1.0
    assert float(target["q.injection0.on"][1].reshape(-1)[0]) == 0.0  # agent 1 untouched
    for k in block:
        fresh = k.replace(".old.", ".fresh.")
        assert torch.equal(target[fresh][0], online[fresh][0])
    unchanged = {k: v[1].clone() for k, v in target.items()}
    _inject_target(target, online)  # nothing more to carry over
    assert all(torch.equal(target[k][1], v) for k, v in unchanged.items())
