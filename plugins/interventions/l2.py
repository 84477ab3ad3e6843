"""``l2``: L2 regularisation (coupled weight decay) as a per-agent loss term.

Each agent's loss gains ``coef / 2 * sum_p ||p||^2`` over its parameters ``p``, so the term's
gradient is ``coef * p``: the same gradient as ``torch.optim.Adam(weight_decay=coef)`` (coupled
weight decay, Krogh & Hertz 1991; in Adam as Loshchilov & Hutter, "Decoupled Weight Decay
Regularization", arXiv 1711.05101, describe it). One difference: here the term's gradient is
clipped together with the algorithm's (``max_grad_norm``), where torch adds the decay after
clipping.

Defaults: ``coef = 1e-4`` over the weight matrices only (``include="weights"``). Dohare et al.
("Loss of plasticity in deep continual learning", Nature 632:768, 2024, arXiv 2306.13812) use L2
1e-4 .. 1e-3 with PPO; Plasticine uses Adam ``weight_decay=1e-3`` on all parameters
(``include="all"``). The default is the low end of Dohare et al.'s range, on the weights as L2
regularisation is usually meant: a term that shrinks biases and LayerNorm gains as well pulls
units towards silence, which is what the plasticity studies measure. ``coef: 1e-3, include:
all`` is Plasticine's setting.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.options import number_option
from ctxrl_plugins.interventions.common import (
    PARAMETER_SETS,
    ParameterSet,
    parameter_names,
    squared_norm,
)


class L2(Intervention):
    """``coef / 2 * ||theta||^2`` per agent, over the weights (or all parameters).

    Args:
        coef: the weight-decay coefficient (the term's gradient is ``coef * p``).
        include: ``weights`` (the layers' weight matrices) or ``all`` (every trained
            parameter).
    """

    name: ClassVar[str] = "l2"

    def __init__(self, coef: float = 1e-4, include: ParameterSet = "weights") -> None:
        if include not in PARAMETER_SETS:
            raise ConfigError(f"l2: include {include!r}: expected one of {PARAMETER_SETS}")
        coef = number_option(coef, "l2: coef", positive=False)
        self.coef, self.include = float(coef), include
        self.names: list[str] = []

    def setup(self, view: TrainingView) -> None:
        self.names = parameter_names(view, self.include)

    def loss(self, view: TrainingView) -> torch.Tensor | None:
        """``(N,)``: ``coef / 2`` times each agent's summed squared parameters."""
        if not self.names:
            return None
        total = cast(torch.Tensor, sum(squared_norm(view.params[name]) for name in self.names))
        return (self.coef / 2) * total
