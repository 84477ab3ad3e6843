"""The distillation students' trainers and what they distil from.

:class:`Teaching` holds a student batch's teachers, their weights per student and the
temperature, and computes the distillation loss (:mod:`ctxrl_plugins.transfer.distill_losses`);
the students are batched PPO trainers (:mod:`ctxrl_plugins.algorithms.ppo`):
:class:`DaggerStudent` (``dagger``: distillation only, on the states it visits) and
:class:`KickstartStudent` (``kickstart``: PPO plus the distillation term, which
:func:`decay_schedule` takes to 0). :mod:`ctxrl_plugins.transfer.distill_core` sets them up
and trains them.

Shapes: ``N`` students, ``K`` teachers, ``M`` states per student, ``A`` action logits (or
``D`` action dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ctxrl.errors import ConfigError, CtxrlError
from ctxrl_plugins.algorithms.ppo import BatchedPPO, _Rollout, sampling_noise
from ctxrl_plugins.training.run import TrainingRun
from ctxrl_plugins.transfer.distill_losses import (
    DistillLoss,
    discrete_distill_loss,
    gaussian_distill_loss,
)
from ctxrl_plugins.transfer.distill_teachers import teacher_outputs

Tensor = torch.Tensor
Decay = Literal["linear", "exponential"]


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
        teacher_context: proxy distillation: ``(N, d)`` each student's own context in the unit
            coordinates the teachers were conditioned on, appended to every state the teachers
            label (the student itself does not see it).
    """

    teachers: Any
    weights: Tensor
    temperature: float = 1.0
    coef: Tensor | None = None
    teacher_obs: int | None = None
    pool_unit: Tensor | None = None
    pool_weights: Tensor | None = None
    teacher_context: Tensor | None = None

    def labels(self, obs: Tensor) -> Tensor:
        """The teachers' outputs ``(N, K, M, A)`` on ``obs`` ``(N, M, obs)``."""
        seen = obs if self.teacher_obs is None else obs[..., : self.teacher_obs]
        if self.teacher_context is not None:
            n, m, _ = seen.shape
            context = self.teacher_context.to(seen.device, seen.dtype)[:, None, :]
            seen = torch.cat([seen, context.expand(n, m, context.shape[-1])], dim=-1)
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
            order = run.rng.permutations(batch)
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
    (Schmitt et al. 2018, arXiv 1803.03835). ``progress`` is the fraction of iterations done
    before the current one (``i / I``), so the term fades over training: ``linear`` keeps
    ``1 / I`` of it in the last of the ``I`` iterations, ``exponential`` is 0 in the last 10 %
    of them, where the student is left to the RL loss."""

    decay: Decay = "linear"
    half_life: float = 0.1

    def before_update(self, run: TrainingRun, obs: Tensor, iteration: int, iterations: int) -> None:
        """The student has not trained on this iteration's rollout yet: the KL and action
        agreement with its teachers on all of it are recorded as ``heldout_kl`` /
        ``heldout_agreement``, as DAgger's students record theirs (after the term has faded
        too)."""
        del iteration, iterations
        log_std = None if run.discrete else run.params["actor.log_std"]
        with torch.no_grad():
            out = run.networks["actor"](run.params, obs)
            heldout = self._teaching(run).loss(obs, out, log_std)
        run.record("heldout_kl", heldout.loss)
        run.record("heldout_agreement", heldout.agreement)

    def auxiliary_loss(
        self, run: TrainingRun, obs: Tensor, out: Tensor, iteration: int, iterations: int
    ) -> Tensor | None:
        """The kickstarting term on the minibatch."""
        teaching = self._teaching(run)
        factor = decay_schedule(self.decay, iteration / iterations, self.half_life)
        log_std = None if run.discrete else run.params["actor.log_std"]
        if factor == 0.0:
            return None
        result = teaching.loss(obs, out, log_std)
        coef = torch.ones(run.num_agents, device=out.device)
        if teaching.coef is not None:
            coef = teaching.coef.to(out.device, out.dtype)
        run.record("distill_kl", result.loss.detach())
        run.record("distill_coef", coef * factor)
        return coef * factor * result.loss


__all__ = ["DaggerStudent", "Decay", "KickstartStudent", "Teaching", "decay_schedule"]
