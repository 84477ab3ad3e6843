"""The SB3 adapter: every algorithm trains and evaluates on a contextual env through the plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_SB3, requires_sb3

from ctxrl import ConfigError
from ctxrl.plugins import get_host
from ctxrl.registry import AlgorithmSpec, EnvSpec
from ctxrl.testing import AlgorithmContract

pytestmark = requires_sb3

CASES = [
    ("sb3-ppo", "CartPole"),
    ("sb3-a2c", "CartPole"),
    ("sb3-dqn", "CartPole"),
    ("sb3-sac", "Pendulum"),
    ("sb3-td3", "Pendulum"),
    ("sb3-ppo", "Pendulum"),
]
SMALL = {
    "sb3-ppo": {"n_steps": 64, "batch_size": 32, "n_epochs": 1},
    "sb3-a2c": {"n_steps": 8},
    "sb3-dqn": {"learning_starts": 64, "buffer_size": 1000},
    "sb3-sac": {"learning_starts": 64, "buffer_size": 1000, "batch_size": 32},
    "sb3-td3": {
        "learning_starts": 64,
        "buffer_size": 1000,
        "batch_size": 32,
        "noise_type": "normal",
        "noise_std": 0.1,
    },
}


@pytest.mark.parametrize(("algo", "env"), CASES if HAS_SB3 else [])
class TestEverySB3Algorithm(AlgorithmContract):
    total_steps = 192

    @pytest.fixture
    def algorithm_spec(self, algo: str) -> AlgorithmSpec:
        type(self).params = SMALL[algo]
        return get_host().registry.algorithm(algo)

    @pytest.fixture
    def env_spec(self, env: str) -> EnvSpec:
        return get_host().registry.env(env)


def test_presets_load_by_name() -> None:
    registry = get_host().registry
    for algo in ("sb3-ppo", "sb3-dqn", "sb3-sac", "sb3-td3", "sb3-a2c"):
        spec = registry.algorithm(algo)
        assert spec.presets, algo
        for preset in spec.presets.values():  # every preset is accepted by its SB3 class
            spec.factory(dict(preset), device="cpu", env=registry.env("CartPole"))
    assert registry.algorithm("sb3-ppo").presets["CartPole"]["n_steps"] == 32


def test_reserved_and_unknown_hyperparameters_are_named() -> None:
    spec = get_host().registry.algorithm("sb3-ppo")
    env = get_host().registry.env("CartPole")
    with pytest.raises(ConfigError, match="sb3-ppo has no hyperparameter 'learning_rat'"):
        spec.factory({"learning_rat": 1e-3}, device="cpu", env=env)
    with pytest.raises(ConfigError, match="set by ctxrl"):
        spec.factory({"seed": 3}, device="cpu", env=env)


@pytest.mark.parametrize(
    ("algorithm", "params", "message"),
    [
        ("sb3-ppo", {"learning_rate": "abc"}, "sb3-ppo: learning_rate must be a number > 0"),
        ("sb3-ppo", {"learning_rate": "lin_x"}, "learning_rate 'lin_x': expected a number or"),
        ("sb3-ppo", {"noise_type": "normal"}, "which sb3-ppo does not take"),
        ("sb3-ppo", {"n_envs": True}, "sb3-ppo: n_envs must be a whole number, got True"),
        ("sb3-ppo", {"policy": "Foo"}, "policy 'Foo' is not one of MlpPolicy"),
        ("sb3-td3", {"noise_std": 0.5}, "noise_std alone adds no noise"),
        ("sb3-td3", {"noise_type": "pink"}, "noise_type must be normal or ornstein-uhlenbeck"),
        # failed inside every run of a sweep, after --dry-run accepted them
        ("sb3-ppo", {"clip_range": "lin_x"}, "clip_range 'lin_x': expected a number or"),
        ("sb3-ppo", {"batch_size": 0}, "sb3-ppo: batch_size must be >= 1"),
        ("sb3-ppo", {"n_steps": 0}, "sb3-ppo: n_steps must be >= 1"),
        ("sb3-ppo", {"gamma": "abc"}, r"gamma must be a number in \[0, 1\]"),
        ("sb3-ppo", {"policy_kwargs": {"bogus": 1}}, "policy_kwargs 'bogus': ActorCriticPolicy"),
        ("sb3-ppo", {"policy_kwargs": {"activation_fn": "relux"}}, "'relux' is not a torch.nn"),
        ("sb3-dqn", {"train_freq": [1, "episodes"]}, r"train_freq must be a count or \[count"),
        (  # SB3 asserted it in every run, after --dry-run accepted it
            "sb3-dqn",
            {"train_freq": [1, "episode"], "n_envs": 2},
            "train_freq in episodes trains on one env only",
        ),
        ("sb3-ppo", {"ent_coef": "lin_0.01"}, "SB3 takes a schedule for learning_rate, clip"),
        # failed inside every run (SB3's asserts, a modulo by zero after learning_starts), or
        # named the wrong key (NaN became null in plan.yaml: "learning rate schedule ... None")
        ("sb3-sac", {"ent_coef": "bogus"}, "ent_coef must be a number >= 0, auto or auto_<"),
        ("sb3-td3", {"policy_delay": 0}, "sb3-td3: policy_delay must be >= 1, got 0"),
        ("sb3-ppo", {"batch_size": 1}, "sb3-ppo: batch_size must be >= 2 where advantages"),
        ("sb3-ppo", {"n_steps": 1, "n_envs": 1}, "n_steps x n_envs must be >= 2 where advan"),
        ("sb3-ppo", {"clip_range": float("nan")}, "clip_range must be a finite number > 0"),
        ("sb3-sac", {"learning_starts": float("nan")}, "learning_starts must be a finite number"),
        ("sb3-ppo", {"policy_kwargs": {"net_arch": "abc"}}, "net_arch must be a list of layer"),
        ("sb3-ppo", {"policy_kwargs": {"net_arch": [-4, 3]}}, r"net_arch\[0\] must be >= 1"),
        ("sb3-ppo", {"policy_kwargs": {"net_arch": {"pi": [8], "q": [8]}}}, "not pi, vf or qf"),
        # taken silently: sources that never learned entered the matrix as trained
        ("sb3-sac", {"tau": 2.0}, r"tau must be a number in \(0, 1\], got 2.0"),
        ("sb3-sac", {"gradient_steps": 0}, r"gradient_steps \(-1 or a count\) must be >= 1"),
        ("sb3-sac", {"ent_coef": -1}, "ent_coef must be a finite number >= 0, got -1"),
        ("sb3-sac", {"learning_starts": -5}, "learning_starts must be >= 0, got -5"),
        ("sb3-sac", {"use_sde": "yes"}, "use_sde must be true or false, got 'yes'"),
        ("sb3-sac", {"target_entropy": "low"}, "target_entropy must be auto or a number"),
        ("sb3-td3", {"target_policy_noise": -1}, "target_policy_noise must be a finite number >="),
        ("sb3-ppo", {"target_kl": -1}, "target_kl must be a finite number > 0, got -1"),
        ("sb3-ppo", {"vf_coef": -1}, "vf_coef must be a finite number >= 0, got -1"),
        ("sb3-ppo", {"sde_sample_freq": -2}, "sde_sample_freq must be >= -1"),
        ("sb3-sac", {"ent_coef": "auto0.1"}, "ent_coef must be a number >= 0, auto or auto_<"),
        ("sb3-sac", {"ent_coef": "auto_"}, "ent_coef must be a number >= 0, auto or auto_<"),
        ("sb3-dqn", {"exploration_final_eps": 1.5}, "exploration_final_eps must be a number in"),
    ],
)
def test_hyperparameter_values_are_checked_before_any_run(
    algorithm: str, params: dict[str, object], message: str
) -> None:
    """Values SB3 refuses only when a run builds its model (every run of a sweep failing) or
    ignores (noise_std without noise_type: TD3 without exploration noise)."""
    with pytest.raises(ConfigError, match=message):
        get_host().registry.algorithm(algorithm).factory(params, device="cpu")


@pytest.mark.parametrize(
    ("algorithm", "params"),
    [
        ("sb3-sac", {"ent_coef": "auto"}),
        ("sb3-sac", {"ent_coef": "auto_0.1", "target_entropy": -2}),
        ("sb3-dqn", {"gradient_steps": -1, "learning_starts": 0}),
        ("sb3-ppo", {"use_sde": True, "sde_sample_freq": -1, "target_kl": None}),
        ("sb3-ppo", {"use_sde": True, "sde_sample_freq": 0}),  # as -1, in SB3
        # SB3 asserts these only where it normalises advantages
        ("sb3-ppo", {"batch_size": 1, "n_steps": 1, "normalize_advantage": False}),
        ("sb3-ppo", {"clip_range": "lin_0.2", "clip_range_vf": None}),
        ("sb3-ppo", {"policy_kwargs": {"net_arch": {"pi": [64], "vf": [64]}}}),
    ],
)
def test_the_values_sb3_documents_are_taken(algorithm: str, params: dict[str, object]) -> None:
    get_host().registry.algorithm(algorithm).factory(params, device="cpu")


def test_the_learning_starts_check_counts_the_steps_sb3_trains() -> None:
    """Refused as "a run trains 1000: it would never learn" while the plan line said 1024
    trained (whole collections of train_freq x n_envs) and SB3 took 128 gradient steps."""
    algorithm = (
        get_host()
        .registry.algorithm("sb3-dqn")
        .factory({"learning_starts": 1000, "train_freq": 256, "n_envs": 1}, device="cpu")
    )
    assert algorithm.trained_steps(1000) == 1024
    algorithm.check_budget(1000)
    with pytest.raises(ConfigError, match="starts learning after 1000 env steps, but a run trains"):
        algorithm.check_budget(768)


def test_an_off_policy_run_that_could_never_learn_is_refused() -> None:
    from ctxrl.config import resolve_plan, validate_config

    config = {
        "env": "CartPole",
        "features": {"length": {"values": [0.5, 1.0]}},
        "algorithm": {"name": "sb3-dqn", "preset": "CartPole"},
        "train_steps": 700,
    }
    with pytest.raises(ConfigError, match="sb3-dqn starts learning after 1000 env steps, but"):
        resolve_plan(validate_config(config), get_host().registry)


def test_policy_artifact_is_not_a_pickle(tmp_path: Path) -> None:
    registry = get_host().registry
    env = registry.env("CartPole")
    algorithm = registry.algorithm("sb3-ppo").factory(SMALL["sb3-ppo"], device="cpu", env=env)
    policy = algorithm.train(env, env.task({"masscart": 2.0}), seed=1, total_steps=64)
    algorithm.save(policy, tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.safetensors"]
    loaded = algorithm.load(tmp_path / "p", env)
    obs = np.zeros((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(
        loaded.predict(obs, deterministic=True)[0], policy.predict(obs, deterministic=True)[0]
    )


def test_a_failed_training_closes_its_envs_and_keeps_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failing ``learn`` left its envs (a SUMO each) open until the model was collected;
    closed in a ``finally``, a close that failed too (a simulator already gone) replaced the
    training's own error."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    closed: list[object] = []

    def learn(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the simulator died")

    def close(self: object) -> None:
        closed.append(self)
        raise ConnectionError("connection closed by peer")

    monkeypatch.setattr(PPO, "learn", learn)
    monkeypatch.setattr(DummyVecEnv, "close", close)
    registry = get_host().registry
    env = registry.env("CartPole")
    algorithm = registry.algorithm("sb3-ppo").factory(SMALL["sb3-ppo"], device="cpu", env=env)
    with pytest.raises(RuntimeError, match="the simulator died"):
        algorithm.train(env, env.task({}), seed=0, total_steps=64)
    assert len(closed) == 1


def test_a_policy_with_diverged_weights_gets_nan_returns() -> None:
    """A DQN whose weights went NaN acts by argmax of NaN (always action 0) and played
    plausible episodes, stored as a finished run; now its returns are NaN, as on the batched
    path, and the sweep fails the run saying it diverged."""
    import torch

    registry = get_host().registry
    env = registry.env("CartPole")
    algorithm = registry.algorithm("sb3-dqn").factory(SMALL["sb3-dqn"], device="cpu", env=env)
    policy = algorithm.train(env, env.task({}), seed=0, total_steps=64)
    tasks = [env.task({}), env.task({"length": 1.0})]
    assert np.isfinite(algorithm.evaluate(policy, env, tasks, episodes=2, seed=0)).all()
    with torch.no_grad():
        next(iter(policy.policy.parameters())).fill_(float("nan"))
    returns = algorithm.evaluate(policy, env, tasks, episodes=2, seed=0)
    assert returns.shape == (2, 2) and np.isnan(returns).all()


def test_budgets_are_whole_rollouts_and_schedules_never_go_negative() -> None:
    """SB3 finishes the rollout it started: 300 steps asked of the CartPole preset (8 envs x
    32 steps) train 512, which ``trained_steps`` says; its linear schedules went below 0 on
    the steps past the budget (the last update ran gradient ascent): clamped at 0 now."""
    from ctxrl.context import Task

    registry = get_host().registry
    env = registry.env("CartPole")
    spec = registry.algorithm("sb3-ppo")
    algorithm = spec.factory(dict(spec.presets["CartPole"]), device="cpu", env=env)
    assert algorithm.trained_steps(300) == 512 and algorithm.trained_steps(256) == 256
    model = algorithm.train(
        env, Task("CartPole", env.context_space.validate({})), seed=0, total_steps=300
    )
    assert model.num_timesteps == 512
    assert model.policy.optimizer.param_groups[0]["lr"] == 0.0  # was -1e-3 * (512 / 300 - 1)
    dqn_preset = registry.algorithm("sb3-dqn").factory(
        dict(registry.algorithm("sb3-dqn").presets["CartPole"]), device="cpu", env=env
    )
    assert dqn_preset.trained_steps(100) == 256  # its train_freq of 256 steps
    # the RL Zoo's forms YAML can give: train_freq as a list, activation_fn by name
    dqn = registry.algorithm("sb3-dqn").factory(
        {
            "train_freq": [1, "episode"],
            "learning_starts": 50,
            "policy_kwargs": {"activation_fn": "tanh"},
        },
        device="cpu",
        env=env,
    )
    trained = dqn.train(
        env, Task("CartPole", env.context_space.validate({})), seed=0, total_steps=200
    )
    assert trained.train_freq.unit.value == "episode"
    import torch

    assert isinstance(trained.q_net.q_net[1], torch.nn.Tanh)


def test_a_count_written_as_a_float_reaches_sb3_as_an_int() -> None:
    """YAML's `1.0e6` is a float: it passed the count check and failed every run inside SB3
    ("'float' object cannot be interpreted as an integer")."""
    spec = get_host().registry.algorithm("sb3-ppo")
    algorithm = spec.factory({"n_steps": 64.0, "batch_size": 32.0}, device="cpu")
    kwargs = algorithm._model_kwargs(1)
    assert kwargs["n_steps"] == 64 and isinstance(kwargs["n_steps"], int)
    assert isinstance(kwargs["batch_size"], int)
