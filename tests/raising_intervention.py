"""An intervention plugin that raises mid-training, for the tests of what a study does when an
arm's code fails (``load_host(extra=[("boom-plugin", BoomPlugin())])``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ctxrl import hookimpl
from ctxrl.errors import ConfigError
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.registry import InterventionSpec


class Boom(Intervention):
    """Raises in ``after_update`` after ``after`` updates while :attr:`armed` (a test sets it
    with ``monkeypatch``: False is the plugin fixed)."""

    name = "boom"
    armed = True

    def __init__(self, after: int = 2, error: str = "runtime") -> None:
        self.after, self.updates, self.error = after, 0, error

    def after_update(self, view: TrainingView) -> None:
        self.updates += 1
        if Boom.armed and self.updates > self.after:
            if self.error == "ctxrl":  # as a plugin using ctxrl.options would raise
                raise ConfigError(f"boom: cannot go on after {self.after} updates")
            raise RuntimeError(f"boom after {self.after} updates")


class NanTerm(Intervention):
    """A loss term of 0 / 0 for the agents outside its mask (a relative L2 whose per-agent
    denominators it kept for its own agents only)."""

    name = "nan-term"

    def loss(self, view: TrainingView) -> Tensor:
        weight = next(v for k, v in view.params.items() if k.endswith("weight"))
        scale = weight.flatten(1).square().sum(1).detach() * view.mask
        return 0.01 * weight.flatten(1).square().sum(1) / scale


class BoomPlugin:
    @hookimpl
    def ctxrl_register_interventions(self, register: Callable[[InterventionSpec], None]) -> None:
        register(InterventionSpec("boom", Boom, description="raises mid-training"))
        register(InterventionSpec("nan-term", NanTerm, description="NaN outside its mask"))
