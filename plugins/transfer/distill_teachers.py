"""Teachers for distillation: stacking and loading source policies with their contexts, and
the per-student teacher weights (context distance, measured or predicted transfer).

Shapes: ``N`` students, ``K`` teachers, ``M`` states, ``A`` action logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.registry import EnvSpec

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- teachers
def teacher_name(teachers: Any, k: int) -> str:
    """``teacher k (feature=value, ..., seed s)``: how errors name a teacher."""
    contexts = getattr(teachers, "contexts", None)
    seeds = getattr(teachers, "seeds", None)
    where = ""
    if contexts is not None and k < len(contexts):
        where = ", ".join(f"{f}={v:g}" for f, v in contexts[k].items())
    if seeds is not None and k < len(seeds):
        where = f"{where}, seed {seeds[k]}" if where else f"seed {seeds[k]}"
    return f"teacher {k} ({where})" if where else f"teacher {k}"


def teacher_outputs(teachers: Any, obs: Tensor) -> Tensor:
    """Every teacher on every student's states: ``obs`` ``(N, M, obs)`` -> ``(N, K, M, A)``
    actor outputs (PPO: logits or Gaussian means) or Q-values (DQN), without gradient."""
    k = len(teachers)
    n, m, d = obs.shape
    flat = obs.reshape(1, n * m, d).expand(k, n * m, d)
    with torch.no_grad():
        out = teachers.actor(flat) if hasattr(teachers, "actor") else teachers.q(flat)
    labels: Tensor = out.view(k, n, m, -1).transpose(0, 1)
    return labels


Q_VALUE_TEMPERATURE = 0.01
"""The softmax temperature that turns Q-value teachers into action distributions by default:
Rusu et al.'s policy distillation (2016) sharpens DQN's Q-values at ``tau = 0.01``; at 1 the
small gaps between a trained DQN's Q-values give a nearly uniform target."""


def teacher_temperature(teachers: Any, temperature: float | None) -> float:
    """``temperature`` when given, else the default for ``teachers``: 1 for policies (PPO's
    logits or Gaussian means), :data:`Q_VALUE_TEMPERATURE` for Q-value teachers (DQN)."""
    if temperature is not None:
        return float(temperature)
    return 1.0 if hasattr(teachers, "actor") else Q_VALUE_TEMPERATURE


def teacher_spaces(teachers: Any) -> tuple[int, int | None]:
    """A teachers object's observation size and action count (None: continuous)."""
    meta = teachers.metadata()
    obs_dim = int(meta["obs_dim"])
    discrete = bool(getattr(teachers, "discrete", True))
    if not discrete:
        return obs_dim, None
    out = teacher_outputs(teachers, torch.zeros(1, 1, obs_dim, device=device_of(teachers)))
    return obs_dim, int(out.shape[-1])


def check_teachers(teachers: Any, obs_dim: int, actions: int | None, env: str) -> None:
    """Raise a :class:`~ctxrl.errors.CtxrlError` naming the first teacher that cannot label
    states of ``env`` (observation size ``obs_dim``, ``actions`` discrete actions or None for
    continuous), or when there is no teacher."""
    if teachers is None or len(teachers) == 0:
        raise CtxrlError("distillation needs at least one teacher (got an empty teacher set)")
    if not hasattr(teachers, "params") or not (
        hasattr(teachers, "actor") or hasattr(teachers, "q")
    ):
        raise CtxrlError(
            f"{type(teachers).__name__} teachers cannot label states: distillation needs "
            "batched policies (batched-ppo or batched-dqn)"
        )
    their_obs, their_actions = teacher_spaces(teachers)
    if their_obs != obs_dim or their_actions != actions:
        names = "; ".join(teacher_name(teachers, k) for k in range(min(len(teachers), 4)))
        raise CtxrlError(
            f"{names}{' ...' if len(teachers) > 4 else ''}: trained with observations "
            f"{their_obs} and actions "
            f"{their_actions or 'continuous'}; {env} has observations {obs_dim} and actions "
            f"{actions or 'continuous'}: they cannot teach there"
        )


