"""The DQN-transferability study on Catch v0-v3, next to Sabatelli and Geurts (2021).

    OMP_NUM_THREADS=1 python benchmarks/bench_dqn_transfer.py [--steps 200000] [--seeds 5]
        [--variants dqn double dueling] [--arms ...] [--output runs/bench-dqn-transfer]

Runs ``ctxrl transfer dqn`` on Catch v0 (paddle 5), v1 (paddle 2), v2 (noisy background), v3
(mirrored): every (source, target) pair, arms scratch / fine-tune / only-head / hybrid /
keep-head (or the ``--arms`` given), batched DQN (plain, Double, Dueling), ``--seeds`` seeds.
Each variant is a study of its own (its own run directory under ``--output``), so variants can run
as separate processes (``--variants dqn`` in one, ``--variants double`` in another) and a later run
with all of them reuses the stored ones. A study resumes: rerun the same command after an
interruption (its wall time is the sum, kept in the run directory's ``timing.json``, of every
process's training time). Prints, and writes to ``OUTPUT/catch-tables.md``:

- the cross-transfer verdicts of each transfer arm (the paper: all 12 Catch pairs negative);
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
from typing import Any

import numpy as np

from ctxrl.plugins import get_host
from ctxrl_plugins.transfer.dqn_transferability import (
    VARIANT_PARAMS,
    StudyConfig,
    StudyRunner,
    resolve_study,
)
from ctxrl_plugins.transfer.dqn_transferability_report import VERDICTS, write_outputs

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


def study_config(args: argparse.Namespace, variant: str) -> StudyConfig:
    """One variant's study (its own run directory, so variants can run as separate
    processes and a rerun with more variants reuses the stored ones)."""
    return StudyConfig.model_validate(
        {
            "env": "Catch",
            "contexts": CONTEXTS,
            "algorithm": DQN,
            "variants": [variant],
            "arms": args.arms,
            "seeds": list(range(args.seeds)),
            "train_steps": args.steps,
            "curve_every": args.every,
            "curve_episodes": 20,
            "output_dir": str(args.output),
        }
    )


def _interval(cell: list[float | None]) -> str:
    """``[mean, low, high]`` as text; one seed has no interval (``low``, ``high`` None)."""
    mean, low, high = cell
    if mean is None:
        return "n/a"
    if low is None or high is None:
        return f"{mean:+.3f} [n/a: one seed]"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def tables(metrics: dict[str, Any], names: list[str]) -> str:
    """Markdown: cross-transfer verdicts per (variant, arm) and the self-transfer area ratios
    next to the paper's, from each variant's ``metrics.json``."""
    cross = [(s, t) for s in range(len(names)) for t in range(len(names)) if s != t]
    lines = [
        "| DQN variant | arm | cross-transfer pairs: positive / negative / absent / undetermined "
        "| mean r "
        "| min .. max r |",
        "|---|---|---|---|---|",
    ]
    for variant, arms in metrics.items():
        for arm, data in arms.items():
            r = np.array(data["matrices"]["area_ratio"], dtype=float)[..., 0]
            verdicts = data["verdicts"]
            counts = [sum(verdicts[s][t] == v for s, t in cross) for v in VERDICTS]
            values = [r[s, t] for s, t in cross]
            lines.append(
                f"| {variant} | {arm} | {' / '.join(map(str, counts))} | {np.mean(values):+.3f} "
                f"| {min(values):+.3f} .. {max(values):+.3f} |"
            )
    lines.append(f"\n(paper, DQN on Catch: all {len(cross)} cross-transfer pairs negative)\n")
    shown = [(v, a) for v in metrics for a in ("only-head", "fine-tune") if a in metrics[v]]
    lines.append(
        "| Catch | " + " | ".join(f"{v} {a} r [95% CI]" for v, a in shown) + " | paper DQN "
        "only-head / fine-tune |"
    )
    lines.append("|---" * (len(shown) + 2) + "|")
    for i, name in enumerate(names):
        cells = [_interval(metrics[v][a]["matrices"]["area_ratio"][i][i]) for v, a in shown]
        paper = PAPER_SELF[name]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {paper[0]:+.3f} / {paper[1]:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=["dqn", "double", "dueling"])
    parser.add_argument(
        "--arms", nargs="*", default=["scratch", "fine-tune", "only-head", "hybrid", "keep-head"]
    )
    parser.add_argument("--one-by-one", type=int, default=2, help="agents timed alone (0: none)")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-dqn-transfer"))
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=50_000,
        help="env steps per agent between an arm's checkpoints (each holds the replay buffers)",
    )
    args = parser.parse_args()
    registry = get_host().registry
    metrics: dict[str, Any] = {}
    study_s, agents, names = 0.0, 0, [str(c["name"]) for c in CONTEXTS]
    for variant in args.variants:
        plan = resolve_study(study_config(args, variant), registry)
        runner = StudyRunner(
            plan,
            registry,
            progress=lambda label, d, t: (
                None if d % max(1, t // 4) else print(f"  {label}: {d}/{t}", flush=True)
            ),
            checkpoint_every=args.checkpoint_every,
        )
        results = runner.run()
        write_outputs(plan, results, runner.run_dir)
        exported = json.loads((runner.run_dir / "exports" / "metrics.json").read_text())
        metrics[variant] = exported["variants"][variant]
        seconds = sum(runner.timing().values())  # every process's training time, summed
        count = sum(r.curves.shape[0] for r in results[variant].values())
        study_s, agents = study_s + seconds, agents + count
        print(
            f"{variant}: {count} agents x {args.steps:,} steps in {seconds:.0f} s of training "
            f"(summed over the processes that ran it); {runner.run_dir}",
            flush=True,
        )
    summary = tables(metrics, names)
    print("\n" + summary)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "catch-tables.md").write_text(summary + "\n")
    if args.one_by_one < 1:
        return
    # the same agents one by one: a few scratch agents alone, timed in this script
    plan = resolve_study(study_config(args, args.variants[0]), registry)
    algorithm: Any = registry.algorithm("batched-dqn").factory(
        {**plan.params, **VARIANT_PARAMS[args.variants[0]]}, device="cpu", env=plan.env
    )
    started = time.perf_counter()
    for seed in range(args.one_by_one):
        algorithm.train_many(plan.env, [plan.contexts[0]], [seed], total_steps=args.steps)
    alone_s = (time.perf_counter() - started) / args.one_by_one
    print(
        f"\none {args.variants[0]} agent alone: {alone_s:.1f} s (mean of {args.one_by_one}, no "
        f"learning curve); {agents} agents one by one: ~{alone_s * agents:.0f} s"
    )
    print(
        f"study in batched programs: {study_s:.0f} s, {alone_s * agents / max(study_s, 1e-9):.1f}x "
        "faster than one by one (the study also evaluates its learning curves)"
    )


if __name__ == "__main__":
    main()
