"""Task distillation from source-context teachers: the students, their trainers and the
``distill`` transfer method (registered by :mod:`ctxrl_plugins.transfer.distill`, which keeps
torch out of plugin discovery).

Teachers are trained policies of the same env family (a sweep's sources, or any finished run
directory through :func:`load_teachers`), each with its context. For every target context a
student is trained in that context, all students in one batched program:

- ``dagger``: multi-teacher policy distillation on the states the student itself visits in
  the target context (DAgger-style data, Ross et al. 2011, arXiv 1011.0686): the teachers
  label those states with their action distributions and the student minimises the KL from
  their weighted mixture (Rusu et al. 2016, arXiv 1511.06295; Actor-Mimic, Parisotto et al.
  2016, arXiv 1511.06342). No reward is used: the student can only become as good as the
  teachers' mixture is in the target context.
- ``kickstart``: PPO in the target context plus ``lambda_t`` times the same distillation
  term on PPO's minibatches, ``lambda_t`` decaying to 0 (Schmitt et al. 2018, arXiv
  1803.03835), so the student can surpass its teachers.

Teacher weights per student: ``distance`` (a softmax of ``-d / scale`` over the Euclidean
distances ``d`` between the target's and the teachers' contexts in the context space's unit
coordinates, :meth:`~ctxrl.context.ContextSpace.to_unit`), ``uniform``, ``transfer`` (the sweep
method only: a softmax of the teachers' measured zero-shot returns on the target,
:func:`transfer_weights`) or an explicit ``(students, teachers)`` array; the losses normalise
them (:mod:`ctxrl_plugins.transfer.distill_losses`).

Shapes: ``N`` students, ``K`` teachers, ``M`` states per student, ``A`` action logits (or
``D`` action dimensions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl.transfer import TransferProblem, TransferResult, evaluate_sources
from ctxrl_plugins.algorithms.ppo import BatchedPPO, _Rollout, sampling_noise
from ctxrl_plugins.training.run import TrainingRun
from ctxrl_plugins.transfer.distill_losses import (
    DistillLoss,
    discrete_distill_loss,
    gaussian_distill_loss,
    normalise_weights,
)

Tensor = torch.Tensor
Mode = Literal["dagger", "kickstart", "conditioned"]
Decay = Literal["linear", "exponential"]


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


def teacher_spaces(teachers: Any) -> tuple[int, int | None]:
    """A teachers object's observation size and action count (None: continuous)."""
    meta = teachers.metadata()
    obs_dim = int(meta["obs_dim"])
    discrete = bool(getattr(teachers, "discrete", True))
    if not discrete:
        return obs_dim, None
    out = teacher_outputs(teachers, torch.zeros(1, 1, obs_dim, device=_device_of(teachers)))
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
    """Teachers from one or more finished sweep run directories (every finished run with a
    policy artifact), stacked into one teachers object with their contexts.

    A directory that is not a run directory or holds no finished policy is an error naming it
    (from :func:`ctxrl.results.load_policies`); so are teachers whose spaces differ."""
    from ctxrl.results import load_policies

    dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    if not dirs:
        raise CtxrlError("distillation needs at least one teacher (got no run directory)")
    policies: list[Any] = []
    for run_dir in dirs:
        loaded = load_policies(run_dir, device=device)
        for policy, context in zip(loaded.policies, loaded.contexts, strict=True):
            if not hasattr(policy, "params"):
                raise CtxrlError(
                    f"{run_dir}: {loaded.plan.algorithm.name} policies cannot teach "
                    "(distillation needs batched-ppo or batched-dqn policies)"
                )
            # the artifact knows its training context; keep the store's (validated) one
            policies.append(dataclasses.replace(policy, contexts=[dict(context)]))
    return stack_teachers(policies)


def _device_of(teachers: Any) -> torch.device:
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


