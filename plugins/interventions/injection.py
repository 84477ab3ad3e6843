"""``plasticity-injection``: freeze the network's last layers and train a fresh copy beside them.

Nikishin, Oh, Ostrovski, Lyle, Pascanu, Dabney and Barreto, "Deep Reinforcement Learning
with Plasticity Injection" (NeurIPS 2023, arXiv 2305.15555). At injection the head ``h(.; theta)``
is frozen and a fresh head ``theta'`` is added twice, once trainable and once as a frozen copy
``theta'_0`` of its initial value:

    y = h(phi; theta) + h(phi; theta') - h(phi; theta'_0)

so the predictions do not change at injection (the last two terms cancel), the number of
trainable parameters does not change (``theta`` stops training as ``theta'`` starts), and the
network regains a fresh head's ability to learn while keeping what it knew. The features
``phi`` (the layers before the block) keep training through all three terms.

Here the frozen copies live in the network itself (:class:`~ctxrl_plugins.training.networks.
StackedMLP`'s injection slots, frozen by the trainer), so that evaluation, checkpoints and
saved policies carry them: the trainable slot keeps its parameter names and optimizer place,
and an injection copies it into the slot's ``old`` copy, draws a fresh block (the trainers'
initialisation, from the agent's own random stream) into both the trainable parameters and the
``fresh`` copy, and switches the slot on for that agent.

Options and defaults:

- ``layers = 2``: the block is the last hidden layer and the output heads (the paper injects the
  fully connected head that follows its encoder). ``1`` injects the heads alone, which for a
  linear head equals continuing to train with the head's optimizer state reset.
- ``at_switch = True``: inject when an agent's context switches; ``at_steps``: also at these
  env steps per agent (the paper injects once, mid-training).
- ``max_injections = 1``: the paper injects once. Each further injection an agent may receive
  needs one more slot (two frozen copies of the block and two more forward passes of it);
  later switches are left alone once an agent's slots are used, and ``injections`` in the
  diagnostics says how many it received. A warm start from an injected policy brings its
  slots switched on, and they count (re-initialising a layer of a role switches that role's
  off, :func:`~ctxrl_plugins.training.surgery.warm_start`).
- ``roles``: the network roles to inject into (default all: PPO's actor and critic, DQN's Q).
- ``optimizer_reset = "moments_and_step"``: the fresh trainable block starts with a fresh Adam
  state, as new parameters would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import (
    Intervention,
    NetworkSpec,
    OptimizerReset,
    TrainingView,
)
from ctxrl.options import count_option, flag_option, names_option
from ctxrl_plugins.interventions.common import (
    fresh_parameters,
    optimizer_reset_option,
    per_agent,
    use_per_element_steps,
)
from ctxrl_plugins.training.networks import injection_name

Tensor = torch.Tensor


class PlasticityInjection(Intervention):
    """Plasticity injection at context switches and/or given env steps.

    Args:
        layers: trailing layers in the injected block, counting the output heads as one.
        at_switch: inject when an agent's context switches.
        at_steps: also inject at these env steps (per agent; the first update at or after each).
        max_injections: injections per agent at most (slots built into the network).
        roles: network roles to inject into (None: every role).
        optimizer_reset: what happens to the Adam state of the fresh trainable block.
    """

    name: ClassVar[str] = "plasticity-injection"
    changes_network: ClassVar[bool] = True

    def __init__(
        self,
        layers: int = 2,
        at_switch: bool = True,
        at_steps: Sequence[int] = (),
        max_injections: int = 1,
        roles: Sequence[str] | None = None,
        optimizer_reset: OptimizerReset = "moments_and_step",
    ) -> None:
        layers = count_option(layers, "plasticity-injection: layers")
        max_injections = count_option(max_injections, "plasticity-injection: max_injections")
        at_switch = flag_option(at_switch, "plasticity-injection: at_switch")
        if not isinstance(at_steps, list | tuple):
            raise ConfigError(f"plasticity-injection: at_steps must be a list, got {at_steps!r}")
        steps = sorted(
            count_option(s, "plasticity-injection: at_steps", minimum=0) for s in at_steps
        )
        if not at_switch and not steps:
            raise ConfigError(
                "plasticity-injection: at_switch is false and at_steps is empty: it would "
                "never inject"
            )
        optimizer_reset = optimizer_reset_option(optimizer_reset, "plasticity-injection")
        self.layers, self.at_switch, self.at_steps = layers, at_switch, steps
        self.max_injections = max_injections
        self.roles = None if roles is None else names_option(roles, "plasticity-injection: roles")
        if self.roles == []:
            raise ConfigError(
                "plasticity-injection: roles is empty: it would inject into no network (leave "
                "it out for every network)"
            )
        self.optimizer_reset: OptimizerReset = optimizer_reset
        self.injected = torch.zeros(0)
        self.next_step = 0  # index into at_steps of the next scheduled injection
        self._block: dict[str, list[str]] = {}

    def inert_without_switches(self, total_steps: int) -> str | None:
        if any(step <= total_steps for step in self.at_steps):
            return None
        steps = (
            f"its at_steps {list(self.at_steps)} come after the {total_steps} env steps trained"
            if self.at_steps
            else "no at_steps"
        )
        return f"it injects at context switches (at_switch: {self.at_switch}) and {steps}"

    def network(self, role: str, spec: NetworkSpec) -> NetworkSpec:
        if self.roles is not None and role not in self.roles:
            return spec
        if self.layers > len(spec.hidden) + 1:
            raise ConfigError(
                f"plasticity-injection: layers {self.layers} is more than the {role} network's "
                f"{len(spec.hidden) + 1} layers"
            )
        return spec.with_(injections=self.max_injections, injected_layers=self.layers)

    def setup(self, view: TrainingView) -> None:
        roles = list(view.layers) if self.roles is None else self.roles
        unknown = sorted(set(roles) - set(view.layers))
        if unknown:
            raise ConfigError(
                f"plasticity-injection: roles {unknown} are not networks of this algorithm "
                f"(it has {', '.join(view.layers)})"
            )
        # the block's trainable layers: the trailing `layers` of each role (heads count as one)
        self._block = {}
        for role in roles:
            names = view.layers[role]
            hidden = [layer for layer in names if layer.rsplit(".", 1)[-1].isdigit()]
            heads = [layer for layer in names if layer not in hidden]
            self._block[role] = [*hidden[len(hidden) - (self.layers - 1) :], *heads]
        use_per_element_steps(view, self.optimizer_reset)
        # slots a warm start brought switched on are used: a new injection takes the next one
        # (overwriting slot 0 dropped the source's injected term and changed its outputs)
        self.injected = torch.zeros(view.num_agents, device=view.device)
        for role in roles:
            switches = [
                view.params[f"{role}.injection{slot}.on"].reshape(view.num_agents, -1)[:, 0]
                for slot in range(self.max_injections)
                if f"{role}.injection{slot}.on" in view.params
            ]
            if switches:
                on = torch.stack(switches).to(self.injected.dtype).sum(dim=0)
                self.injected = torch.maximum(self.injected, on.to(view.device))
        self.next_step = 0

    def after_update(self, view: TrainingView) -> None:
        if self.next_step < len(self.at_steps) and view.env_steps >= self.at_steps[self.next_step]:
            while (
                self.next_step < len(self.at_steps)
                and view.env_steps >= self.at_steps[self.next_step]
            ):
                self.next_step += 1
            self.inject(view, torch.ones(view.num_agents, dtype=torch.bool, device=view.device))

    def on_context_switch(self, view: TrainingView, agents: Tensor) -> None:
        if self.at_switch:
            self.inject(view, agents)

    def inject(self, view: TrainingView, agents: Tensor) -> None:
        """Inject into the next free slot of ``agents`` ``(N,)`` (bool) where the mask is 1, a
        slot is left and no parameter of the block is frozen (a warm start's ``freeze``: a
        frozen layer stays the source's); only those agents' random streams advance."""
        chosen = agents & (view.mask > 0) & (self.injected < self.max_injections)
        for block in self._block.values():
            for layer in block:
                for name, frozen in view.frozen.items():
                    if name.startswith(f"{layer}."):
                        chosen = chosen & ~frozen
        used = self.injected.clone()  # each agent's next free slot, before this injection
        for slot in range(self.max_injections):
            group = chosen & (used == slot)
            index = group.nonzero().squeeze(1)
            if len(index) == 0:
                continue
            with torch.no_grad():
                for role, block in self._block.items():
                    view.params[f"{role}.injection{slot}.on"][index] = 1.0
                    for layer in block:
                        for name, fresh in fresh_parameters(view, layer, index).items():
                            live = view.params[name]
                            old = view.params[injection_name(role, slot, "old", name)]
                            new = view.params[injection_name(role, slot, "fresh", name)]
                            old[index] = live[index]
                            new[index] = fresh
                            live[index] = fresh
                            view.optimizer.reset(name, per_agent(group, live), self.optimizer_reset)
            self.injected += group.to(self.injected.dtype)

    def diagnostics(self, view: TrainingView) -> dict[str, Tensor]:
        """``injections``: injections so far, per agent ``(N,)``."""
        del view
        return {"injections": self.injected.clone()}

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "injected": self.injected,
            "next_step": torch.tensor([self.next_step], dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.injected = state["injected"].clone()
        self.next_step = int(state["next_step"].reshape(-1)[0])
