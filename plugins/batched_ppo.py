"""The ``batched-ppo`` algorithm plugin (implementation in :mod:`ctxrl_plugins.ppo`).

Registration stays light: torch is imported only when the algorithm is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ctxrl import hookimpl
from ctxrl.registry import AlgorithmSpec, EnvSpec

PRESETS: dict[str, dict[str, Any]] = {
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


def _factory(params: Mapping[str, Any], *, device: str = "cpu", env: EnvSpec | None = None) -> Any:
    from ctxrl_plugins.ppo import BatchedPPO

    del env
    return BatchedPPO(params, device=device)


@hookimpl
def ctxrl_register_algorithms(register: Callable[[AlgorithmSpec], None]) -> None:
    register(
        AlgorithmSpec(
            name="batched-ppo",
            factory=_factory,
            batched=True,
            presets=PRESETS,
            description="PPO for many (context, seed) agents in one torch program (CPU or CUDA)",
        )
    )