# ------------------------------------------------------------------------------ teaching
@dataclass
class Teaching:
    """What a student trainer distils from.

    Attributes:
        teachers: K batched policies (``.params``, ``.actor(obs)`` or ``.q(obs)``).
        weights: ``(N, K)`` per-student teacher weights (normalised by the losses).
        temperature: teacher softmax temperature (Q-value teachers want ~0.01) or, for
            Gaussian teachers, the factor on their variances.
        coef: per-student factor ``(N,)`` on the distillation term (kickstarting; 0 trains
            that student as plain PPO, e.g. a scratch baseline in the same batch).
        teacher_obs: context-conditioned students: the teachers see only the first
            ``teacher_obs`` observation entries (the rest is the visible context).
        pool_unit: context-conditioned students: ``(C, d)`` the training pool's contexts in
            unit coordinates of the visible features.
        pool_weights: ``(C, K)`` the teacher weights of each pool context; a state takes
            the row of the pool context its visible context is (nearest to).
    """

    teachers: Any
    weights: Tensor
    temperature: float = 1.0
    coef: Tensor | None = None
    teacher_obs: int | None = None
    pool_unit: Tensor | None = None
    pool_weights: Tensor | None = None

    def labels(self, obs: Tensor) -> Tensor:
        """The teachers' outputs ``(N, K, M, A)`` on ``obs`` ``(N, M, obs)``."""
        seen = obs if self.teacher_obs is None else obs[..., : self.teacher_obs]
        return teacher_outputs(self.teachers, seen)

    def weights_for(self, obs: Tensor) -> Tensor:
        """``(N, K)``, or ``(N, K, M)`` per state for context-conditioned students."""
        if self.pool_unit is None or self.pool_weights is None or self.teacher_obs is None:
            return self.weights.to(obs.device)
        here = obs[..., self.teacher_obs :]  # (N, M, d) the visible context, unit coordinates
        pool = self.pool_unit.to(obs.device)
        nearest = torch.linalg.vector_norm(here[:, :, None, :] - pool, dim=-1).argmin(dim=-1)
        return self.pool_weights.to(obs.device)[nearest].permute(0, 2, 1)  # (N, K, M)

    def loss(
        self,
        obs: Tensor,
        out: Tensor,
        log_std: Tensor | None,
        mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> DistillLoss:
        """The distillation loss of students with actor outputs ``out`` ``(N, M, A)`` on
        ``obs`` ``(N, M, obs)`` (``log_std`` ``(N, D)`` for Gaussian students); ``labels``
        ``(N, K, M, A)``: the teachers' outputs on ``obs`` when already computed."""
        if labels is None:
            labels = self.labels(obs)
        weights = self.weights_for(obs)
        if log_std is None:
            return discrete_distill_loss(
                out, labels, weights, temperature=self.temperature, mask=mask
            )
        return gaussian_distill_loss(
            out,
            log_std,
            labels,
            self.teachers.params["actor.log_std"],
            weights,
            temperature=self.temperature,
            mask=mask,
        )


def decay_schedule(kind: Decay, progress: float, half_life: float = 0.1) -> float:
    """The kickstarting coefficient's factor at ``progress`` in ``[0, 1]`` of the training:
    ``linear`` ``1 - progress``; ``exponential`` ``0.5 ** (progress / half_life)``, cut to 0 in
    the last 10% so that the student ends on the RL loss alone."""
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "exponential":
        return 0.0 if progress >= 0.9 else 0.5 ** (progress / half_life)
    raise ConfigError(f"distill: decay must be 'linear' or 'exponential', got {kind!r}")


class _TeachingMixin:
    """The teaching a student trainer holds; set before each ``train_many``."""

    teaching: Teaching | None = None

    def _teaching(self, run: TrainingRun) -> Teaching:
        teaching = self.teaching
        if teaching is None:
            raise CtxrlError("a distillation student needs its teaching (set .teaching)")
        if teaching.pool_weights is None and teaching.weights.shape != (
            run.num_agents,
            len(teaching.teachers),
        ):
            raise CtxrlError(
                f"teacher weights of shape {tuple(teaching.weights.shape)} for "
                f"{run.num_agents} students and {len(teaching.teachers)} teachers"
            )
        return teaching


class DaggerStudent(_TeachingMixin, BatchedPPO):
    """Students with PPO's networks and policies object, trained only to match their teachers
    on states they collect themselves in their own (target) context.

    Each iteration: ``num_steps`` steps in ``num_envs`` environments per student with actions
    sampled from the student; the teachers label every state; the KL of the fresh rollout
    (not yet trained on: a held-out measure) is recorded as ``heldout_kl`` /
    ``heldout_agreement``; then ``update_epochs`` epochs of ``num_minibatches`` minibatches
    minimise the distillation loss. The critic is not trained (no reward is used)."""

    def iterate(self, run: TrainingRun, buf: _Rollout, iteration: int, iterations: int) -> None:
        teaching = self._teaching(run)
        cfg, params = self.config, run.params
        n, e, t_steps, discrete = run.num_agents, run.num_envs, cfg.num_steps, run.discrete
        out_dim = run.twin.discrete_actions if discrete else buf.actions.shape[-1]
        lr = cfg.learning_rate * ((1.0 - iteration / iterations) if cfg.anneal_lr else 1.0)
        actor = run.networks["actor"]
        log_std = None if discrete else params["actor.log_std"]
        obs = run.obs
        with torch.no_grad():
            noise = sampling_noise(run.rng, t_steps, e * out_dim, discrete)
            noise = noise.view(t_steps, n, e, out_dim)
            for t in range(t_steps):
                buf.obs[t] = obs
                out = actor(params, obs)
                if discrete:
                    action = (out + noise[t]).argmax(dim=-1)
                else:
                    action = out + params["actor.log_std"].exp()[:, None, :] * noise[t]
                obs = run.step_env(action)[0]
            run.obs = obs
            run.env_steps += e * t_steps
            batch = e * t_steps
            b_obs = buf.obs.transpose(0, 1).reshape(n, batch, run.obs_dim)
            # the teachers label the rollout once; the epochs reuse the labels
            labels = teaching.labels(b_obs).transpose(1, 2)  # (N, B, K, A)
            heldout = teaching.loss(
                b_obs, actor(params, b_obs), log_std, labels=labels.transpose(1, 2)
            )
            run.record("heldout_kl", heldout.loss)
            run.record("heldout_agreement", heldout.agreement)
            run.record("target_entropy", heldout.target_entropy)
        minibatch = batch // cfg.num_minibatches
        agents = torch.arange(n, device=self.device)[:, None]
        for _ in range(cfg.update_epochs):
            order = run.rng.uniform(batch, dtype=torch.float64).argsort(dim=1, stable=True)
            for begin in range(0, batch, minibatch):
                idx = order[:, begin : begin + minibatch]
                mb_obs = b_obs[agents, idx]
                out = run.forward("actor", mb_obs, training=True)
                mb_labels = labels[agents, idx].transpose(1, 2)  # (N, K, mb, A)
                result = teaching.loss(mb_obs, out, log_std, labels=mb_labels)
                run.optimize(result.loss, lr)
                run.record("distill_kl", result.loss.detach())


class KickstartStudent(_TeachingMixin, BatchedPPO):
    """PPO students with a kickstarting term: at every gradient step PPO's loss plus
    ``coef * schedule(progress) * KL(teacher mixture || student)`` on the minibatch's states
    (Schmitt et al. 2018, arXiv 1803.03835). ``progress`` is the fraction of iterations done,
    so the term is gone by the end of training and the student is left to the RL loss."""

    decay: Decay = "linear"
    half_life: float = 0.1

    def auxiliary_loss(
        self, run: TrainingRun, obs: Tensor, out: Tensor, iteration: int, iterations: int
    ) -> Tensor | None:
        teaching = self._teaching(run)
        factor = decay_schedule(self.decay, iteration / iterations, self.half_life)
        if factor == 0.0:
            return None
        log_std = None if run.discrete else run.params["actor.log_std"]
        result = teaching.loss(obs, out, log_std)
        coef = torch.ones(run.num_agents, device=out.device)
        if teaching.coef is not None:
            coef = teaching.coef.to(out.device, out.dtype)
        run.record("distill_kl", result.loss.detach())
        run.record("distill_coef", coef * factor)
        return coef * factor * result.loss


# ------------------------------------------------------------------- distilling students
def distill_students(
    env: EnvSpec,
    teachers: Any,
    contexts: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
    *,
    steps: int,
    mode: Mode = "dagger",
    weights: str | np.ndarray | Tensor = "distance",
    scale: float = 0.1,
    temperature: float = 1.0,
    coef: float | Sequence[float] = 1.0,
    decay: Decay = "linear",
    half_life: float = 0.1,
    student: Mapping[str, Any] | None = None,
    device: str = "cpu",
    **train_options: Any,
) -> Any:
    """Students (PPO networks) for ``contexts[i]`` with seed ``seeds[i]``, taught by
    ``teachers``, all in one batched program; returns PPO's policies object (``.log`` with
    the diagnostics ``heldout_kl``, ``heldout_agreement``, ``distill_kl``, ...).

    Args:
        steps: target-env steps per student.
        mode: ``dagger`` (distillation only) or ``kickstart`` (PPO + decaying distillation).
        weights: ``distance``, ``uniform`` or an ``(N, K)`` array.
        scale: the distance weights' length scale in unit context coordinates.
        temperature: see :class:`Teaching`.
        coef: kickstarting's initial coefficient, one for all or one per student (0: plain
            PPO in the same batch).
        decay, half_life: kickstarting's schedule (:func:`decay_schedule`).
        student: PPO hyperparameters of the students (e.g. ``learning_rate``).
        train_options: passed on to ``train_many`` (``curves=...``, ``interventions=...``).
    """
    if int(steps) <= 0:
        raise ConfigError(f"distill: steps must be > 0, got {steps}")
    if mode not in ("dagger", "kickstart"):
        raise ConfigError(f"distill: mode must be 'dagger' or 'kickstart', got {mode!r}")
    if env.make_batched is None:
        raise CtxrlError(f"distillation needs a torch-batched twin; env {env.name!r} has none")
    trainer: DaggerStudent | KickstartStudent = (
        DaggerStudent(dict(student or {}), device=device)
        if mode == "dagger"
        else KickstartStudent(dict(student or {}), device=device)
    )
    obs_dim, actions = _env_spaces(env, contexts)
    check_teachers(teachers, obs_dim, actions, env.name)
    if actions is None and "actor.log_std" not in teachers.params:
        raise CtxrlError("Gaussian teachers need their actor.log_std (batched-ppo policies)")
    n, k = len(contexts), len(teachers)
    if isinstance(weights, str):
        teacher_contexts = list(teachers.contexts)
        if weights == "distance":
            matrix = distance_weights(env, contexts, teacher_contexts, scale=scale)
        elif weights == "uniform":
            matrix = np.full((n, k), 1.0 / k)
        else:
            raise ConfigError(
                f"distill: weights must be 'distance', 'uniform' or an array, got {weights!r}"
            )
        weight_tensor = torch.as_tensor(matrix, dtype=torch.float32)
    else:
        weight_tensor = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        if weight_tensor.shape != (n, k):
            raise ConfigError(
                f"distill: weights of shape {tuple(weight_tensor.shape)}, expected ({n}, {k}) "
                "(students, teachers)"
            )
    weight_tensor = normalise_weights(weight_tensor).to(trainer.device)
    coefs = torch.as_tensor(
        [float(coef)] * n if isinstance(coef, int | float) else [float(c) for c in coef],
        device=trainer.device,
    )
    if coefs.shape != (n,):
        raise ConfigError(f"distill: {len(coefs)} coefficients for {n} students")
    moved = dataclasses.replace(
        teachers, params={name: v.to(trainer.device) for name, v in teachers.params.items()}
    )
    trainer.teaching = Teaching(moved, weight_tensor, float(temperature), coefs)
    if isinstance(trainer, KickstartStudent):
        decay_schedule(decay, 0.0, half_life)  # a bad schedule fails before training
        trainer.decay, trainer.half_life = decay, float(half_life)
    return trainer.train_many(env, contexts, seeds, total_steps=int(steps), **train_options)


def _env_spaces(env: EnvSpec, contexts: Sequence[Mapping[str, float]]) -> tuple[int, int | None]:
    """Observation size and action count (None: continuous) of ``env``'s batched twin."""
    from ctxrl_plugins.training.evaluation import contexts_tensor, env_seeds

    assert env.make_batched is not None
    device = torch.device("cpu")
    twin = env.make_batched(
        1,
        contexts=contexts_tensor(env, [dict(contexts[0]) if contexts else {}], 1, device),
        device=device,
        env_seeds=env_seeds([0], 1, 0),
    )
    actions = twin.discrete_actions
    return int(twin.observation_size), None if actions is None else int(actions)


def kickstart_study(
    env: EnvSpec,
    teachers: Any,
    target: Mapping[str, float],
    seeds: Sequence[int],
    *,
    steps: int,
    curve_every: int,
    episodes: int = 5,
    threshold: float | None = None,
    **options: Any,
) -> tuple[Any, Any]:
    """Kickstarting against scratch PPO on one target, both arms in one batched program with
    the same seeds (the scratch students are kickstarting students with coefficient 0), and
    their learning curves compared by :func:`ctxrl.transfer_metrics.compare_transfer`
    (jumpstart, AUC, area ratio, asymptote, time to ``threshold``; bootstrap CIs over seeds).

    Returns ``(comparison, students)``: the :class:`~ctxrl.transfer_metrics.TransferComparison`
    and the policies object of the ``2 * len(seeds)`` students (kickstarted first).
    ``options`` go to :func:`distill_students` (``temperature``, ``weights``, ``decay``, ...)."""
    from ctxrl.registry import CurveOptions
    from ctxrl.transfer_metrics import LearningCurves, compare_transfer

    s = len(seeds)
    if s == 0:
        raise ConfigError("kickstart_study: give at least one seed")
    coef = float(options.pop("coef", 1.0))
    students = distill_students(
        env,
        teachers,
        [dict(target)] * (2 * s),
        [int(x) for x in seeds] * 2,
        steps=steps,
        mode="kickstart",
        coef=[coef] * s + [0.0] * s,
        curves=CurveOptions(every=curve_every, episodes=episodes),
        **options,
    )
    curve = students.log.curve()  # (points, 2 S)
    grid = np.asarray(students.log.curve_steps)
    kicked = LearningCurves(grid, curve[:, :s].T)
    scratch = LearningCurves(grid, curve[:, s:].T)
    return compare_transfer(kicked, scratch, threshold=threshold), students


def distill_conditioned(
    env: EnvSpec,
    teachers: Any,
    pool: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
    *,
    steps: int,
    mode: Mode = "dagger",
    weights: str | np.ndarray = "distance",
    features: Sequence[str] | None = None,
    scale: float = 0.1,
    temperature: float = 1.0,
    coef: float = 1.0,
    decay: Decay = "linear",
    half_life: float = 0.1,
    student: Mapping[str, Any] | None = None,
    device: str = "cpu",
    **train_options: Any,
) -> tuple[Any, EnvSpec]:
    """One context-conditioned student per seed for the whole range ``pool`` (Distral's
    centroid in spirit, Teh et al. 2017, arXiv 1707.04175, with the context visible): every
    episode draws its context from ``pool``, the student sees the observation and the
    context's ``features`` (unit coordinates, appended by the twin's ``visible`` option), the
    teachers see the observation alone and label the student's states DAgger-style, weighted
    per state by the row of that state's context in ``weights``.

    ``mode="kickstart"`` trains the student with PPO on the pool's rewards plus ``coef``
    times the same per-state distillation term, decaying to 0 (:class:`KickstartStudent`), so
    it can do better than its teachers where they all fail.

    Args:
        weights: ``distance`` (:func:`distance_weights` of each pool context) or a
            ``(len(pool), K)`` array (e.g. :func:`transfer_weights` of the teachers' zero-shot
            returns on the pool).
        features: the features the student sees (default: those that vary among the
            teachers' and the pool's contexts).

    Returns ``(students, visible_env)``: evaluate the students in ``visible_env``."""
    import functools

    if env.make_batched is None:
        raise CtxrlError(f"distillation needs a torch-batched twin; env {env.name!r} has none")
    if not pool:
        raise ConfigError("distill: the context-conditioned student needs a pool of contexts")
    if teachers is None or len(teachers) == 0:
        raise CtxrlError("distillation needs at least one teacher (got an empty teacher set)")
    space = env.context_space
    full_t = [space.validate(dict(c)).as_dict() for c in teachers.contexts]
    full_p = [space.validate(dict(c)).as_dict() for c in pool]
    if features is None:
        features = [f for f in space.names if len({c[f] for c in full_t + full_p}) > 1]
    if not features:
        raise ConfigError("distill: teachers and pool share one context: nothing to condition on")
    visible_env = dataclasses.replace(
        env, make_batched=functools.partial(env.make_batched, visible=tuple(features))
    )
    if mode not in ("dagger", "kickstart"):
        raise ConfigError(f"distill: mode must be 'dagger' or 'kickstart', got {mode!r}")
    trainer: DaggerStudent | KickstartStudent = (
        DaggerStudent(dict(student or {}), device=device)
        if mode == "dagger"
        else KickstartStudent(dict(student or {}), device=device)
    )
    if isinstance(trainer, KickstartStudent):
        decay_schedule(decay, 0.0, half_life)  # a bad schedule fails before training
        trainer.decay, trainer.half_life = decay, float(half_life)
    obs_dim, actions = _env_spaces(visible_env, pool)
    base_obs = obs_dim - len(features)
    check_teachers(teachers, base_obs, actions, env.name)
    k = len(teachers)
    table = (
        distance_weights(env, full_p, full_t, scale=scale)
        if isinstance(weights, str) and weights == "distance"
        else np.asarray(weights, dtype=np.float64)
    )
    if table.shape != (len(pool), k):
        raise ConfigError(
            f"distill: weights of shape {table.shape}, expected ({len(pool)}, {k}) (pool, teachers)"
        )
    pool_weights = normalise_weights(torch.as_tensor(table, dtype=torch.float32))
    moved = dataclasses.replace(
        teachers, params={name: v.to(trainer.device) for name, v in teachers.params.items()}
    )
    n = len(seeds)
    trainer.teaching = Teaching(
        moved,
        torch.full((n, k), 1.0 / k),
        float(temperature),
        torch.full((n,), float(coef)),
        teacher_obs=base_obs,
        pool_unit=torch.as_tensor(space.to_unit(full_p, features), dtype=torch.float32),
        pool_weights=pool_weights,
    )
    students = trainer.train_many(
        visible_env,
        [dict(pool[0])] * n,
        [int(x) for x in seeds],
        total_steps=int(steps),
        mixture=[dict(c) for c in pool],
        **train_options,
    )
    return students, visible_env


@dataclass
class StudentEnsemble:
    """Groups of ``size`` students acting as one policy each: the members' action
    probabilities are averaged (Gaussian students: their means), after Weltevrede et al. 2025
    (arXiv 2505.16581), whose distilled student ensembles generalise across contexts better
    than their teacher. Group ``g`` is agents ``g * size .. g * size + size - 1`` of
    ``members`` (e.g. :func:`distill_conditioned` with ``size`` seeds per group).

    A policies object for :func:`~ctxrl_plugins.training.evaluation.evaluate_policies`:
    ``act(obs (G, M, obs)) -> (G, M)`` (or ``(G, M, D)``)."""

    members: Any
    size: int
    params: dict[str, Tensor] = dataclasses.field(init=False)
    """the members' parameters ``(G * size, ...)``"""
    seeds: list[int] = dataclasses.field(init=False)
    """each group's first member's seed"""
    discrete: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if self.size < 1 or len(self.members) % self.size:
            raise ConfigError(
                f"distill: {len(self.members)} students do not form ensembles of {self.size}"
            )
        self.params = dict(self.members.params)
        self.seeds = [int(s) for s in self.members.seeds[:: self.size]]
        self.discrete = bool(self.members.discrete)

    def __len__(self) -> int:
        return len(self.members) // self.size

    def metadata(self) -> dict[str, Any]:
        return {**self.members.metadata(), "ensemble_size": self.size}

    def act(self, obs: Tensor, deterministic: bool, rng: Any = None) -> Tensor:
        g, m, _ = obs.shape
        flat: Tensor = self.members.actor(obs.repeat_interleave(self.size, dim=0))
        out = flat.view(g, self.size, m, -1)  # (G, S, M, A)
        if not self.discrete:
            mean = out.mean(dim=1)
            if deterministic or rng is None:
                return mean
            log_std: Tensor = self.members.params["actor.log_std"]
            std = log_std.exp().view(g, self.size, -1).mean(dim=1)
            noise = sampling_noise(rng, 1, m * mean.shape[-1], False)[0].view(mean.shape)
            return mean + std[:, None, :] * noise
        probs = torch.softmax(out, dim=-1).mean(dim=1)  # (G, M, A)
        if deterministic or rng is None:
            return probs.argmax(dim=-1)
        noise = sampling_noise(rng, 1, m * probs.shape[-1], True)[0].view(probs.shape)
        return (torch.log(probs.clamp_min(1e-30)) + noise).argmax(dim=-1)


# ------------------------------------------------------------------ the transfer method
class Distill:
    """Every target context gets one student taught by all the problem's sources.

    The sweep's matrix has a row per source; a student here is made from all K sources at
    once, so every row ``p`` holds the same student's returns on target ``q`` (the details
    say so, and hold the teachers' zero-shot returns and best-of-K next to the students').

    ``mode: conditioned`` trains one context-conditioned student for all targets instead
    (:func:`distill_conditioned`, the targets as its pool): its ``steps`` are spread over the
    targets, and ``target_env_steps`` reports them whole.

    Args: see :func:`distill_students`; ``seed_offset`` is added to the first source's seed
    for the students' seeds (student ``q`` gets ``+ q``).
    """

    def __init__(
        self,
        steps: int,
        mode: Mode = "dagger",
        temperature: float = 1.0,
        weights: str = "distance",
        scale: float = 0.1,
        coef: float = 1.0,
        decay: Decay = "linear",
        half_life: float = 0.1,
        student: Mapping[str, Any] | None = None,
        seed_offset: int = 2_000_003,
    ) -> None:
        if int(steps) <= 0:
            raise ConfigError(f"distill: steps must be > 0, got {steps}")
        if mode not in ("dagger", "kickstart", "conditioned"):
            raise ConfigError(
                f"distill: mode must be 'dagger', 'kickstart' or 'conditioned', got {mode!r}"
            )
        if weights not in ("distance", "uniform", "transfer"):
            raise ConfigError(
                f"distill: weights must be 'distance', 'uniform' or 'transfer', got {weights!r}"
            )
        if float(temperature) <= 0 or float(scale) <= 0:
            raise ConfigError("distill: temperature and scale must be > 0")
        decay_schedule(decay, 0.0, half_life)
        self.steps, self.mode, self.temperature = int(steps), mode, float(temperature)
        self.weights, self.scale, self.coef = weights, float(scale), float(coef)
        self.decay, self.half_life = decay, float(half_life)
        self.student = dict(student or {})
        self.seed_offset = int(seed_offset)

    def transfer(self, problem: TransferProblem) -> TransferResult:
        from ctxrl_plugins.training.evaluation import evaluate_policies

        p, q = len(problem.source_contexts), len(problem.targets)
        sources = problem.sources
        if isinstance(sources, list):  # sources trained one run at a time
            sources = stack_teachers(sources)
        teachers = dataclasses.replace(sources, contexts=[dict(c) for c in problem.source_contexts])
        # PPO sources: the students use their hyperparameters unless the options say otherwise
        student = dict(self.student)
        if isinstance(problem.algorithm, BatchedPPO):
            student = {**asdict(problem.algorithm.config), **student}
        device = str(problem.algorithm.device)
        targets = [dict(t) for t in problem.targets]
        seeds = [min(problem.source_seeds) + self.seed_offset + j for j in range(q)]
        # the teachers' zero-shot returns: best-of-K next to the students, and the
        # "transfer" weights (their episodes are target-env steps too, counted below)
        zero_shot = evaluate_sources(problem)  # (P, Q, E)
        if self.weights == "distance":
            weights = distance_weights(problem.env, targets, teachers.contexts, scale=self.scale)
        elif self.weights == "transfer":
            weights = transfer_weights(problem.env, zero_shot.mean(axis=2), scale=self.scale)
        else:
            weights = np.full((q, p), 1.0 / p)
        if self.mode == "conditioned":
            # one student for every target, the target visible, in one program
            students, student_env = distill_conditioned(
                problem.env,
                teachers,
                targets,
                seeds[:1],
                steps=self.steps,
                weights=weights,
                temperature=self.temperature,
                student=student,
                device=device,
            )
            own = evaluate_policies(
                students,
                student_env,
                targets,
                episodes=problem.episodes,
                seed=problem.eval_seed,
                device=students.params["actor.0.weight"].device,
            )[0]  # (Q, E)
        else:
            students = distill_students(
                problem.env,
                teachers,
                targets,
                seeds,
                steps=self.steps,
                mode=self.mode,
                weights=weights,
                temperature=self.temperature,
                coef=self.coef,
                decay=self.decay,
                half_life=self.half_life,
                student=student,
                device=device,
            )
            own = evaluate_policies(
                students,
                problem.env,
                [[t] for t in targets],
                episodes=problem.episodes,
                seed=problem.eval_seed,
                device=students.params["actor.0.weight"].device,
                per_policy=True,
            )[:, 0]  # (Q, E)
        limit = problem.env.max_episode_steps or 0
        zero_shot_steps = p * problem.episodes * limit  # all teachers on one target
        log = students.log
        diagnostics = {
            name: np.asarray(log.diagnostics[name][-1], dtype=np.float64).tolist()
            for name in ("heldout_kl", "heldout_agreement", "distill_kl")
            if log is not None and name in log.diagnostics
        }
        details: dict[str, Any] = {
            "mode": self.mode,
            "rows": "every row holds the same student per target (one student from all sources)",
            "students": 1 if self.mode == "conditioned" else q,
            "steps_per_student": self.steps,
            "student_mean": own.mean(axis=1).tolist(),
            "zero_shot_mean": zero_shot.mean(axis=2).tolist(),
            "best_of_k_zero_shot": zero_shot.mean(axis=2).max(axis=0).tolist(),
            "teacher_weights": weights.tolist(),
            "temperature": self.temperature,
            "final_diagnostics": diagnostics,
            "zero_shot_target_env_steps": zero_shot_steps,
        }
        agreement = diagnostics.get("heldout_agreement")
        details["summary"] = (
            f"{self.mode} students' mean return {own.mean():.1f} on {q} targets against "
            f"best-of-{p} zero-shot {zero_shot.mean(axis=2).max(axis=0).mean():.1f}"
            + (
                f", held-out action agreement {float(np.mean(agreement)):.2f}"
                if agreement is not None
                else ""
            )
        )
        returns = np.broadcast_to(own[None], (p, q, problem.episodes)).astype(np.float64)
        # per student: its training, plus the teachers' episodes on its target when they
        # chose the weights (an upper bound: every episode counted at its time limit)
        used = self.steps + (zero_shot_steps if self.weights == "transfer" else 0)
        return TransferResult(returns, target_env_steps=used, details=details)


__all__ = [
    "DaggerStudent",
    "Distill",
    "DistillLoss",
    "KickstartStudent",
    "StudentEnsemble",
    "Teaching",
    "check_teachers",
    "decay_schedule",
    "discrete_distill_loss",
    "distance_weights",
    "distill_conditioned",
    "distill_students",
    "gaussian_distill_loss",
    "kickstart_study",
    "load_teachers",
    "normalise_weights",
    "predicted_transfer_weights",
    "stack_teachers",
    "teacher_outputs",
    "transfer_weights",
]
