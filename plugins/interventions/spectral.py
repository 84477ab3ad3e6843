"""``spectral-reg``: keep each layer's largest singular value near a target.

Lewandowski, Kumar, Schuurmans, Gyorgy and Machado, "Learning Continually by Spectral
Regularization" (ICLR 2025, arXiv 2406.06811): each agent's loss gains

    coef * sum_l (sigma_max(W_l)^power - target)^2

over the weight matrices ``W_l`` ``(in, out)`` of every layer of every network, where
``sigma_max`` is estimated by power iteration: per layer a right singular vector estimate
``v`` ``(N, out)`` is kept from update to update (and in checkpoints), and each update runs
``iterations`` steps ``u = W v / |W v|``, ``v = W^T u / |W^T u|`` without gradient, then
``sigma_max = u^T W v`` with gradient (as ``torch.nn.utils.spectral_norm`` does). The gradient
of a term is ``coef * 2 (sigma^p - target) * p sigma^(p-1) u v^T``.

Defaults: ``power = 2`` and ``target = 1`` (the paper regularises the squared spectral norm
towards 1, the spectral norm of an identity-like layer), one power iteration per update (the
paper's), ``coef = 1e-4`` (the paper tunes the coefficient per setting; this value is a
starting point, check it on your task).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, cast

import torch

from ctxrl.interventions import Intervention, TrainingView
from ctxrl.options import count_option, number_option
from ctxrl_plugins.interventions.common import masked_normal, weight_names

Tensor = torch.Tensor


def _normalise(x: Tensor) -> Tensor:
    return cast(Tensor, x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-12))


def matvec(weight: Tensor, v: Tensor) -> Tensor:
    """``W v`` per agent ``(N, in, out) x (N, out) -> (N, in)``, as a product and a sum (a
    batched matrix-vector product may change its kernel with N; see ``linear``)."""
    return (weight * v[:, None, :]).sum(dim=2)


def rmatvec(weight: Tensor, u: Tensor) -> Tensor:
    """``W^T u`` per agent ``(N, in, out) x (N, in) -> (N, out)``."""
    return (weight * u[:, :, None]).sum(dim=1)


class SpectralRegularisation(Intervention):
    """``coef * sum_l (sigma_max(W_l)^power - target)^2`` per agent by power iteration.

    Args:
        coef: the regularisation weight.
        target: the value ``sigma_max^power`` is pulled to.
        power: the exponent ``k`` of ``sigma_max``.
        iterations: power-iteration steps per update.
    """

    name: ClassVar[str] = "spectral-reg"

    def __init__(
        self, coef: float = 1e-4, target: float = 1.0, power: float = 2.0, iterations: int = 1
    ) -> None:
        coef = number_option(coef, "spectral-reg: coef", positive=False)
        target = number_option(target, "spectral-reg: target", positive=False)
        power = number_option(power, "spectral-reg: power")
        iterations = count_option(iterations, "spectral-reg: iterations")
        self.coef, self.target, self.power = float(coef), float(target), float(power)
        self.iterations = int(iterations)
        self.vectors: dict[str, Tensor] = {}  # weight name -> right singular vector (N, out)
        self.sigma = torch.zeros(0)

    def setup(self, view: TrainingView) -> None:
        self.vectors = {}
        for name in weight_names(view):
            weight = view.params[name]
            start = masked_normal(view, weight.shape[2], weight.dtype)
            # agents left out (zeros) get any unit vector: their penalty is masked out
            start[view.mask <= 0] = 1.0
            self.vectors[name] = _normalise(start)
        self.sigma = torch.full((view.num_agents,), torch.nan, device=view.device)  # unmeasured

    def loss(self, view: TrainingView) -> Tensor | None:
        """``(N,)``: the penalty, after advancing every layer's power iteration."""
        terms: list[Tensor] = []
        largest: list[Tensor] = []
        for name, v in self.vectors.items():
            weight = view.params[name]
            with torch.no_grad():
                for _ in range(self.iterations):
                    u = _normalise(matvec(weight, v))
                    v = _normalise(rmatvec(weight, u))
                self.vectors[name] = v
            sigma = (u * matvec(weight, v)).sum(dim=1)
            terms.append((sigma.abs() ** self.power - self.target).square())
            largest.append(sigma.detach())
        if not terms:
            return None
        self.sigma = torch.stack(largest).max(dim=0).values
        return self.coef * cast(Tensor, sum(terms))

    def diagnostics(self, view: TrainingView) -> dict[str, Tensor]:
        """``sigma_max``: the largest estimated top singular value over the layers ``(N,)``
        (not reported before the first gradient step estimates it)."""
        del view
        if bool(self.sigma.isnan().all()):
            return {}
        return {"sigma_max": self.sigma.clone()}

    def state_dict(self) -> dict[str, Tensor]:
        return {**{f"v.{k}": v for k, v in self.vectors.items()}, "sigma": self.sigma}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        for name in self.vectors:
            self.vectors[name] = state[f"v.{name}"].clone()
        self.sigma = state["sigma"].clone()
