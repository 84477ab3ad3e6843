"""``redo``: recycle dormant units (ReDo) every F gradient steps.

Sokar, Agarwal, Castro and Evci, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning"
(ICML 2023, arXiv 2302.12902). For each hidden layer ``l`` and each unit ``i``, from the
post-activation outputs ``h`` ``(N, M, width)`` of the last update's forward pass (its batch of
``M`` samples),

    s_i = E_x |h_i(x)| / ((1 / width) sum_k E_x |h_k(x)| + 1e-9),

and unit ``i`` is tau-dormant when ``s_i <= tau``. Every ``every`` gradient steps, each agent's
tau-dormant units are recycled: incoming weights re-drawn from the network's initialiser
(orthogonal at the layer's initial gain, from the agent's own random stream), bias 0 (and a
LayerNorm gain 1, bias 0), outgoing weights 0 (so the network's output is unchanged at the
moment of recycling: also under plasticity injection, whose frozen copies of the next layer
lose those rows too; not with LayerNorm, where the re-drawn incoming weights change the layer's
normalisation statistics and so every unit's output), and the Adam state of those weights
reset as ``optimizer_reset`` says.
With CReLU a unit's score adds its two halves and both of its outgoing rows are zeroed.

Defaults (``../shared`` research notes; the published codes disagree):

- ``every = 1000`` gradient steps: the paper's DQN setting.
- ``tau = 0.025``: the paper's DQN threshold, also that of timoklein/redo (CleanRL DQN) and
  Plasticine. The official Dopamine code uses 0 (only exactly silent units) and Dohare et al.'s
  PPO variant 0.1 (period 100). One default for every algorithm (Plasticine's, which uses it
  with PPO too): set ``tau: 0.1, every: 100`` for Dohare et al.'s PPO setting.
- ``optimizer_reset = "moments_and_step"``: timoklein/redo restarts Adam's step count of the
  recycled weights and reports it crucial (with the old step count the bias correction is
  ~1 and the first updates of a zero-moment unit are full-size, which kills it again); the
  official code zeroes the moments only (``"moments"``). Plasticine resets nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from ctxrl.interventions import Intervention, OptimizerReset, TrainingView
from ctxrl.options import count_option, number_option
from ctxrl_plugins.interventions.common import (
    fresh_orthogonal,
    hidden_layers,
    optimizer_reset_option,
    reinitialise_units,
    use_per_element_steps,
)

Tensor = torch.Tensor


def dormant_scores(activations: Tensor, width: int) -> Tensor:
    """ReDo's per-unit score ``(N, width)`` from post-activation outputs ``(N, M, f * width)``
    (``f = 2`` with CReLU, whose halves are summed): ``E|h_i| / (mean_k E|h_k| + 1e-9)``."""
    mean_abs = activations.abs().mean(dim=1)  # (N, f * width)
    per_unit = mean_abs.view(mean_abs.shape[0], -1, width).sum(dim=1)
    return per_unit / (per_unit.mean(dim=1, keepdim=True) + 1e-9)


class ReDo(Intervention):
    """Recycle each agent's tau-dormant hidden units every ``every`` gradient steps.

    Args:
        every: gradient steps between recycling passes (F).
        tau: dormancy threshold on the normalised score (a unit with ``s_i <= tau`` is
            recycled).
        optimizer_reset: what happens to the Adam state of the recycled weights (see
            :data:`ctxrl.interventions.OptimizerReset`).
    """

    name: ClassVar[str] = "redo"
    needs_activations: ClassVar[bool] = True

    def __init__(
        self,
        every: int = 1000,
        tau: float = 0.025,
        optimizer_reset: OptimizerReset = "moments_and_step",
    ) -> None:
        every = count_option(every, "redo: every (gradient steps)")
        tau = number_option(tau, "redo: tau", positive=False)
        optimizer_reset = optimizer_reset_option(optimizer_reset, "redo")
        self.every, self.tau, self.optimizer_reset = int(every), float(tau), optimizer_reset
        self.updates = 0  # gradient steps so far (a Python int: no device sync per step)
        self.recycled = torch.zeros(0)
        self.dormant = torch.zeros(0)

    def setup(self, view: TrainingView) -> None:
        self.updates = 0
        use_per_element_steps(view, self.optimizer_reset)
        # per agent: units recycled so far; dormant fraction at the last pass (NaN before one)
        self.recycled = torch.zeros(view.num_agents, device=view.device)
        self.dormant = torch.full((view.num_agents,), torch.nan, device=view.device)

    def after_update(self, view: TrainingView) -> None:
        self.updates += 1
        if self.updates % self.every == 0:
            self.recycle(view)

    def recycle(self, view: TrainingView) -> None:
        """One recycling pass over every hidden layer whose activations were recorded."""
        active = view.mask > 0
        agents = active.nonzero().squeeze(1)
        dormant_units = torch.zeros_like(self.dormant)
        total_units = 0
        for layer, readers in hidden_layers(view):
            if layer not in view.activations:
                continue
            width = view.params[f"{layer}.bias"].shape[1]
            units = dormant_scores(view.activations[layer], width) <= self.tau
            dormant_units += units.sum(dim=1)
            total_units += width
            # layers a warm start froze (this one or a reader) are left alone
            where = active
            for name in (layer, *readers):
                if f"{name}.weight" in view.frozen:
                    where = where & ~view.frozen[f"{name}.weight"]
            units &= where[:, None]
            # drawn for every active agent at every pass, dormant units or not, so that an
            # agent's random stream does not depend on the other agents
            fresh = torch.zeros_like(view.params[f"{layer}.weight"])
            fresh[agents] = fresh_orthogonal(view, layer, agents)
            reinitialise_units(view, layer, readers, units, fresh, self.optimizer_reset)
            self.recycled += units.sum(dim=1)
        if total_units:
            self.dormant = torch.where(active, dormant_units / total_units, self.dormant)

    def diagnostics(self, view: TrainingView) -> dict[str, Tensor]:
        """``recycled``: units recycled so far; ``dormant_fraction``: the fraction of hidden
        units that were tau-dormant at the last pass (per agent ``(N,)``; not reported before
        the first pass, NaN for an agent no pass has measured)."""
        del view
        out = {"recycled": self.recycled.clone()}
        if not bool(self.dormant.isnan().all()):  # a measurement, not a placeholder
            out["dormant_fraction"] = self.dormant.clone()
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "updates": torch.tensor([self.updates], dtype=torch.int64),
            "recycled": self.recycled,
            "dormant": self.dormant,
        }

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.updates = int(state["updates"].reshape(-1)[0])
        self.recycled = state["recycled"].clone()
        self.dormant = state["dormant"].clone()