def stack_teachers(policies: Sequence[Any]) -> Any:
    """One teachers object of K agents from K policies objects of one or more agents each
    (as :func:`ctxrl.results.load_policies` returns them); a policy whose spaces or
    parameters differ from the first's is an error naming it."""
    if not policies:
        raise CtxrlError("distillation needs at least one teacher (got an empty teacher set)")
    first = policies[0]
    spaces = teacher_spaces(first)
    params: dict[str, list[Tensor]] = {name: [] for name in first.params}
    contexts: list[dict[str, float]] = []
    seeds: list[int] = []
    for k, policy in enumerate(policies):
        name = teacher_name(policy, 0).replace("teacher 0", f"teacher {k}", 1)
        if type(policy) is not type(first) or set(policy.params) != set(params):
            raise CtxrlError(
                f"{name} is a {type(policy).__name__} with parameters "
                f"{sorted(policy.params)[:4]}..., unlike teacher 0: teachers must come from one "
                "algorithm and network"
            )
        if teacher_spaces(policy) != spaces:
            obs, actions = teacher_spaces(policy)
            raise CtxrlError(
                f"{name} has observations {obs} and actions {actions or 'continuous'}, teacher 0 "
                f"observations {spaces[0]} and actions {spaces[1] or 'continuous'}: one "
                "teacher set must share its spaces"
            )
        for key in params:
            if policy.params[key].shape[1:] != first.params[key].shape[1:]:
                raise CtxrlError(
                    f"{name}: parameter {key!r} has shape {tuple(policy.params[key].shape[1:])}, "
                    f"teacher 0's {tuple(first.params[key].shape[1:])} (another network size)"
                )
            params[key].append(policy.params[key])
        contexts += [dict(c) for c in policy.contexts]
        seeds += [int(s) for s in policy.seeds]
    stacked = {key: torch.cat(values) for key, values in params.items()}
    return dataclasses.replace(first, params=stacked, contexts=contexts, seeds=seeds, log=None)


def load_teachers(run_dirs: str | Path | Sequence[str | Path], *, device: str = "cpu") -> Any:
    """Teachers from one or more finished sweep run directories (every finished source run
    with a policy artifact; a multi-task policy, trained on every context, has no context of
    its own to be weighted by), stacked into one teachers object with their contexts.

    A directory that is not a run directory or holds no finished policy is an error naming it
    (from :func:`ctxrl.results.load_policies`); so are teachers whose spaces differ."""
    from ctxrl.results import load_policies

    dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    if not dirs:
        raise CtxrlError("distillation needs at least one teacher (got no run directory)")
    policies: list[Any] = []
    for run_dir in dirs:
        loaded = load_policies(run_dir, device=device, where=lambda row: row.kind == "source")
        for policy, context in zip(loaded.policies, loaded.contexts, strict=True):
            if not hasattr(policy, "params"):
                raise CtxrlError(
                    f"{run_dir}: {loaded.plan.algorithm.name} policies cannot teach "
                    "(distillation needs batched-ppo or batched-dqn policies)"
                )
            # the artifact knows its training context; keep the store's (validated) one
            policies.append(dataclasses.replace(policy, contexts=[dict(context)]))
    return stack_teachers(policies)


def device_of(teachers: Any) -> torch.device:
    device: torch.device = next(iter(teachers.params.values())).device
    return device


