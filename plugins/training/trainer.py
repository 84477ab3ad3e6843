"""What the batched trainers share: hyperparameter parsing, the algorithm object's single-task
methods on top of ``train_many``, safetensors artifacts and training checkpoints.

Everything here keeps agents independent: an agent's numbers never depend on the others in
the batch (see :mod:`ctxrl.rng` and :func:`ctxrl_plugins.training.networks.linear`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from ctxrl.artifacts import load_artifact, save_artifact
from ctxrl.context import Task
from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl.rng import StreamRNG
from ctxrl_plugins.training.evaluation import Policies, evaluate_policies
from ctxrl_plugins.training.networks import Params
from ctxrl_plugins.training.optimizer import AgentAdam

Tensor = torch.Tensor

ConfigT = TypeVar("ConfigT")


def hyperparameters(
    config_class: type[ConfigT], params: Mapping[str, Any], algorithm: str
) -> ConfigT:
    """A frozen hyperparameter dataclass from config ``params``; unknown keys are an error that
    names them and lists the known ones. Lists become tuples (the dataclasses are hashable)."""
    known = {f.name for f in fields(config_class)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"algorithm.params: {algorithm} has no hyperparameter "
            f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return config_class(**values)


class BatchedTrainer:
    """What the batched algorithms share: single-task ``train`` / ``evaluate`` on top of
    ``train_many`` / batched evaluation, and safetensors artifacts.

    Subclasses set ``name`` and implement ``train_many`` and ``policies_from``."""

    name: ClassVar[str]

    def __init__(self, device: str) -> None:
        self.device = resolve_device(device)

    def train_many(
        self,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        seeds: Sequence[int],
        *,
        total_steps: int,
        **kwargs: Any,
    ) -> Any:
        raise NotImplementedError

    def policies_from(self, tensors: Params, metadata: dict[str, Any]) -> Any:
        """Rebuild trained agents from a saved artifact."""
        raise NotImplementedError

    def train(self, env: EnvSpec, task: Task, *, seed: int, total_steps: int) -> Any:
        return self.train_many(env, [task.context.as_dict()], [seed], total_steps=total_steps)

    def evaluate_many(
        self,
        policies: Policies,
        env: EnvSpec,
        contexts: Sequence[Mapping[str, float]],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray:
        """Returns ``(P, Q, E)`` of P policies on Q contexts (see :func:`evaluate_policies`)."""
        return evaluate_policies(
            policies,
            env,
            contexts,
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
            device=self.device,
        )

    def evaluate(
        self,
        policy: Policies,
        env: EnvSpec,
        tasks: Sequence[Task],
        *,
        episodes: int,
        seed: int,
        deterministic: bool = True,
    ) -> np.ndarray:
        out = self.evaluate_many(
            policy,
            env,
            [t.context.as_dict() for t in tasks],
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
        )
        return out[0] if len(policy) == 1 else out

    def save(self, policy: Policies, path: Path) -> None:
        save_artifact(path, policy.params, {"algorithm": self.name, **policy.metadata()})

    def load(self, path: Path, env: EnvSpec) -> Any:
        tensors, metadata = load_artifact(path, device=str(self.device))
        if metadata.get("algorithm") != self.name:
            raise CtxrlError(
                f"{path} holds a {metadata.get('algorithm')!r} policy, not {self.name}"
            )
        return self.policies_from(tensors, metadata)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def save_training_state(
    path: Path,
    iteration: int,
    optimizer: AgentAdam,
    twin: Any,
    rng: StreamRNG,
    obs: Tensor,
    extra: Mapping[str, Tensor] | None = None,
) -> None:
    """Save everything a batched training needs to continue bit-exactly after a kill: weights,
    Adam moments, the environments' state, step counters, contexts (multi-task runs redraw
    them) and random streams, the agents' random streams, the last observation ``(B, obs)``
    and the trainer's own ``extra`` tensors (replay buffers, target networks). safetensors +
    JSON, written atomically by :func:`ctxrl.artifacts.save_artifact`."""
    tensors = {f"adam.{k}": v for k, v in optimizer.state_tensors().items()}
    tensors.update(
        {
            "env.state": twin._state,
            "env.elapsed": twin.elapsed,
            "obs": obs,
            "rng.seeds": rng.seeds,
            "rng.counters": rng.counters,
        }
    )
    tensors.update({f"env.context.{k}": v for k, v in twin.context.items()})
    if twin.streams is not None:
        tensors["env.rng.seeds"] = twin.streams.seeds
        tensors["env.rng.counters"] = twin.streams.counters
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    save_artifact(path, tensors, {"iteration": iteration})


def restore_training_state(
    path: Path,
    optimizer: AgentAdam,
    twin: Any,
    rng: StreamRNG,
) -> tuple[int, Tensor, dict[str, Tensor]]:
    """Load what :func:`save_training_state` wrote into live objects; return the iteration to
    continue from, the last observation and the ``extra`` tensors (prefix removed)."""
    tensors, meta = load_artifact(path, device=str(twin.device))
    optimizer.load_state_tensors(
        {k.removeprefix("adam."): v for k, v in tensors.items() if k.startswith("adam.")}, path
    )
    twin._state = tensors["env.state"].clone()
    twin.elapsed = tensors["env.elapsed"].clone()
    contexts = {
        k.removeprefix("env.context."): v
        for k, v in tensors.items()
        if k.startswith("env.context.")
    }
    if contexts:
        twin.set_context(contexts)
    rng.load_state_dict({"seeds": tensors["rng.seeds"], "counters": tensors["rng.counters"]})
    if twin.streams is not None:
        twin.streams.load_state_dict(
            {"seeds": tensors["env.rng.seeds"], "counters": tensors["env.rng.counters"]}
        )
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return int(meta["iteration"]), tensors["obs"], extra
