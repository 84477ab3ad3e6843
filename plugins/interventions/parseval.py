"""``parseval``: Parseval regularisation, keeping each hidden layer's units orthogonal.

Chung, Panangaden, Precup and others, "Parseval Regularization for Continual Reinforcement
Learning" (NeurIPS 2024, arXiv 2407.01704): each agent's loss gains

    coef * sum_l || W_l^T W_l - scale * I ||_F^2

over the hidden layers' weights ``W_l`` ``(in, out)`` (ctxrl's layout; in torch's ``(out, in)``
layout this is the paper's ``W W^T``): the units' incoming weight vectors are pushed to be
orthogonal with squared norm ``scale``. The output heads are left free (the paper leaves the
final layer unregularised; ``include_heads=True`` adds them).

Defaults: ``coef = 1e-3``, ``scale = 1`` (the paper's and Plasticine's).
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch

from ctxrl.interventions import Intervention, TrainingView
from ctxrl.options import flag_option, number_option
from ctxrl_plugins.interventions.common import head_layers, weight_names

Tensor = torch.Tensor


class Parseval(Intervention):
    """``coef * sum_l ||W_l^T W_l - scale I||_F^2`` per agent.

    Args:
        coef: the regularisation weight.
        scale: the target squared norm of each unit's incoming weights.
        include_heads: regularise the output heads too.
    """

    name: ClassVar[str] = "parseval"

    def __init__(self, coef: float = 1e-3, scale: float = 1.0, include_heads: bool = False) -> None:
        coef = number_option(coef, "parseval: coef", positive=False)
        scale = number_option(scale, "parseval: scale", positive=False)
        include_heads = flag_option(include_heads, "parseval: include_heads")
        self.coef, self.scale, self.include_heads = float(coef), float(scale), bool(include_heads)
        self.names: list[str] = []

    def setup(self, view: TrainingView) -> None:
        heads = {f"{layer}.weight" for layer in head_layers(view)}
        self.names = [n for n in weight_names(view) if self.include_heads or n not in heads]

    def loss(self, view: TrainingView) -> Tensor | None:
        """``(N,)``: ``coef`` times the summed squared deviations from ``scale * I``."""
        if not self.names:
            return None
        terms = []
        for name in self.names:
            weight = view.params[name]  # (N, in, out)
            gram = torch.bmm(weight.transpose(1, 2), weight)  # (N, out, out)
            eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
            terms.append((gram - self.scale * eye).square().sum(dim=(1, 2)))
        return self.coef * cast(Tensor, sum(terms))
