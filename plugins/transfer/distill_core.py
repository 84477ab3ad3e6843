"""Task distillation from source-context teachers: training the students
(:func:`distill_students`, :func:`kickstart_study`, :func:`distill_conditioned`,
:func:`distill_proxy`) and ensembles of them (:class:`StudentEnsemble`). The student trainers
and what they distil from are in :mod:`ctxrl_plugins.transfer.distill_trainers`, the
teachers and their weights in :mod:`ctxrl_plugins.transfer.distill_teachers`, the losses in
:mod:`ctxrl_plugins.transfer.distill_losses`, the sweeps' ``distill`` transfer method in
:mod:`ctxrl_plugins.transfer.distill_method` (registered by
:mod:`ctxrl_plugins.transfer.distill`, which keeps torch out of plugin discovery).

Teachers are trained policies of the same env family (a sweep's sources, or any finished run
directory through :func:`~ctxrl_plugins.transfer.distill_teachers.load_teachers`), each with
its context. For every target context a student is trained in that context, all students in
one batched program:

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
:func:`~ctxrl_plugins.transfer.distill_teachers.transfer_weights`) or an explicit
``(students, teachers)`` array; the losses normalise them.

Shapes: ``N`` students, ``K`` teachers, ``M`` states per student, ``A`` action logits (or
``D`` action dimensions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl.registry import EnvSpec
from ctxrl_plugins.algorithms.ppo import sampling_noise
from ctxrl_plugins.transfer.distill_losses import normalise_weights
from ctxrl_plugins.transfer.distill_teachers import (
    check_teachers,
    distance_weights,
    teacher_temperature,
)
from ctxrl_plugins.transfer.distill_trainers import (
    DaggerStudent,
    Decay,
    KickstartStudent,
    Teaching,
    decay_schedule,
)

Tensor = torch.Tensor
Mode = Literal["dagger", "kickstart", "conditioned", "proxy"]
Start = Literal["scratch", "best-teacher"]


def check_start(start: str, weights: object = "distance") -> None:
    """A students' ``start`` that is not ``scratch`` or ``best-teacher`` is a config error, and
    so is ``best-teacher`` with ``uniform`` weights (no teacher weighs most)."""
    if start not in ("scratch", "best-teacher"):
        raise ConfigError(f"distill: start must be 'scratch' or 'best-teacher', got {start!r}")
    if start == "best-teacher" and isinstance(weights, str) and weights == "uniform":
        raise ConfigError(
            "distill: start 'best-teacher' starts from the teacher with the largest weight; "
            "with weights 'uniform' they all weigh the same (use distance or transfer)"
        )


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
    temperature: float | None = None,
    coef: float | Sequence[float] = 1.0,
    decay: Decay = "linear",
    half_life: float = 0.1,
    student: Mapping[str, Any] | None = None,
    device: str = "cpu",
    start: Start = "scratch",
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
        temperature: see :class:`Teaching`; None: 1 for policy teachers, 0.01 for Q-value
            ones (:func:`teacher_temperature`).
        coef: kickstarting's initial coefficient, one for all or one per student (0: plain
            PPO in the same batch).
        decay, half_life: kickstarting's schedule (:func:`decay_schedule`).
        student: PPO hyperparameters of the students (e.g. ``learning_rate``).
        start: ``scratch`` (fresh networks) or ``best-teacher``: each student starts from the
            weights (actor and critic) of its highest-weighted teacher, which must have the
            student's network; kickstarting from there fine-tunes the best source on the
            target with the teachers' mixture as a decaying guide.
        train_options: passed on to ``train_many`` (``curves=...``, ``interventions=...``).
    """
    if int(steps) <= 0:
        raise ConfigError(f"distill: steps must be > 0, got {steps}")
    if mode not in ("dagger", "kickstart"):
        raise ConfigError(f"distill: mode must be 'dagger' or 'kickstart', got {mode!r}")
    check_start(start, weights)
    if start == "best-teacher" and "init" in train_options:
        raise ConfigError("distill: start 'best-teacher' and init=... both set a warm start")
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
    trainer.teaching = Teaching(
        moved, weight_tensor, teacher_temperature(teachers, temperature), coefs
    )
    if start == "best-teacher":
        best = weight_tensor.argmax(dim=1).cpu()  # (N,) each student's top teacher
        train_options["init"] = {name: v[best] for name, v in teachers.params.items()}
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
    their learning curves compared by :func:`ctxrl.transfer_metrics.compare_transfer_finite`
    (jumpstart, AUC, area ratio, asymptote, time to ``threshold``; 95 % CIs over seeds).
    The curves are compared as the DQN transferability study compares them: returns normalised
    to [0, 1] by the env's return bounds (``env.normalise``), so the area ratio is on the same
    scale for every env and seed set, and jumpstart and asymptote are normalised returns;
    ``threshold`` is a raw return, normalised the same way. A student whose returns are not
    finite (a diverged training) is left out and counted (``n_transfer_diverged``, ...).

    Returns ``(comparison, students)``: the :class:`~ctxrl.transfer_metrics.TransferComparison`
    and the policies object of the ``2 * len(seeds)`` students (kickstarted first).
    ``options`` go to :func:`distill_students` (``temperature``, ``weights``, ``decay``, ...)."""
    from ctxrl.registry import CurveOptions
    from ctxrl.transfer_metrics import compare_transfer_finite

    s = len(seeds)
    if s == 0:
        raise ConfigError("kickstart_study: give at least one seed")
    lower, upper = env.return_bounds
    if threshold is not None and not lower <= threshold <= upper:
        # normalising would clip it to a bound every curve reaches or none can miss
        raise ConfigError(
            f"kickstart_study: threshold {threshold} lies outside {env.name}'s return bounds "
            f"[{lower}, {upper}]"
        )
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
    curves = env.normalise_curves(np.asarray(students.log.curve()).T)  # (2 S, points)
    grid = np.asarray(students.log.curve_steps)
    comparison = compare_transfer_finite(
        grid,
        curves[:s],
        grid,
        curves[s:],
        threshold=None if threshold is None else float(env.normalise(threshold)),
        return_floor=0.0,
    )
    return comparison, students


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
    temperature: float | None = None,
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
        teacher_temperature(teachers, temperature),
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


def distill_proxy(
    env: EnvSpec,
    teachers: Any,
    contexts: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
    *,
    steps: int,
    proxy_steps: int,
    features: Sequence[str] | None = None,
    temperature: float | None = None,
    student: Mapping[str, Any] | None = None,
    device: str = "cpu",
    checkpoint: Path | None = None,
    **train_options: Any,
) -> tuple[Any, Any]:
    """Proxy distillation, after Zhou, Kalra & Krahenbuhl (ECCV 2020, arXiv 2008.11911): the
    source and target domains are linked through a representation that means the same in
    both, here the context itself, which the proxy policy sees and the students do not.

    1. The *proxy*: one context-conditioned policy trained in the **source** contexts only,
       each labelled by its own teacher (:func:`distill_conditioned` on the teachers'
       contexts with identity weights, ``proxy_steps`` env steps in all). It never visits a
       target context.
    2. The *students*: one per target context, trained in it DAgger-style on their own states
       (raw observations, the context unseen), labelled by the proxy evaluated on each state
       with the student's target context appended (:class:`Teaching`'s ``teacher_context``):
       the proxy's interpolation between its sources stands in for a target teacher.

    Zhou et al. train the proxy on the teachers' own rollouts; here it collects its states
    itself (DAgger), which avoids the covariate shift of pure behaviour cloning. Returns
    ``(students, proxy)``; ``steps`` are target-env steps per student. ``checkpoint``: where
    the students checkpoint their training (``train_many``'s), the proxy beside it
    (``{checkpoint}-proxy``); ``train_options`` go to the students' ``train_many``."""
    if int(proxy_steps) <= 0:
        raise ConfigError(f"distill: proxy_steps must be > 0, got {proxy_steps}")
    if teachers is None or len(teachers) == 0:
        raise CtxrlError("distillation needs at least one teacher (got an empty teacher set)")
    space = env.context_space
    sources = [space.validate(dict(c)).as_dict() for c in teachers.contexts]
    full_targets = [space.validate(dict(c)).as_dict() for c in contexts]
    if features is None:
        features = [f for f in space.names if len({c[f] for c in sources}) > 1]
    if not features:
        raise ConfigError(
            "distill: proxy distillation needs teachers on different contexts (the proxy "
            "learns how the policy changes with the context)"
        )
    k = len(teachers)
    proxy_saving: dict[str, Any] = (
        {}
        if checkpoint is None
        else {"checkpoint": checkpoint.with_name(f"{checkpoint.name}-proxy")}
    )
    if train_options.get("progress") is not None:  # the proxy's training, then the students'
        proxy_saving["progress"] = train_options["progress"]
    proxy, visible_env = distill_conditioned(
        env,
        teachers,
        sources,
        seeds[:1],
        steps=int(proxy_steps),
        weights=np.eye(k),
        features=features,
        temperature=temperature,
        student=student,
        device=device,
        **proxy_saving,
    )
    trainer = DaggerStudent(dict(student or {}), device=device)
    obs_dim, actions = _env_spaces(env, contexts)
    check_teachers(proxy, obs_dim + len(features), actions, visible_env.name)
    n = len(contexts)
    trainer.teaching = Teaching(
        dataclasses.replace(proxy, contexts=[{}]),
        torch.ones(n, 1),
        teacher_temperature(proxy, temperature),
        teacher_context=torch.as_tensor(space.to_unit(full_targets, features), dtype=torch.float32),
    )
    if checkpoint is not None:
        train_options["checkpoint"] = checkpoint
    students = trainer.train_many(env, contexts, seeds, total_steps=int(steps), **train_options)
    return students, proxy


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
        """The ensemble's actions for observations ``(G, M, obs)``: its members' mean action,
        or the argmax of their mean probabilities; sampled ones need ``rng``."""
        if not deterministic and rng is None:  # they were the greedy actions, silently
            raise CtxrlError("sampled actions (deterministic=False) need rng: StreamRNG(seeds)")
        g, m, _ = obs.shape
        flat: Tensor = self.members.actor(obs.repeat_interleave(self.size, dim=0))
        out = flat.view(g, self.size, m, -1)  # (G, S, M, A)
        if not self.discrete:
            mean = out.mean(dim=1)
            if deterministic:
                return mean
            log_std: Tensor = self.members.params["actor.log_std"]
            std = log_std.exp().view(g, self.size, -1).mean(dim=1)
            noise = sampling_noise(rng, 1, m * mean.shape[-1], False)[0].view(mean.shape)
            return mean + std[:, None, :] * noise
        probs = torch.softmax(out, dim=-1).mean(dim=1)  # (G, M, A)
        if deterministic:
            return probs.argmax(dim=-1)
        noise = sampling_noise(rng, 1, m * probs.shape[-1], True)[0].view(probs.shape)
        return (torch.log(probs.clamp_min(1e-30)) + noise).argmax(dim=-1)


__all__ = [
    "DaggerStudent",
    "Decay",
    "KickstartStudent",
    "Mode",
    "StudentEnsemble",
    "Teaching",
    "decay_schedule",
    "distill_conditioned",
    "distill_proxy",
    "distill_students",
    "kickstart_study",
]
