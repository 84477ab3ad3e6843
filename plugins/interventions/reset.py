"""``reset``: re-initialise the output heads (or whole networks) at context switches.

Nikishin, Schwarzer, D'Oro, Bacon and Courville, "The Primacy Bias in Deep Reinforcement
Learning" (ICML 2022, arXiv 2205.07802): periodically re-create the last layers (or the whole
agent) while keeping the replay buffer, so that the agent relearns from all its data. Here the
reset fires when a context schedule switches an agent's context (``on_context_switch``) and,
optionally, every ``every`` gradient steps. The re-initialised parameters get the trainers'
initialisation (orthogonal weights at each layer's initial gain from the agent's own random
stream, zero biases, LayerNorm gain 1 and bias 0).

What stays: the algorithm's own state, which belongs to the algorithm, not the network: DQN's
replay buffer (as the paper keeps it) and its target network (which then pulls the fresh
online network back towards the old one until its next update: the trainers do not show it to
interventions); parameters outside the networks (PPO's log standard deviation).

Options and defaults:

- ``layers = "head"``: the output heads of every network role (``actor.head``,
  ``critic.head``, ``q.head``, DQN's dueling ``q.value``), the paper's head reset (its SAC
  resets the last layers); ``"all"``: every layer, a full reset.
- ``at_switch = True``; ``every = None`` (no periodic reset; the paper's SAC resets every 2e5
  updates).
- ``optimizer_reset = "moments_and_step"``: re-created parameters get a fresh optimizer, as when
  the paper re-creates the agent (and Juliani & Ash 2024 rebuild the optimizer at each shift).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, OptimizerReset, TrainingView
from ctxrl.options import count_option, flag_option
from ctxrl_plugins.interventions.common import (
    fresh_parameters,
    head_layers,
    optimizer_reset_option,
    per_agent,
    unfrozen,
    use_per_element_steps,
)

Tensor = torch.Tensor
ResetLayers = Literal["head", "all"]


class Reset(Intervention):
    """Head or full reset at context switches (and optionally every ``every`` updates).

    Args:
        layers: ``head`` (the output heads) or ``all`` (every layer of every network).
        at_switch: reset an agent's layers when its context switches.
        every: also reset every ``every`` gradient steps (None: never).
        optimizer_reset: what happens to the Adam state of the reset parameters.
    """

    name: ClassVar[str] = "reset"

    def __init__(
        self,
        layers: ResetLayers = "head",
        at_switch: bool = True,
        every: int | None = None,
        optimizer_reset: OptimizerReset = "moments_and_step",
    ) -> None:
        if layers not in ("head", "all"):
            raise ConfigError(f"reset: layers {layers!r}: expected 'head' or 'all'")
        if every is not None:
            every = count_option(every, "reset: every (gradient steps)")
        optimizer_reset = optimizer_reset_option(optimizer_reset, "reset")
        self.layers, self.every = layers, every
        self.at_switch = flag_option(at_switch, "reset: at_switch")
        if not self.at_switch and every is None:
            raise ConfigError("reset: at_switch is false and every is unset: it would never reset")
        self.optimizer_reset = optimizer_reset
        self.updates = 0  # gradient steps so far (a Python int: no device sync per step)
        self.resets = torch.zeros(0)

    def setup(self, view: TrainingView) -> None:
        self.updates = 0
        use_per_element_steps(view, self.optimizer_reset)
        self.resets = torch.zeros(view.num_agents, device=view.device)

    def after_update(self, view: TrainingView) -> None:
        self.updates += 1
        if self.every is not None and self.updates % self.every == 0:
            self.reset(view, torch.ones(view.num_agents, dtype=torch.bool, device=view.device))

    def inert_without_switches(self, total_steps: int) -> str | None:
        del total_steps
        if self.every is None:
            return "it resets at context switches only (at_switch, no every)"
        return None

    def on_context_switch(self, view: TrainingView, agents: Tensor) -> None:
        if self.at_switch:
            self.reset(view, agents)

    def reset(self, view: TrainingView, agents: Tensor) -> None:
        """Re-initialise the chosen layers of ``agents`` ``(N,)`` (bool) where the mask is 1;
        only those agents' random streams advance."""
        chosen = agents & (view.mask > 0)
        index = chosen.nonzero().squeeze(1)
        if len(index) == 0:
            return
        layers = (
            head_layers(view)
            if self.layers == "head"
            else [layer for role in view.layers.values() for layer in role]
        )
        with torch.no_grad():
            for layer in layers:
                for name, fresh in fresh_parameters(view, layer, index).items():
                    p = view.params[name]
                    where = unfrozen(view, name, chosen)
                    full = p.clone()
                    full[index] = fresh
                    p.copy_(torch.where(per_agent(where, p), full, p))
                    view.optimizer.reset(name, per_agent(where, p), self.optimizer_reset)
        self.resets += chosen.to(self.resets.dtype)

    def diagnostics(self, view: TrainingView) -> dict[str, Tensor]:
        """``resets``: resets so far, per agent ``(N,)``."""
        del view
        return {"resets": self.resets.clone()}

    def state_dict(self) -> dict[str, Tensor]:
        return {"updates": torch.tensor([self.updates], dtype=torch.int64), "resets": self.resets}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.updates = int(state["updates"].reshape(-1)[0])
        self.resets = state["resets"].clone()
