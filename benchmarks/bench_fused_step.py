"""One compiled graph per gradient step against the compiled loss, autograd and Adam it
replaced, in one process on one machine.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_fused_step.py
    python benchmarks/bench_fused_step.py --device cuda --agents 1024

Both arms are batched PPO with ``compile: on`` (CartPole pole lengths, one seed per agent,
PureJaxRL's settings, a constant learning rate, ``rollout_segment`` 4). The fused arm trains as
a sweep does; the other adds an intervention that does nothing (the base
:class:`~ctxrl.interventions.Intervention`), which is what keeps a gradient step out of one graph
(an intervention may add a loss term or act after each step): its loss is compiled alone, and
autograd, the eager per-agent clipping and the compiled Adam follow it. Each arm is compiled
first, then ``--repeats`` trainings of ``--iterations`` iterations alternate between the arms
(so that drifts of the machine hit both alike). Prints the minimum and median milliseconds per
iteration of each arm, their ratio, and the largest parameter difference between the arms'
agents after the last repeat (rounding only: both equal eager training to it).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from ctxrl.interventions import Intervention
from ctxrl.plugins import get_host


def train(fused: bool, agents: int, iterations: int, device: str) -> tuple[float, Any]:
    """Seconds and the trained policies of one compiled training."""
    registry = get_host().registry
    algorithm = registry.algorithm("batched-ppo").factory(
        {"compile": "on", "anneal_lr": False, "rollout_segment": 4}, device=device
    )
    contexts = [{"length": float(v)} for v in np.geomspace(0.25, 2.0, agents)]
    began = time.perf_counter()
    policies = algorithm.train_many(
        registry.env("CartPole"),
        contexts,
        list(range(agents)),
        total_steps=512 * iterations,
        diagnostics_every=512 * 10,
        interventions=() if fused else (Intervention(),),
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - began, policies


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--agents", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=20, help="per timed training")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(
        f"{platform.machine()} {platform.processor()}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, device {args.device}; {args.agents} agents, "
        f"{args.iterations} iterations per timed training, {args.repeats} repeats\n"
    )
    arms = {"one graph per step": True, "compiled loss, autograd, Adam": False}
    for fused in arms.values():  # compile each arm's graphs
        train(fused, args.agents, 2, args.device)
    times: dict[bool, list[float]] = {True: [], False: []}
    trained: dict[bool, Any] = {}
    for _ in range(args.repeats):
        for fused in arms.values():
            seconds, trained[fused] = train(fused, args.agents, args.iterations, args.device)
            times[fused].append(1000 * seconds / args.iterations)
    print("| arm | ms per iteration (min) | (median) | all |")
    print("|---|---|---|---|")
    for name, fused in arms.items():
        values = times[fused]
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} | {listed} |")
    ratio = statistics.median(times[False]) / statistics.median(times[True])
    diff = max(
        (trained[True].params[name] - trained[False].params[name]).abs().max().item()
        for name in trained[True].params
    )
    print(f"\none graph per step, speed-up of the medians: {ratio:.2f}x; parameter diff {diff:.1e}")


if __name__ == "__main__":
    main()
