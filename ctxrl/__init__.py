"""ctxrl: contextual reinforcement learning, built from plugins.

The public surface of the host. Importing it is cheap: no torch, gymnasium or simulator is
imported until a plugin's factory needs it, and the library functions below that need more
(sweeps, results, plugins) are imported when first used:

- plugins: :func:`get_host` (its ``registry`` lists and builds every env, algorithm,
  strategy, transfer method, intervention and executor);
- sweeps: :func:`load_config`, :func:`validate_config`, :func:`resolve_plan`,
  :func:`run_sweep`;
- results: :func:`load_plan`, :func:`open_store`, :func:`sweep_matrix` (a sweep's transfer
  matrix, raw returns), :func:`load_policies`;
- selection: :func:`replay`, :func:`replay_many`, :func:`trace_of`,
  :func:`generalized_performance`.
"""

from typing import TYPE_CHECKING, Any

from ctxrl.context import Context, ContextFeature, ContextGrid, ContextSpace, GridAxis, Task
from ctxrl.errors import (
    CheckpointError,
    ConfigError,
    ContextError,
    CtxrlError,
    DuplicateNameError,
    MatrixError,
    PluginError,
    PluginUnavailable,
    UnknownNameError,
)
from ctxrl.hookspecs import hookimpl, hookspec
from ctxrl.matrix import TransferMatrix
from ctxrl.registry import (
    Algorithm,
    AlgorithmSpec,
    BatchedAlgorithm,
    CurveOptions,
    EnvSpec,
    ExecutorSpec,
    InterventionSpec,
    StrategySpec,
    TransferMethodSpec,
)
from ctxrl.selection import (
    SelectionState,
    Strategy,
    generalized_performance,
    replay,
    replay_many,
    trace_of,
)

if TYPE_CHECKING:  # imported when first used (module __getattr__ below)
    from ctxrl.config import load_config, resolve_plan, validate_config
    from ctxrl.plugins import get_host
    from ctxrl.results import load_plan, load_policies, open_store
    from ctxrl.summary import sweep_matrix
    from ctxrl.sweep import run_sweep

_LAZY = {
    "get_host": "ctxrl.plugins",
    "load_config": "ctxrl.config",
    "validate_config": "ctxrl.config",
    "resolve_plan": "ctxrl.config",
    "run_sweep": "ctxrl.sweep",
    "load_plan": "ctxrl.results",
    "open_store": "ctxrl.results",
    "load_policies": "ctxrl.results",
    "sweep_matrix": "ctxrl.summary",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ctxrl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "AlgorithmSpec",
    "BatchedAlgorithm",
    "CheckpointError",
    "ConfigError",
    "Context",
    "ContextError",
    "ContextFeature",
    "ContextGrid",
    "ContextSpace",
    "CtxrlError",
    "CurveOptions",
    "DuplicateNameError",
    "EnvSpec",
    "ExecutorSpec",
    "GridAxis",
    "InterventionSpec",
    "MatrixError",
    "PluginError",
    "PluginUnavailable",
    "SelectionState",
    "Strategy",
    "StrategySpec",
    "Task",
    "TransferMatrix",
    "TransferMethodSpec",
    "UnknownNameError",
    "__version__",
    "generalized_performance",
    "get_host",
    "hookimpl",
    "hookspec",
    "load_config",
    "load_plan",
    "load_policies",
    "open_store",
    "replay",
    "replay_many",
    "resolve_plan",
    "run_sweep",
    "sweep_matrix",
    "trace_of",
    "validate_config",
]
