"""``shrink-perturb``: shrink every network parameter and add fresh noise, after every update
(``when="step"``) or when a context schedule switches an agent's context (``when="switch"``).

Ash and Adams, "On Warm-Starting Neural Network Training" (NeurIPS 2020, arXiv 1910.08475)
shrink the weights towards zero and perturb them with noise once, when new data arrives. This is
the per-step form used against loss of plasticity (Dohare et al., "Loss of plasticity in deep
continual learning", Nature 632:768, 2024, arXiv 2306.13812): after every optimizer step, for
each agent where ``view.mask`` is 1,

    p <- shrink * p + perturb * eps,    eps ~ N(0, 1) elementwise,

for every parameter of the networks' layers (weights, biases, LayerNorm gains and biases; not
PPO's log standard deviation, which is no network weight). ``eps`` is drawn from the agent's own
random stream (``view.rng``), so it depends on nothing but the agent. Layers a warm start froze
(``train_many(freeze=...)``, ``view.frozen``) are left as they are.

Defaults: ``shrink = 1 - 1e-6`` per update, the per-minibatch shrink of Plasticine and of
Juliani and Ash's soft S&P (0.999999), and ``perturb = 1e-5``, Dohare et al.'s noise scale.
(Dohare et al.'s own shrink went through the optimizer as weight decay 1e-4, about
``1 - lr * 1e-4`` per step: 1 - 1e-8 at a learning rate of 1e-4. Reading their 1e-4 as a
per-step factor, this intervention's default until 2026-12-05, decays ~100x faster than
Plasticine and ~10^4x faster than Dohare et al.: over 1280 PPO updates it shrinks the weights
by 0.88 with no gradient; the plasticity studies in ``benchmarks/studies`` pin that old value
for their stored results.)

At a switch (``when="switch"``, Ash and Adams's form at the arrival of new data, as Juliani and
Ash, "A Study of Plasticity Loss in On-Policy Deep Reinforcement Learning", NeurIPS 2024, arXiv
2405.19153, apply it at each distribution shift), for each switched agent where the mask is 1,

    p <- shrink * p + perturb * p_fresh,

with ``p_fresh`` a fresh initialisation of the network (orthogonal weights at each layer's
initial gain from the agent's own random stream, zero biases, LayerNorm gain 1 and bias 0).
Defaults then ``shrink = 0.5``, ``perturb = 0.5``: Juliani and Ash's hard S&P. The optimizer
state is kept by default (``optimizer_reset = "none"``: the parameters are moved, not
re-created); Juliani and Ash rebuild the optimizer at each shift, which ``optimizer_reset:
moments_and_step`` does for the switched agents (``moments`` keeps Adam's step count).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, OptimizerReset, TrainingView
from ctxrl.options import number_option
from ctxrl_plugins.interventions.common import (
    fresh_parameters,
    masked_normal,
    network_names,
    optimizer_reset_option,
    per_agent,
    unfrozen,
    use_per_element_steps,
)

Tensor = torch.Tensor
When = Literal["step", "switch"]
DEFAULTS: dict[str, tuple[float, float]] = {"step": (1 - 1e-6, 1e-5), "switch": (0.5, 0.5)}
"""``(shrink, perturb)`` per form: Plasticine's per-update shrink with Dohare et al.'s noise,
Juliani & Ash's hard S&P."""


