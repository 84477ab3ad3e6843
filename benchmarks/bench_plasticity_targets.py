"""A full-size shifting-target plasticity study, and its wall time against one agent at a time.

    OMP_NUM_THREADS=1 python benchmarks/bench_plasticity_targets.py \
        benchmarks/studies/plasticity-targets.yaml [--baseline-agents 3] [--out DIR]

1. Runs the study (``ctxrl plasticity``'s code path: every arm x seed, batched programs) in a
   fresh directory and times it, the fit records and plasticity metrics included.
2. Trains ``--baseline-agents`` agents of the study (its data, network and Adam, no
   intervention) one after another with a single-agent plain-PyTorch loop (``torch.nn``
   layers, ``torch.optim.Adam``), which records only each task's final error, and
   extrapolates its mean time per agent to the study's agent count: the time the same study
   takes one agent at a time (a lower bound: the interventions' work is left out). The ratio is
   measured in the same process, on the same machine.
3. Copies the study's ``summary.md``, ``metrics.json`` and figure to ``--out`` and writes
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

from ctxrl.plugins import get_host
from ctxrl_plugins.transfer.plasticity_study import plan_programs
from ctxrl_plugins.transfer.plasticity_targets import (
    DATA_SALT,
    ShiftingTargets,
    load_targets_config,
    run_targets_study,
)


def train_one(task: ShiftingTargets, seed: int) -> list[float]:
    """One agent, plain PyTorch: the same inputs, targets and minibatches as the study's agent
    of seed ``seed``; returns each task's final error (MSE / target variance)."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = task.input_dim
    for hidden in task.hidden:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    network = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=task.learning_rate)
    generator = torch.Generator().manual_seed(seed + DATA_SALT)
    inputs = torch.randn(task.points, task.input_dim, generator=generator)
    errors = []
    for _ in range(task.tasks):
        targets = torch.randn(task.points, 1, generator=generator) * task.target_scale
        variance = targets.var(unbiased=False)
        batches = torch.randint(
            task.points, (task.steps_per_task, task.batch_size), generator=generator
        )
        for chosen in batches:
            loss = (network(inputs[chosen]) - targets[chosen]).square().mean() / variance
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            errors.append(float((network(inputs) - targets).square().mean() / variance))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("study", type=Path)
    parser.add_argument("--baseline-agents", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry = get_host().registry
    config = load_targets_config(args.study)
    out = args.out or Path("benchmarks/results") / args.study.stem
    _, programs = plan_programs(config, registry)
    agents = sum(len(p.agents) for p in programs)
    with tempfile.TemporaryDirectory() as tmp:
        config = config.model_copy(update={"output_dir": Path(tmp)})
        start = time.perf_counter()
        run_dir = run_targets_study(config, registry, progress=print)
        study_seconds = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        for name in ("summary.md", "metrics.json"):
            shutil.copy(run_dir / name, out / name)
        shutil.copytree(run_dir / "figures", out / "figures", dirs_exist_ok=True)
    task = config.shifting_targets
    seconds = []
    last_errors = []
    for seed in config.seeds[: args.baseline_agents]:
        start = time.perf_counter()
        errors = train_one(task, seed)
        seconds.append(time.perf_counter() - start)
        last_errors.append(float(np.mean(errors[-task.window :])))
    one_by_one = float(np.mean(seconds)) * agents
    timing = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)",
        "agents": agents,
        "programs": len(programs),
        "study_seconds": round(study_seconds, 1),
        "single_agent_seconds": [round(s, 2) for s in seconds],
        "one_by_one_seconds": round(one_by_one, 1),
        "speedup": round(one_by_one / study_seconds, 2),
        "single_agent_last_error": [round(e, 3) for e in last_errors],
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    print((out / "summary.md").read_text())
    print(json.dumps(timing, indent=1))


if __name__ == "__main__":
    main()
