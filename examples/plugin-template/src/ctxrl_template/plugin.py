"""The plugin module: hook implementations only, found through the ``ctxrl`` entry point.

Heavy imports (gymnasium, torch, the env modules) happen inside the factories, so that listing
plugins stays fast. Only ctxrl's public API is used: ``ctxrl``, ``ctxrl.contextual`` (the
gymnasium side), ``ctxrl.twins`` (the torch twin, see ``twin.py``), ``ctxrl.interventions``
(see ``weight_clip.py``) and ``ctxrl.transfer`` (see ``scratch.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ctxrl import (
    ContextFeature,
    ContextSpace,
    CtxrlError,
    EnvSpec,
    InterventionSpec,
    SelectionState,
    StrategySpec,
    TransferMethodSpec,
    hookimpl,
)

if TYPE_CHECKING:  # ctxrl.twins and the intervention import torch: only when they are built
    from ctxrl.twins import TorchTwin

    from .scratch import Scratch
    from .weight_clip import WeightClip

SPRING = ContextSpace(
    [
        ContextFeature("stiffness", 1.0, 0.1, 10.0, unit="N/m", description="spring constant"),
        ContextFeature("mass", 1.0, 0.1, 10.0, unit="kg", description="moving mass"),
        ContextFeature("damping", 0.1, 0.0, 2.0, unit="N s/m", description="viscous damping"),
    ],
    owner="Spring",
)


def make_spring(
    context: Mapping[str, object] | None = None,
    *,
    visible: Sequence[str] = (),
    render_mode: str | None = None,
) -> Any:
    """The Spring env with a context, using ctxrl's contextual wrapper."""
    from ctxrl.contextual import ContextFamily, make_contextual

    from .spring import SpringEnv

    def apply(env: Any, context: Mapping[str, float]) -> None:
        env.stiffness, env.mass, env.damping = (
            context["stiffness"],
            context["mass"],
            context["damping"],
        )

    family = ContextFamily("Spring", SPRING, lambda mode: SpringEnv(), apply)
    return make_contextual(family, 200, context, visible=visible, render_mode=render_mode)


def make_spring_twin(num_envs: int, **kwargs: Any) -> TorchTwin:
    """The Spring env's torch twin (a :class:`ctxrl.twins.TorchTwin`) of ``num_envs`` springs;
    ``kwargs`` are those of :class:`ctxrl.twins.BatchedEnv` (``contexts``, ``device``,
    ``env_seeds``, ``visible``, ...)."""
    from .twin import BatchedSpring

    return BatchedSpring(num_envs, **kwargs)


class FarthestFirst:
    """Start in the middle; then always the context farthest from every chosen one."""

    def propose(self, state: SelectionState) -> list[int]:
        if not state.selected:
            middle = (state.coords.min(axis=0) + state.coords.max(axis=0)) / 2
            return [int(np.argmin(np.abs(state.coords - middle).sum(axis=1)))]
        chosen = state.coords[state.selected]
        distance = np.abs(state.coords[:, None, :] - chosen[None, :, :]).sum(axis=2).min(axis=1)
        return [int(np.argmax(distance))]


def _farthest_first(**options: object) -> FarthestFirst:
    if options:
        raise CtxrlError(f"strategy 'farthest-first' takes no options, got {sorted(options)}")
    return FarthestFirst()


@hookimpl
def ctxrl_register_envs(register: Callable[[EnvSpec], None]) -> None:
    register(
        EnvSpec(
            name="Spring",
            context_space=SPRING,
            make=make_spring,
            # normalisation bounds: 0 is a mass held at rest; a random policy's median return
            # runs from -5 (stiff, light) to -1330 (soft, heavy) over the context range, and
            # returns below the lower bound are clipped to it (-200 clipped half the episodes of
            # soft springs)
            return_bounds=(-1500.0, 0.0),
            action_space="discrete",
            make_batched=make_spring_twin,
            max_episode_steps=200,
            description="hold a mass on a spring at zero (template plugin)",
        )
    )


@hookimpl
def ctxrl_register_strategies(register: Callable[[StrategySpec], None]) -> None:
    register(
        StrategySpec(
            "farthest-first",
            _farthest_first,
            description="the context farthest from all chosen ones (template)",
        )
    )


def _weight_clip(kappa: float = 2.0) -> WeightClip:
    """The factory's signature is what ctxrl reads as the options and their defaults
    (`ctxrl options intervention weight-clip`, `--dry-run`, a run directory's record); the
    class is imported here, when an intervention is built, so that listing plugins imports
    no torch. An unknown option is a TypeError naming it."""
    from .weight_clip import WeightClip

    return WeightClip(kappa=kappa)


@hookimpl
def ctxrl_register_interventions(register: Callable[[InterventionSpec], None]) -> None:
    register(
        InterventionSpec(
            "weight-clip",
            _weight_clip,
            description="weights clipped to kappa x their initial scale (template)",
        )
    )


def _scratch(steps: int) -> Scratch:
    """``steps`` has no default: ``ctxrl options transfer scratch`` lists it as required."""
    from .scratch import Scratch

    return Scratch(steps=steps)


@hookimpl
def ctxrl_register_transfer_methods(register: Callable[[TransferMethodSpec], None]) -> None:
    register(
        TransferMethodSpec(
            name="scratch",
            factory=_scratch,
            batched_only=True,  # it trains: needs train_many
            description="a fresh agent trained on each target, the sources ignored (template)",
        )
    )
