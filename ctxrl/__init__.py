"""ctxrl: contextual reinforcement learning, built from plugins.

The public surface of the host. Importing it is cheap: no torch, gymnasium or simulator is
imported until a plugin's factory needs it.
"""

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
    EnvSpec,
    ExecutorSpec,
    InterventionSpec,
    StrategySpec,
    TransferMethodSpec,
)
from ctxrl.selection import SelectionState, Strategy, generalized_performance

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "AlgorithmSpec",
    "CheckpointError",
    "ConfigError",
    "Context",
    "ContextError",
    "ContextFeature",
    "ContextGrid",
    "ContextSpace",
    "CtxrlError",
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
    "hookimpl",
    "hookspec",
]
