"""Batched PPO: independence of agents, learning, cross-evaluation, artifacts, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctxrl import ConfigError
from ctxrl.plugins import get_host
from ctxrl.registry import AlgorithmSpec, EnvSpec
from ctxrl.testing import AlgorithmContract
from ctxrl.yaml12 import parse_yaml


def _algo(**params: object):
    return get_host().registry.algorithm("batched-ppo").factory(params, device="cpu")


SMALL = {"num_steps": 32, "num_minibatches": 2, "update_epochs": 2}


@pytest.mark.parametrize(
    ("env_name", "params"),
    [
        ("CartPole", {}),
        ("Pendulum", {"num_steps": 64}),
        ("Acrobot", {}),
        # activations per agent below 64 or not a multiple of it: the tail of torch's vector
        # loop, where its CPU sigmoid rounds differently (networks.VECTOR_ALIGNED_ELEMENTS)
        ("CartPole", {**SMALL, "num_envs": 1, "hidden": 16}),
        ("Acrobot", {**SMALL, "num_envs": 3, "hidden": 24}),
    ],
)
def test_an_agent_trains_the_same_alone_and_in_a_batch_of_16(env_name: str, params: dict) -> None:
    spec = get_host().registry.env(env_name)
    feature = spec.context_space.features[0]
    alone = _algo(**params).train_many(
        spec, [{feature.name: feature.default}], [3], total_steps=2048
    )
    contexts = [{feature.name: float(feature.from_unit(i / 15))} for i in range(16)]
    seeds = list(range(100, 116))
    contexts[5], seeds[5] = {feature.name: feature.default}, 3
    batch = _algo(**params).train_many(spec, contexts, seeds, total_steps=2048)
    for name, value in alone.params.items():
        assert torch.equal(value[0], batch.params[name][5]), name
    assert not torch.equal(batch.params["actor.0.weight"][4], batch.params["actor.0.weight"][5])


@pytest.mark.long
def test_batched_ppo_learns_cartpole() -> None:
    """CI-sized: 4 agents x 60k steps; random play scores about 22."""
    spec = get_host().registry.env("CartPole")
    algo = _algo()
    policies = algo.train_many(spec, [{}] * 4, [0, 1, 2, 3], total_steps=60_000)
    returns = algo.evaluate_many(policies, spec, [{}], episodes=8, seed=0)
    assert returns.shape == (4, 1, 8)
    assert np.median(returns.mean(axis=(1, 2))) > 150


@pytest.mark.slow
def test_batched_ppo_reaches_475_on_cartpole_for_most_of_8_seeds() -> None:
    spec = get_host().registry.env("CartPole")
    algo = _algo()
    policies = algo.train_many(spec, [{}] * 8, list(range(8)), total_steps=500_000)
    returns = algo.evaluate_many(policies, spec, [{}], episodes=20, seed=0).mean(axis=(1, 2))
    assert np.mean(returns >= 475) >= 0.9, returns


@pytest.mark.slow
def test_batched_ppo_learns_pendulum() -> None:
    registry = get_host().registry
    spec = registry.env("Pendulum")
    algo = registry.algorithm("batched-ppo").factory(
        registry.algorithm("batched-ppo").presets["Pendulum"], device="cpu"
    )
    policies = algo.train_many(spec, [{}] * 4, list(range(4)), total_steps=1_000_000)
    returns = algo.evaluate_many(policies, spec, [{}], episodes=20, seed=0).mean(axis=(1, 2))
    assert np.mean(returns >= -250) > 0.5, returns


def test_cross_evaluation_matches_evaluation_on_own_context() -> None:
    spec = get_host().registry.env("CartPole")
    algo = _algo()
    contexts = [{"masscart": 0.5}, {"masscart": 2.0}, {"masscart": 5.0}]
    policies = algo.train_many(spec, contexts, [0, 1, 2], total_steps=4096)
    matrix = algo.evaluate_many(policies, spec, contexts, episodes=3, seed=7)
    assert matrix.shape == (3, 3, 3)
    for i, context in enumerate(contexts):
        own = algo.evaluate(policies.select([i]), spec, [spec.task(context)], episodes=3, seed=7)
        np.testing.assert_array_equal(own[0], matrix[i, i])


@pytest.mark.parametrize(
    "compile_mode", ["off", pytest.param("on", marks=pytest.mark.long)], ids=["eager", "compiled"]
)
def test_checkpoint_resume_continues_exactly(tmp_path: Path, compile_mode: str) -> None:
    """Compiled too: the twin's state came back in another memory layout, the compiled
    rollout recompiled for it and rounded differently (4 parameters differed)."""
    spec = get_host().registry.env("CartPole")
    contexts, seeds = [{"masscart": 1.0}, {"masscart": 3.0}], [0, 1]
    # the diagnostics record after iteration 6 averages across the checkpoint after the 4th
    window = {"diagnostics_every": 6 * 64}

    def _algo() -> Any:
        # small networks (16 units): inductor's kernels for them round differently with the
        # state's strides (the default 64 units happened to agree)
        params = {"compile": compile_mode, "num_envs": 2, "num_steps": 32, "hidden": 16}
        return get_host().registry.algorithm("batched-ppo").factory(params, device="cpu")

    reference = _algo().train_many(spec, contexts, seeds, total_steps=8 * 64, **window)

    class Killed(Exception):
        pass

    def kill_after_sixth(done: int, total: int) -> None:
        if done == 6:
            raise Killed

    checkpoint = tmp_path / "ckpt"
    run: dict[str, Any] = {
        "total_steps": 8 * 64,
        "checkpoint": checkpoint,
        "checkpoint_every": 4 * 64,
        **window,
    }
    with pytest.raises(Killed):
        _algo().train_many(spec, contexts, seeds, progress=kill_after_sixth, **run)
    assert checkpoint.with_suffix(".safetensors").is_file()
    resumed = _algo().train_many(spec, contexts, seeds, **run)
    for name, value in reference.params.items():
        assert torch.equal(value, resumed.params[name]), name
    assert reference.log.diagnostic_steps == resumed.log.diagnostic_steps
    for name, values in reference.log.diagnostics.items():
        for step, (straight, again) in enumerate(
            zip(values, resumed.log.diagnostics[name], strict=True)
        ):
            np.testing.assert_array_equal(straight, again, err_msg=f"{name} at record {step}")


@pytest.mark.long
@pytest.mark.parametrize("env_name", ["CartPole", "Pendulum"])
def test_the_compiled_rollout_trains_as_the_eager_one(env_name: str) -> None:
    """``compile: on`` runs the rollout step as one compiled graph over the twin's
    branch-free step (which draws the same random numbers, see tests/test_twins.py). Fused
    kernels may round differently from eager ones: after two iterations (each through the
    optimizer) the parameters agree to 1e-4 and the evaluation returns to 1e-3 of their
    size; agent 1 still trains as alone. Compiled evaluation gives the eager returns. The
    first iteration's compilation is reported as ``compile_s``."""
    torch.compiler.reset()  # nothing compiled earlier in this process
    spec = get_host().registry.env(env_name)
    feature = spec.context_space.features[0]
    contexts = [{feature.name: feature.default}, {feature.name: float(feature.from_unit(0.8))}]
    params = {"num_steps": 64} if env_name == "Pendulum" else {}
    steps = 2 * 4 * (params.get("num_steps") or 128)
    algorithms = {mode: _algo(compile=mode, **params) for mode in ("off", "on")}
    trained = {
        mode: algorithm.train_many(spec, contexts, [3, 4], total_steps=steps)
        for mode, algorithm in algorithms.items()
    }
    # compiling (or loading inductor's on-disk cache, under a second) is timed
    assert algorithms["off"].compile_s == 0.0 and algorithms["on"].compile_s > 0.1
    for name, value in trained["off"].params.items():
        torch.testing.assert_close(trained["on"].params[name], value, rtol=1e-4, atol=1e-4)
    returns = {
        mode: _algo().evaluate_many(policies, spec, contexts, episodes=2, seed=0)
        for mode, policies in trained.items()
    }
    np.testing.assert_allclose(returns["on"], returns["off"], rtol=1e-3)
    compiled_evaluation = _algo(compile="on").evaluate_many(
        trained["off"], spec, contexts, episodes=2, seed=0
    )  # compiled evaluation of the same policies: the same episodes, to rounding
    np.testing.assert_allclose(compiled_evaluation, returns["off"], rtol=1e-4)
    alone = _algo(compile="on", **params).train_many(spec, contexts[1:], [4], total_steps=steps)
    torch.testing.assert_close(
        alone.params["actor.0.weight"][0], trained["on"].params["actor.0.weight"][1]
    )


