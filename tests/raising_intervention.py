"""An intervention plugin that raises mid-training, for the tests of what a study does when an
arm's code fails (``load_host(extra=[("boom-plugin", BoomPlugin())])``)."""

from __future__ import annotations

from collections.abc import Callable

from ctxrl import hookimpl
from ctxrl.interventions import Intervention, TrainingView
from ctxrl.registry import InterventionSpec


class Boom(Intervention):
    """Raises in ``after_update`` after ``after`` updates while :attr:`armed` (a test sets it
    with ``monkeypatch``: False is the plugin fixed)."""

    name = "boom"
    armed = True

    def __init__(self, after: int = 2) -> None:
        self.after, self.updates = after, 0

    def after_update(self, view: TrainingView) -> None:
        self.updates += 1
        if Boom.armed and self.updates > self.after:
            raise RuntimeError(f"boom after {self.after} updates")


class BoomPlugin:
    @hookimpl
    def ctxrl_register_interventions(self, register: Callable[[InterventionSpec], None]) -> None:
        register(InterventionSpec("boom", Boom, description="raises mid-training"))