# ------------------------------------------------------------------------------ weights
def distance_weights(
    env: EnvSpec,
    students: Sequence[Mapping[str, float]],
    teachers: Sequence[Mapping[str, float]],
    *,
    scale: float = 0.1,
) -> np.ndarray:
    """``(N, K)`` weights ``softmax_k(-d(student, teacher_k) / scale)``, ``d`` the Euclidean
    distance in the context space's unit coordinates (every feature in ``[0, 1]`` along its
    own linear or log scale), so features of different units count alike.

    ``scale`` is a distance in unit coordinates: at 0.1 a teacher 0.1 further away weighs
    ``e`` times less. Rows sum to 1."""
    if scale <= 0:
        raise ConfigError(f"distill: scale must be > 0, got {scale}")
    space = env.context_space
    features = list(space.names)
    full_s = [space.validate(dict(c)).as_dict() for c in students]
    full_t = [space.validate(dict(c)).as_dict() for c in teachers]
    u_s, u_t = space.to_unit(full_s, features), space.to_unit(full_t, features)
    distance = np.linalg.norm(u_s[:, None, :] - u_t[None, :, :], axis=-1)  # (N, K)
    logits = -distance / scale
    logits -= logits.max(axis=1, keepdims=True)  # exp stays finite however far
    weights = np.exp(logits)
    return np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)


def transfer_weights(env: EnvSpec, returns: np.ndarray, *, scale: float = 0.1) -> np.ndarray:
    """``(Q, K)`` weights ``softmax_k(J_k(q) / scale)`` from the teachers' measured zero-shot
    returns ``returns`` ``(K, Q)`` on the targets, normalised to ``[0, 1]`` by the env's
    return bounds: the teachers that already do well on a target teach it most. ``scale`` is
    in normalised return: at 0.1 a teacher 0.1 worse weighs ``e`` times less."""
    if scale <= 0:
        raise ConfigError(f"distill: scale must be > 0, got {scale}")
    logits = env.normalise(np.asarray(returns, dtype=np.float64)).T / scale  # (Q, K)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)


def predicted_transfer_weights(
    env: EnvSpec,
    teacher_contexts: Sequence[Mapping[str, float]],
    own_returns: Sequence[float] | np.ndarray,
    targets: Sequence[Mapping[str, float]],
    *,
    gap: Any = None,
    theta: float = 0.5,
    scale: float = 0.1,
) -> np.ndarray:
    """``(Q, K)`` weights ``softmax_k(Jhat_k(q) / scale)`` from the generalization model's
    predicted transfer, without running a teacher in a target: ``Jhat_k(q) = J_k(x_k) -
    gap(x_k, x_q)`` (MBTL's linear generalization gap, Cho et al. 2024, arXiv 2408.04498;
    :class:`ctxrl.gp.GapModel`), ``J_k(x_k)`` teacher ``k``'s return on its own context
    (``own_returns``, raw, normalised here by the env's return bounds).

    Args:
        gap: a fitted :class:`~ctxrl.gp.GapModel` over the context space's features in
            ``space.names`` order (e.g. :meth:`~ctxrl.gp.GapModel.estimate` from a sweep's
            matrix); None: the same slope ``theta`` per unit distance on every feature."""
    from ctxrl.gp import GapModel

    if scale <= 0:
        raise ConfigError(f"distill: scale must be > 0, got {scale}")
    space = env.context_space
    names = list(space.names)
    k = len(teacher_contexts)
    own = env.normalise(np.asarray(own_returns, dtype=np.float64))
    if own.shape != (k,):
        raise ConfigError(f"distill: {own.shape[0]} own returns for {k} teachers")
    full = [space.validate(dict(c)).as_dict() for c in [*teacher_contexts, *targets]]
    coords = space.to_unit(full, names)  # (K + Q, d)
    model = gap if gap is not None else GapModel.constant(theta, len(names))
    gaps = model.gap(coords)[:k, k:]  # (K, Q): teacher row, target column
    logits = np.clip(own[:, None] - gaps, 0.0, 1.0).T / scale  # (Q, K)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)


__all__ = [
    "check_teachers",
    "distance_weights",
    "load_teachers",
    "predicted_transfer_weights",
    "stack_teachers",
    "teacher_name",
    "teacher_outputs",
    "teacher_spaces",
    "transfer_weights",
]
