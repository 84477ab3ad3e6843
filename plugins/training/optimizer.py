"""Adam over agent-stacked parameters: per-agent gradient clipping, frozen parameters and
per-element optimizer state that interventions can read and reset."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

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
    differently); :meth:`fused_step` compiles a whole gradient step (loss, gradient, clipping,
    Adam) as one graph.

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
        self._fused: dict[Callable[..., Any], CompiledFunction] = {}
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
        moments are zeroed now and their gradient before every clipping from now on, so the
        parameter stays as it is (with moments left, Adam would go on moving it on a zero
        gradient)."""
        keep = (~agents).to(self.flat.dtype)
        if name in self.grad_mask:  # frozen before for other agents: they stay frozen
            keep = keep * self.grad_mask[name]
        self.grad_mask[name] = keep
        for buffer in (self.exp_avg, self.exp_avg_sq):
            moments = self.view(buffer, name)
            moments.mul_(keep.view(-1, *([1] * (moments.dim() - 1))))

    def compile(self) -> None:
        """Run the elementwise Adam update as one compiled kernel from now on."""
        self._update = CompiledFunction(_adam_update)

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling the update (0 when eager)."""
        update = self._update.compile_s if isinstance(self._update, CompiledFunction) else 0.0
        return update + sum(f.compile_s for f in self._fused.values())

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
        grad, param = self.grad, self.flat.detach()
        step_size, correction2 = self._next_step()
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

    def fused_step(
        self, loss: Callable[..., tuple[Tensor, Any]], *args: Any, lr: float | None = None
    ) -> Any:
        """One gradient step as one compiled graph: the per-agent losses ``(N,)`` and auxiliary
        outputs ``loss(params, *args)`` returns (``params`` the agent-stacked parameters by name,
        as :attr:`params` holds them), their gradient (``torch.func.grad`` over the flat
        parameters), frozen parameters held, each agent's gradient clipped and the Adam step:
        what ``zero_grad``, a backward pass and :meth:`step` do, without autograd's and
        eager PyTorch's per-operation overhead. The clipped gradients are left in :attr:`grad`
        as :meth:`step` leaves them. Returns the auxiliary outputs (no gradient).

        The numbers equal the unfused step's to rounding (inductor fuses the backward pass and
        the reductions differently)."""
        if lr is not None:
            self.lr = lr
        compiled = self._fused.get(loss)
        if compiled is None:
            compiled = self._fused[loss] = CompiledFunction(_fused_step)
        # outside the graph: inside it inductor recomputes the corrections' float64 powers for
        # every vector of elements
        step_size, correction2 = self._next_step()
        keep = self.grad_mask or None
        grad_norm, aux = compiled(
            loss,
            self.blocks,
            self.max_grad_norm,
            self.betas,
            self.eps,
            self.flat.detach(),
            self.grad,
            self.exp_avg,
            self.exp_avg_sq,
            step_size,
            correction2,
            keep,
            *args,
        )
        if grad_norm is not None:
            self.grad_norm = grad_norm
        return aux

    def _next_step(self) -> tuple[Tensor, Tensor]:
        """Count a step; Adam's step size and second-moment correction for it.

        Adam's bias corrections in float64 (as torch computes them), then one float32 step size
        and one float32 second-moment correction, for the one step count or per element. The
        same arithmetic for one shared count and for per-element counts: an agent's numbers do
        not depend on whether another agent's units were ever reset."""
        self.step_count += 1
        if self.steps is None:
            device = self.flat.device
            counts = torch.tensor(float(self.step_count), dtype=torch.float64, device=device)
        else:
            self.steps.add_(1.0)
            counts = self.steps
        beta1, beta2 = self.betas
        step_size = (self.lr / (1 - torch.pow(beta1, counts))).to(self.flat.dtype)
        correction2 = (1 - torch.pow(beta2, counts)).sqrt().to(self.flat.dtype)
        return step_size, correction2

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


def _fused_step(
    loss: Callable[..., tuple[Tensor, Any]],
    blocks: Mapping[str, tuple[int, torch.Size]],
    max_grad_norm: float | None,
    betas: tuple[float, float],
    eps: float,
    flat: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step_size: Tensor,
    correction2: Tensor,
    keep: Mapping[str, Tensor] | None,
    *args: Any,
) -> tuple[Tensor | None, Any]:
    """:meth:`AgentAdam.fused_step`'s graph on the flat buffers: the gradient of the summed
    losses, frozen parameters' gradients zeroed (``keep``: name -> ``(N,)``, 1 trainable, 0
    frozen), per-agent clipping, Adam in place.
    Returns each agent's gradient norm before clipping (None without clipping) and ``loss``'s
    auxiliary outputs."""

    def summed(params: dict[str, Tensor]) -> tuple[Tensor, Any]:
        losses, aux = loss(params, *args)
        return losses.sum(), aux

    params = {
        name: flat[offset : offset + shape.numel()].view(shape)
        for name, (offset, shape) in blocks.items()
    }
    gradients, aux = torch.func.grad(summed, has_aux=True)(params)
    grads = [gradients[name] for name in blocks]
    if keep is not None:
        grads = [
            g * keep[name].view(-1, *([1] * (g.dim() - 1))) if name in keep else g
            for name, g in zip(blocks, grads, strict=True)
        ]
    norm = None
    if max_grad_norm is not None:
        # summed one parameter at a time, as the unfused step does
        norm = cast(Tensor, sum(g.reshape(g.shape[0], -1).square().sum(dim=1) for g in grads))
        norm = norm.sqrt()
        scale = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        grads = [g * scale.view(-1, *([1] * (g.dim() - 1))) for g in grads]
    # the blocks' gradients, clipped, are computed into their slices of one flat buffer
    gradient = torch.cat([g.reshape(-1) for g in grads])
    grad.copy_(gradient)
    _adam_update(flat, grad, exp_avg, exp_avg_sq, step_size, correction2, *betas, eps)
    return norm, aux
