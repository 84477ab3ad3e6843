"""Plasticity metrics of agent-stacked networks: pure functions, one number per agent.

Every function takes tensors with a leading agent dimension ``N`` and returns ``(N,)``; each
agent's value depends on that agent's slice only. Activations are post-activation outputs of
one hidden layer ``(N, M, D)`` (``M`` samples, ``D`` units); weights are ``(N, in, out)``.
The definitions are pinned here because the published codes disagree (Plasticine's "stable
rank" is Kumar et al.'s srank; its "weight difference" is an update size, not a distance from
initialisation): each docstring gives the formula that is computed.

:func:`layer_metrics` is what the batched training loop logs per hidden layer on its
plasticity grid (:class:`PlasticityOptions`); the costly probes (:func:`top_hessian_eigenvalue`,
:func:`lyle_probe`) are for a study to call at the points it chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ctxrl_plugins.training.networks import Params, StackedMLP, stack_agents

Tensor = torch.Tensor


# ------------------------------------------------------------------------- activations
def dormant_scores(activations: Tensor) -> Tensor:
    """ReDo's normalised unit scores (Sokar et al. 2023) ``(N, D)``: ``s_i = E|h_i| / ((1/D)
    sum_k E|h_k|)``, expectations over the ``M`` samples; all zeros where a layer's mean is 0
    (every unit silent)."""
    mean_abs = activations.abs().mean(dim=1)  # (N, D)
    layer_mean = mean_abs.mean(dim=-1, keepdim=True)
    return torch.where(layer_mean > 0, mean_abs / layer_mean.clamp_min(1e-30), 0.0)


def dormant_fraction(activations: Tensor, tau: float = 0.025) -> Tensor:
    """The fraction of tau-dormant units ``(N,)``: units whose :func:`dormant_scores`
    ``s_i <= tau`` (ReDo: tau 0.025 for DQN, 0.1 otherwise; tau 0 counts exactly silent
    units)."""
    return (dormant_scores(activations) <= tau).float().mean(dim=-1)


def inactive_fraction(activations: Tensor, threshold: float = 0.01) -> Tensor:
    """The fraction of inactive units ``(N,)`` (Dohare et al. 2024): a unit is inactive when
    it is active (``h > 0``) on at most ``threshold`` (1 %) of the ``M`` samples; for ReLU
    layers."""
    active_share = (activations > 0).float().mean(dim=1)  # (N, D)
    return (active_share <= threshold).float().mean(dim=-1)


def saturated_fraction(activations: Tensor, level: float = 0.99, threshold: float = 0.01) -> Tensor:
    """The fraction of saturated units ``(N,)``, for tanh layers: a unit is saturated when
    ``|h| > level`` (0.99) on all but at most ``threshold`` (1 %) of the ``M`` samples, the
    mirror of :func:`inactive_fraction` (its gradient is then at most ``1 - 0.99^2`` of a
    linear unit's almost everywhere)."""
    unsaturated_share = (activations.abs() <= level).float().mean(dim=1)
    return (unsaturated_share <= threshold).float().mean(dim=-1)


def feature_norm(activations: Tensor) -> Tensor:
    """The mean L2 norm of a layer's feature vectors ``(N,)``: ``(1/M) sum_m ||h_m||_2``."""
    norms: Tensor = torch.linalg.vector_norm(activations, dim=-1)
    return norms.mean(dim=-1)


# ------------------------------------------------------------------------------- ranks
def _singular_values(matrix: Tensor) -> Tensor:
    """Singular values ``(N, min(M, D))``, descending, in float64 (ranks count small ones);
    NaN for an agent whose matrix is not finite."""
    matrix = matrix.double()
    finite = torch.isfinite(matrix).flatten(1).all(dim=-1)  # (N,)
    # LAPACK fails on non-finite input: a diverged agent's values are NaN, not a crash
    sigma: Tensor = torch.linalg.svdvals(torch.where(finite[:, None, None], matrix, 0.0))
    return torch.where(finite[:, None], sigma, torch.nan)


def effective_rank(matrix: Tensor) -> Tensor:
    """Roy & Vetterli's effective rank ``(N,)`` of ``(N, M, D)``: ``exp(-sum_i p_i log p_i)``
    with ``p_i = sigma_i / sum_j sigma_j`` (``0 log 0 = 0``); 0 for a zero matrix. It lies in
    ``[1, rank]`` and equals ``r`` for ``r`` equal non-zero singular values."""
    sigma = _singular_values(matrix)
    total = sigma.sum(dim=-1, keepdim=True)
    p = sigma / total.clamp_min(1e-300)
    entropy = -torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), 0.0).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, torch.exp(entropy), 0.0).to(matrix.dtype)


