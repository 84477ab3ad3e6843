"""The ``distill`` transfer method: source-context policies teach a student per target context.

``transfer: {name: distill, options: {steps, mode, temperature, weights, ...}}`` in a sweep
config turns the sweep's K sources into K teachers; every target context gets a student
trained in that context (``dagger``: multi-teacher KL distillation on the student's own
states; ``kickstart``: PPO plus a decaying distillation term; ``conditioned``: one student for
all targets that sees the context; ``proxy``: the sources distilled into one context-conditioned
proxy in their own contexts, which teaches a student per target). The method is
:class:`ctxrl_plugins.transfer.distill_method.Distill`; the students live in
:mod:`~ctxrl_plugins.transfer.distill_core`, their trainers in
:mod:`~ctxrl_plugins.transfer.distill_trainers`, the teachers and their weights in
:mod:`~ctxrl_plugins.transfer.distill_teachers`, the losses in
:mod:`~ctxrl_plugins.transfer.distill_losses`; this module only registers the method, so that
plugin discovery does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ctxrl import hookimpl
from ctxrl.registry import TransferMethodSpec


def _distill(
    steps: int,
    mode: str = "dagger",
    temperature: float | None = None,
    weights: str | None = None,
    scale: float | None = None,
    coef: float | None = None,
    decay: str | None = None,
    half_life: float | None = None,
    student: Mapping[str, Any] | None = None,
    seed_offset: int = 2_000_003,
    proxy_steps: int | None = None,
    start: str = "scratch",
) -> Any:
    from ctxrl_plugins.transfer.distill_method import Distill

    return Distill(
        steps,
        mode,  # type: ignore[arg-type]  # Distill checks the value
        temperature,
        weights,
        scale,
        coef,
        decay,  # type: ignore[arg-type]
        half_life,
        student,
        seed_offset,
        proxy_steps,
        start,  # type: ignore[arg-type]
    )


@hookimpl
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    register(
        TransferMethodSpec(
            name="distill",
            factory=_distill,
            batched_only=True,
            joint=True,
            description="one student per target taught by all sources (options: steps, mode "
            "dagger|kickstart|conditioned|proxy, temperature, weights distance|uniform|transfer, "
            "scale, coef, decay, half_life, student, proxy_steps, start scratch|best-teacher)",
        )
    )
