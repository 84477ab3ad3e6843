"""Every hook of the ``ctxrl`` namespace, grouped by phase.

A plugin is a module (or object) with functions decorated by :data:`ctxrl.hookimpl` whose names
match the specs below. An implementation may take any subset of a spec's arguments, so specs can
grow without breaking plugins. Plugins are discovered through the ``ctxrl`` entry-point group; the
built-in ones in ``envs/`` and ``plugins/`` are registered exactly the same way.

Registration hooks receive a ``register`` callback and call it once per thing they provide; the
host owns the registry, checks the type of what is registered and rejects duplicate names. Keep
heavy imports (torch, gymnasium, SB3, SUMO) inside the factories a spec points to, so that
``ctxrl plugins`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from ctxrl.matrix import TransferMatrix
    from ctxrl.registry import (
        AlgorithmSpec,
        EnvSpec,
        ExecutorSpec,
        InterventionSpec,
        StrategySpec,
        TransferMethodSpec,
    )

PROJECT_NAME = "ctxrl"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------------
# Registration: called once per process when the host loads its plugins.
# --------------------------------------------------------------------------------------------


@hookspec
def ctxrl_register_envs(register: Callable[[EnvSpec], None]) -> None:
    """Register contextual environments.

    Call ``register(EnvSpec(...))`` once per environment: its name, its
    :class:`~ctxrl.context.ContextSpace`, a gymnasium factory, an optional torch-batched factory
    and the return bounds used to normalise performance to [0, 1].
    Implement in: environment plugins.
    """


@hookspec
def ctxrl_register_algorithms(register: Callable[[AlgorithmSpec], None]) -> None:
    """Register training algorithms.

    Call ``register(AlgorithmSpec(...))`` once per algorithm: name, supported action spaces,
    whether it trains many (task, seed) pairs in one batched program, and a factory returning
    an object with ``train`` / ``evaluate`` / ``save`` / ``load``
    (see :class:`ctxrl.registry.Algorithm`).
    Implement in: algorithm plugins.
    """


@hookspec
def ctxrl_register_strategies(register: Callable[[StrategySpec], None]) -> None:
    """Register source-task selection strategies (MBTL-GP, random, equidistant, ...).

    Call ``register(StrategySpec(...))``; the factory returns an object with
    ``propose(state) -> list[int]`` (see :class:`ctxrl.selection.Strategy`).
    Implement in: strategy plugins.
    """


@hookspec
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    """Register ways to turn source policies into a target policy (zero-shot, fine-tuning,
    distillation). Implement in: transfer plugins."""


@hookspec
def ctxrl_register_interventions(register: Callable[[InterventionSpec], None]) -> None:
    """Register training-time modifiers (architecture changes, loss terms, post-step operators
    such as plasticity interventions). Implement in: intervention plugins."""


@hookspec
def ctxrl_register_executors(register: Callable[[ExecutorSpec], None]) -> None:
    """Register sweep executors (local process pool, batched device program, Ray).
    Implement in: executor plugins."""


@hookspec
def ctxrl_register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``ctxrl`` command line with ``cli.add_command(...)``.
    Implement in: any plugin that brings its own command."""


# --------------------------------------------------------------------------------------------
# Lifecycle: called while a sweep runs. A raising implementation is reported, never fatal.
# --------------------------------------------------------------------------------------------


@hookspec
def ctxrl_sweep_start(plan: dict[str, Any], run_dir: Path) -> None:
    """A sweep is about to run (fresh or resumed). ``plan`` is the validated plan as JSON data.
    Implement in: loggers."""


@hookspec
def ctxrl_run_finished(plan: dict[str, Any], run: dict[str, Any]) -> None:
    """One training run (finished or failed) and its evaluations were written to the store.
    ``run`` holds the run's stored row: ``run_id``, ``kind`` (``"source"`` or
    ``"multitask"``), ``source_task`` (a task id, or ``"multitask"``), ``seed``, ``status``,
    ``duration_s`` (wall-clock s) and ``error`` (None or the traceback's tail), and
    ``returns``, a mapping from target task id to the list of episode returns. Implement in:
    loggers."""


@hookspec
def ctxrl_sweep_finished(plan: dict[str, Any], run_dir: Path, matrix: TransferMatrix) -> None:
    """A sweep finished; ``matrix`` is its transfer matrix (raw returns, NaN where a run failed).
    Implement in: loggers and reporters."""


REGISTRATION_HOOKS: dict[str, str] = {
    "ctxrl_register_envs": "env",
    "ctxrl_register_algorithms": "algorithm",
    "ctxrl_register_strategies": "strategy",
    "ctxrl_register_transfer_methods": "transfer_method",
    "ctxrl_register_interventions": "intervention",
    "ctxrl_register_executors": "executor",
}
"""Registration hook name -> the registry kind its ``register`` callback fills."""

LIFECYCLE_HOOKS = ("ctxrl_sweep_start", "ctxrl_run_finished", "ctxrl_sweep_finished")
