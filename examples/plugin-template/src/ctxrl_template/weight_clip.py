"""``weight-clip``: an intervention that keeps every weight near the scale it started at.

Elsayed, Lan, Lyle and Mahmood, "Weight Clipping for Deep Continual and Reinforcement Learning"
(RLC 2024, arXiv 2407.01704) clip each parameter after every optimizer step to
``[-kappa * s_L, kappa * s_L]``, where ``s_L`` is layer ``L``'s initialization bound: weights
cannot grow without limit, one of the ways networks lose plasticity. Their ``s_L`` is the bound
of a Kaiming-uniform initialization (``1 / sqrt(fan_in)``); ctxrl's trainers initialise
orthogonally, whose weights exceed that bound, so here ``s_L`` is the largest magnitude among
the layer's initial weights, per agent (the bound the initialization actually had), and a
layer's bias shares its weight's bound (as in their code, where a bias takes its layer's
fan-in). With ``kappa >= 1`` no initial weight is clipped.

Everything is per agent (``view.mask`` selects the agents, ``view.frozen`` the layers a warm
start froze, which are left alone), so an agent's training never depends on its batch: the
:class:`ctxrl.testing.InterventionContract` the template's tests run checks that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ctxrl import CtxrlError
from ctxrl.interventions import Intervention, TrainingView


class WeightClip(Intervention):
    """Clip each layer's weights and bias to ``kappa`` times the layer's largest initial
    weight magnitude, per agent, after every optimizer step.

    Args:
        kappa: the bound as a multiple of the initial scale, > 0 (default 2).
    """

    name: ClassVar[str] = "weight-clip"

    def __init__(self, kappa: float = 2.0) -> None:
        if isinstance(kappa, bool) or not isinstance(kappa, int | float) or not kappa > 0:
            raise CtxrlError(f"weight-clip: kappa must be a number > 0, got {kappa!r}")
        self.kappa = float(kappa)
        self.bounds: dict[str, torch.Tensor] = {}
        """per clipped parameter name, the ``(N,)`` bound of each agent"""

    def setup(self, view: TrainingView) -> None:
        self.bounds = {}
        for layers in view.layers.values():
            for layer in layers:
                initial = view.initial_params[f"{layer}.weight"]  # (N, in, out)
                scale = self.kappa * initial.abs().flatten(1).amax(dim=1)  # (N,)
                for kind in ("weight", "bias"):
                    if f"{layer}.{kind}" in view.params:
                        self.bounds[f"{layer}.{kind}"] = scale.clone()

    def after_update(self, view: TrainingView) -> None:
        with torch.no_grad():
            for name, bound in self.bounds.items():
                param = view.params[name]  # (N, ...)
                applies = view.mask > 0  # (N,)
                if name in view.frozen:
                    applies = applies & ~view.frozen[name]
                shape = (-1,) + (1,) * (param.dim() - 1)
                limit = bound.to(param.dtype).view(shape)
                clipped = torch.maximum(torch.minimum(param, limit), -limit)
                param.copy_(torch.where(applies.view(shape), clipped, param))

    def diagnostics(self, view: TrainingView) -> dict[str, torch.Tensor]:
        """``at_bound``: per agent, the fraction of its clipped parameters sitting at the bound
        (``(N,)``, 0 to 1): how hard the clip binds."""
        if not self.bounds:
            return {}
        at, total = torch.zeros(view.num_agents), 0
        for name, bound in self.bounds.items():
            param = view.params[name].detach()
            limit = bound.to(param.dtype).view((-1,) + (1,) * (param.dim() - 1))
            at += (param.abs() >= limit).flatten(1).sum(dim=1).cpu().float()
            total += param[0].numel()
        return {"at_bound": at / total}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"bound.{name}": bound for name, bound in self.bounds.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.bounds = {
            name.removeprefix("bound."): tensor.clone()
            for name, tensor in state.items()
            if name.startswith("bound.")
        }
