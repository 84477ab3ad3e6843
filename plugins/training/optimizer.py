"""Adam over agent-stacked parameters: per-agent gradient clipping, frozen parameters and
per-element optimizer state that interventions can read and reset."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import torch

from ctxrl.errors import CtxrlError
from ctxrl.interventions import OPTIMIZER_RESETS, OptimizerReset
from ctxrl_plugins.training.compiling import CompiledFunction
from ctxrl_plugins.training.networks import Params

Tensor = torch.Tensor


class AgentAdam:
    """Adam (Kingma and Ba 2015) over agent-stacked parameters ``(N, ...)``, with per-agent
    gradient-norm clipping, per-agent frozen parameters and per-element state.

    The parameters move into one flat buffer, each keeping a dense block of its own (the dict's
    entries become views of it), and their gradients, moments and (once any is reset) step
    counts into buffers of the same layout, so zeroing the gradients is one operation and the
    Adam step a handful however many tensors the networks have. Clipping and Adam are per agent
    and elementwise: agents stay independent. The step is torch's single-tensor Adam (moments
    updated in its order, bias corrections in float64) with the step size and the second-moment
    correction applied as float32 factors per element, equal to ``torch.optim.Adam`` to within
    rounding; the step count is one number until an intervention restarts the count of some
    elements (:meth:`reset` with ``moments_and_step``), then one per element, with the same
    arithmetic either way, so an agent's numbers never depend on whether another agent's units
    were reset. :meth:`finish` turns the views back into plain tensors when training ends.
    :meth:`compile` fuses the elementwise step into one ``torch.compile`` kernel (the same
    formula; inductor's vectorised square root and division may round the last bit
    differently).

    Args:
        params: agent-stacked parameters; rebound to views of the flat buffer.
        lr: learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.
        max_grad_norm: per-agent clipping of the L2 norm over all the agent's gradients.
    """

    def __init__(
        self,
        params: Params,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float | None = None,
    ) -> None:
        self.params, self.max_grad_norm = params, max_grad_norm
        self.lr, self.betas, self.eps = lr, betas, eps
        self.flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
        self.grad = torch.zeros_like(self.flat)
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.step_count = 0
        self.steps: Tensor | None = None  # per-element step counts, once any was reset
        self.blocks: dict[str, tuple[int, torch.Size]] = {}
        self._agent_grads: list[Tensor] = []  # (N, size) views of each parameter's gradient
        self.grad_mask: dict[str, Tensor] = {}  # name -> (N,) 1 trainable / 0 frozen
        self.grad_norm = torch.zeros(next(iter(params.values())).shape[0], device=self.flat.device)
        """each agent's gradient norm before clipping at the last step ``(N,)``"""
        self._update: Callable[..., None] = _adam_update
        offset = 0
        for name, p in params.items():
            size = p.numel()
            self.blocks[name] = (offset, p.shape)
            view = self.flat[offset : offset + size].view(p.shape).requires_grad_(True)
            view.grad = self.grad[offset : offset + size].view(p.shape)
            params[name] = view
            self._agent_grads.append(view.grad.view(p.shape[0], -1))
            offset += size

    def view(self, buffer: Tensor, name: str) -> Tensor:
        """Parameter ``name``'s block of a flat buffer, shaped like the parameter."""
        offset, shape = self.blocks[name]
        return buffer[offset : offset + shape.numel()].view(shape)

    def moments(self, name: str) -> dict[str, Tensor]:
        """Views of parameter ``name``'s ``exp_avg`` and ``exp_avg_sq`` ``(N, ...)``."""
        return {
            "exp_avg": self.view(self.exp_avg, name),
            "exp_avg_sq": self.view(self.exp_avg_sq, name),
        }

    def gradients(self) -> dict[str, Tensor]:
        """Views of every parameter's gradient ``(N, ...)``."""
        return {name: self.view(self.grad, name) for name in self.blocks}

    def reset(self, name: str, mask: Tensor, mode: OptimizerReset) -> None:
        """Reset the state of parameter ``name``'s elements where ``mask`` (bool, broadcastable
        to the parameter's shape) is True: see :data:`ctxrl.interventions.OptimizerReset`."""
        if mode not in OPTIMIZER_RESETS:
            raise CtxrlError(f"optimizer reset {mode!r}: expected one of {OPTIMIZER_RESETS}")
        if mode == "none":
            return
        _, shape = self.blocks[name]
        keep = (~mask.expand(shape)).to(self.flat.dtype)
        for buffer in (self.exp_avg, self.exp_avg_sq):
            self.view(buffer, name).mul_(keep)
        if mode == "moments_and_step":
            if self.steps is None:
                self.steps = torch.full_like(self.flat, float(self.step_count), dtype=torch.float64)
            self.view(self.steps, name).mul_(keep)

    def freeze(self, name: str, agents: Tensor) -> None:
        """Freeze parameter ``name`` for the agents where ``agents`` ``(N,)`` is True: their
        gradient is zeroed before clipping, so the parameter and its moments stay as they are."""
        self.grad_mask[name] = (~agents).to(self.flat.dtype)

    def compile(self) -> None:
        """Run the elementwise Adam update as one compiled kernel from now on."""
        self._update = CompiledFunction(_adam_update)

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling the update (0 when eager)."""
        return self._update.compile_s if isinstance(self._update, CompiledFunction) else 0.0

    def zero_grad(self) -> None:
        self.grad.zero_()

    def step(self, lr: float | None = None) -> None:
        """Zero frozen gradients, clip each agent's gradient to ``max_grad_norm`` (L2 over all
        its parameters), then take an Adam step (at learning rate ``lr`` when given)."""
        for name, keep in self.grad_mask.items():
            grad = self.view(self.grad, name)
            grad.mul_(keep.view(-1, *([1] * (grad.dim() - 1))))
        if self.max_grad_norm is not None:
            # summed one parameter at a time: a reduction over a stacked (tensors, N) array
            # would change its order with N
            squared = cast(Tensor, sum(g.square().sum(dim=1) for g in self._agent_grads))
            self.grad_norm = squared.sqrt()
            scale = (self.max_grad_norm / (self.grad_norm + 1e-6)).clamp(max=1.0)
            for g in self._agent_grads:
                g.mul_(scale[:, None])
        if lr is not None:
            self.lr = lr
        beta1, beta2 = self.betas
        grad, param = self.grad, self.flat.detach()
        self.step_count += 1
        if self.steps is None:
            counts = torch.tensor(float(self.step_count), dtype=torch.float64, device=param.device)
        else:
            self.steps.add_(1.0)
            counts = self.steps
        # Adam's bias corrections in float64 (as torch computes them), then one float32 step
        # size and one float32 second-moment correction per element. The same arithmetic for
        # one shared count and for per-element counts: an agent's numbers do not depend on
        # whether another agent's units were ever reset.
        step_size = (self.lr / (1 - torch.pow(beta1, counts))).to(param.dtype)
        correction2 = (1 - torch.pow(beta2, counts)).sqrt().to(param.dtype)
        self._update(
            param,
            grad,
            self.exp_avg,
            self.exp_avg_sq,
            step_size,
            correction2,
            *self.betas,
            self.eps,
        )

    def finish(self) -> None:
        """Training is over: the parameters become plain, contiguous tensors again."""
        for name, p in self.params.items():
            self.params[name] = p.detach().clone()

    def state_tensors(self) -> dict[str, Tensor]:
        """Parameters, moments and step counts, for a checkpoint."""
        tensors = {
            "params": self.flat.detach(),
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
            "step": torch.tensor([self.step_count], dtype=torch.int64),
        }
        if self.steps is not None:
            tensors["steps"] = self.steps
        return tensors

    def load_state_tensors(self, tensors: Mapping[str, Tensor], source: Path) -> None:
        """Restore what :meth:`state_tensors` returned; ``source`` names the file in errors."""
        if "params" not in tensors or tensors["params"].shape != self.flat.shape:
            raise CtxrlError(
                f"checkpoint {source} does not match this training (written by another ctxrl "
                "version or for other hyperparameters); delete it to start over"
            )
        with torch.no_grad():
            self.flat.copy_(tensors["params"])
        self.exp_avg.copy_(tensors["exp_avg"])
        self.exp_avg_sq.copy_(tensors["exp_avg_sq"])
        self.step_count = int(tensors["step"].reshape(-1)[0])
        self.steps = tensors["steps"].clone() if "steps" in tensors else None


def _adam_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step_size: Tensor,
    correction2: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """Adam's elementwise update in place on flat buffers of one layout: the moments in
    torch's order, then ``param -= exp_avg * step_size / (sqrt(exp_avg_sq) / correction2 +
    eps)``; ``step_size`` and ``correction2`` are 0-dimensional or per element."""
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / correction2).add_(eps)
    param.sub_(exp_avg * step_size / denom)
