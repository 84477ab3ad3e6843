"""The batched algorithm plugins: ``batched-ppo`` (:mod:`ctxrl_plugins.algorithms.ppo`) and
``batched-dqn`` (:mod:`ctxrl_plugins.algorithms.dqn`).

Registration stays light: torch is imported only when an algorithm is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ctxrl import hookimpl
from ctxrl.registry import AlgorithmSpec, EnvSpec

PPO_PRESETS: dict[str, dict[str, Any]] = {
    # PureJaxRL's CartPole settings (the rejax comparison uses the same).
    "CartPole": {},
    "Acrobot": {},
    # Short horizon, many epochs, scaled rewards: the usual recipe for Pendulum.
    "Pendulum": {
        "num_envs": 16,
        "num_steps": 256,
        "update_epochs": 10,
        "num_minibatches": 32,
        "learning_rate": 1e-3,
        "gamma": 0.9,
        "ent_coef": 0.0,
        "reward_scale": 0.1,
        "anneal_lr": True,
        "init_log_std": -0.5,
    },
}


DQN_PRESETS: dict[str, dict[str, Any]] = {
    # CartPole: the defaults (CleanRL's). Acrobot, MountainCar: the RL Zoo's (n_envs = 1),
    # with its network and Huber loss.
    "CartPole": {},
    "Acrobot": {
        "learning_rate": 6.3e-4,
        "batch_size": 128,
        "buffer_size": 50_000,
        "learning_starts": 0,
        "gamma": 0.99,
        "target_network_frequency": 250,
        "train_frequency": 4,
        "gradient_steps": 1,
        "exploration_fraction": 0.12,
        "end_e": 0.1,
        "hidden": [256, 256],
        "huber": True,
    },
    "MountainCar": {
        "learning_rate": 4e-3,
        "batch_size": 128,
        "buffer_size": 10_000,
        "learning_starts": 1000,
        "gamma": 0.98,
        "target_network_frequency": 600,
        "train_frequency": 16,
        "gradient_steps": 8,
        "exploration_fraction": 0.2,
        "end_e": 0.07,
        "hidden": [256, 256],
        "huber": True,
    },
}


def _ppo(params: Mapping[str, Any], *, device: str = "cpu", env: EnvSpec | None = None) -> Any:
    from ctxrl_plugins.algorithms.ppo import BatchedPPO

    del env
    return BatchedPPO(params, device=device)


def _dqn(params: Mapping[str, Any], *, device: str = "cpu", env: EnvSpec | None = None) -> Any:
    from ctxrl_plugins.algorithms.dqn import BatchedDQN

    del env
    return BatchedDQN(params, device=device)


@hookimpl
def ctxrl_register_algorithms(register: Callable[[AlgorithmSpec], None]) -> None:
    register(
        AlgorithmSpec(
            name="batched-ppo",
            factory=_ppo,
            batched=True,
            interventions=True,
            presets=PPO_PRESETS,
            description="PPO for many (context, seed) agents in one torch program (CPU or CUDA)",
        )
    )
    register(
        AlgorithmSpec(
            name="batched-dqn",
            factory=_dqn,
            batched=True,
            interventions=True,
            presets=DQN_PRESETS,
            action_spaces=frozenset({"discrete"}),
            description="DQN (double / dueling options) for many agents in one torch program",
        )
    )
