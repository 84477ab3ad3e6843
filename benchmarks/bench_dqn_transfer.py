"""The DQN-transferability study on Catch v0-v3, next to Sabatelli and Geurts (2021).

    OMP_NUM_THREADS=1 python benchmarks/bench_dqn_transfer.py [--steps 200000] [--seeds 5]
        [--variants dqn double dueling] [--arms ...] [--output runs/bench-dqn-transfer]

Runs ``ctxrl transfer dqn`` on Catch v0 (paddle 5), v1 (paddle 2), v2 (noisy background), v3
(mirrored): every (source, target) pair, arms scratch / fine-tune / only-head / hybrid /
keep-head (or the ``--arms`` given), batched DQN (plain, Double, Dueling), ``--seeds`` seeds.
The study resumes: rerun the same command after an interruption (its wall time is the sum, kept in
the run directory's ``timing.json``, of every process's training time). Variants can run as
separate processes (``--variants dqn`` on one core, ``--variants double`` on another, each its own
run directory). Prints, per variant:

- the cross-transfer signs of fine-tuning (the paper: all 12 Catch pairs negative);
- self-transfer area ratio r for only-head and fine-tuning next to the paper's
  (v0 0.05 / 0.017, v1 0.141 / -0.218, v2 0.674 / 0.393, v3 0.059 / -0.236; DQN, their
  budget and network, which differ from ours: see benchmarks/RESULTS.md);
- the study's wall time against training the same agents one by one: ``--one-by-one K`` agents
  of the scratch arm are trained alone (one ``train_many`` call each) in the same script, and
  their mean time per agent times the study's agent count is the one-by-one estimate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ctxrl.plugins import get_host
from ctxrl_plugins.transfer.dqn_transferability import (
    VARIANT_PARAMS,
    StudyConfig,
    StudyRunner,
    resolve_study,
)
from ctxrl_plugins.transfer.dqn_transferability_report import write_outputs

PAPER_SELF = {  # (only-head r, fine-tuning r), DQN, Sabatelli and Geurts 2021
    "v0": (0.05, 0.017),
    "v1": (0.141, -0.218),
    "v2": (0.674, 0.393),
    "v3": (0.059, -0.236),
}
CONTEXTS = [
    {"name": "v0", "context": {}},
    {"name": "v1", "context": {"paddle_width": 2}},
    {"name": "v2", "context": {"noise": 255}},
    {"name": "v3", "context": {"mirrored": 1}},
]
DQN = {  # batched DQN sized for Catch (tests/test_catch.py: 0.85 caught after 200k steps)
    "num_envs": 8,
    "hidden": [64],
    "learning_rate": 1e-3,
    "batch_size": 128,
    "buffer_size": 20_000,
    "learning_starts": 1000,
    "train_frequency": 8,
    "gradient_steps": 1,
    "target_network_frequency": 200,
    "exploration_fraction": 0.3,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=["dqn", "double", "dueling"])
    parser.add_argument(
        "--arms", nargs="*", default=["scratch", "fine-tune", "only-head", "hybrid", "keep-head"]
    )
    parser.add_argument("--one-by-one", type=int, default=2, help="agents timed alone")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-dqn-transfer"))
    args = parser.parse_args()
    config = StudyConfig.model_validate(
        {
            "env": "Catch",
            "contexts": CONTEXTS,
            "algorithm": DQN,
            "variants": args.variants,
            "arms": args.arms,
            "seeds": list(range(args.seeds)),
            "train_steps": args.steps,
            "curve_every": args.every,
            "curve_episodes": 20,
            "output_dir": str(args.output),
        }
    )
    registry = get_host().registry
    plan = resolve_study(config, registry)
    runner = StudyRunner(
        plan,
        registry,
        progress=lambda label, d, t: (
            None if d % max(1, t // 4) else print(f"  {label}: {d}/{t}", flush=True)
        ),
    )
    results = runner.run()
    study_s = sum(runner.timing().values())  # every process's training time, summed
    write_outputs(plan, results, runner.run_dir)
    metrics = json.loads((runner.run_dir / "exports" / "metrics.json").read_text())
    agents = sum(r.curves.shape[0] for arms in results.values() for r in arms.values())
    print(
        f"study: {agents} agents x {args.steps:,} steps in {study_s:.0f} s of training "
        f"(summed over the processes that ran it); {runner.run_dir}"
    )
    for variant, arms in metrics["variants"].items():
        names = metrics["names"]
        fine = np.array(arms["fine-tune"]["matrices"]["area_ratio"], dtype=float)
        only = np.array(arms["only-head"]["matrices"]["area_ratio"], dtype=float)
        verdicts = arms["fine-tune"]["verdicts"]
        cross = [(s, t) for s in range(len(names)) for t in range(len(names)) if s != t]
        signs = {
            v: sum(verdicts[s][t] == v for s, t in cross)
            for v in ("positive", "negative", "absent")
        }
        print(
            f"\n{variant}: fine-tune cross-transfer over {len(cross)} pairs: {signs} "
            f"(paper, DQN: 12 negative); mean r {np.mean([fine[s, t, 0] for s, t in cross]):+.3f}"
        )
        print("| variant | only-head r [95% CI] | paper | fine-tune r [95% CI] | paper |")
        print("|---|---|---|---|---|")
        for i, name in enumerate(names):
            paper = PAPER_SELF[name]
            print(
                f"| {name} | {only[i, i, 0]:+.3f} [{only[i, i, 1]:+.3f}, {only[i, i, 2]:+.3f}] "
                f"| {paper[0]:+.3f} | {fine[i, i, 0]:+.3f} [{fine[i, i, 1]:+.3f}, "
                f"{fine[i, i, 2]:+.3f}] | {paper[1]:+.3f} |"
            )
    # the same agents one by one: a few scratch agents alone, timed in this script
    algorithm = registry.algorithm("batched-dqn").factory(
        {**plan.params, **VARIANT_PARAMS[args.variants[0]]}, device="cpu", env=plan.env
    )
    started = time.perf_counter()
    for seed in range(args.one_by_one):
        algorithm.train_many(plan.env, [plan.contexts[0]], [seed], total_steps=args.steps)
    alone_s = (time.perf_counter() - started) / args.one_by_one
    print(
        f"\none agent alone: {alone_s:.1f} s (mean of {args.one_by_one}, no learning curve); "
        f"{agents} agents one by one: ~{alone_s * agents:.0f} s"
    )
    if study_s > 1:
        print(
            f"study in batched programs: {study_s:.0f} s, {alone_s * agents / study_s:.1f}x "
            "faster than one by one (the study also evaluates its learning curves)"
        )


if __name__ == "__main__":
    main()
