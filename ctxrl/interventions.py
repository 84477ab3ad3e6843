"""Interventions: training-time modifiers of the batched trainers.

An intervention changes how agents train without changing the algorithm: the network's shape
(LayerNorm, CReLU), an extra per-agent loss term (L2, L2-Init, spectral regularisation), or an
operator applied after every optimizer step (Shrink & Perturb, ReDo, continual backprop). The
plasticity plugin's remedies are interventions; so is anything a third party registers with
``ctxrl_register_interventions``.

The trainers call an intervention at four points, all optional:

- :meth:`Intervention.network` once at setup, for each network role (``actor``, ``critic``,
  ``q``): it returns the network description to build (a :class:`NetworkSpec`).
- :meth:`Intervention.loss` at every gradient step: a per-agent loss term of shape ``(N,)``
  added to the algorithm's loss before the backward pass.
- :meth:`Intervention.after_update` after every optimizer step: in-place edits of parameters
  and optimizer state through a :class:`TrainingView`.
- :meth:`Intervention.on_context_switch` when a context schedule changes some agents' contexts
  (resets at switches).
- :meth:`Intervention.state_dict` / :meth:`Intervention.load_state_dict`: its own tensors,
  saved in training checkpoints so that a killed run resumes bit-exactly.

Every intervention must keep agents independent: what it does to agent ``i`` depends only on
agent ``i``'s parameters, gradients, optimizer state, activations and its own random stream
(``view.rng``), never on the other agents in the batch. ``ctxrl.testing.InterventionContract``
checks this, the checkpoint round trip and that parameters are edited in place (never rebound).

This module is torch-free at import; tensors are ``torch.Tensor``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ctxrl.errors import ConfigError
from ctxrl.options import check_options

if TYPE_CHECKING:
    import torch

    from ctxrl.rng import StreamRNG

Activation = Literal["tanh", "relu", "crelu"]
Normalisation = Literal["none", "layernorm"]
OptimizerReset = Literal["none", "moments", "moments_and_step"]
"""What happens to the optimizer state of re-initialised weights:

- ``none``: nothing; the reset weights keep the Adam moments of the weights they replace.
- ``moments``: their first and second moments are zeroed; the step count (and so Adam's bias
  correction) is kept.
