"""Task distillation: the losses against hand-computed values, the DAgger-style and
kickstarting students on CartPole pole lengths (CI-sized), and the errors of bad input."""

from __future__ import annotations

import math

import pytest
import torch

from ctxrl.errors import CtxrlError
from ctxrl_plugins.transfer.distill_losses import (
    discrete_distill_loss,
    gaussian_distill_loss,
    normalise_weights,
)

LN3 = math.log(3.0)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# ------------------------------------------------------------------------------- losses
def test_discrete_loss_is_the_kl_from_the_normalised_teacher_mixture() -> None:
    """Teachers (0.5, 0.5) and (0.75, 0.25), weights 1 : 3 -> mixture (0.6875, 0.3125);
    student uniform."""
    student = torch.zeros(1, 1, 2)
    teachers = torch.tensor([[[[0.0, 0.0]], [[LN3, 0.0]]]])  # (N=1, K=2, M=1, A=2)
    out = discrete_distill_loss(student, teachers, torch.tensor([[1.0, 3.0]]))
    mix = [0.6875, 0.3125]
    assert out.loss.item() == pytest.approx(_kl(mix, [0.5, 0.5]), abs=1e-6)
    assert out.target_entropy.item() == pytest.approx(-sum(p * math.log(p) for p in mix), abs=1e-6)
    assert out.agreement.item() == 1.0  # argmax ties go to action 0 for both
    # normalised weights give the same; unnormalised weights 1 and 3 would not be a mixture
    same = discrete_distill_loss(student, teachers, torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(same.loss, out.loss)
    # each teacher alone
    only = discrete_distill_loss(student, teachers, torch.tensor([[0.0, 5.0]]))
    assert only.loss.item() == pytest.approx(_kl([0.75, 0.25], [0.5, 0.5]), abs=1e-6)


def test_temperature_divides_the_teacher_logits_not_the_students() -> None:
    student = torch.tensor([[[LN3, 0.0]]])  # (0.75, 0.25)
    teacher = torch.tensor([[[[2 * LN3, 0.0]]]])  # (0.9, 0.1) at T=1, (0.75, 0.25) at T=2
    at_two = discrete_distill_loss(student, teacher, torch.ones(1, 1), temperature=2.0)
    assert at_two.loss.item() == pytest.approx(0.0, abs=1e-6)
    at_one = discrete_distill_loss(student, teacher, torch.ones(1, 1), temperature=1.0)
    assert at_one.loss.item() == pytest.approx(_kl([0.9, 0.1], [0.75, 0.25]), abs=1e-6)
    with pytest.raises(CtxrlError, match="temperature must be > 0"):
        discrete_distill_loss(student, teacher, torch.ones(1, 1), temperature=0.0)


def test_masked_states_take_no_part_and_students_are_independent() -> None:
    """Two students, two states each; the second state of student 0 is masked (a terminal
    observation) and holds a huge disagreement that must not count."""
    student = torch.tensor([[[0.0, 0.0], [50.0, -50.0]], [[0.0, 0.0], [0.0, 0.0]]])
    teacher = torch.tensor([[[[LN3, 0.0], [-50.0, 50.0]]], [[[LN3, 0.0], [LN3, 0.0]]]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = discrete_distill_loss(student, teacher, torch.ones(2, 1), mask=mask)
    expected = _kl([0.75, 0.25], [0.5, 0.5])
    assert out.loss.tolist() == pytest.approx([expected, expected], abs=1e-6)
    assert out.agreement.tolist() == [1.0, 1.0]
    # nothing unmasked: zero loss, finite gradient
    student.requires_grad_(True)
    none = discrete_distill_loss(student, teacher, torch.ones(2, 1), mask=torch.zeros(2, 2))
    torch.autograd.backward(none.loss.sum())
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert none.loss.tolist() == [0.0, 0.0]


def test_gradient_reaches_the_student_only() -> None:
    student = torch.zeros(1, 3, 2, requires_grad=True)
    teacher = torch.randn(1, 2, 3, 2, requires_grad=True)
    torch.autograd.backward(discrete_distill_loss(student, teacher, torch.ones(1, 2)).loss.sum())
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_gaussian_loss_by_hand() -> None:
    """Teacher N(1, 2^2), student N(0, 1): KL = log(1/2) + (4 + 1) / 2 - 1/2."""
    student_mean, student_log_std = torch.zeros(1, 1, 1), torch.zeros(1, 1)
    teacher_mean = torch.tensor([[[[1.0]], [[0.0]]]])  # (N=1, K=2, M=1, D=1)
    teacher_log_std = torch.tensor([[math.log(2.0)], [0.0]])  # (K, D)
    one = gaussian_distill_loss(
        student_mean, student_log_std, teacher_mean, teacher_log_std, torch.tensor([[1.0, 0.0]])
    )
    kl = math.log(0.5) + 5 / 2 - 0.5
    assert one.loss.item() == pytest.approx(kl, abs=1e-6)
    entropy = 0.5 + 0.5 * math.log(2 * math.pi) + math.log(2.0)
    assert one.target_entropy.item() == pytest.approx(entropy, abs=1e-6)
    # weights 2 : 2 -> half of it (the second teacher equals the student)
    half = gaussian_distill_loss(
        student_mean, student_log_std, teacher_mean, teacher_log_std, torch.tensor([[2.0, 2.0]])
    )
    assert half.loss.item() == pytest.approx(kl / 2, abs=1e-6)
    # temperature 1/4 scales the teacher's variance to 1: KL = (1 + 1) / 2 - 1/2
    cool = gaussian_distill_loss(
        student_mean,
        student_log_std,
        teacher_mean,
        teacher_log_std,
        torch.tensor([[1.0, 0.0]]),
        temperature=0.25,
    )
    assert cool.loss.item() == pytest.approx(0.5, abs=1e-6)


def test_bad_weights_name_the_student() -> None:
    with pytest.raises(CtxrlError, match="student 1"):
        normalise_weights(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(CtxrlError, match="student 0"):
        normalise_weights(torch.tensor([[-1.0, 2.0]]))
    with pytest.raises(CtxrlError, match="empty teacher set"):
        normalise_weights(torch.zeros(3, 0))
