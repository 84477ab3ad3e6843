"""When the batched trainers compile (``compile: off | on | auto``): ``torch.compile`` turns a
rollout step, a minibatch loss or an evaluation step into one graph, which removes eager
PyTorch's per-operation overhead (a kernel launch per operation on a GPU, a few microseconds
per operation on a CPU) at the price of compiling once per process and shape."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from ctxrl.errors import ConfigError

COMPILE_MODES = ("off", "on", "auto")

TORCH_COMPILE_MODE_VARIABLE = "CTXRL_TORCH_COMPILE_MODE"
"""Environment variable naming the ``mode`` given to ``torch.compile`` (unset: its default
mode). ``reduce-overhead`` replays each compiled function on a CUDA device as a CUDA graph
(one launch instead of one per kernel); see :class:`CompiledFunction`."""

TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def torch_compile_mode() -> str:
    """The ``torch.compile`` mode :data:`TORCH_COMPILE_MODE_VARIABLE` names (``default`` when
    unset); a clear error naming the variable for any other value."""
    mode = os.environ.get(TORCH_COMPILE_MODE_VARIABLE, "") or "default"
    if mode not in TORCH_COMPILE_MODES:
        raise ConfigError(
            f"{TORCH_COMPILE_MODE_VARIABLE}: takes one of {', '.join(TORCH_COMPILE_MODES)}, "
            f"got {mode!r}"
        )
    return mode


CPU_COMPILE_MIN_ITERATIONS = 500
"""Below this many iterations compiling can cost more on the CPU than it saves: about the
largest break-even point ``benchmarks/bench_compile.py`` measured with an empty compile cache
(507 iterations at 4 agents, 231 at 16, 132 at 64 with the fused gradient step: the saving per
iteration grows with the agents, the compile time does not). With inductor's on-disk cache
filled by an earlier run of the same shapes the break-even point is 28-82 iterations; ``auto``
does not count on it."""


def check_compile_mode(algorithm: str, mode: str) -> None:
    """Raise a :class:`~ctxrl.errors.ConfigError` naming the field when ``mode`` is not one of
    :data:`COMPILE_MODES`."""
    if mode not in COMPILE_MODES:
        raise ConfigError(
            f"algorithm.params.compile: {algorithm} takes one of {', '.join(COMPILE_MODES)}, "
            f"got {mode!r}"
        )


def compile_pays(
    mode: str,
    device: torch.device,
    iterations: int,
    cpu_min_iterations: int | None = CPU_COMPILE_MIN_ITERATIONS,
) -> bool:
    """Whether to compile training: ``on`` and ``off`` say so; ``auto`` compiles on
    accelerators (one graph instead of a kernel launch per operation) and on the CPU where the
    measured saving outweighs the compile time: at least ``cpu_min_iterations`` iterations
    (None: never on the CPU)."""
    if mode != "auto":
        return mode == "on"
    if device.type != "cpu":
        return True
    return cpu_min_iterations is not None and iterations >= cpu_min_iterations


def evaluation_compiles(mode: str, device: torch.device) -> bool:
    """Whether to compile batched evaluation: ``on``, or ``auto`` on accelerators. On the CPU an
    evaluation is one rollout of a few hundred steps over many envs, where the matrix
    products dominate and a compilation (seconds) never pays for itself."""
    return mode == "on" or (mode == "auto" and device.type != "cpu")


def _copies(out: Any) -> Any:
    """``out`` with every tensor in it (alone, or in tuples and lists) replaced by a copy."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple | list):
        return type(out)(_copies(x) for x in out)
    return out


class CompiledFunction:
    """``torch.compile(fn, dynamic=False)`` that times its first two calls: the first compiles
    the graph for its shapes (or loads it from inductor's cache), the second runs it, and
    their difference estimates the compile time (later recompilations are not counted).

    Under a CUDA-graph mode (:func:`torch_compile_mode`), each call starts a new step of
    PyTorch's CUDA-graph trees and returns copies of the graph's outputs, so that an output
    kept across calls (the rollout's observations, the loss) is never overwritten by the next
    replay; a function that mutates its inputs runs without CUDA graphs (PyTorch decides)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        mode = torch_compile_mode()
        self._compiled = torch.compile(fn, dynamic=False, mode=None if mode == "default" else mode)
        self._cuda_graphs = mode in CUDA_GRAPH_MODES
        self._first_calls_s: list[float] = []

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        if not self._cuda_graphs:
            return self._compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        return _copies(self._compiled(*args, **kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(self._first_calls_s) == 2:
            return self._call(*args, **kwargs)
        began = time.perf_counter()
        out = self._call(*args, **kwargs)
        self._first_calls_s.append(time.perf_counter() - began)
        return out

    @property
    def compile_s(self) -> float:
        """Seconds of the first call beyond the second's (the first call's time while only one
        call was made; 0 before any)."""
        calls = self._first_calls_s
        if len(calls) < 2:
            return calls[0] if calls else 0.0
        return max(0.0, calls[0] - calls[1])
