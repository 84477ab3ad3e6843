"""Learning checks at full budget (the slow-marked tests, with the numbers printed).

    OMP_NUM_THREADS=1 python benchmarks/bench_learning.py [--only ppo-cartpole ...]

- batched PPO, CartPole default context, 8 seeds x 500k steps: share of seeds >= 475;
- batched PPO (Pendulum preset), 4 seeds x 1M steps: share of seeds >= -250;
- batched DQN (CartPole preset: CleanRL's settings; plain, Double, Dueling), 4 seeds x 500k steps.
Each: mean deterministic return over 20 episodes per seed, and wall-clock time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ctxrl.plugins import get_host


def run(
    name: str, algorithm: str, env: str, params: dict, seeds: int, steps: int, threshold: float
) -> None:
    registry = get_host().registry
    spec = registry.env(env)
    algo = registry.algorithm(algorithm).factory(params, device="cpu")
    started = time.perf_counter()
    policies = algo.train_many(spec, [{}] * seeds, list(range(seeds)), total_steps=steps)
    elapsed = time.perf_counter() - started
    returns = algo.evaluate_many(policies, spec, [{}], episodes=20, seed=0).mean(axis=(1, 2))
    print(
        f"{name}: {seeds} seeds x {steps:,} steps in {elapsed:.0f} s; returns "
        f"{np.round(returns, 1).tolist()}; share >= {threshold}: "
        f"{np.mean(returns >= threshold):.2f}",
        flush=True,
    )


RUN_NAMES = [
    "ppo-cartpole",
    "ppo-pendulum",
    "dqn-cartpole",
    "double-dqn-cartpole",
    "dueling-dqn-cartpole",
]
"""The learning checks ``--only`` chooses from."""


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--only", nargs="*", default=None, choices=RUN_NAMES)
    args = parser.parse_args()
    presets = get_host().registry.algorithm("batched-ppo").presets
    runs = {
        "ppo-cartpole": ("batched-ppo", "CartPole", {}, 8, 500_000, 475.0),
        "ppo-pendulum": (
            "batched-ppo",
            "Pendulum",
            dict(presets["Pendulum"]),
            4,
            1_000_000,
            -250.0,
        ),
        "dqn-cartpole": ("batched-dqn", "CartPole", {}, 4, 500_000, 475.0),
        "double-dqn-cartpole": ("batched-dqn", "CartPole", {"double": True}, 4, 500_000, 475.0),
        "dueling-dqn-cartpole": ("batched-dqn", "CartPole", {"dueling": True}, 4, 500_000, 475.0),
    }
    assert list(runs) == RUN_NAMES
    for name, spec in runs.items():
        if args.only is None or name in args.only:
            run(name, *spec)


if __name__ == "__main__":
    main()