def srank(matrix: Tensor, delta: float = 0.01) -> Tensor:
    """Kumar et al.'s (2021) srank ``(N,)`` of ``(N, M, D)``: the smallest ``k`` with
    ``sum_{i<=k} sigma_i >= (1 - delta) sum_i sigma_i`` (singular values descending; delta
    0.01, i.e. 99 % of the sum); 0 for a zero matrix. (Plasticine calls this "stable rank".)"""
    sigma = _singular_values(matrix)
    total = sigma.sum(dim=-1, keepdim=True)
    reached = sigma.cumsum(dim=-1) >= (1.0 - delta) * total
    k = (~reached).sum(dim=-1) + 1  # reached is monotone: k = 1 + #prefixes short of it
    return torch.where(total.squeeze(-1) > 0, k, 0).to(matrix.dtype)


def stable_rank(matrix: Tensor) -> Tensor:
    """The stable rank ``(N,)`` of ``(N, M, D)``: ``||A||_F^2 / ||A||_2^2 = sum_i sigma_i^2 /
    sigma_max^2``, in ``[1, rank]``; 0 for a zero matrix."""
    sigma = _singular_values(matrix)
    top = sigma[..., 0] ** 2
    return torch.where(top > 0, (sigma**2).sum(dim=-1) / top.clamp_min(1e-300), 0.0).to(
        matrix.dtype
    )


