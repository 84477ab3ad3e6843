"""Benchmark-size contextual sweeps: wall-clock time of a full 100-context transfer matrix and
MBTL's sample-efficiency factor next to the paper's.

    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py                      # all, as configured
    python benchmarks/bench_sweep.py --device cuda                           # on a GPU machine
    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py --only cartpole-masscart-100 \\
        --train-steps 100000 --seeds 0 1 2 --eval-episodes 5                  # CPU-sized
    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py --only cartpole-masscart-100 \
        --shards 2 --compile auto                                             # 2 cores

Each sweep is a config in ``benchmarks/sweeps/`` (run it yourself with ``ctxrl sweep FILE``):
every context is a source (batched PPO, all agents of a seed list in one program), every agent
is evaluated zero-shot on every context, a multi-task agent per seed is trained on the uniform
mixture, and MBTL-GP and the baselines are replayed on the mean matrix. The factor is N / k*,
k* the first step at which MBTL beats both Independent and Multi-task (the MBTL paper's
definition); where Independent is already at the ceiling, the step at which MBTL reaches it is
shown instead. A second table gives every strategy's G_K at the budget (SD-MBTL's measure).
Prints markdown tables for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from ctxrl.config import load_config, resolve_plan
from ctxrl.plugins import get_host
from ctxrl.sweep import run_sweep

SWEEPS = Path(__file__).parent / "sweeps"
STRATEGIES = ["random", "mbtl-gp", "m-mbtl", "sd-mbtl", "sequential-oracle"]
PAPER_FACTOR = {
    "cartpole-masscart-100": "11x (100/9)",
    "cartpole-length-100": "-",
    "pendulum-dt-100": "20x (100/5)",
    "cartpole-3d-100": "-",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--only", nargs="*", default=sorted(PAPER_FACTOR))
    parser.add_argument("--device", default=None, help="override the configs' device")
    parser.add_argument("--train-steps", type=int, default=None, help="override steps per model")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="override the seeds")
    parser.add_argument("--eval-episodes", type=int, default=None)
    parser.add_argument("--output-dir", default=None, help="default: a temporary directory")
    parser.add_argument(
        "--shards", type=int, default=None, help="executor.shards = executor.workers = this"
    )
    parser.add_argument("--compile", default=None, help="batched-ppo's compile: off, on or auto")
    args = parser.parse_args()
    device = args.device
    card = (
        torch.cuda.get_device_name(0)
        if device and device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    print(
        f"device {device or 'as configured'} ({card}), torch {torch.__version__}, "
        f"shards {args.shards or 'as configured'}, compile {args.compile or 'as configured'}\n"
    )
    print(
        "| sweep | N | seeds | steps/model | train (s) | eval (s) | total (s) | "
        "mean G_1..15 MBTL | Random | Independent | Multi-task | k* | factor | paper |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    at_budget: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only:
            overrides = [f"output_dir={args.output_dir or scratch}"]
            if device:
                overrides.append(f"device={device}")
            if args.train_steps:
                overrides.append(f"train_steps={args.train_steps}")
            if args.seeds:
                overrides.append(f"seeds={json.dumps(args.seeds)}")
            if args.eval_episodes:
                overrides.append(f"eval_episodes={args.eval_episodes}")
            if args.shards:
                overrides += [f"executor.shards={args.shards}", f"executor.workers={args.shards}"]
            if args.compile:
                overrides.append(f"algorithm.params.compile={args.compile}")
            config = load_config(SWEEPS / f"{name}.yaml", overrides)
            plan = resolve_plan(config, get_host().registry)
            started = time.perf_counter()
            outcome = run_sweep(plan)
            total = time.perf_counter() - started
            exported = json.loads((outcome.run_dir / "exports" / "summary.json").read_text())
            summary = {k: v for k, v in exported.items() if v is not None}  # what applies
            curves = summary["curves"]
            efficiency = summary["sample_efficiency"]

            # with several seeds every number is the summary's: on each seed's matrix, then
            # averaged (before 2026-12-05: on the seed-mean matrix, as the tables below were)
            per_seed = "independent_seeds" in summary
            curve_key = "seed_mean" if per_seed else "mean"
            independent = (
                summary["independent_seeds"]["mean"] if per_seed else summary["independent"]
            )

            def mean15(strategy: str, curves: dict = curves, key: str = curve_key) -> str:
                if strategy not in curves:
                    return "-"
                first = curves[strategy].get(key, curves[strategy]["mean"])[:15]
                return f"{sum(first) / len(first):.3f}"

            factor, match = efficiency["factor"], efficiency.get("factor_match")
            if factor:
                shown = f"{factor:.0f}x"
            elif match:  # Independent at the ceiling: reached, never exceeded
                shown = f"- (reaches it at k = {efficiency['k_match']}: {match:.0f}x)"
            else:
                shown = "-"
            print(
                f"| {name} | {summary['n_contexts']} | {len(config.seeds)} | "
                f"{config.train_steps:,} | {outcome.train_s:.0f} | {outcome.eval_s:.0f} | "
                f"{total:.0f} | {mean15('mbtl-gp')} | {mean15('random')} | "
                f"{independent:.3f} | {summary.get('multitask', float('nan')):.3f} | "
                f"{efficiency['k_star'] or '> ' + str(summary['budget'])} | "
                f"{shown} | {PAPER_FACTOR.get(name, '-')} |",
                flush=True,
            )
            at_budget.append((name, summary))
    print(
        "\n(several seeds: G_k, Independent and k* on each seed's matrix, averaged over seeds; "
        "the table below replays the seed-mean matrix, as SD-MBTL's Table 2 reports one number)"
    )
    # SD-MBTL reports every strategy's G_k at the budget k = K (its Table 2)
    print("\n| sweep | K | Independent | Multi-task | " + " | ".join(STRATEGIES) + " |")
    print("|---|---|---|---|" + "---|" * len(STRATEGIES))
    for name, summary in at_budget:
        k = summary["budget"]
        values = [
            f"{summary['curves'][s]['mean'][k - 1]:.4f}" if s in summary["curves"] else "-"
            for s in STRATEGIES
        ]
        print(
            f"| {name} | {k} | {summary['independent']:.4f} | "
            f"{summary.get('multitask', float('nan')):.4f} | " + " | ".join(values) + " |"
        )


if __name__ == "__main__":
    main()
