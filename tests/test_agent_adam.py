"""AgentAdam: torch's Adam arithmetic, per-agent clipping, frozen parameters and the three
optimizer-state resets interventions choose from."""

from __future__ import annotations

import pytest
import torch

from ctxrl.errors import CtxrlError
from ctxrl_plugins.training.optimizer import AgentAdam


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 4, 2, generator=g), "b": torch.randn(3, 2, generator=g)}


def _loss(params: dict[str, torch.Tensor], step: int) -> torch.Tensor:
    """Per-agent losses ``(3,)`` that change with the step."""
    return (params["w"] * (step + 1)).sin().sum(dim=(1, 2)) + params["b"].square().sum(dim=1)


def _train(optimizer: AgentAdam, params: dict[str, torch.Tensor], steps: range) -> None:
    for step in steps:
        optimizer.zero_grad()
        torch.autograd.backward(_loss(params, step).sum())
        optimizer.step()


def test_equals_torch_adam_to_rounding() -> None:
    ours = _params()
    reference = {k: v.clone().requires_grad_(True) for k, v in ours.items()}
    optimizer = AgentAdam(ours, lr=1e-2, eps=1e-5)
    torch_adam = torch.optim.Adam(list(reference.values()), lr=1e-2, eps=1e-5)
    for step in range(20):
        optimizer.zero_grad()
        torch.autograd.backward(_loss(ours, step).sum())
        optimizer.step()
        torch_adam.zero_grad()
        torch.autograd.backward(_loss(reference, step).sum())
        torch_adam.step()
    for name in ours:
        torch.testing.assert_close(ours[name].detach(), reference[name].detach())


@pytest.mark.parametrize("reset", [False, True])
def test_the_compiled_step_equals_the_eager_one_to_rounding(reset: bool) -> None:
    """:meth:`AgentAdam.compile` fuses the same update into one kernel, with one step count
    and with per-element counts after a reset; the learning rate changes every step without
    recompiling."""
    eager_params, compiled_params = _params(), _params()
    eager = AgentAdam(eager_params, lr=1e-2, eps=1e-5, max_grad_norm=1.0)
    compiled = AgentAdam(compiled_params, lr=1e-2, eps=1e-5, max_grad_norm=1.0)
    compiled.compile()
    for optimizer, params in ((eager, eager_params), (compiled, compiled_params)):
        _train(optimizer, params, range(3))
        if reset:
            optimizer.reset(
                "w", torch.tensor([True, False, False])[:, None, None], "moments_and_step"
            )
        for step in range(3, 12):
            optimizer.zero_grad()
            torch.autograd.backward(_loss(params, step).sum())
            optimizer.step(lr=1e-2 * (1 - step / 20))
    for name in eager_params:
        torch.testing.assert_close(
            compiled_params[name].detach(), eager_params[name].detach(), rtol=1e-5, atol=1e-6
        )
        assert not torch.equal(compiled_params[name].detach(), _params()[name])


