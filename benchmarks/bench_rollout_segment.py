"""Rollout segments (``batched-ppo``'s ``rollout_segment``): how many rollout steps one compiled
call runs, against iteration time and compile time, in one script on one machine.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_rollout_segment.py
    python benchmarks/bench_rollout_segment.py --device cuda --agents 1024 --segments 1 4 16

For each segment length K (CartPole pole lengths, one seed per agent, PureJaxRL's settings,
constant learning rate, diagnostics every 10 iterations as in a long run): a child process with
an empty inductor cache trains once and reports its compile seconds (cold); then this process
trains each K once to compile, and ``--repeats`` more times interleaved over the K values (so
drifts of the machine hit every K alike) and reports the median milliseconds per iteration (one
rollout of 512 env steps per agent and its update) and the largest parameter difference from the
first K's agents (0: the same numbers). Prints a markdown table for ``benchmarks/RESULTS.md``.
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

import numpy as np
import torch

from ctxrl.plugins import get_host


def train(segment: int, agents: int, iterations: int, device: str) -> tuple[float, float, Any]:
    """Seconds, compile seconds and the trained policies of one compiled training."""
    registry = get_host().registry
    spec = registry.env("CartPole")
    algorithm = registry.algorithm("batched-ppo").factory(
        {"compile": "on", "anneal_lr": False, "rollout_segment": segment}, device=device
    )
    contexts = [{"length": float(v)} for v in np.geomspace(0.25, 2.0, agents)]
    began = time.perf_counter()
    policies = algorithm.train_many(
        spec,
        contexts,
        list(range(agents)),
        total_steps=512 * iterations,
        diagnostics_every=512 * 10,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - began, algorithm.compile_s, policies


def cold_compile_s(segment: int, agents: int, device: str) -> float:
    """Compile seconds of a training in a new process with an empty inductor cache."""
    with tempfile.TemporaryDirectory() as cache:
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                *("--segments", str(segment), "--agents", str(agents), "--device", device),
            ],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache},
        )
    if done.returncode != 0:  # the child's own error, not only its exit status
        raise SystemExit(f"the timed child process failed:\n{done.stderr.strip()}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["compile_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--segments", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=40, help="per timed training")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _, compile_s, _ = train(args.segments[0], args.agents, 2, args.device)
        print(json.dumps({"compile_s": compile_s}))
        return
    card = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(
        f"{platform.machine()} {platform.processor()}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, device {args.device}{card}; {args.agents} agents, "
        f"{args.iterations} iterations per timed training\n"
    )
    # each number printed as soon as it is known: a run cut short by a time limit keeps them
    cold: dict[int, float] = {}
    for k in args.segments:
        cold[k] = cold_compile_s(k, args.agents, args.device)
        print(f"rollout_segment {k}: {cold[k]:.1f} s compiling cold", flush=True)
    times: dict[int, list[float]] = {k: [] for k in args.segments}
    trained: dict[int, Any] = {}
    for k in args.segments:  # compile in this process
        train(k, args.agents, 2, args.device)
    for _ in range(args.repeats):
        for k in args.segments:
            seconds, _, trained[k] = train(k, args.agents, args.iterations, args.device)
            times[k].append(seconds)
            per = 1000 * seconds / args.iterations
            print(f"rollout_segment {k}: {per:.1f} ms an iteration", flush=True)
    first = args.segments[0]
    base = statistics.median(times[first])
    print(
        "| rollout_segment | ms per iteration (median) | speed-up | compile s (cold) "
        "| max param diff |"
    )
    print("|---|---|---|---|---|")
    for k in args.segments:
        median = statistics.median(times[k])
        diff = max(
            (trained[k].params[name] - trained[first].params[name]).abs().max().item()
            for name in trained[k].params
        )
        print(
            f"| {k} | {1000 * median / args.iterations:.1f} | {base / median:.2f}x | "
            f"{cold[k]:.1f} | {diff:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
