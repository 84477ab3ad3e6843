"""A full-size plasticity study, and its wall time against one agent at a time.

    OMP_NUM_THREADS=1 python benchmarks/bench_plasticity.py \
        benchmarks/studies/plasticity-cartpole.yaml [--baseline-agents 2] [--out DIR]

1. Runs the study (``ctxrl plasticity``'s code path: every arm x seed, batched programs) in a
   fresh directory and times it, curve evaluation and plasticity metrics included.
2. Trains ``--baseline-agents`` agents of the study (its schedule, hyperparameters and network,
   no intervention) one after another with a single-agent plain-PyTorch PPO loop
   (:mod:`single_agent_ppo`, CleanRL's algorithm on the same torch twin), which records nothing
   but its final return, and extrapolates its mean time per agent to the study's agent count:
   the time the same study takes run one agent at a time. The ratio is measured in the same
   process, on the same machine.
3. Copies the study's ``summary.md``, ``metrics.json`` and figures to ``--out`` and writes
   ``timing.json`` there.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from single_agent_ppo import train_one

from ctxrl.plugins import get_host
from ctxrl_plugins.algorithms.ppo import PPOConfig
from ctxrl_plugins.training.trainer import hyperparameters
from ctxrl_plugins.transfer.plasticity_study import load_study_config, resolve_study, run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("study", type=Path)
    parser.add_argument("--baseline-agents", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    registry = get_host().registry
    config = load_study_config(args.study)
    out = args.out or Path("benchmarks/results") / args.study.stem
    with tempfile.TemporaryDirectory() as tmp:
        config = config.model_copy(update={"output_dir": Path(tmp)})
        plan = resolve_study(config, registry)
        if config.algorithm != "batched-ppo":
            raise SystemExit("the single-agent baseline is PPO: give a batched-ppo study")
        agents = sum(len(p.agents) for p in plan.programs)
        start = time.perf_counter()
        run_dir = run_study(config, registry)
        study_seconds = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        for name in ("summary.md", "metrics.json"):
            shutil.copy(run_dir / name, out / name)
        shutil.copytree(run_dir / "figures", out / "figures", dirs_exist_ok=True)
    ppo = hyperparameters(PPOConfig, plan.params, "batched-ppo")
    baseline = [
        train_one(plan.env, plan.schedules[seed], seed, ppo, config.total_steps)
        for seed in config.seeds[: args.baseline_agents]
    ]
    per_agent = float(np.mean([b["seconds"] for b in baseline]))
    one_by_one = per_agent * agents
    timing = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)",
        "agents": agents,
        "programs": len(plan.programs),
        "study_seconds": study_seconds,
        "single_agent_seconds_each": [b["seconds"] for b in baseline],
        "single_agent_final_returns": [b["final_return"] for b in baseline],
        "one_by_one_seconds_extrapolated": one_by_one,
        "ratio": one_by_one / study_seconds,
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    print((out / "summary.md").read_text())
    print(
        f"study: {agents} agents in {len(plan.programs)} batched program(s), "
        f"{study_seconds:.0f} s; "
        f"single-agent PyTorch loop {per_agent:.1f} s per agent x {agents} = {one_by_one:.0f} s; "
        f"ratio {timing['ratio']:.1f}x"
    )


if __name__ == "__main__":
    main()
