"""``shrink-perturb``: shrink every network parameter and add fresh noise, after every update.

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

Defaults: ``shrink = 1 - 1e-4`` and ``perturb = 1e-5``, Dohare et al.'s weight decay (1e-4) and
noise scale (1e-5), the shrink read as a per-step factor. (Their decay went through the
optimizer: with SGD at step size ``lr`` it shrinks by ``1 - lr * 1e-4`` per step.)
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, TrainingView
from ctxrl_plugins.interventions.common import network_names, per_agent


class ShrinkPerturb(Intervention):
    """``p <- shrink * p + perturb * N(0, 1)`` after every update, per agent.

    Args:
        shrink: the factor every network parameter is multiplied by, in (0, 1].
        perturb: the standard deviation of the Gaussian noise added, >= 0.
    """

    name: ClassVar[str] = "shrink-perturb"

    def __init__(self, shrink: float = 1 - 1e-4, perturb: float = 1e-5) -> None:
        if not 0 < shrink <= 1:
            raise ConfigError(f"shrink-perturb: shrink must be in (0, 1], got {shrink}")
        if perturb < 0:
            raise ConfigError(f"shrink-perturb: perturb must be >= 0, got {perturb}")
        self.shrink, self.perturb = float(shrink), float(perturb)
        self.names: list[str] = []
        self.sizes: list[int] = []

    def setup(self, view: TrainingView) -> None:
        self.names = network_names(view)
        self.sizes = [view.params[name][0].numel() for name in self.names]

    def after_update(self, view: TrainingView) -> None:
        if not self.names:
            return
        dtype = view.params[self.names[0]].dtype
        # one draw of every agent's noise per update: (N, parameters per agent)
        noise = view.rng.normal(sum(self.sizes), dtype=dtype)
        active = view.mask > 0
        with torch.no_grad():
            for name, eps in zip(self.names, torch.split(noise, self.sizes, dim=1), strict=True):
                p = view.params[name]
                moved = p * self.shrink + self.perturb * eps.view(p.shape)
                # parameters a warm start froze stay as they are
                where = active & ~view.frozen[name] if name in view.frozen else active
                p.copy_(torch.where(per_agent(where, p), moved, p))