# ----------------------------------------------------------------------------- weights
def _per_agent(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def weight_magnitude(weight: Tensor) -> Tensor:
    """The mean absolute weight ``(N,)``: ``mean |w|`` over a parameter's elements."""
    return _per_agent(weight).abs().mean(dim=-1)


def distance_from_init(weight: Tensor, initial: Tensor) -> Tensor:
    """The L2 distance from initialisation ``(N,)``: ``||w - w_0||_2`` over a parameter's
    elements."""
    distance: Tensor = torch.linalg.vector_norm(_per_agent(weight - initial), dim=-1)
    return distance


def update_size(weight: Tensor, previous: Tensor) -> Tensor:
    """The root-mean-square change of a parameter ``(N,)``: ``sqrt(mean (w - w_prev)^2)``
    (Plasticine's "weight difference", with ``w_prev`` the weights before the last
    iteration)."""
    return _per_agent(weight - previous).pow(2).mean(dim=-1).sqrt()


def gradient_norm(gradients: Mapping[str, Tensor] | Sequence[Tensor]) -> Tensor:
    """The L2 norm of an agent's gradients over all given tensors ``(N,)``:
    ``sqrt(sum_p ||g_p||_2^2)``."""
    tensors = list(gradients.values()) if isinstance(gradients, Mapping) else list(gradients)
    squares = torch.stack([_per_agent(g).pow(2).sum(dim=-1) for g in tensors])
    return squares.sum(dim=0).sqrt()


# ------------------------------------------------------------------------------ policy
def policy_entropy(logits: Tensor) -> Tensor:
    """The mean entropy of categorical policies ``(N,)`` from logits ``(N, M, A)``:
    ``(1/M) sum_m -sum_a pi_a log pi_a`` with ``pi = softmax(logits)``, in nats."""
    log_pi = torch.log_softmax(logits, dim=-1)
    return -(log_pi.exp() * log_pi).sum(dim=-1).mean(dim=-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    """The entropy of diagonal Gaussian policies ``(N,)`` from log standard deviations
    ``(N, A)``: ``sum_a (1/2 + 1/2 log(2 pi) + log sigma_a)``, in nats."""
    return (0.5 + 0.5 * torch.log(torch.tensor(2.0 * torch.pi)) + log_std).sum(dim=-1)


# ------------------------------------------------------------------------- curvature
def top_hessian_eigenvalue(
    loss: Callable[[Mapping[str, Tensor]], Tensor],
    params: Mapping[str, Tensor],
    *,
    iterations: int = 20,
    seed: int = 0,
) -> Tensor:
    """The Hessian eigenvalue of largest magnitude of per-agent losses ``(N,)``, by power
    iteration on Hessian-vector products (double backward).

    ``loss(params)`` returns per-agent losses ``(N,)``, agent ``i``'s depending on agent
    ``i``'s slice of the parameters only, so the Hessian of their sum is block diagonal and one
    product serves every agent. Each agent starts from the same Gaussian vector (drawn from
    ``seed``, whatever the batch), normalised per agent; after ``iterations`` products the
    estimate is the Rayleigh quotient ``v^T H v`` of the unit vector ``v``.
    """
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    n = next(iter(leaves.values())).shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    vector = {
        k: torch.randn(v.shape[1:], generator=generator, dtype=v.dtype)
        .to(v.device)
        .expand_as(v)
        .clone()
        for k, v in leaves.items()
    }

    def normalised(v: dict[str, Tensor]) -> dict[str, Tensor]:
        norm = gradient_norm(v).clamp_min(1e-30)
        return {k: x / norm.view(n, *([1] * (x.dim() - 1))) for k, x in v.items()}

    grads = torch.autograd.grad(loss(leaves).sum(), list(leaves.values()), create_graph=True)
    vector = normalised(vector)
    estimate = torch.zeros(n)
    for _ in range(max(1, iterations)):
        # one backward through the gradients gives every agent's H_i v_i at once
        dot = torch.stack([(g * vector[k]).sum() for g, k in zip(grads, leaves, strict=True)])
        products = torch.autograd.grad(dot.sum(), list(leaves.values()), retain_graph=True)
        product = {k: p.detach() for k, p in zip(leaves, products, strict=True)}
        estimate = torch.stack(
            [_per_agent(product[k] * vector[k]).sum(dim=-1) for k in leaves]
        ).sum(dim=0)
        vector = normalised(product)
    return estimate


# ------------------------------------------------------------------------- Lyle probe
@dataclass(frozen=True)
class LyleProbe:
    """The outcome of :func:`lyle_probe`, per agent ``(N,)``.

    Attributes:
        loss: the final regression loss of the trained network's copy.
        baseline: the same for a freshly initialised network.
    """

    loss: Tensor
    baseline: Tensor

    @property
    def ratio(self) -> Tensor:
        """``loss / baseline``: above 1, the network fits a new target worse than a fresh one
        (lost plasticity)."""
        return self.loss / self.baseline.clamp_min(1e-30)


def _fit_random_target(
    network: StackedMLP,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    targets: Tensor,
    steps: int,
    lr: float,
) -> Tensor:
    """Full-batch Adam (betas 0.9, 0.999, eps 1e-8) on the mean squared error ``(N,)`` of a
    copy of ``params``; the final loss per agent. Adam is elementwise and the losses are summed,
    so agents stay apart. (Written out rather than ``torch.optim.Adam``, whose first step costs
    seconds of imports.)"""
    copy = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    first = {k: torch.zeros_like(v) for k, v in copy.items()}
    second = {k: torch.zeros_like(v) for k, v in copy.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def mse() -> Tensor:
        return (network(copy, inputs) - targets).pow(2).mean(dim=(1, 2))

    for step in range(1, steps + 1):
        grads = torch.autograd.grad(mse().sum(), list(copy.values()))
        with torch.no_grad():
            for (name, value), grad in zip(copy.items(), grads, strict=True):
                first[name].mul_(beta1).add_(grad, alpha=1 - beta1)
                second[name].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denominator = (second[name] / (1 - beta2**step)).sqrt_().add_(eps)
                value.addcdiv_(first[name], denominator, value=-lr / (1 - beta1**step))
    with torch.no_grad():
        return mse()


def lyle_probe(
    network: StackedMLP,
    params: Mapping[str, Tensor],
    inputs: Tensor,
    *,
    init_seeds: Sequence[int],
    target_seed: int = 0,
    frequency: float = 1e5,
    steps: int = 100,
    lr: float = 1e-3,
) -> LyleProbe:
    """Lyle et al.'s (2023) plasticity probe, per agent.

    A copy of the network (``params``: the agents' parameters ``(N, ...)``, those of
    ``network``'s role) is trained for ``steps`` full-batch Adam steps (learning rate ``lr``)
    to regress ``y = sin(frequency * g(x))`` on ``inputs`` ``(N, M, in)``, where ``g`` is a
    random network of the same architecture drawn from ``target_seed`` (the same target
    function for every agent): a high-frequency target that measures how well the network can
    still fit something new. ``baseline`` is the same fit from a fresh initialisation, agent
    ``i``'s drawn from ``init_seeds[i]`` as the trainers draw it. The original network is not
    changed.
    """
    n = inputs.shape[0]
    if len(init_seeds) != n:
        raise ValueError(f"lyle_probe: {len(init_seeds)} init seeds for {n} agents")
    own = {k: v for k, v in params.items() if k.startswith(f"{network.role}.")}
    device = inputs.device

    def fresh(seed: int) -> Params:
        return network.init_agent(torch.Generator().manual_seed(int(seed)))

    target_params = stack_agents([fresh(target_seed)], device)
    target_params = {k: v.expand(n, *v.shape[1:]) for k, v in target_params.items()}
    with torch.no_grad():
        targets = torch.sin(frequency * network(target_params, inputs))
    fresh_params = stack_agents([fresh(s) for s in init_seeds], device)
    return LyleProbe(
        loss=_fit_random_target(network, own, inputs, targets, steps, lr),
        baseline=_fit_random_target(network, fresh_params, inputs, targets, steps, lr),
    )


# ------------------------------------------------------------------- the loop's record
@dataclass(frozen=True)
class PlasticityOptions:
    """Plasticity metrics logged by the batched training loop.

    Attributes:
        every: env steps per agent between records (also recorded just before every context
            switch and at the end).
        dormant_tau: ReDo's threshold for :func:`dormant_fraction`.
    """

    every: int
    dormant_tau: float = 0.025

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"plasticity: every must be a positive integer, got {self.every!r}")


def layer_metrics(
    networks: Mapping[str, StackedMLP],
    params: Mapping[str, Tensor],
    initial_params: Mapping[str, Tensor],
    activations: Mapping[str, Tensor],
    options: PlasticityOptions,
) -> dict[str, Tensor]:
    """The cheap metrics per agent ``(N,)``, by ``{metric}.{layer}``: for every hidden layer,
    from the last update's recorded activations (NaN before the first update), ``dormant``,
    ``effective_rank``, ``srank``, ``stable_rank`` and ``feature_norm`` of its feature matrix
    ``(M, D)``; for every layer (heads too), ``weight_magnitude`` and ``distance_from_init`` of
    its weight matrix."""
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for network in networks.values():
            for layer in network.hidden_layers:
                weight = params[f"{layer}.weight"]
                h = activations.get(layer)
                if h is None:  # no update yet (DQN before learning starts): NaN, keys fixed
                    h = torch.full((weight.shape[0], 1, weight.shape[-1]), torch.nan)
                    h = h.to(weight.device)
                # a diverged agent's (or a missing) record is NaN, not a number of its NaNs
                finite = torch.isfinite(h).flatten(1).all(dim=-1)
                h = torch.where(finite[:, None, None], h, 0.0)
                # with CReLU a unit is its two halves [relu(x), relu(-x)]: dormancy is the
                # unit's, as ReDo scores it (the halves' mean |h| added), not each half's
                width = weight.shape[-1]  # the layer's units; CReLU records 2 features each
                units = h.abs().reshape(*h.shape[:-1], -1, width).sum(dim=-2)
                values = {
                    "dormant": dormant_fraction(units, options.dormant_tau),
                    "effective_rank": effective_rank(h),
                    "srank": srank(h),
                    "stable_rank": stable_rank(h),
                    "feature_norm": feature_norm(h),
                }
                for metric, value in values.items():
                    out[f"{metric}.{layer}"] = torch.where(finite, value, torch.nan)
            for layer in network.layers:
                weight = params[f"{layer}.weight"]
                out[f"weight_magnitude.{layer}"] = weight_magnitude(weight)
                out[f"distance_from_init.{layer}"] = distance_from_init(
                    weight, initial_params[f"{layer}.weight"]
                )
    return out


__all__ = [
    "LyleProbe",
    "PlasticityOptions",
    "distance_from_init",
    "dormant_fraction",
    "dormant_scores",
    "effective_rank",
    "feature_norm",
    "gaussian_entropy",
    "gradient_norm",
    "inactive_fraction",
    "layer_metrics",
    "lyle_probe",
    "policy_entropy",
    "saturated_fraction",
    "srank",
    "stable_rank",
    "top_hessian_eigenvalue",
    "update_size",
]
