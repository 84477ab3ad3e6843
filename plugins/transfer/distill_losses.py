"""Multi-teacher policy-distillation losses, agent-batched (pure torch).

``N`` students (agents), each with its own ``K`` teacher weights, on ``M`` states each:

- discrete actions: the students match the weighted mixture of the teachers' action
  distributions at temperature ``T``, ``p_mix = sum_k w_k softmax(z_k / T)``, by minimising
  ``KL(p_mix || softmax(z_S))`` (Rusu et al. 2016, "Policy distillation", arXiv 1511.06295:
  KL with a sharpened teacher works best; ``T = 0.01`` for Q-value teachers; Actor-Mimic,
  Parisotto et al. 2016, arXiv 1511.06342, is the cross-entropy form, which differs from the
  KL only by the targets' entropy, a constant for the student);
- continuous actions (diagonal Gaussians): ``sum_k w_k KL(N_k || N_S)``. The KL from a Gaussian
  mixture has no closed form; by the joint convexity of the KL this weighted sum bounds it
  from above, and it is zero exactly when the student equals every teacher with weight > 0.

Teacher weights are normalised to sum to 1 per student here, once, before they are used (a
public multi-teacher kickstarter rescales earlier teachers' terms inside its teacher loop; the
tests check the weighting by hand). States with ``mask == 0`` (terminal observations, padding,
states of agents that should not learn) take no part in the mean over states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ctxrl.errors import CtxrlError

Tensor = torch.Tensor


@dataclass
class DistillLoss:
    """Per-student results, each ``(N,)``.

    Attributes:
        loss: mean KL over the unmasked states (nats).
        target_entropy: mean entropy of the targets (the teacher mixture; for Gaussians the
            weighted mean of the teachers' entropies) over the unmasked states (nats).
        agreement: discrete only (NaN for Gaussians): fraction of unmasked states where the
            student's most likely action is the mixture's.
    """

    loss: Tensor
    target_entropy: Tensor
    agreement: Tensor


def normalise_weights(weights: Tensor) -> Tensor:
    """Teacher weights ``(N, K)``, or per state ``(N, K, M)``, normalised to sum 1 over ``K``.

    Negative or non-finite weights, or all-zero weights, are an error naming the student."""
    if weights.dim() not in (2, 3):
        raise CtxrlError(
            f"teacher weights must be (students, teachers) or (students, teachers, states), "
            f"got {tuple(weights.shape)}"
        )
    if weights.shape[1] == 0:
        raise CtxrlError("distillation needs at least one teacher (got an empty teacher set)")
    total = weights.sum(dim=1, keepdim=True)
    bad = ~torch.isfinite(weights) | (weights < 0)
    bad = bad.flatten(1).any(dim=1) | (total <= 0).flatten(1).any(dim=1)  # (N,)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise CtxrlError(
            f"teacher weights of student {i} must be finite, >= 0 and not all 0: "
            f"{weights[i].tolist()}"
        )
    return weights / total


def _per_state(weights: Tensor) -> Tensor:
    """``(N, K)`` -> ``(N, K, 1)`` (broadcast over states); ``(N, K, M)`` as it is."""
    return weights[:, :, None] if weights.dim() == 2 else weights


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the last dim ``(N, M) -> (N,)`` of the states with ``mask`` 1 (0 where a
    student has no unmasked state: nothing to learn there, and no NaN gradient)."""
    if mask is None:
        return values.mean(dim=-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


def discrete_distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    weights: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> DistillLoss:
    """``KL(sum_k w_k softmax(z_k / T) || softmax(z_S))`` per state, averaged over states.

    Args:
        student_logits: ``(N, M, A)``; the student's softmax is taken at temperature 1.
        teacher_logits: ``(N, K, M, A)`` logits (PPO actors) or Q-values (DQN teachers, with a
            small ``temperature``), of each student's states under each teacher.
        weights: ``(N, K)`` teacher weights, or ``(N, K, M)`` per state, normalised here (see
            :func:`normalise_weights`).
        temperature: ``T > 0``; lower sharpens the teachers.
        mask: ``(N, M)``, 1 for states that count, 0 for those that do not.
    """
    if temperature <= 0:
        raise CtxrlError(f"distillation temperature must be > 0, got {temperature}")
    w = _per_state(normalise_weights(weights)).to(student_logits.dtype)  # (N, K, M)
    teacher_probs = torch.softmax(teacher_logits.detach() / temperature, dim=-1)
    mix = (w[..., None] * teacher_probs).sum(dim=1)  # (N, M, A)
    log_mix = torch.log(mix.clamp_min(1e-30))
    log_student = torch.log_softmax(student_logits, dim=-1)
    # 0 * log 0 = 0: actions no teacher takes add nothing
    kl = torch.where(mix > 0, mix * (log_mix - log_student), 0.0).sum(dim=-1)
    entropy = -torch.where(mix > 0, mix * log_mix, 0.0).sum(dim=-1)
    agree = (student_logits.argmax(dim=-1) == mix.argmax(dim=-1)).to(kl.dtype)
    return DistillLoss(
        _masked_mean(kl, mask), _masked_mean(entropy, mask), _masked_mean(agree, mask).detach()
    )


def gaussian_distill_loss(
    student_mean: Tensor,
    student_log_std: Tensor,
    teacher_mean: Tensor,
    teacher_log_std: Tensor,
    weights: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> DistillLoss:
    """``sum_k w_k KL(N(mu_k, T sigma_k^2) || N(mu_S, sigma_S^2))`` per state (summed over
    action dimensions), averaged over states.

    Args:
        student_mean: ``(N, M, D)``.
        student_log_std: ``(N, D)`` (state-independent, as PPO's) or ``(N, M, D)``.
        teacher_mean: ``(N, K, M, D)``.
        teacher_log_std: ``(K, D)``, ``(N, K, D)`` or ``(N, K, M, D)``.
        weights: ``(N, K)`` or ``(N, K, M)``, normalised here.
        temperature: multiplies the teachers' variances (``T < 1`` sharpens them, as a
            softmax temperature does).
        mask: ``(N, M)``.
    """
    if temperature <= 0:
        raise CtxrlError(f"distillation temperature must be > 0, got {temperature}")
    n, k, m, d = teacher_mean.shape
    w = _per_state(normalise_weights(weights)).to(student_mean.dtype)  # (N, K, M)
    if student_log_std.dim() == 2:
        student_log_std = student_log_std[:, None, :]
    s_log_std = student_log_std.expand(n, m, d)[:, None]  # (N, 1, M, D)
    t_log_std = teacher_log_std.detach()
    if t_log_std.dim() == 2:
        t_log_std = t_log_std[None]
    if t_log_std.dim() == 3:
        t_log_std = t_log_std[:, :, None, :]
    t_log_std = t_log_std.expand(n, k, m, d) + 0.5 * math.log(temperature)
    t_mean = teacher_mean.detach()
    # KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    kl = (
        s_log_std
        - t_log_std
        + (torch.exp(2 * t_log_std) + (t_mean - student_mean[:, None]) ** 2)
        / (2 * torch.exp(2 * s_log_std))
        - 0.5
    ).sum(dim=-1)  # (N, K, M)
    entropy = (0.5 + 0.5 * math.log(2 * math.pi) + t_log_std).sum(dim=-1)  # (N, K, M)
    weighted_kl = (w * kl).sum(dim=1)
    weighted_entropy = (w * entropy).sum(dim=1)
    nan = torch.full((n,), torch.nan, dtype=student_mean.dtype, device=student_mean.device)
    return DistillLoss(_masked_mean(weighted_kl, mask), _masked_mean(weighted_entropy, mask), nan)


__all__ = ["DistillLoss", "discrete_distill_loss", "gaussian_distill_loss", "normalise_weights"]
