"""``ns-adam``: non-stationary Adam, ``beta1 = beta2 = 0.99``.

Dohare et al., "Loss of plasticity in deep continual learning" (Nature 632:768, 2024, arXiv
2306.13812) found that PPO with Adam's default ``beta2 = 0.999`` collapses after a
non-stationary change: the second moment, averaged over ~1000 steps, lags the new gradient
scale and the first updates after a change are too large. Equal betas of 0.99 make both moments
forget at the same, faster rate. Defaults ``beta1 = beta2 = 0.99`` (theirs).

The intervention protocol has no optimizer hook, so :meth:`NonStationaryAdam.setup` sets the
trainers' Adam (``AgentAdam``) ``betas`` in place (also on resume: betas are not in the
checkpoint). The optimizer is one for the whole batch, so this applies to every agent: a mask
that leaves agents out is an error.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.options import number_option


class NonStationaryAdam(Intervention):
    """Set the batch's Adam betas to ``(beta1, beta2)`` at setup.

    Args:
        beta1: Adam's first-moment decay.
        beta2: Adam's second-moment decay.
    """

    name: ClassVar[str] = "ns-adam"
    whole_batch: ClassVar[bool] = True

    def __init__(self, beta1: float = 0.99, beta2: float = 0.99) -> None:
        beta1 = number_option(beta1, "ns-adam: beta1", positive=False)
        beta2 = number_option(beta2, "ns-adam: beta2", positive=False)
        if not (beta1 < 1 and beta2 < 1):
            raise ConfigError(f"ns-adam: betas must be in [0, 1), got {beta1}, {beta2}")
        self.betas = (float(beta1), float(beta2))

    def setup(self, view: TrainingView) -> None:
        optimizer = cast(Any, view.optimizer)
        if not hasattr(optimizer, "betas"):
            raise ConfigError(
                f"ns-adam: the trainer's optimizer ({type(optimizer).__name__}) has no Adam betas"
            )
        if not bool((view.mask > 0).all()):
            raise ConfigError(
                "ns-adam changes the optimizer, which all agents of a batch share: apply it to "
                "every agent (or train the others apart)"
            )
        optimizer.betas = self.betas
