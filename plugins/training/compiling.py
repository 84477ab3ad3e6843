"""When the batched trainers compile (``compile: off | on | auto``): ``torch.compile`` turns a
rollout step, a minibatch loss or an evaluation step into one graph, which removes eager
PyTorch's per-operation overhead (a kernel launch per operation on a GPU, a few microseconds
per operation on a CPU) at the price of compiling once per process and shape."""

from __future__ import annotations

import torch

COMPILE_MODES = ("off", "on", "auto")

CPU_COMPILE_MAX_AGENTS = 64
"""Above this many agents the CPU's matrix products dominate an iteration and fusion saves
little (``benchmarks/bench_compile.py``, RESULTS.md "Compiled training")."""
CPU_COMPILE_MIN_ITERATIONS = 400
"""Below this many iterations compiling costs more on the CPU than it saves (the same
benchmark's break-even point, with an empty compile cache)."""


def compile_pays(mode: str, device: torch.device, agents: int, iterations: int) -> bool:
    """Whether to compile training: ``on`` and ``off`` say so; ``auto`` compiles on
    accelerators (one graph instead of a kernel launch per operation) and on the CPU only
    where the measured saving outweighs the compile time: at most
    :data:`CPU_COMPILE_MAX_AGENTS` agents and at least :data:`CPU_COMPILE_MIN_ITERATIONS`
    iterations."""
    if mode != "auto":
        return mode == "on"
    if device.type != "cpu":
        return True
    return agents <= CPU_COMPILE_MAX_AGENTS and iterations >= CPU_COMPILE_MIN_ITERATIONS


def evaluation_compiles(mode: str, device: torch.device) -> bool:
    """Whether to compile batched evaluation: ``on``, or ``auto`` on accelerators. On the CPU an
    evaluation is one rollout of a few hundred steps over many envs, where the matrix
    products dominate and a compilation (seconds) never pays for itself."""
    return mode == "on" or (mode == "auto" and device.type != "cpu")
