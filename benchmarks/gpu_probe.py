"""Per-iteration time of batched PPO on one device: eager, or compiled under the torch.compile
mode $CTXRL_TORCH_COMPILE_MODE names; the first training includes compiling, the second (same
process, same shapes) does not.

    CTXRL_TORCH_COMPILE_MODE=reduce-overhead python benchmarks/gpu_probe.py --compile on
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ctxrl.plugins import get_host
from ctxrl_plugins.training.compiling import torch_compile_mode


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--agents", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=32)
    parser.add_argument("--compile", default="on")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    registry = get_host().registry
    spec = registry.env("CartPole")
    contexts = [{"length": float(v)} for v in np.geomspace(0.25, 2.0, args.agents)]
    steps = args.iterations * 512
    for run in ("first", "second"):
        algorithm = registry.algorithm("batched-ppo").factory(
            {"compile": args.compile, "anneal_lr": False}, device=args.device
        )
        began = time.perf_counter()
        algorithm.train_many(spec, contexts, list(range(args.agents)), total_steps=steps)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - began
        print(
            f"{run} training, compile {args.compile}, mode {torch_compile_mode()}: "
            f"{args.agents} agents x {args.iterations} iterations in {elapsed:.1f} s "
            f"({1000 * elapsed / args.iterations:.1f} ms per iteration, "
            f"{args.agents * steps / elapsed:,.0f} steps/s), compile_s {algorithm.compile_s:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
