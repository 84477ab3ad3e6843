"""Adam over agent-stacked parameters, with per-agent gradient clipping."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ctxrl.errors import CtxrlError
from ctxrl_plugins.training.networks import Params

Tensor = torch.Tensor


class AgentAdam:
    """Adam (Kingma and Ba 2015) with per-agent gradient-norm clipping over agent-stacked
    parameters ``(N, ...)``.

    The parameters move into one flat buffer, each keeping a dense block of its own (the dict's
    entries become views of it), and their gradients into a second one, so zeroing the
    gradients is one operation and the Adam step a handful (one fused kernel on a GPU) however
    many tensors the networks have. Clipping and Adam are per agent and elementwise: agents stay
    independent. :meth:`finish` turns the views back into plain tensors when training ends."""

    def __init__(
        self, params: Params, *, lr: float, eps: float = 1e-8, max_grad_norm: float | None = None
    ) -> None:
        self.params, self.max_grad_norm = params, max_grad_norm
        self.flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
        self.flat.grad = torch.zeros_like(self.flat)
        self._agent_grads: list[Tensor] = []  # (N, size) views of each parameter's gradient
        offset = 0
        for name, p in params.items():
            size = p.numel()
            view = self.flat[offset : offset + size].view(p.shape).requires_grad_(True)
            view.grad = self.flat.grad[offset : offset + size].view(p.shape)
            params[name] = view
            self._agent_grads.append(view.grad.view(p.shape[0], -1))
            offset += size
        # torch's fused CPU kernel rounds an element differently depending on where it falls in
        # the buffer (which depends on N): on the CPU the plain single-tensor step keeps agents
        # bit-independent; on a GPU the fused kernel saves launches
        fused = self.flat.device.type == "cuda"
        self.optimizer = torch.optim.Adam([self.flat], lr=lr, eps=eps, fused=fused)

    def zero_grad(self) -> None:
        assert self.flat.grad is not None
        self.flat.grad.zero_()

    def step(self, lr: float | None = None) -> None:
        """Clip each agent's gradient to ``max_grad_norm`` (L2 over all its parameters), then
        take an Adam step (at learning rate ``lr`` when given)."""
        if self.max_grad_norm is not None:
            # summed one parameter at a time: a reduction over a stacked (tensors, N) array
            # would change its order with N
            squared = sum(g.square().sum(dim=1) for g in self._agent_grads)
            scale = (self.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)  # type: ignore[union-attr]
            for g in self._agent_grads:
                g.mul_(scale[:, None])
        if lr is not None:
            self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.step()

    def finish(self) -> None:
        """Training is over: the parameters become plain, contiguous tensors again."""
        for name, p in self.params.items():
            self.params[name] = p.detach().clone()

    def state_tensors(self) -> dict[str, Tensor]:
        """Parameters and Adam moments, for a checkpoint."""
        tensors = {"params": self.flat.detach()}
        state = self.optimizer.state.get(self.flat, {})
        for name in ("exp_avg", "exp_avg_sq", "step"):
            if name in state:
                tensors[name] = torch.as_tensor(state[name]).reshape(-1)
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
        if "exp_avg" in tensors:
            self.optimizer.state[self.flat] = {
                "step": tensors["step"].reshape(()).to(self.flat.device, torch.float32),
                "exp_avg": tensors["exp_avg"].clone(),
                "exp_avg_sq": tensors["exp_avg_sq"].clone(),
            }
