"""A batched training in progress (:class:`TrainingRun`): what an algorithm's iteration works on
and the :class:`~ctxrl.interventions.TrainingView` interventions see."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ctxrl.errors import CtxrlError, PluginError
from ctxrl.interventions import Intervention
from ctxrl.rng import StreamRNG
from ctxrl.twins import clip_actions
from ctxrl_plugins.training.networks import Params, StackedMLP
from ctxrl_plugins.training.optimizer import AgentAdam

Tensor = torch.Tensor


@contextmanager
def intervention_hook(intervention: Intervention, hook: str) -> Iterator[None]:
    """Runs an intervention's ``hook`` so that an exception of its own code (a plugin's bug)
    names the intervention and where it lives: without it a run failed with ``KeyError:
    'actor.0.weight'`` and nothing said which plugin raised it. The :class:`PluginError` it
    raises carries the intervention object (``.intervention``), so a report can say which arm's
    plugin failed. ctxrl's own errors (an option the network cannot carry out) already say what
    is wrong and pass with their message unchanged, the intervention attached all the same: a
    study blamed no arm for them, and the baseline's program failed with the raising arm's."""
    try:
        yield
    except CtxrlError as exc:
        if getattr(exc, "intervention", None) is None:
            exc.intervention = intervention  # type: ignore[attr-defined]  # who raised
        raise
    except Exception as exc:
        kind = type(intervention)
        error = PluginError(
            f"intervention {intervention.name!r} ({kind.__module__}.{kind.__qualname__}) failed "
            f"in {hook}: {type(exc).__name__}: {exc}"
        )
        error.intervention = intervention  # type: ignore[attr-defined]  # who raised, for reports
        raise error from exc


class TrainingRun:
    """A batched training in progress: what the algorithm's :meth:`BatchedTrainer.iterate`
    works on, and the :class:`~ctxrl.interventions.TrainingView` interventions see.

    Shapes: ``N`` agents, ``E`` environments each; the twin holds ``N * E`` environments,
    agent ``i`` owning environments ``i * E .. i * E + E - 1``."""

    def __init__(
        self,
        *,
        twin: Any,
        networks: dict[str, StackedMLP],
        params: Params,
        optimizer: AgentAdam,
        rng: StreamRNG,
        interventions: Sequence[Intervention],
        num_envs: int,
        device: torch.device,
        masks: Sequence[Tensor] | None = None,
    ) -> None:
        self.twin, self.networks, self.params = twin, networks, params
        self.optimizer, self.rng, self.device = optimizer, rng, device
        self.interventions = list(interventions)
        ones = torch.ones(len(rng.seeds), device=device)
        self.masks = list(masks) if masks is not None else [ones] * len(self.interventions)
        self.num_agents = len(rng.seeds)
        self.num_envs = num_envs
        self.obs_dim: int = twin.observation_size
        self.discrete: bool = twin.discrete_actions is not None
        self.initial_params = {k: v.detach().clone() for k, v in params.items()}
        self.layers = {role: net.layers for role, net in networks.items()}
        self.init_gains = {
            layer: gain for net in networks.values() for layer, gain in net.init_gains.items()
        }
        self.activations: dict[str, Tensor] = {}
        self.record_activations = any(i.needs_activations for i in interventions)
        self.mask = torch.ones(self.num_agents, device=device)
        self._loss_checked: set[int] = set()  # interventions whose first loss term is checked
        self.iteration = 0
        self.env_steps = 0
        self.obs: Tensor = torch.empty(0)
        """the last observations ``(N, E, obs)``"""
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    # ----------------------------------------------------------------- for the algorithms
    @property
    def gradients(self) -> dict[str, Tensor]:
        return self.optimizer.gradients()

    @property
    def frozen(self) -> dict[str, Tensor]:
        """Per frozen parameter, the agents ``(N,)`` (bool) for which it is not trained."""
        return {name: keep == 0 for name, keep in self.optimizer.grad_mask.items()}

    def each_intervention(self) -> Iterator[Intervention]:
        """The interventions in order, with ``mask`` set to each one's agents while it runs."""
        for intervention, mask in zip(self.interventions, self.masks, strict=True):
            self.mask = mask
            yield intervention

    def forward(self, role: str, x: Tensor, *, training: bool = False) -> Tensor:
        """Network ``role`` on ``x`` ``(N, M, in)``; during updates (``training``), hidden
        activations are recorded for the interventions that read them."""
        record = self.activations if training and self.record_activations else None
        return self.networks[role](self.params, x, record)

    def optimize(self, loss: Tensor, lr: float | None = None) -> None:
        """One gradient step on per-agent losses ``(N,)``: the interventions' loss terms are
        added, gradients computed (summed over agents: they never mix), frozen parameters
        held, gradients clipped per agent, Adam stepped, then the interventions' after-update
        operators run."""
        for index, intervention in enumerate(self.each_intervention()):
            with intervention_hook(intervention, "loss"):
                term = intervention.loss(self)
                if term is not None:
                    if index not in self._loss_checked:
                        self._check_loss_term(intervention, term)
                        self._loss_checked.add(index)
                    loss = loss + term * self.mask
        self.optimizer.zero_grad()
        torch.autograd.backward(loss.sum())  # Tensor.backward is untyped
        self.optimizer.step(lr)
        self.record("grad_norm", self.optimizer.grad_norm)
        for intervention in self.each_intervention():
            with intervention_hook(intervention, "after_update"):
                intervention.after_update(self)

    def _check_loss_term(self, intervention: Intervention, term: Tensor) -> None:
        """An intervention's first loss term: ``(N,)``, finite for the agents outside its mask
        (the term is multiplied by the mask, and NaN x 0 is NaN: an arm's term of 0 / 0 for
        the agents it leaves alone made every agent of a shared program diverge, the
        baseline's included, and the report blamed them)."""
        if term.shape != (self.num_agents,):
            raise PluginError(
                f"intervention {intervention.name!r}: its loss term must be one value per "
                f"agent, ({self.num_agents},), got {tuple(term.shape)}"
            )
        outside = self.mask == 0
        if bool(outside.any()) and not bool(torch.isfinite(term.detach()[outside]).all()):
            raise PluginError(
                f"intervention {intervention.name!r}: its loss term is not finite for agents "
                "outside its mask, which it leaves alone; ctxrl multiplies the term by the "
                "mask and NaN x 0 is NaN: return a finite value (0) for them"
            )

    @property
    def fusable(self) -> bool:
        """Whether a gradient step may run as one compiled graph (:meth:`fused_step`): no
        intervention adds a loss term or runs around the step, and no hidden activations are
        recorded."""
        return not self.interventions and not self.record_activations

    def fused_step(
        self, loss: Callable[..., tuple[Tensor, Any]], *args: Any, lr: float | None = None
    ) -> Any:
        """What :meth:`optimize` does for per-agent losses ``loss(params, *args)``, as one
        compiled graph (:meth:`AgentAdam.fused_step`; only where :attr:`fusable`): ``loss``
        returns the losses ``(N,)`` and auxiliary outputs (no gradient), which this returns."""
        if not self.fusable:
            raise CtxrlError("a fused gradient step cannot run interventions or record activations")
        aux = self.optimizer.fused_step(loss, *args, lr=lr)
        self.record("grad_norm", self.optimizer.grad_norm)
        return aux

    def record(self, name: str, value: Tensor) -> None:
        """Add a per-agent diagnostic ``(N,)`` to the running mean logged at the next record
        point (no device synchronisation until then)."""
        value = value.detach()
        if name in self._sums:
            self._sums[name] = self._sums[name] + value
            self._counts[name] += 1
        else:
            self._sums[name], self._counts[name] = value.clone(), 1

    def pending_diagnostics(self) -> tuple[dict[str, Tensor], dict[str, int]]:
        """The running sums ``(N,)`` and counts since the last flush (for a checkpoint)."""
        return dict(self._sums), dict(self._counts)

    def restore_pending_diagnostics(
        self, sums: Mapping[str, Tensor], counts: Mapping[str, int]
    ) -> None:
        """Continue the running means a checkpoint saved (:meth:`pending_diagnostics`)."""
        self._sums = {k: v.clone() for k, v in sums.items()}
        self._counts = {k: int(counts[k]) for k in sums}

    def flush_diagnostics(self) -> dict[str, np.ndarray]:
        """The running means since the last flush, per agent ``(N,)``, and reset them.

        An intervention's diagnostics are ``{name}.{diagnostic}``. Several instances of one
        intervention on different agents (a study's arms with other options) share the key,
        each agent's value from the instance whose mask holds it; one whose agents another
        instance of the name already covers gets keys of its own, ``{name}-{k}.{diagnostic}``
        (``k`` = 2, 3, ...: its place among the instances of the name)."""
        out = {k: (v / self._counts[k]).float().cpu().numpy() for k, v in self._sums.items()}
        covered: dict[str, np.ndarray] = {}  # per name: agents an instance's mask holds
        seen: dict[str, int] = {}
        for intervention in self.each_intervention():
            name = intervention.name
            seen[name] = seen.get(name, 0) + 1
            mask = self.mask.detach().cpu().numpy() > 0
            with intervention_hook(intervention, "diagnostics"):
                diagnostics = {
                    key: value.detach().float().cpu().numpy()
                    for key, value in intervention.diagnostics(self).items()
                }
            if name not in covered:
                covered[name] = mask.copy()
                out.update({f"{name}.{key}": value for key, value in diagnostics.items()})
            elif not (covered[name] & mask).any():
                covered[name] |= mask
                for key, value in diagnostics.items():
                    merged = out.get(f"{name}.{key}")
                    if merged is None or merged.shape != value.shape:
                        out[f"{name}.{key}"] = value
                    else:
                        agents = mask.reshape(-1, *[1] * (value.ndim - 1))
                        out[f"{name}.{key}"] = np.where(agents, value, merged)
            else:
                out.update({f"{name}-{seen[name]}.{k}": v for k, v in diagnostics.items()})
        self._sums, self._counts = {}, {}
        return out

    # ----------------------------------------------------------------------- env helpers
    def step_env(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Step the twin with per-agent actions ``(N, E)`` or ``(N, E, dim)``; returns the
        next observations ``(N, E, obs)``, rewards, ``terminated``, ``truncated`` ``(N, E)``
        and ``info`` with ``done`` ``(N, E)`` and ``final_obs`` ``(N, E, obs)``."""
        n, e = self.num_agents, self.num_envs
        flat = action.reshape(n * e) if self.discrete else action.reshape(n * e, -1)
        obs, reward, terminated, truncated, info = self.twin.step(clip_actions(self.twin, flat))
        info = {
            "done": info["done"].view(n, e),
            "final_obs": info["final_obs"].view(n, e, self.obs_dim),
        }
        return (
            obs.view(n, e, self.obs_dim),
            reward.view(n, e),
            terminated.view(n, e),
            truncated.view(n, e),
            info,
        )


def intervention_masks(
    entries: Sequence[Intervention | tuple[Intervention, Sequence[int]]],
    n: int,
    device: torch.device,
) -> tuple[list[Intervention], list[Tensor]]:
    """Interventions and their agent masks ``(N,)`` (float, 1 where it applies)."""
    interventions, masks = [], []
    for entry in entries:
        intervention, agents = entry if isinstance(entry, tuple) else (entry, range(n))
        mask = torch.zeros(n, device=device)
        index = [int(a) for a in agents]
        if any(not 0 <= a < n for a in index):
            raise CtxrlError(
                f"intervention {intervention.name!r}: agents {index} not in 0..{n - 1}"
            )
        mask[index] = 1.0
        if intervention.changes_network and len(set(index)) != n:
            raise CtxrlError(
                f"intervention {intervention.name!r} changes the network, which all agents of a "
                "batch share: apply it to every agent (or train the others apart)"
            )
        interventions.append(intervention)
        masks.append(mask)
    return interventions, masks
