"""``wasserstein-init``: regularise each layer's weight distribution towards its initial one.

Lewandowski, Tanaka, Schuurmans and Machado, "Directions of Curvature as an Explanation for
Loss of Plasticity" (2023, arXiv 2312.00246), and as a baseline in Lewandowski et al.,
"Learning Continually by Spectral Regularization" (arXiv 2406.06811): each agent's loss gains

    coef * sum_l sum_i (sort(theta_l)_i - sort(theta_l0)_i)^2,

the squared 2-Wasserstein distance (times the layer's size) between the empirical distribution
of layer ``l``'s current weights and of its initial weights (``view.initial_params``). Unlike
L2-Init it does not tie a weight to its own initial value: any permutation of the initial
weights costs nothing, so units may trade roles while the distribution stays that of a fresh
network.

Defaults: ``coef = 1e-2`` (the L2-Init coefficient it replaces in Juliani & Ash 2024's W2-Init
comparison; tune it), over the weight matrices (``include="all"``: every trained parameter,
each tensor its own distribution).
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.options import number_option
from ctxrl_plugins.interventions.common import PARAMETER_SETS, ParameterSet, parameter_names

Tensor = torch.Tensor


class WassersteinInit(Intervention):
    """``coef * sum_l ||sort(theta_l) - sort(theta_l0)||^2`` per agent.

    Args:
        coef: the regularisation weight.
        include: ``weights`` (the layers' weight matrices) or ``all`` (every trained
            parameter).
    """

    name: ClassVar[str] = "wasserstein-init"

    def __init__(self, coef: float = 1e-2, include: ParameterSet = "weights") -> None:
        if include not in PARAMETER_SETS:
            raise ConfigError(
                f"wasserstein-init: include {include!r}: expected one of {PARAMETER_SETS}"
            )
        coef = number_option(coef, "wasserstein-init: coef", positive=False)
        self.coef, self.include = float(coef), include
        self.names: list[str] = []
        self.sorted_initial: dict[str, Tensor] = {}

    def setup(self, view: TrainingView) -> None:
        self.names = parameter_names(view, self.include)
        self.sorted_initial = {
            name: view.initial_params[name].reshape(view.num_agents, -1).sort(dim=1).values
            for name in self.names
        }

    def loss(self, view: TrainingView) -> Tensor | None:
        """``(N,)``: ``coef`` times the summed squared differences of sorted weights."""
        if not self.names:
            return None
        terms = []
        for name in self.names:
            current = view.params[name].reshape(view.num_agents, -1).sort(dim=1).values
            terms.append((current - self.sorted_initial[name]).square().sum(dim=1))
        return self.coef * cast(Tensor, sum(terms))