@pytest.mark.long
def test_compiled_updates_fuse_the_step_unless_an_intervention_runs_around_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compiled, each minibatch's loss, gradient, clipping and Adam step run as one graph
    (``AgentAdam.fused_step``); with an intervention (which may add a loss term or act after
    each step) the loss is compiled alone and autograd and the optimizer step follow it. Both
    train as the eager update does, to rounding."""
    from ctxrl.interventions import Intervention
    from ctxrl_plugins.training.optimizer import AgentAdam

    fused_steps = []
    fused_step = AgentAdam.fused_step

    def counting(self: AgentAdam, *args: object, **kwargs: object) -> object:
        fused_steps.append(1)
        return fused_step(self, *args, **kwargs)

    monkeypatch.setattr(AgentAdam, "fused_step", counting)
    spec = get_host().registry.env("CartPole")
    contexts, seeds = [{"length": 0.5}, {"length": 1.5}], [3, 4]
    steps = 2 * 4 * 128  # two iterations of 4 minibatches x 4 epochs
    trained, counts = {}, {}
    for arm, mode, interventions in (
        ("eager", "off", ()),
        ("fused", "on", ()),
        ("unfused", "on", (Intervention(),)),
    ):
        fused_steps.clear()
        trained[arm] = _algo(compile=mode).train_many(
            spec, contexts, seeds, total_steps=steps, interventions=interventions
        )
        counts[arm] = len(fused_steps)
    assert counts == {"eager": 0, "fused": 2 * 16, "unfused": 0}
    for arm in ("fused", "unfused"):
        for name, value in trained["eager"].params.items():
            torch.testing.assert_close(trained[arm].params[name], value, rtol=1e-4, atol=1e-4)
    logs = {arm: policies.log for arm, policies in trained.items()}
    assert logs["eager"] is not None and logs["fused"] is not None
    assert logs["fused"].diagnostics.keys() == logs["eager"].diagnostics.keys()
    for name, values in logs["eager"].diagnostics.items():  # losses, KL, clip fraction, norms
        np.testing.assert_allclose(
            np.array(logs["fused"].diagnostics[name]), np.array(values), rtol=1e-3, atol=1e-5
        )


def test_compile_auto_compiles_where_it_pays_and_bad_values_are_named() -> None:
    from ctxrl_plugins.training.compiling import CPU_COMPILE_MIN_ITERATIONS, compile_pays

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    long_run = CPU_COMPILE_MIN_ITERATIONS
    assert compile_pays("auto", cuda, 1)
    assert compile_pays("auto", cpu, long_run) and not compile_pays("auto", cpu, long_run - 1)
    assert compile_pays("on", cpu, 1) and not compile_pays("off", cuda, long_run)
    assert not compile_pays("auto", cpu, 10**9, cpu_min_iterations=None)  # never on the CPU
    assert compile_pays("auto", cuda, 1, cpu_min_iterations=None)
    short = _algo(compile="auto")
    short.train_many(get_host().registry.env("CartPole"), [{}], [0], total_steps=512)
    assert not short.compiling
    with pytest.raises(ConfigError, match=r"algorithm\.params\.compile: batched-ppo takes one of"):
        _algo(compile="yes")


def test_compile_off_and_on_unquoted_in_yaml_are_the_modes() -> None:
    """YAML reads ``compile: off`` as False: it means the mode ``off``, as written."""
    for text, mode in (("compile: off", "off"), ("compile: on", "on"), ("compile: auto", "auto")):
        assert _algo(**parse_yaml(text)).config.compile == mode


def test_unknown_hyperparameter_is_named() -> None:
    with pytest.raises(ConfigError, match="batched-ppo has no hyperparameter 'lr'"):
        _algo(lr=1e-3)
    with pytest.raises(ConfigError, match="rollout_segment: Value error, a boolean is not"):
        _algo(rollout_segment=True)  # YAML's true was taken as 1


def test_hidden_takes_one_width_or_one_per_layer() -> None:
    """``hidden: [64, 64]`` (batched DQN's form) was refused as "Input should be a valid
    integer (got (64, 64))"."""
    twin = get_host().registry.env("CartPole").make_batched(1)
    for hidden, widths in ((16, (16, 16)), ([32, 8], (32, 8)), ([8, 8, 8], (8, 8, 8))):
        (spec, _), _ = _algo(hidden=hidden).network_specs(twin).values()
        assert spec.hidden == widths
    for bad in ([64, "x"], [], 0, True):
        with pytest.raises(ConfigError, match=r"hidden: Value error, one width for every hidden"):
            _algo(hidden=bad)


@pytest.mark.parametrize("env_name", ["CartPole", "Pendulum"])
class TestBatchedPPOContract(AlgorithmContract):
    algorithm_name = "batched-ppo"
    total_steps = 1024

    @pytest.fixture
    def env_spec(self, env_name: str) -> EnvSpec:
        return get_host().registry.env(env_name)

    @pytest.fixture
    def algorithm_spec(self) -> AlgorithmSpec:
        return get_host().registry.algorithm("batched-ppo")


def test_the_torch_compile_mode_comes_from_its_variable_and_an_unknown_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ctxrl_plugins.training.compiling import TORCH_COMPILE_MODE_VARIABLE, torch_compile_mode

    monkeypatch.delenv(TORCH_COMPILE_MODE_VARIABLE, raising=False)
    assert torch_compile_mode() == "default"
    monkeypatch.setenv(TORCH_COMPILE_MODE_VARIABLE, "reduce-overhead")
    assert torch_compile_mode() == "reduce-overhead"
    monkeypatch.setenv(TORCH_COMPILE_MODE_VARIABLE, "fastest")
    with pytest.raises(ConfigError, match=r"CTXRL_TORCH_COMPILE_MODE: .*got 'fastest'"):
        torch_compile_mode()


def test_a_rollout_segment_that_does_not_divide_the_rollout_is_an_error_naming_it() -> None:
    spec = get_host().registry.algorithm("batched-ppo")
    with pytest.raises(
        ConfigError, match=r"rollout_segment: .*divisor of num_steps \(128\), got 3"
    ):
        spec.factory({"rollout_segment": 3}, device="cpu")
    with pytest.raises(ConfigError, match=r"divisor of num_steps \(6\), got 4"):
        spec.factory({"num_steps": 6, "rollout_segment": 4}, device="cpu")


def test_rollout_segments_train_the_same_numbers_as_single_steps() -> None:
    """Four rollout steps per call (one graph per call when compiled) store the same rollout
    as one step per call: the parameters after two iterations are equal bit for bit."""
    registry = get_host().registry
    env = registry.env("CartPole")
    contexts = [{"length": 0.5}, {"length": 1.5}]
    trained = [
        registry.algorithm("batched-ppo")
        .factory({"rollout_segment": k}, device="cpu")
        .train_many(env, contexts, [0, 1], total_steps=1024)
        for k in (1, 4)
    ]
    for name, value in trained[0].params.items():
        assert torch.equal(value, trained[1].params[name]), name


def test_a_function_compiled_for_cuda_graphs_returns_copies_with_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under ``reduce-overhead`` each call returns copies of the graph's outputs (a later
    replay cannot overwrite what a caller kept); on the CPU PyTorch runs it without graphs."""
    from ctxrl_plugins.training.compiling import TORCH_COMPILE_MODE_VARIABLE, CompiledFunction

    def affine(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2 + 1, x

    monkeypatch.setenv(TORCH_COMPILE_MODE_VARIABLE, "reduce-overhead")
    compiled = CompiledFunction(affine)
    x = torch.arange(4.0)
    first, same = compiled(x)
    second, _ = compiled(x + 1)
    assert torch.equal(first, torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert torch.equal(second, first + 2)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()  # a copy of the input


def test_continuous_actions_are_clipped_to_the_action_space_before_the_step() -> None:
    """MountainCarContinuous charges ``0.1 a^2`` for the action as given (gymnasium's env, and
    its twin, do); gymnasium's ClipAction, SB3 and CleanRL clip to [-1, 1] first, and so do the
    batched trainers, in training and evaluation. A policy whose mean is 5 pushes with +1 and
    is charged 0.1 a step, not 2.5 (the car cannot climb by pushing one way: 999 steps)."""
    spec = get_host().registry.env("MountainCarContinuous")
    algo = _algo(num_steps=16)
    policies = algo.train_many(spec, [{}], [0], total_steps=64)
    policies.params["actor.head.weight"].zero_()
    policies.params["actor.head.bias"].fill_(5.0)
    returns = algo.evaluate_many(policies, spec, [{}], episodes=2, seed=0)
    np.testing.assert_allclose(returns, -0.1 * 999, rtol=1e-5)
    env = spec.make({})  # the gymnasium env itself charges the raw action
    env.reset(seed=0)
    assert env.step(np.array([5.0], dtype=np.float32))[1] == pytest.approx(-2.5)


def test_the_cpu_tanh_of_an_agent_does_not_depend_on_its_batch_or_the_threads() -> None:
    """With several intra-op threads torch splits a large tensor in chunks its vector loop need
    not divide, and its sigmoid rounds a chunk's last elements differently: 11 agents of
    (128, 64) activations each differed from themselves alone on 3 threads."""
    from ctxrl_plugins.training.networks import tanh

    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            for shape in [(11, 128, 64)] * 10 + [(7, 512, 64), (5, 3, 7)]:
                x = torch.randn(shape, generator=generator) * 2
                batch = tanh(x)
                alone = [tanh(x[i : i + 1])[0] for i in range(shape[0])]
                assert all(torch.equal(batch[i], a) for i, a in enumerate(alone)), (count, shape)
                assert torch.allclose(batch, torch.tanh(x), atol=3e-7)
    finally:
        torch.set_num_threads(threads)


def test_sampled_actions_need_the_agents_streams_and_observations_their_shape() -> None:
    """``act(obs, deterministic=False)`` without ``rng`` returned the greedy actions without a
    word, and observations without the agents' axis failed inside the network."""
    from ctxrl.errors import CtxrlError
    from ctxrl.rng import StreamRNG

    registry = get_host().registry
    algorithm = registry.algorithm("batched-ppo").factory({}, device="cpu")
    policies = algorithm.train_many(registry.env("CartPole"), [{}], [0], total_steps=512)
    obs = torch.zeros(1, 3, 4)
    assert policies.act(obs, True).shape == (1, 3)
    assert policies.act(obs, False, StreamRNG(torch.tensor([0]))).shape == (1, 3)
    with pytest.raises(CtxrlError, match=r"sampled actions \(deterministic=False\) need rng"):
        policies.act(obs, False)
    with pytest.raises(CtxrlError, match=r"\(1, M, 4\), got \(1, 4\)"):
        policies.act(torch.zeros(1, 4), True)


