"""Compiled batched training (``algorithm.params.compile: on``) against eager: speed,
compile time, break-even point and returns, in one script on one machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py                      # CPU defaults
    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py --algorithm batched-dqn --agents 16
    python benchmarks/bench_compile.py --device cuda --agents 64 256 1024     # a GPU

For each agent count (CartPole masscart contexts, one seed each, CleanRL's defaults) the
same training runs four times: eager (``compile: off``), compiled with an empty inductor
cache (``compile: on``, cold: the first iteration pays the compilation), compiled again in
the same process (warm: what every later group of a sweep's program pays) and compiled in a
new process that finds inductor's on-disk cache filled (what a resumed sweep, a shard or the
next sweep of the same shapes pays). The compile time is the trainer's ``compile_s`` (each
compiled function's first call beyond its second); a steady iteration is the rest of the
training time over the iterations (an iteration: one PPO rollout and update of 512 env steps
per agent, one DQN env step per agent with a gradient step every 10); the break-even point is
the number of iterations after which compiling has paid for itself. The returns of
the eager and the compiled agents on their own contexts (10 deterministic episodes) are
printed next to each other. Prints a markdown table for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from ctxrl.plugins import get_host

EXTRA_PARAMS = {"batched-dqn": {"learning_starts": 1000}}
"""DQN learns from its 1000th step (not CleanRL's 10,000), so that short runs time updates"""


def timed_training(
    algorithm_name: str, mode: str, agents: int, steps: int, device: str
) -> tuple[float, float, int, Any, Any]:
    """Train ``agents`` CartPole agents with ``compile: mode``: total seconds, seconds spent
    compiling (the trainer's ``compile_s``), iterations, the algorithm and what it trained."""
    registry = get_host().registry
    env = registry.env("CartPole")
    params = {"compile": mode, **EXTRA_PARAMS.get(algorithm_name, {})}
    algorithm = registry.algorithm(algorithm_name).factory(params, device=device, env=env)
    contexts = [{"masscart": 0.5 + 3.5 * i / max(1, agents - 1)} for i in range(agents)]
    started = time.perf_counter()
    policies = algorithm.train_many(env, contexts, list(range(agents)), total_steps=steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    iterations = max(1, steps // algorithm.steps_per_iteration())
    return total, algorithm.compile_s, iterations, algorithm, (policies, env, contexts)


def own_returns(algorithm: Any, trained: Any) -> float:
    """Mean return of each agent on its own context (10 deterministic episodes each)."""
    from ctxrl_plugins.training.evaluation import evaluate_policies

    policies, env, contexts = trained
    returns = evaluate_policies(
        policies,
        env,
        [[c] for c in contexts],
        episodes=10,
        seed=0,
        device=algorithm.device,
        per_policy=True,
    )
    return float(returns.mean())


def compile_in_new_process(algorithm: str, agents: int, steps: int, device: str) -> float:
    """Compile seconds of the same training in a fresh Python process that shares this one's
    inductor cache directory (the environment variable is inherited)."""
    command = [sys.executable, __file__, "--agents", str(agents), "--steps", str(steps)]
    done = subprocess.run(
        [*command, "--device", device, "--algorithm", algorithm, "--child"],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # the child's own error, not only its exit status
        raise SystemExit(f"the timed child process failed:\n{done.stderr.strip()}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["compile_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--agents", type=int, nargs="*", default=[4, 16, 64, 256])
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per agent")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--algorithm", default="batched-ppo", choices=["batched-dqn", "batched-ppo"]
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one compiled training of the first agent count
        _, child_compile_s, *_ = timed_training(
            args.algorithm, "on", args.agents[0], args.steps, args.device
        )
        print(json.dumps({"compile_s": child_compile_s}))
        return
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    card = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"
    )
    print(f"{card}, torch {torch.__version__}, {args.steps:,} steps per agent\n", flush=True)
    rows = []
    for agents in args.agents:
        run = (args.algorithm, "off", agents, args.steps, args.device)
        eager_s, _, iterations, eager_algo, eager_trained = timed_training(*run)
        cold_s, cold_compile_s, *_ = timed_training(args.algorithm, "on", *run[2:])
        warm_s, warm_compile_s, _, warm_algo, warm_trained = timed_training(
            args.algorithm, "on", *run[2:]
        )
        disk_s = compile_in_new_process(args.algorithm, agents, args.steps, args.device)
        eager_step = eager_s / iterations
        compiled_step = (warm_s - warm_compile_s) / iterations
        saving = eager_step - compiled_step
        break_even = f"{cold_compile_s / saving:.0f}" if saving > 0 else "never"
        break_even_disk = f"{disk_s / saving:.0f}" if saving > 0 else "never"
        row = (
            f"| {agents} | {iterations} | {eager_s:.1f} | {cold_s:.1f} | {warm_s:.1f} | "
            f"{eager_step * 1e3:.2f} | {compiled_step * 1e3:.2f} | "
            f"{eager_step / compiled_step:.2f}x | {cold_compile_s:.1f} | {warm_compile_s:.1f} | "
            f"{disk_s:.1f} | {break_even} | {break_even_disk} | "
            f"{own_returns(eager_algo, eager_trained):.1f} | "
            f"{own_returns(warm_algo, warm_trained):.1f} |"
        )
        rows.append(row)
        print(row, flush=True)
    print(
        "\n| agents | iterations | eager s | compiled s (cold cache) | compiled s (warm) | "
        "eager ms / iteration | compiled ms / iteration | speed-up per iteration | "
        "compile s (cold) | compile s (warm, same process) | compile s (on-disk cache, new "
        "process) | break-even iterations (cold) | break-even iterations (on-disk cache) | "
        "eager return | compiled return |"
    )
    print("|" + "---:|" * 15)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
