"""Warm starts from a finished run directory: jumpstart with and without the head.

    OMP_NUM_THREADS=1 python benchmarks/bench_warm_start.py [--seeds 5] [--source-steps 100000]

1. A sweep trains batched-PPO sources on CartPole pole length 0.5 m (``--seeds`` seeds).
2. ``ctxrl.results.load_policies`` reads them back from the run directory.
3. On each target length, four arms train ``--target-steps`` steps with a learning curve
   (deterministic evaluation every ``--every`` steps, 10 episodes): scratch, fine-tuned from the
   source (warm), fine-tuned with the actor's head re-initialised (warm, new head), and with the
   whole actor re-initialised (the critic kept: warm, new actor).
Reports, per target and arm, the mean return at step 0 and at the end, and the jumpstart
(step-0 return minus scratch's) and the step-0 difference to the warm arm, each with a
bootstrap 95 % interval over seeds (scipy; the arms' seeds are independent runs).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from ctxrl.config import resolve_plan, validate_config
from ctxrl.plugins import get_host
from ctxrl.registry import CurveOptions
from ctxrl.results import check_transferable, load_policies
from ctxrl.sweep import run_sweep


def interval(first: np.ndarray, second: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``first`` minus mean of ``second`` and its bootstrap 95 % interval
    (independent samples)."""
    difference = float(first.mean() - second.mean())
    if np.ptp(first) == 0 and np.ptp(second) == 0:
        return difference, difference, difference
    ci = bootstrap(
        (first, second),
        lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis),
        confidence_level=0.95,
        random_state=0,
        paired=False,
        vectorized=True,
    ).confidence_interval
    return difference, float(ci.low), float(ci.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--source-steps", type=int, default=100_000)
    parser.add_argument("--target-steps", type=int, default=20_480)
    parser.add_argument("--every", type=int, default=4096)
    parser.add_argument("--targets", type=float, nargs="*", default=[1.0, 2.0])
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "env": "CartPole",
            "features": {"length": {"values": [0.5]}},
            "algorithm": {"name": "batched-ppo", "preset": "CartPole"},
            "seeds": seeds,
            "train_steps": args.source_steps,
            "eval_episodes": 10,
            "compare": [],
            "output_dir": str(Path(tmp) / "runs"),
        }
        plan = resolve_plan(validate_config(config), get_host().registry)
        run_dir = run_sweep(plan).run_dir
        sources = load_policies(run_dir)
        spec = get_host().registry.env("CartPole")
        check_transferable(sources, spec, "batched-ppo")
        init = sources.stacked_params()
        source_returns = np.array(
            [
                np.mean(
                    sources.algorithm.evaluate(
                        p, spec, [spec.task({"length": 0.5})], episodes=10, seed=0
                    )
                )
                for p in sources.policies
            ]
        )
        print(
            f"sources (length 0.5, {args.source_steps:,} steps): own-context return "
            f"{source_returns.mean():.1f} per seed {np.round(source_returns, 1).tolist()}"
        )
        curves = CurveOptions(every=args.every, episodes=10)
        for length in args.targets:
            arms: dict[str, dict[str, Any]] = {
                "scratch": {},
                "warm": {"init": init},
                "warm, new head": {"init": init, "reinit": ["actor.head"]},
                "warm, new actor": {"init": init, "reinit": ["actor"]},
            }
            starts: dict[str, np.ndarray] = {}
            print(
                f"\ntarget length {length} m, {args.target_steps:,} steps, curve every "
                f"{args.every:,}:"
            )
            print(
                "| arm | return at step 0 | at the end | jumpstart vs scratch (95% CI) "
                "| step 0 vs warm (95% CI) |"
            )
            print("|---|---|---|---|---|")
            for arm, options in arms.items():
                tuned = sources.algorithm.train_many(
                    spec,
                    [{"length": length}] * len(seeds),
                    seeds,
                    total_steps=args.target_steps,
                    curves=curves,
                    **options,
                )
                curve = tuned.log.curve()  # (points, seeds)
                starts[arm] = curve[0]
                jump = interval(curve[0], starts["scratch"])
                warm = interval(curve[0], starts["warm"]) if "warm" in starts else None
                versus_warm = (
                    "" if warm is None else f"{warm[0]:+.1f} [{warm[1]:+.1f}, {warm[2]:+.1f}]"
                )
                print(
                    f"| {arm} | {curve[0].mean():.1f} | {curve[-1].mean():.1f} | "
                    f"{jump[0]:+.1f} [{jump[1]:+.1f}, {jump[2]:+.1f}] | {versus_warm} |"
                )


if __name__ == "__main__":
    main()