def test_library_calls_with_wrong_arguments_name_them() -> None:
    """Errors a library user met: episodes 0 ("num_envs must be >= 1"), a CartPole policy on
    Acrobot (a matrix-product error), numpy seeds (numpy's "truth value ... ambiguous") and
    env_ids as a list (AttributeError 'numel')."""
    from ctxrl.errors import ContextError, CtxrlError

    registry = get_host().registry
    cartpole = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({}, device="cpu")
    policies = algorithm.train_many(cartpole, [{}, {}], np.array([0, 1]), total_steps=512)
    assert policies.seeds == [0, 1]
    with pytest.raises(CtxrlError, match="episodes must be a whole number >= 1, got 0"):
        algorithm.evaluate_many(policies, cartpole, [{}], episodes=0, seed=0)
    with pytest.raises(CtxrlError, match="give at least one context"):
        algorithm.evaluate_many(policies, cartpole, [], episodes=1, seed=0)
    with pytest.raises(CtxrlError, match="the policies observe 4 features and Acrobot's twin"):
        algorithm.evaluate_many(policies, registry.env("Acrobot"), [{}], episodes=1, seed=0)
    with pytest.raises(CtxrlError, match=r"seeds must be whole numbers, got \[0.5\]"):
        algorithm.train_many(cartpole, [{}], [0.5], total_steps=512)
    twin = cartpole.make_batched(3, seed=0)
    twin.set_context({"length": 1.0}, env_ids=[1])
    assert twin.context["length"].tolist() == [0.5, 1.0, 0.5]
    with pytest.raises(ContextError, match=r"env_ids must lie in 0\.\.2, got \[5\]"):
        twin.set_context({"length": 1.0}, env_ids=[5])
    # a mask or fractions are not indices (converted, a mask [F, T, T] set envs 0 and 1)
    with pytest.raises(ContextError, match=r"env_ids are env indices .* torch.bool: for a mask"):
        twin.set_context({"length": 2.0}, env_ids=torch.tensor([False, True, True]))
    with pytest.raises(ContextError, match=r"env_ids are env indices .* got torch.float32"):
        twin.set_context({"length": 2.0}, env_ids=torch.tensor([2.9]))
    assert twin.context["length"].tolist() == [0.5, 1.0, 0.5]