class ShrinkPerturb(Intervention):
    """``p <- shrink * p + perturb * N(0, 1)`` after every update, or
    ``p <- shrink * p + perturb * p_fresh`` at each context switch, per agent.

    Args:
        shrink: the factor every network parameter is multiplied by, in (0, 1] (default
            ``1 - 1e-6`` per step, 0.5 at a switch).
        perturb: the standard deviation of the Gaussian noise added per step, or the weight
            of the fresh initialisation added at a switch, >= 0 (default 1e-5 per step, 0.5
            at a switch).
        when: ``step`` (after every update) or ``switch`` (at context switches).
        optimizer_reset: at a switch, what happens to the moved parameters' Adam state
            (:data:`~ctxrl.interventions.OPTIMIZER_RESETS`; ``none``, the default, keeps it);
            the per-step form takes ``none`` only.
    """

    name: ClassVar[str] = "shrink-perturb"

    def __init__(
        self,
        shrink: float | None = None,
        perturb: float | None = None,
        when: When = "step",
        optimizer_reset: OptimizerReset = "none",
    ) -> None:
        if not isinstance(when, str) or when not in DEFAULTS:
            raise ConfigError(f"shrink-perturb: when {when!r}: expected 'step' or 'switch'")
        optimizer_reset = optimizer_reset_option(optimizer_reset, "shrink-perturb")
        if when == "step" and optimizer_reset != "none":
            raise ConfigError(
                f"shrink-perturb: optimizer_reset {optimizer_reset!r} acts at switches; with "
                "when 'step' (every update) it would reset Adam at every step: use when "
                "'switch', or leave optimizer_reset out"
            )
        self.when, self.optimizer_reset = when, optimizer_reset
        shrink = DEFAULTS[when][0] if shrink is None else shrink
        perturb = DEFAULTS[when][1] if perturb is None else perturb
        shrink = number_option(shrink, "shrink-perturb: shrink")
        perturb = number_option(perturb, "shrink-perturb: perturb", positive=False)
        if not 0 < shrink <= 1:
            raise ConfigError(f"shrink-perturb: shrink must be in (0, 1], got {shrink}")
        if perturb < 0:
            raise ConfigError(f"shrink-perturb: perturb must be >= 0, got {perturb}")
        self.shrink, self.perturb = float(shrink), float(perturb)
        self.names: list[str] = []
        self.sizes: list[int] = []

    def resolved_options(self) -> dict[str, Any]:
        """``shrink`` and ``perturb`` as ``when`` decided them where they were not given (what a
        run directory records, :mod:`ctxrl.resolution`)."""
        return {"shrink": self.shrink, "perturb": self.perturb}

    def inert_without_switches(self, total_steps: int) -> str | None:
        del total_steps
        return "it acts at context switches only (when: switch)" if self.when == "switch" else None

    def setup(self, view: TrainingView) -> None:
        self.names = network_names(view)
        self.sizes = [view.params[name][0].numel() for name in self.names]
        use_per_element_steps(view, self.optimizer_reset)

    def after_update(self, view: TrainingView) -> None:
        if not self.names or self.when != "step":
            return
        dtype = view.params[self.names[0]].dtype
        # one draw of every agent's noise per update: (N, parameters per agent)
        noise = masked_normal(view, sum(self.sizes), dtype)
        active = view.mask > 0
        with torch.no_grad():
            for name, eps in zip(self.names, torch.split(noise, self.sizes, dim=1), strict=True):
                p = view.params[name]
                moved = p * self.shrink + self.perturb * eps.view(p.shape)
                # parameters a warm start froze stay as they are
                where = active & ~view.frozen[name] if name in view.frozen else active
                p.copy_(torch.where(per_agent(where, p), moved, p))

    def on_context_switch(self, view: TrainingView, agents: Tensor) -> None:
        if self.when != "switch":
            return
        chosen = agents & (view.mask > 0)
        index = chosen.nonzero().squeeze(1)
        if len(index) == 0:
            return
        fresh: dict[str, Tensor] = {}
        for layers in view.layers.values():
            for layer in layers:
                fresh.update(fresh_parameters(view, layer, index))
        with torch.no_grad():
            for name in self.names:
                p = view.params[name]
                moved = p.clone()
                moved[index] = p[index] * self.shrink + self.perturb * fresh[name]
                where = unfrozen(view, name, chosen)
                p.copy_(torch.where(per_agent(where, p), moved, p))
                view.optimizer.reset(name, per_agent(where, p), self.optimizer_reset)
