"""Sharding a batched sweep over the executor's workers: wall time against one program.

    OMP_NUM_THREADS=1 python benchmarks/bench_shards.py                       # this machine
    OMP_NUM_THREADS=1 python benchmarks/bench_shards.py --train-steps 500000  # full budget

The 100-context CartPole masscart matrix of ``benchmarks/sweeps/cartpole-masscart-100.yaml``
(batched PPO, every mass a source, every agent evaluated on every mass; the multi-task agent
left out, as it is one program either way), run three times in one script:

1. one program in the sweep's process on one thread (``executor.shards: 1``, the default);
2. one program on as many torch threads as the machine has cores;
3. ``executor.shards`` = ``workers`` = cores: one program per core in the local executor's
   worker processes, one thread each.

Prints the wall time of each, the ratios, and whether the stored returns, curves and
diagnostics of 3 equal those of 1 bit for bit (they must: an agent's numbers never depend on
the rest of its batch). Prints a markdown table for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ctxrl.config import load_config, resolve_plan
from ctxrl.plugins import get_host
from ctxrl.sweep import run_sweep

SWEEP = Path(__file__).parent / "sweeps" / "cartpole-masscart-100.yaml"


def stored(run_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "evaluations": "SELECT run_id, target_task, episode, episode_return FROM evaluations "
        "ORDER BY run_id, target_task, episode",
        "curves": "SELECT run_id, env_steps, target, returns FROM curves ORDER BY 1, 2, 3",
    }
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        return {name: db.execute(query).fetchall() for name, query in queries.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--train-steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--contexts", type=int, default=100)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(
        f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
        f"{args.contexts} contexts x {len(args.seeds)} seeds x {args.train_steps:,} steps, "
        f"{args.eval_episodes} evaluation episodes\n"
    )
    arms = [
        ("one program, 1 thread", 1, 1),
        (f"one program, {cores} threads", 1, cores),
        (f"{args.workers} shards, 1 thread each", args.workers, 1),
    ]
    walls: list[float] = []
    numbers = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, shards, threads) in enumerate(arms):
            overrides = [
                f"train_steps={args.train_steps}",
                f"eval_episodes={args.eval_episodes}",
                f"features.masscart.num={args.contexts}",
                f"strategy.budget={min(20, args.contexts)}",
                "multitask=false",
                "device=cpu",
                f"output_dir={tmp}/arm{index}",
                f"executor.shards={shards}",
                f"executor.workers={args.workers}",
                "seeds=[" + ",".join(str(s) for s in args.seeds) + "]",
            ]
            plan = resolve_plan(load_config(SWEEP, overrides), get_host().registry)
            torch.set_num_threads(threads)
            started = time.perf_counter()
            outcome = run_sweep(plan)
            walls.append(time.perf_counter() - started)
            assert not outcome.failed, outcome.failed
            numbers.append(stored(outcome.run_dir))
            print(f"{label}: {walls[-1]:.1f} s", flush=True)
    print("\n| arm | wall s | speed-up vs one program, 1 thread |")
    print("|---|---:|---:|")
    for (label, _, _), wall in zip(arms, walls, strict=True):
        print(f"| {label} | {wall:.1f} | {walls[0] / wall:.2f}x |")
    print(f"\nsharded numbers equal one program's bit for bit: {numbers[2] == numbers[0]}")
    print(f"{cores}-thread program's numbers equal 1 thread's: {numbers[1] == numbers[0]}")


if __name__ == "__main__":
    main()