- ``moments_and_step``: moments zeroed and step count restarted at 0, as if the weights were
  new parameters (Adam's bias correction starts over for them).

The published implementations disagree (ReDo resets moments; continual backprop resets moments
and step count per unit; Plasticine's resets reset nothing), hence an explicit choice.
``moments_and_step`` is the default of the built-in resets: it is the only one under which a
re-initialised unit takes the same first updates as a freshly initialised network.
"""
OPTIMIZER_RESETS: tuple[OptimizerReset, ...] = ("none", "moments", "moments_and_step")


@dataclass(frozen=True)
class NetworkSpec:
    """The description of one agent-stacked MLP, from which the trainers build it.

    Attributes:
        hidden: widths of the hidden layers, e.g. ``(64, 64)``.
        activation: ``tanh``, ``relu`` or ``crelu`` (concatenated ReLU of ``x`` and ``-x``:
            a layer's output is twice its width).
        norm: ``layernorm`` normalises each hidden layer's pre-activation (with a learned
            per-unit gain and bias), ``none`` does not.
        hidden_gain: orthogonal-initialisation gain of the hidden layers.
        injections: plasticity-injection slots (Nikishin et al. 2023): how many times the
            injected block may be frozen and replaced by a fresh trainable copy (0: none).
            Each slot holds two frozen copies of the block and costs two more forward passes
            of it (see :class:`ctxrl_plugins.training.networks.StackedMLP`).
        injected_layers: the trailing layers that form the injected block, counting the
            output heads as one: 1 is the heads alone, 2 the last hidden layer and the heads.
    """

    hidden: tuple[int, ...] = (64, 64)
    activation: Activation = "tanh"
    norm: Normalisation = "none"
    hidden_gain: float = 2.0**0.5
    injections: int = 0
    injected_layers: int = 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        """The spec from its JSON form (``dataclasses.asdict`` of one)."""
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**fields)

    def with_(self, **changes: Any) -> NetworkSpec:
        """A copy with ``changes`` applied (what a network transform returns)."""
        return replace(self, **changes)


class AgentOptimizerState(Protocol):
    """The per-element optimizer state an intervention may read and reset."""

    def moments(self, name: str) -> dict[str, torch.Tensor]:
        """Views of parameter ``name``'s state, each shaped like the parameter ``(N, ...)``:
        ``exp_avg`` and ``exp_avg_sq`` (Adam's moments). Writes go to the optimizer."""
        ...

    def reset(self, name: str, mask: torch.Tensor, mode: OptimizerReset) -> None:
        """Reset the state of the elements of parameter ``name`` where ``mask`` (bool, shaped
        like the parameter) is True, as ``mode`` says."""
        ...


class TrainingView(Protocol):
    """What an intervention sees of a batched training in progress.

    Every member is read-only (a property here: an implementation may use plain attributes or
    properties, of these types or narrower ones, e.g. ``dict`` for ``Mapping``); tensors are
    edited in place, never rebound.

    Attributes:
        params: the live agent-stacked parameters by name, each ``(N, ...)``; edit them in
            place (``with torch.no_grad(): p.mul_(...)``), never rebind them.
        initial_params: the parameters at the start of training (after any warm start),
            read-only.
        layers: per network role, its layer names in order, e.g. ``{"actor": ["actor.0",
            "actor.1", "actor.head"]}``; layer ``L`` has parameters ``L.weight`` ``(N, in,
            out)``, ``L.bias`` ``(N, out)`` and, with LayerNorm, ``L.norm.weight`` /
            ``L.norm.bias`` ``(N, out)``.
        init_gains: per layer name, the orthogonal gain the trainer initialises its weights
            with (what a re-initialisation draws at; after a warm start the initial weights
            are the source's, of another scale).
        optimizer: per-element optimizer state (:class:`AgentOptimizerState`).
        activations: the most recent post-activation outputs of each hidden layer by layer
            name, ``(N, M, width)``, recorded during the last update's forward pass; filled
            only when an active intervention sets ``needs_activations``.
        gradients: the gradient of each parameter from the last backward pass ``(N, ...)``
            (after per-agent clipping), read-only.
        frozen: per frozen parameter name, ``(N,)`` bool, True for the agents that do not train
            it (a warm start's ``freeze``); after-update operators should leave those alone.
        mask: ``(N,)`` float, 1 for the agents this intervention applies to, 0 elsewhere.
        rng: per-agent random streams (one stream per agent, independent of the batch).
        num_agents: ``N``.
        env_steps: environment steps taken so far, per agent.
        iteration: the trainer's iteration counter (0-based).
        device: the torch device.
    """

    @property
    def params(self) -> Mapping[str, torch.Tensor]: ...
    @property
    def initial_params(self) -> Mapping[str, torch.Tensor]: ...
    @property
    def layers(self) -> Mapping[str, list[str]]: ...
    @property
    def init_gains(self) -> Mapping[str, float]: ...
    @property
    def optimizer(self) -> AgentOptimizerState: ...
    @property
    def activations(self) -> Mapping[str, torch.Tensor]: ...
    @property
    def gradients(self) -> Mapping[str, torch.Tensor]: ...
    @property
    def frozen(self) -> Mapping[str, torch.Tensor]: ...
    @property
    def mask(self) -> torch.Tensor: ...
    @property
    def rng(self) -> StreamRNG: ...
    @property
    def num_agents(self) -> int: ...
    @property
    def env_steps(self) -> int: ...
    @property
    def iteration(self) -> int: ...
    @property
    def device(self) -> torch.device: ...


class Intervention:
    """Base class of interventions: override what you need, the rest does nothing.

    Class attributes:
        name: the registry name.
        needs_activations: True to have ``view.activations`` filled at every update (it costs
            memory and time, so only interventions that read activations ask for it).
        changes_network: True when :meth:`network` changes the architecture; such an
            intervention applies to every agent of a batch (a stacked network has one shape).
        whole_batch: True when it changes something else every agent of a batch shares (the
            optimizer's settings); it too applies to every agent or to none.
    """

    name: ClassVar[str] = ""
    needs_activations: ClassVar[bool] = False
    changes_network: ClassVar[bool] = False
    whole_batch: ClassVar[bool] = False

    def network(self, role: str, spec: NetworkSpec) -> NetworkSpec:
        """The network to build for ``role`` (``actor``, ``critic``, ``q``) given the
        algorithm's description ``spec``."""
        del role
        return spec

    def setup(self, view: TrainingView) -> None:
        """Called once after the networks are built (and after a warm start), before the first
        update; also on resume, before :meth:`load_state_dict`."""
        del view

    def loss(self, view: TrainingView) -> torch.Tensor | None:
        """A per-agent loss term ``(N,)`` added to the algorithm's loss, or None. It is
        multiplied by ``view.mask`` by the trainer, so it must be finite for every agent, the
        ones outside the mask too (NaN x 0 is NaN; the trainer refuses it, naming this
        intervention)."""
        del view
        return None

    def after_update(self, view: TrainingView) -> None:
        """Called after every optimizer step; edit parameters and optimizer state in place,
        only where ``view.mask`` is 1."""
        del view

    def on_context_switch(self, view: TrainingView, agents: torch.Tensor) -> None:
        """Called when a context schedule switches the context of ``agents`` (``(N,)`` bool),
        after the switch and before the next update (resets at switches); only where
        ``view.mask`` is 1 too."""
        del view, agents

    def inert_without_switches(self, total_steps: int) -> str | None:
        """Why this intervention would do nothing at all in a training of ``total_steps`` env
        steps per agent whose contexts never switch (a sweep's), or None when it may act
        there. A sweep refuses an intervention that says why (it would train exactly as
        none); the default: None."""
        del total_steps
        return None

    def diagnostics(self, view: TrainingView) -> dict[str, torch.Tensor]:
        """Per-agent numbers ``(N,)`` to log with the training diagnostics (e.g. the fraction
        of dormant units), called when the trainer logs."""
        del view
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to save in a training checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        del state


@dataclass(frozen=True)
class InterventionConfig:
    """One entry of ``algorithm.interventions`` in a sweep config."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


def build_interventions(
    entries: Sequence[InterventionConfig | dict[str, Any]], registry: Any
) -> list[Intervention]:
    """Interventions from config entries through the registry; an unknown name or option is a
    :class:`~ctxrl.errors.ConfigError` naming the entry."""
    built: list[Intervention] = []
    for index, item in enumerate(entries):
        entry = (
            InterventionConfig(item["name"], dict(item.get("options", {})))
            if isinstance(item, dict)
            else item
        )
        where = f"algorithm.interventions[{index}]"
        try:
            spec = registry.intervention(entry.name)
        except Exception as exc:
            raise ConfigError(f"{where}.name: {exc}") from None
        intervention = check_options(
            spec.factory, entry.options, f"{where}.options: intervention {entry.name!r}"
        )
        if not isinstance(intervention, Intervention):
            raise ConfigError(
                f"{where}: intervention {entry.name!r} built a {type(intervention).__name__}, "
                "not a ctxrl.interventions.Intervention"
            )
        if intervention.name != entry.name:  # it prefixes the diagnostics and the records
            raise ConfigError(
                f"{where}: intervention {entry.name!r} built an intervention named "
                f"{intervention.name!r}: its class attribute name must be its registry name"
            )
        built.append(intervention)
    return built


__all__ = [
    "OPTIMIZER_RESETS",
    "Activation",
    "AgentOptimizerState",
    "Intervention",
    "InterventionConfig",
    "NetworkSpec",
    "Normalisation",
    "OptimizerReset",
    "TrainingView",
    "build_interventions",
]
