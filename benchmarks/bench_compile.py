"""The compiled rollout of batched PPO (``algorithm.params.compile``) against eager: speed,
compile time, break-even point and returns, in one script on one machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_compile.py                      # CPU defaults
    python benchmarks/bench_compile.py --device cuda --agents 64 256 1024     # a GPU

For each agent count (CartPole masscart contexts, one seed each, CleanRL's PPO defaults) the
same training runs four times: eager (``compile: off``), compiled with an empty inductor
cache (``compile: on``, cold: the first iteration pays the compilation), compiled again in
the same process (warm: what every later group of a sweep's program pays) and compiled in a
new process that finds inductor's on-disk cache filled (what a resumed sweep, a shard or the
next sweep of the same shapes pays). Each iteration is timed
apart; the compile time is the first compiled iteration minus a steady one, and the break-even
point is the number of iterations after which compiling has paid for itself. The returns of
the eager and the compiled agents on their own contexts (10 deterministic episodes) are
printed next to each other. Prints a markdown table for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from ctxrl.plugins import get_host


def timed_training(
    mode: str, agents: int, steps: int, device: str
) -> tuple[float, list[float], Any, Any]:
    """Train ``agents`` CartPole agents with ``compile: mode``: total seconds, seconds per
    iteration, the algorithm and its policies."""
    registry = get_host().registry
    env = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory({"compile": mode}, device=device, env=env)
    contexts = [{"masscart": 0.5 + 3.5 * i / max(1, agents - 1)} for i in range(agents)]
    iterate = algorithm.iterate
    times: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        iterate(*args, **kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)

    algorithm.iterate = timed
    started = time.perf_counter()
    policies = algorithm.train_many(env, contexts, list(range(agents)), total_steps=steps)
    return time.perf_counter() - started, times, algorithm, (policies, env, contexts)


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


def first_iteration_in_new_process(agents: int, steps: int, device: str) -> float:
    """Seconds of the first compiled iteration in a fresh Python process that shares this
    one's inductor cache directory (the environment variable is inherited)."""
    command = [sys.executable, __file__, "--agents", str(agents), "--steps", str(steps)]
    done = subprocess.run(
        [*command, "--device", device, "--child"],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["first_iteration_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="*", default=[4, 16, 64, 256])
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per agent")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one compiled training of the first agent count, its first iteration
        _, child_it, _, _ = timed_training("on", args.agents[0], args.steps, args.device)
        print(json.dumps({"first_iteration_s": child_it[0]}))
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
        eager_s, eager_it, eager_algo, eager_trained = timed_training(
            "off", agents, args.steps, args.device
        )
        cold_s, cold_it, _, _ = timed_training("on", agents, args.steps, args.device)
        warm_s, warm_it, warm_algo, warm_trained = timed_training(
            "on", agents, args.steps, args.device
        )
        eager_step = statistics.median(eager_it[1:])
        compiled_step = statistics.median(warm_it[1:])
        compile_s = cold_it[0] - compiled_step
        disk_s = first_iteration_in_new_process(agents, args.steps, args.device) - compiled_step
        saving = eager_step - compiled_step
        break_even = f"{compile_s / saving:.0f}" if saving > 0 else "never"
        break_even_disk = f"{max(0.0, disk_s) / saving:.0f}" if saving > 0 else "never"
        speedup = eager_step / compiled_step
        row = (
            f"| {agents} | {len(eager_it)} | {eager_s:.1f} | {cold_s:.1f} | {warm_s:.1f} | "
            f"{eager_step * 1e3:.1f} | {compiled_step * 1e3:.1f} | {speedup:.2f}x"
            f" | {compile_s:.1f} | {warm_it[0] - compiled_step:.1f} | {disk_s:.1f} | "
            f"{break_even} | {break_even_disk} | "
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
