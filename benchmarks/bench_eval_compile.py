"""Compiled against eager batched cross-evaluation: the P x Q x E rollout of a transfer matrix.

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_compile.py [--policies 20] [--contexts 100] \
        [--episodes 5] [--train-steps 30000] [--device cpu]

Trains ``--policies`` batched-PPO CartPole agents (masscart 0.5 .. 4 kg) so that episodes run
long, then evaluates them on ``--contexts`` masscart contexts, ``--episodes`` episodes each, in
one batched rollout: eager and compiled alternating, ``1 + --repeats`` calls each (the first
compiled call compiles, or loads inductor's cache), in one process; the fastest call of each
is compared. Prints seconds per call, the warm ratio, the break-even
number of evaluations and how far compiled and eager returns agree (fused kernels round
differently, and a long CartPole episode amplifies a last-bit difference until it ends at
another step).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from ctxrl.plugins import get_host
from ctxrl_plugins.training.evaluation import evaluate_policies


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--contexts", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=30_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="warm calls of each, alternating")
    args = parser.parse_args()
    registry = get_host().registry
    env = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({}, device=args.device, env=env)
    sources = [
        {"masscart": 0.5 + 3.5 * i / max(1, args.policies - 1)} for i in range(args.policies)
    ]
    targets = [
        {"masscart": 0.5 + 3.5 * i / max(1, args.contexts - 1)} for i in range(args.contexts)
    ]
    policies = algorithm.train_many(
        env, sources, list(range(args.policies)), total_steps=args.train_steps
    )
    device = torch.device(args.device)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    results: dict[str, np.ndarray] = {}
    for mode in ("eager", "compiled") * (1 + args.repeats):
        started = time.perf_counter()
        results[mode] = evaluate_policies(
            policies,
            env,
            targets,
            episodes=args.episodes,
            seed=10_000,
            device=device,
            compile=mode == "compiled",
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[mode].append(time.perf_counter() - started)
    eager, cold, warm = min(times["eager"]), times["compiled"][0], min(times["compiled"][1:])
    episodes = args.policies * args.contexts * args.episodes
    mean_length = float(results["eager"].mean())
    same = np.array_equal(results["eager"], results["compiled"])
    close = np.abs(results["eager"] - results["compiled"]).max()
    gain = eager - warm
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), device {args.device}"
    )
    print(
        f"{args.policies} x {args.contexts} x {args.episodes} = {episodes:,} episodes, mean "
        f"return {mean_length:.1f}"
    )
    print(f"eager {', '.join(f'{t:.2f}' for t in times['eager'])} s")
    print(
        f"compiled {cold:.2f} s (first call, compiling), then "
        f"{', '.join(f'{t:.2f}' for t in times['compiled'][1:])} s"
    )
    print(f"warm ratio eager / compiled: {eager / warm:.2f}x")
    if gain > 0:
        print(f"break-even: {(cold - warm) / gain:.1f} evaluations of this size")
    else:
        print("break-even: never (compiled is not faster warm)")
    equal = float(np.mean(results["eager"] == results["compiled"]))
    print(
        f"returns identical: {same} ({equal:.1%} of episodes equal, largest difference "
        f"{close:g}); mean return eager {results['eager'].mean():.2f}, compiled "
        f"{results['compiled'].mean():.2f}"
    )


if __name__ == "__main__":
    main()
