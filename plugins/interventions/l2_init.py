"""``l2-init``: regularisation towards the initial parameters.

Kumar, Marklund and Van Roy, "Maintaining Plasticity in Continual Learning via Regenerative
Regularization" (2023, arXiv 2308.11958): each agent's loss gains
``coef * ||theta - theta_0||^2`` (squared L2 norm, summed over every trained parameter), where
``theta_0`` are the agent's parameters at the start of training (``view.initial_params``: after
a warm start, the warm-start weights, which makes it L2-SP, Li et al. 2018, arXiv 1802.01483).
Parameters an agent does not train (a warm start's ``freeze``, plasticity injection's frozen
copies and switches) are left out of its sum. ``theta_0`` stays the start of training: units that
``reset``, ``redo``, ``continual-backprop`` or ``plasticity-injection`` re-draw later are pulled
towards their values at the start, not towards their re-drawn ones (Kumar et al. combine
L2-Init with no resets; combine them knowing this).

Default: ``coef = 1e-2`` (the paper searches 1e-2 .. 1e-5; Juliani & Ash 2024 and Plasticine use
0.01; Plasticine's term is the norm, not its square).
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch

from ctxrl.interventions import Intervention, TrainingView
from ctxrl.options import number_option
from ctxrl_plugins.interventions.common import squared_norm


class L2Init(Intervention):
    """``coef * ||theta - theta_0||^2`` per agent over every trained parameter.

    Args:
        coef: the regularisation weight.
    """

    name: ClassVar[str] = "l2-init"

    def __init__(self, coef: float = 1e-2) -> None:
        coef = number_option(coef, "l2-init: coef", positive=False)
        self.coef = float(coef)

    def loss(self, view: TrainingView) -> torch.Tensor | None:
        """``(N,)``: ``coef`` times each agent's squared distance from its initial parameters."""
        initial, frozen = view.initial_params, view.frozen
        terms = []
        for name, p in view.params.items():
            term = squared_norm(p - initial[name])  # (N,)
            if name in frozen:  # not trained by those agents
                term = term * (~frozen[name]).to(term.dtype)
            terms.append(term)
        return self.coef * cast(torch.Tensor, sum(terms))