# ------------------------------------------------------------ actions of several dimensions
def _reach_env() -> EnvSpec:
    """A twin with two-dimensional actions (a plugin's, as the README allows): reward
    ``-(a0 - c)^2 - (a1 + c)^2`` per step, ``c`` the context's target; 8-step episodes."""
    from ctxrl import ContextFeature, ContextSpace
    from ctxrl.twins import BatchedEnv

    reach = ContextSpace([ContextFeature("target", 0.5, 0.0, 1.0)], owner="Reach2D")

    class Reach2D(BatchedEnv):
        name, space = "Reach2D", reach
        obs_dim = state_dim = 1
        discrete_actions = None
        action_dim = 2
        max_episode_steps = 8
        action_bounds = (-3.0, 3.0)

        def _initial_state(self, env_ids: Any) -> torch.Tensor:
            n = self.num_envs if env_ids is None else len(env_ids)
            return torch.zeros(1, n, dtype=self.dtype, device=self.device)

        def _dynamics(self, state: torch.Tensor, action: torch.Tensor) -> Any:
            c, a = self.context["target"], action.reshape(-1, 2).to(self.dtype)
            reward = -((a[:, 0] - c) ** 2) - (a[:, 1] + c) ** 2
            return state.clone(), reward, torch.zeros_like(reward, dtype=torch.bool)

    return EnvSpec(
        "Reach2D",
        reach,
        make=lambda context=None, **kw: None,
        return_bounds=(-40.0, 0.0),
        action_space="continuous",
        make_batched=lambda n, **kw: Reach2D(n, **kw),
        max_episode_steps=8,
    )


def test_continuous_actions_of_several_dimensions_are_learned_per_dimension() -> None:
    """The actor had one output and one log-std whatever the twin's ``action_dim``: a twin of
    two-dimensional actions got ``(B, 1)`` actions and failed (or, broadcasting, one value in
    both). Now each dimension has its mean and its standard deviation, and both are learned."""
    spec = _reach_env()
    algorithm = (
        get_host()
        .registry.algorithm("batched-ppo")
        .factory({"num_steps": 32, "learning_rate": 3e-3}, env=spec)
    )
    policies = algorithm.train_many(
        spec, [{"target": 0.2}, {"target": 0.8}], [0, 1], total_steps=8192
    )
    assert policies.params["actor.log_std"].shape == (2, 2)
    actions = policies.act(torch.zeros(2, 1, 1), deterministic=True)[:, 0]  # (agents, 2)
    expected = torch.tensor([[0.2, -0.2], [0.8, -0.8]])
    assert torch.allclose(actions, expected, atol=0.15), actions
