"""Replaying GP strategies on many trial matrices: one by one against together.

    OMP_NUM_THREADS=1 python benchmarks/bench_replay.py [--trials 10] [--budget 25]

On SD-MBTL's synthetic matrices (:mod:`ctxrl.synthetic`, 512 contexts on an 8 x 8 x 8 grid,
noise 5, setting f=linear,g=linear,h=l1), each GP strategy is replayed on ``--trials`` trial
matrices twice in the same process: one :func:`~ctxrl.selection.replay` after the other (each
step fits one GP), and :func:`~ctxrl.selection.replay_many` (each step's GPs of all trials
fitted in one batched gpytorch program). Prints both wall times, their ratio, and whether the
orders agree (they must: the batch fits each GP on its own loss).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ctxrl.plugins import get_host
from ctxrl.selection import replay, replay_many
from ctxrl.synthetic import SETTINGS, grid_points, reference_bounds, synthetic_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--budget", type=int, default=25)
    parser.add_argument("--strategies", nargs="+", default=["mbtl-gp", "sd-mbtl"])
    args = parser.parse_args()
    if not 1 <= args.trials <= 100:
        parser.error(f"--trials must be in 1..100 (the synthetic benchmark's), got {args.trials}")
    torch.set_num_threads(1)
    setting = next(s for s in SETTINGS if s.name == "f=linear,g=linear,h=l1")
    raw = synthetic_trials(setting, 5.0, 100)
    lower, upper = reference_bounds(raw)
    matrices = (raw[: args.trials] - lower) / (upper - lower)
    coords = grid_points() / 7.0
    registry = get_host().registry
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread; "
        f"{setting.name}, noise 5, {args.trials} trials, K = {args.budget}"
    )
    print("| strategy | one by one (s) | together (s) | speed-up | same orders |")
    print("|---|---:|---:|---:|---|")
    for name in args.strategies:
        factory = registry.strategy(name).factory
        began = time.perf_counter()
        alone = [replay(factory(), m, coords, args.budget, name=name) for m in matrices]
        lone_s = time.perf_counter() - began
        began = time.perf_counter()
        together = replay_many(factory, matrices, coords, args.budget, name=name)
        many_s = time.perf_counter() - began
        same = all(a.order == b.order for a, b in zip(alone, together, strict=True))
        print(f"| {name} | {lone_s:.1f} | {many_s:.1f} | {lone_s / many_s:.2f}x | {same} |")


if __name__ == "__main__":
    main()