def _fused_loss(
    params: dict[str, torch.Tensor], step: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_loss` as :meth:`AgentAdam.fused_step` takes it, the step as a tensor (a Python
    number would be a constant of the graph), with the losses as the auxiliary output."""
    loss = (params["w"] * (step + 1)).sin().sum(dim=(1, 2)) + params["b"].square().sum(dim=1)
    return loss, loss.detach()


def test_the_fused_step_equals_backward_and_step_to_rounding() -> None:
    """:meth:`AgentAdam.fused_step` (the loss's gradient, frozen parameters, per-agent clipping
    and Adam as one compiled graph) takes the steps a backward pass and :meth:`step` take: the
    same parameters, moments, clipped gradients and gradient norms to rounding, with a frozen
    agent, clipping that binds for some agents only, per-element step counts after a reset and
    a learning rate that changes every step."""
    torch.compiler.reset()
    eager_params, fused_params = _params(), _params()
    eager = AgentAdam(eager_params, lr=1e-2, eps=1e-5, max_grad_norm=12.5)
    fused = AgentAdam(fused_params, lr=1e-2, eps=1e-5, max_grad_norm=12.5)
    clipped = []
    for optimizer in (eager, fused):
        optimizer.freeze("b", torch.tensor([False, True, False]))
    for step in range(12):
        lr = 1e-2 * (1 - step / 20)
        if step == 4:
            for optimizer in (eager, fused):
                mask = torch.tensor([True, False, False])[:, None, None]
                optimizer.reset("w", mask, "moments_and_step")
        eager.zero_grad()
        eager_losses = _loss(eager_params, step)
        torch.autograd.backward(eager_losses.sum())
        eager.step(lr)
        losses = fused.fused_step(_fused_loss, torch.tensor(float(step)), lr=lr)
        torch.testing.assert_close(losses, eager_losses.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused.grad_norm, eager.grad_norm, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused.grad, eager.grad, rtol=1e-5, atol=1e-6)
        clipped.append((eager.grad_norm > 12.5).tolist())
    assert [True, False, True] in clipped  # clipping bound for some agents only
    for name in eager_params:
        torch.testing.assert_close(
            fused_params[name].detach(), eager_params[name].detach(), rtol=1e-5, atol=1e-6
        )
    torch.testing.assert_close(fused.exp_avg_sq, eager.exp_avg_sq, rtol=1e-5, atol=1e-9)
    assert torch.equal(fused_params["b"][1].detach(), _params()["b"][1])  # frozen
    assert fused.step_count == eager.step_count == 12
    assert fused.compile_s > 0.0  # one graph, compiled once: the rate is a tensor


def test_one_count_and_per_element_counts_give_the_same_numbers() -> None:
    """A reset of one agent's units switches the optimizer to per-element step counts; the
    other agents' numbers stay bit for bit what they were."""
    shared, split = _params(), _params()
    first, second = AgentAdam(shared, lr=1e-2), AgentAdam(split, lr=1e-2)
    _train(first, shared, range(3))
    _train(second, split, range(3))
    second.reset("w", torch.tensor([True, False, False])[:, None, None], "moments_and_step")
    _train(first, shared, range(3, 9))
    _train(second, split, range(3, 9))
    assert torch.equal(shared["w"][1:].detach(), split["w"][1:].detach())
    assert torch.equal(shared["b"].detach(), split["b"].detach())
    assert not torch.equal(shared["w"][0].detach(), split["w"][0].detach())


def test_frozen_agents_do_not_move() -> None:
    params = _params()
    before = {k: v.clone() for k, v in params.items()}
    optimizer = AgentAdam(params, lr=1e-2)
    optimizer.freeze("w", torch.tensor([False, True, False]))
    _train(optimizer, params, range(5))
    assert torch.equal(params["w"][1].detach(), before["w"][1])
    assert not torch.equal(params["w"][0].detach(), before["w"][0])
    assert not torch.equal(params["b"][1].detach(), before["b"][1])
    # frozen after some steps: the moments it had kept moving it on zero gradients
    optimizer.freeze("b", torch.tensor([True, False, False]))
    frozen_at = params["b"][0].detach().clone()
    _train(optimizer, params, range(5, 10))
    assert torch.equal(params["b"][0].detach(), frozen_at)


def test_resets_none_moments_and_step() -> None:
    """After a reset with ``moments_and_step`` the reset elements take exactly the steps a
    fresh optimizer would give them from the same point; with ``moments`` the bias correction
    stays that of the old step count (a smaller first step); with ``none`` nothing changes."""
    results = {}
    for mode in ("none", "moments", "moments_and_step"):
        params = _params()
        optimizer = AgentAdam(params, lr=1e-2)
        _train(optimizer, params, range(10))
        optimizer.reset("w", torch.tensor([True, False, False])[:, None, None], mode)  # type: ignore[arg-type]
        if mode != "none":
            assert optimizer.moments("w")["exp_avg"][0].abs().sum() == 0
            assert optimizer.moments("w")["exp_avg"][1].abs().sum() > 0
        start = params["w"][0].detach().clone()
        _train(optimizer, params, range(10, 13))
        results[mode] = (start, params["w"][0].detach().clone())
    # a fresh optimizer on agent 0's w from the same point, same losses
    start, _ = results["moments_and_step"]
    fresh = _params()
    with torch.no_grad():
        fresh["w"][0] = start
    single = {"w": fresh["w"][:1].clone()}
    optimizer = AgentAdam(single, lr=1e-2)
    for step in range(10, 13):
        optimizer.zero_grad()
        torch.autograd.backward((single["w"] * (step + 1)).sin().sum())
        optimizer.step()
    torch.testing.assert_close(results["moments_and_step"][1], single["w"][0].detach())
    moved = {m: (end - begin).abs().sum() for m, (begin, end) in results.items()}
    assert moved["moments"] < moved["moments_and_step"]
    assert moved["none"] != moved["moments"]
    with pytest.raises(CtxrlError, match="optimizer reset 'all'"):
        optimizer.reset("w", torch.tensor([True]), "all")  # type: ignore[arg-type]


def test_checkpoint_round_trip_keeps_per_element_steps(tmp_path: object) -> None:
    params = _params()
    optimizer = AgentAdam(params, lr=1e-2)
    _train(optimizer, params, range(4))
    optimizer.reset("b", torch.tensor([False, True, False])[:, None], "moments_and_step")
    saved = {k: v.clone() for k, v in optimizer.state_tensors().items()}
    _train(optimizer, params, range(4, 8))
    expected = {k: v.detach().clone() for k, v in params.items()}
    restored_params = _params(1)
    restored = AgentAdam(restored_params, lr=1e-2)
    restored.load_state_tensors(saved, "memory")  # type: ignore[arg-type]
    _train(restored, restored_params, range(4, 8))
    for name in expected:
        assert torch.equal(restored_params[name].detach(), expected[name]), name
