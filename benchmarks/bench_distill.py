"""MBTL + distillation at benchmark size: G_k of distilled students from MBTL's first k sources
against MBTL zero-shot, Independent and Multi-task, on one 100-context matrix.

    OMP_NUM_THREADS=1 python benchmarks/bench_distill.py \
        [--sweep cartpole-length-100] [--train-steps 100000] [--student-steps 20480] \
        [--ks 1 2 3 5 10 15] [--seeds 0] [--start scratch] [--run-dir DIR] [--shards 2]

1. Runs (or resumes, with ``--run-dir``) the benchmark sweep ``benchmarks/sweeps/NAME.yaml`` with
   ``--seeds``: every context a source, the zero-shot matrix, a multi-task agent, MBTL-GP
   replayed on the seed-mean matrix.
2. For each k and seed: MBTL-GP's first k sources (of that seed) teach one student per target
   context (all 100 targets in one batched program, ``--student-steps`` target-env steps each,
   the sweep's PPO hyperparameters and network, teachers weighted per target by their measured
   zero-shot returns there, temperature 0.3; ``--mode dagger``: distillation alone,
   ``kickstart``: PPO plus the decaying distillation term, ``--coef`` 20; ``--start
   best-teacher``: each student starts from its top-weighted teacher's weights), each student
   evaluated on its target.
3. Prints, per k: MBTL zero-shot G_k (mean over targets of the best of the k sources), the
   students' mean normalised return (``distilled``), and the mean of the better of the two per
   target (``best of both``: what a user who evaluates the student on its target keeps), next to
   Independent and Multi-task; with the wall time of each distillation. With several seeds:
   means over seeds, with a Student-t 95 % interval over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ctxrl.config import load_config, resolve_plan
from ctxrl.offline import mean_ci
from ctxrl.plugins import get_host
from ctxrl.results import load_policies, open_store
from ctxrl.sweep import run_sweep
from ctxrl_plugins.training.evaluation import evaluate_policies
from ctxrl_plugins.transfer.distill_core import distill_students
from ctxrl_plugins.transfer.distill_teachers import stack_teachers, transfer_weights

SWEEPS = Path(__file__).parent / "sweeps"


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--sweep", default="cartpole-length-100")
    parser.add_argument("--train-steps", type=int, default=100_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--student-steps", type=int, default=20_480)
    parser.add_argument("--ks", type=int, nargs="*", default=[1, 2, 3, 5, 10, 15])
    parser.add_argument("--mode", choices=["dagger", "kickstart"], default="dagger")
    parser.add_argument("--coef", type=float, default=20.0, help="kickstarting's coefficient")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--start", choices=["scratch", "best-teacher"], default="scratch")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-distill"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/distill.json"))
    parser.add_argument(
        "--shards", type=int, default=None, help="the sweep's executor.shards = workers = this"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [
        f"output_dir={args.run_dir}",
        f"seeds={list(args.seeds)}",
        f"train_steps={args.train_steps}",
        f"eval_episodes={args.eval_episodes}",
        "device=cpu",
    ]
    if args.shards:
        overrides += [f"executor.shards={args.shards}", f"executor.workers={args.shards}"]
    config = load_config(SWEEPS / f"{args.sweep}.yaml", overrides)
    plan = resolve_plan(config, get_host().registry)
    started = time.perf_counter()
    outcome = run_sweep(plan)
    sweep_s = time.perf_counter() - started
    exported = json.loads((outcome.run_dir / "exports" / "summary.json").read_text())
    summary = {k: v for k, v in exported.items() if v is not None}  # what applies
    order = [int(i) for i in summary["curves"]["mbtl-gp"]["order"]]
    env = plan.env
    contexts = [c.as_dict() for c in plan.grid.contexts]
    seeds = list(args.seeds)
    with open_store(outcome.run_dir) as store:
        raw = store.matrix(
            env=env.name, sources=plan.grid.contexts, targets=plan.grid.contexts, seeds=seeds
        ).values  # (N, N, seeds) mean return per seed
    normalised = np.clip(env.normalise(raw), 0.0, 1.0)
    loaded = load_policies(outcome.run_dir, where=lambda row: bool(row.context.as_dict()))
    by_source = {
        (json.dumps(c, sort_keys=True), run.seed): p
        for c, p, run in zip(loaded.contexts, loaded.policies, loaded.runs, strict=True)
    }
    student = dataclasses.asdict(loaded.algorithm.config)
    cpu = torch.device("cpu")
    rows = []
    print(
        f"{args.sweep}: N = {len(contexts)}, sources {args.train_steps:,} steps, seeds {seeds}, "
        f"sweep {sweep_s:.0f} s; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}; students: {args.mode}, start {args.start}"
    )
    print(
        f"Independent {summary['independent']:.3f}, "
        f"Multi-task {summary.get('multitask', float('nan')):.3f}"
    )
    print("| k | MBTL zero-shot G_k | distilled | best of both | students better on | time (s) |")
    print("|---|---|---|---|---|---|")
    for k in args.ks:
        chosen = order[:k]
        per_seed = []
        for s, seed in enumerate(seeds):
            teachers = stack_teachers(
                [by_source[json.dumps(contexts[i], sort_keys=True), seed] for i in chosen]
            )
            teachers = dataclasses.replace(teachers, contexts=[contexts[i] for i in chosen])
            weights = transfer_weights(env, raw[chosen, :, s], scale=0.1)  # (targets, k)
            began = time.perf_counter()
            students = distill_students(
                env,
                teachers,
                contexts,
                [1000 + 10_000 * seed + q for q in range(len(contexts))],
                steps=args.student_steps,
                mode=args.mode,
                weights=weights,
                temperature=0.3,
                coef=args.coef,
                student=student,
                start=args.start,
            )
            seconds = time.perf_counter() - began
            own = evaluate_policies(
                students,
                env,
                [[c] for c in contexts],
                episodes=args.eval_episodes,
                seed=7,
                device=cpu,
                per_policy=True,
            )[:, 0].mean(axis=1)  # (targets,)
            mine = np.clip(env.normalise(own), 0.0, 1.0)
            zero_shot = normalised[chosen, :, s].max(axis=0)
            per_seed.append(
                {
                    "seed": seed,
                    "mbtl_zero_shot": float(zero_shot.mean()),
                    "distilled": float(mine.mean()),
                    "best_of_both": float(np.maximum(mine, zero_shot).mean()),
                    "students_better": int((mine > zero_shot + 0.02).sum()),
                    "seconds": round(seconds, 1),
                }
            )
        row: dict[str, object] = {"k": k, "seeds": per_seed}
        cells = []
        for key in ("mbtl_zero_shot", "distilled", "best_of_both"):
            mean, half = mean_ci(np.array([r[key] for r in per_seed], dtype=float))
            row[key] = mean
            if len(per_seed) > 1:
                row[f"{key}_ci"] = [mean - half, mean + half]
                cells.append(f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]")
            else:
                cells.append(f"{mean:.3f}")
        better = sum(int(r["students_better"]) for r in per_seed) / len(per_seed)
        seconds = sum(float(r["seconds"]) for r in per_seed) / len(per_seed)
        rows.append(row)
        print(
            f"| {k} | {cells[0]} | {cells[1]} | {cells[2]} | {better:.1f} of {len(contexts)} | "
            f"{seconds:.0f} |",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "sweep": args.sweep,
                "train_steps": args.train_steps,
                "student_steps": args.student_steps,
                "mode": args.mode,
                "start": args.start,
                "seeds": seeds,
                "independent": summary["independent"],
                "multitask": summary.get("multitask"),
                "order": order[: max(args.ks, default=0)],
                "rows": rows,
                "sweep_seconds": round(sweep_s, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
