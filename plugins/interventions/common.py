"""What the built-in interventions share: which parameters they touch and per-agent
broadcasting of ``(N,)`` vectors."""

from __future__ import annotations

from typing import Literal

import torch

from ctxrl.interventions import TrainingView

Tensor = torch.Tensor
ParameterSet = Literal["weights", "all"]
"""``weights``: the weight matrices ``{layer}.weight`` ``(N, in, out)`` of every network layer;
``all``: every trained parameter (biases, LayerNorm gains and biases, and parameters outside
the networks such as PPO's log standard deviation)."""
PARAMETER_SETS: tuple[ParameterSet, ...] = ("weights", "all")


def weight_names(view: TrainingView) -> list[str]:
    """``{layer}.weight`` of every layer of every network role, in the view's order."""
    return [f"{layer}.weight" for layers in view.layers.values() for layer in layers]


def network_names(view: TrainingView) -> list[str]:
    """Every parameter of the networks' layers (weights, biases, LayerNorm gains and biases),
    in ``view.params`` order; parameters outside the networks are left out."""
    prefixes = tuple(f"{layer}." for layers in view.layers.values() for layer in layers)
    return [name for name in view.params if name.startswith(prefixes)]


def parameter_names(view: TrainingView, include: ParameterSet) -> list[str]:
    """The names of the parameters in the set ``include`` (see :data:`ParameterSet`)."""
    return weight_names(view) if include == "weights" else list(view.params)


def per_agent(values: Tensor, like: Tensor) -> Tensor:
    """``values`` ``(N,)`` shaped ``(N, 1, ..., 1)`` to broadcast against ``like`` ``(N, ...)``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def squared_norm(tensor: Tensor) -> Tensor:
    """Per-agent squared L2 norm of an agent-stacked tensor ``(N, ...)``: ``(N,)``."""
    return tensor.square().reshape(tensor.shape[0], -1).sum(dim=1)
