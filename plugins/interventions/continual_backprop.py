"""``continual-backprop``: generate-and-test replacement of low-utility hidden units.

Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood and Sutton, "Loss of plasticity in deep
continual learning" (Nature 632:768, 2024, arXiv 2306.13812), as their code's ``GnT`` does it
for linear layers. After every optimizer step, for every hidden layer, per agent and unit ``i``
with post-activation output ``h_i`` ``(M,)`` over the last update's batch:

    age_i <- age_i + 1
    f_i <- eta f_i + (1 - eta) mean_x h_i(x)                    running mean activation
    u_i <- eta u_i + (1 - eta) mean_x |h_i(x)| * mean_k |w_out_ik|     contribution utility
    u_hat_i = u_i / (1 - eta^age_i),   f_hat_i = f_i / (1 - eta^age_i)   bias correction

Units with ``age_i > maturity`` are eligible; each step ``rho * #eligible`` is added to a
per-layer accumulator and, once it reaches 1, ``n = floor(accumulator)`` of the eligible units
with the lowest ``u_hat`` are replaced (the accumulator keeps the fraction): incoming weights
re-drawn from ``U(-b, b)`` with ``b = sqrt(3) * gain / sqrt(max(in, width))`` (the uniform
distribution with the orthogonal initialiser's per-weight variance; Dohare's code draws from its
layers' own initialiser bounds), bias 0 (LayerNorm gain 1, bias 0), the next layer's bias
gains ``sum_i w_out_i f_hat_i`` and the outgoing weights ``w_out_i`` are zeroed, so that the
next layer's input changes by ``w_out_i (h_i - f_hat_i)`` only (zero for a unit whose output
is constant, the typical low-utility unit; plasticity injection's frozen copies of the next
layer get the same correction; with LayerNorm the re-drawn weights change the layer's
normalisation statistics, and so the other units' outputs); then ``u_i = f_i = age_i = 0``
and the Adam state of the replaced weights is reset. The outgoing magnitude is the mean over
the next layer's units as in the code (the paper writes a sum; the ranking within a layer is
the same).

One deliberate difference from the public generate-and-test code (``GnT``): its
``test_features`` zeroes the running mean activation of the chosen units before
``gen_new_features`` reads it for the next-layer bias correction, so there the correction adds
0 and the output jumps by ``w_out_i h_i``. Here the correction reads the mean first, as the paper
describes (the unit test checks that the output is unchanged at replacement).

Defaults (their RL setting, PPO on Slippery Ant): ``replacement_rate = 1e-4``,
``maturity = 10000``, ``decay = 0.99``; ``optimizer_reset = "moments_and_step"``, what their
``AdamGnT`` does (moments and per-element step count of the replaced weights). Their RL runs
also use L2 1e-4 and Adam betas (0.99, 0.99): add the ``l2`` and ``ns-adam`` interventions.

An agent's random stream advances only at the steps where that agent replaces a unit; finding
those steps costs one device synchronisation per update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, OptimizerReset, TrainingView
from ctxrl.options import count_option, number_option
from ctxrl_plugins.interventions.common import (
    copies_reading,
    hidden_layers,
    initial_gain,
    optimizer_reset_option,
    reinitialise_units,
    use_per_element_steps,
)

Tensor = torch.Tensor


def _power(base: float, exponent: Tensor) -> Tensor:
    """``base ** exponent`` for ``base`` in [0, 1), whose rounding does not depend on the
    tensor's size: torch's ``pow(scalar, tensor)`` switches to a vector kernel from 32
    elements, an ulp apart, so an agent's units would rank differently alone and in a batch.
    Computed in float64 through ``exp`` (the same in both loops), returned in ``exponent``'s
    dtype; ``0 ** 0`` is 1."""
    if base == 0.0:
        return (exponent == 0).to(exponent.dtype)
    return torch.exp(exponent.double() * math.log(base)).to(exponent.dtype)


class ContinualBackprop(Intervention):
    """Replace each agent's lowest-utility mature hidden units at rate ``replacement_rate``.

    Args:
        replacement_rate: rho, the fraction of eligible units replaced per step.
        maturity: m, steps a unit must age before it may be replaced (``age > m``).
        decay: eta, the decay of the running utility and mean activation.
        optimizer_reset: what happens to the Adam state of the replaced weights.
    """

    name: ClassVar[str] = "continual-backprop"
    needs_activations: ClassVar[bool] = True

    def __init__(
        self,
        replacement_rate: float = 1e-4,
        maturity: int = 10_000,
        decay: float = 0.99,
        optimizer_reset: OptimizerReset = "moments_and_step",
    ) -> None:
        rate = number_option(
            replacement_rate, "continual-backprop: replacement_rate", positive=False
        )
        if rate > 1:
            raise ConfigError(
                f"continual-backprop: replacement_rate must be in [0, 1], got {replacement_rate}"
            )
        maturity = count_option(maturity, "continual-backprop: maturity", minimum=0)
        if maturity < 0:
            raise ConfigError(f"continual-backprop: maturity must be >= 0, got {maturity}")
        decay = number_option(decay, "continual-backprop: decay", positive=False)
        if not decay < 1:
            raise ConfigError(f"continual-backprop: decay must be in [0, 1), got {decay}")
        optimizer_reset = optimizer_reset_option(optimizer_reset, "continual-backprop")
        self.rate, self.maturity, self.decay = rate, int(maturity), float(decay)
        self.optimizer_reset = optimizer_reset
        # per hidden layer: (N, width) utility, mean activation (per output feature, so
        # (N, f * width) with CReLU), age; (N,) accumulated number of units to replace
        self.state: dict[str, Tensor] = {}
        self.layers: list[tuple[str, list[str]]] = []
        self.replaced = torch.zeros(0)

    def setup(self, view: TrainingView) -> None:
        self.layers = hidden_layers(view)
        use_per_element_steps(view, self.optimizer_reset)
        n, device = view.num_agents, view.device
        self.state = {}
        for layer, readers in self.layers:
            width = view.params[f"{layer}.bias"].shape[1]
            features = view.params[f"{readers[0]}.weight"].shape[1]
            self.state[f"{layer}.utility"] = torch.zeros(n, width, device=device)
            self.state[f"{layer}.mean"] = torch.zeros(n, features, device=device)
            self.state[f"{layer}.age"] = torch.zeros(n, width, device=device)
            self.state[f"{layer}.accumulated"] = torch.zeros(n, device=device)
        self.replaced = torch.zeros(n, device=device)

    def after_update(self, view: TrainingView) -> None:
        # no graph: the utilities read the live parameters, and a graph kept in this state
        # would chain every update's forward pass (memory and time growing with training)
        with torch.no_grad():
            self._generate_and_test(view)

    def _generate_and_test(self, view: TrainingView) -> None:
        active = view.mask > 0
        plans: list[tuple[str, list[str], Tensor]] = []
        for layer, readers in self.layers:
            if layer in view.activations:
                plans.append((layer, readers, self.test(view, layer, readers, active)))
        replacing = [units.any(dim=1) for _, _, units in plans]
        if not replacing:
            return
        # the one synchronisation: which agents replace a unit in some layer this step
        agents_replacing = torch.stack(replacing).any(dim=0)
        if not bool(agents_replacing.any()):
            return
        for layer, readers, units in plans:
            self.generate(view, layer, readers, units)

    def test(self, view: TrainingView, layer: str, readers: list[str], active: Tensor) -> Tensor:
        """Update layer ``layer``'s utilities and return the units to replace ``(N, width)``
        (only for ``active`` agents; the others' state is left as it was)."""
        eta = self.decay
        h = view.activations[layer]  # (N, M, f * width)
        utility, mean = self.state[f"{layer}.utility"], self.state[f"{layer}.mean"]
        age, accumulated = self.state[f"{layer}.age"], self.state[f"{layer}.accumulated"]
        width = utility.shape[1]
        outgoing = torch.cat([view.params[f"{r}.weight"] for r in readers], dim=2)
        # mean |w_out| per output feature, then summed over the feature's CReLU halves
        out_magnitude = outgoing.abs().mean(dim=2)  # (N, f * width)
        contribution = (h.abs().mean(dim=1) * out_magnitude).view(h.shape[0], -1, width)
        new_age = age + 1
        new_utility = eta * utility + (1 - eta) * contribution.sum(dim=1)
        new_mean = eta * mean + (1 - eta) * h.mean(dim=1)
        rows = active[:, None]
        age.copy_(torch.where(rows, new_age, age))
        utility.copy_(torch.where(rows, new_utility, utility))
        mean.copy_(torch.where(rows, new_mean, mean))
        eligible = age > self.maturity
        accumulated.add_(torch.where(active, self.rate * eligible.sum(dim=1), 0.0))
        count = accumulated.floor()  # units to replace now, per agent
        accumulated.sub_(count)
        # rank the eligible units by bias-corrected utility (ineligible ones last)
        corrected = utility / (1 - _power(eta, age))
        ranked = torch.where(eligible, corrected, math.inf)
        order = torch.sort(ranked, dim=1, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(width, device=order.device).expand_as(order))
        units = (rank < count[:, None]) & eligible
        # layers a warm start froze (this one or a reader) are left alone
        for name in (layer, *readers):
            if f"{name}.weight" in view.frozen:
                units &= ~view.frozen[f"{name}.weight"][:, None]
        return units

    def generate(self, view: TrainingView, layer: str, readers: list[str], units: Tensor) -> None:
        """Replace ``units`` ``(N, width)`` of ``layer``: fresh incoming weights, the readers'
        biases corrected by the removed units' bias-corrected mean activations, outgoing
        weights zeroed, the units' utility, mean and age restarted."""
        utility, mean = self.state[f"{layer}.utility"], self.state[f"{layer}.mean"]
        age = self.state[f"{layer}.age"]
        width = utility.shape[1]
        agents = units.any(dim=1).nonzero().squeeze(1)
        weight = view.params[f"{layer}.weight"]
        fan_in = weight.shape[1]
        # only the replacing agents draw, so an agent's stream depends on itself alone
        bound = math.sqrt(3.0) * initial_gain(view, layer)[agents] / math.sqrt(max(fan_in, width))
        draw = view.rng.uniform(fan_in * width, agents, dtype=weight.dtype)
        fresh = torch.zeros_like(weight)
        fresh[agents] = (2 * draw - 1).view(-1, fan_in, width) * bound[:, None, None]
        fold = mean.shape[1] // width
        features = units.repeat(1, fold)  # (N, f * width): both CReLU halves of a unit
        corrected_mean = mean / (1 - _power(self.decay, age.repeat(1, fold))).clamp(min=1e-12)
        removed = torch.where(features, corrected_mean, 0.0)
        with torch.no_grad():
            for reader in readers:
                # the output the removed units gave on average moves into the reader's bias,
                # and into that of plasticity injection's frozen copies of it (they read the
                # units too, and lose them in reinitialise_units as the reader does)
                for name in (reader, *copies_reading(view, layer, reader)):
                    outgoing = view.params[f"{name}.weight"]  # (N, f * width, out)
                    view.params[f"{name}.bias"].add_((outgoing * removed[:, :, None]).sum(dim=1))
        reinitialise_units(view, layer, readers, units, fresh, self.optimizer_reset)
        utility.masked_fill_(units, 0.0)
        mean.masked_fill_(features, 0.0)
        age.masked_fill_(units, 0.0)
        self.replaced += units.sum(dim=1)

    def diagnostics(self, view: TrainingView) -> dict[str, Tensor]:
        """``replaced``: hidden units replaced so far, per agent ``(N,)``."""
        del view
        return {"replaced": self.replaced.clone()}

    def state_dict(self) -> dict[str, Tensor]:
        return {**self.state, "replaced": self.replaced}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        for name in self.state:
            self.state[name] = state[name].clone()
        self.replaced = state["replaced"].clone()
