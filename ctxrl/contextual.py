"""A gymnasium wrapper that gives any env a context.

A :class:`ContextFamily` says how a context acts on one gymnasium environment: which features
exist, how to set them on the instance (derived quantities recomputed, spaces updated, nothing
written to module or class state), which reset options they imply and which cross-feature
constraints hold. :class:`ContextualEnv` applies a family's context at construction and at
``reset(options={"context": {...}})``, and optionally appends chosen context features, normalised
to [0, 1], to a flat Box observation.

This is the public API env plugins build their gymnasium side with (``make_contextual`` gives
what ``EnvSpec.make`` returns); the torch side is :mod:`ctxrl.twins`. Importing this module
imports gymnasium, not torch.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ctxrl.context import Context, ContextSpace, visible_features
from ctxrl.errors import ContextError
from ctxrl.registry import EnvSpec


@dataclass(frozen=True)
class ContextFamily:
    """How contexts act on one gymnasium environment.

    Attributes:
        name: the ctxrl env name (``CartPole``).
        space: the context features.
        build: ``build(render_mode) -> gymnasium.Env``, a fresh unwrapped base env.
        apply: ``apply(base_env, context)`` sets the context on the instance.
        reset_options: ``reset_options(context) -> dict`` passed to the base env's reset.
        check: ``check(context)`` raises ContextError when features contradict each other.
    """

    name: str
    space: ContextSpace
    build: Callable[[str | None], gym.Env]
    apply: Callable[[Any, Context], None]
    reset_options: Callable[[Context], dict[str, Any]] = lambda context: {}
    check: Callable[[Context], None] = lambda context: None

    def validate(self, values: Mapping[str, object] | None) -> Context:
        context = self.space.validate(values)
        self.check(context)
        return context


def require_order(context: Context, owner: str, *names: str, strict: bool = False) -> None:
    """Raise unless ``context[names[0]] <= context[names[1]] <= ...`` (``<`` when strict)."""
    for low, high in itertools.pairwise(names):
        a, b = context[low], context[high]
        if a > b or (strict and a == b):
            relation = "<" if strict else "<="
            raise ContextError(
                f"{owner}: context features need {low} {relation} {high}, got {low} = {a}, "
                f"{high} = {b}"
            )


class ContextualEnv(gym.Wrapper):
    """A gymnasium env whose dynamics follow a context.

    Args:
        family: how the context acts on the base env.
        context: a partial mapping of feature -> value (missing features at their defaults).
        visible: features appended to the observation, each normalised to [0, 1] over its
            bounds. Empty (default) keeps the context hidden.
        render_mode: passed to the base env.
    """

    def __init__(
        self,
        family: ContextFamily,
        context: Mapping[str, object] | None = None,
        visible: Sequence[str] = (),
        render_mode: str | None = None,
    ) -> None:
        self.family = family
        initial = family.validate(context)
        visible = visible_features(family.space, visible)
        base = family.build(render_mode)
        super().__init__(base)
        self.visible = visible
        if self.visible and not (
            isinstance(base.observation_space, spaces.Box)
            and len(base.observation_space.shape) == 1
        ):
            raise ContextError(f"{family.name}: visible contexts need a flat Box observation")
        self._context = initial
        self._apply(initial)

    @property
    def context(self) -> Context:
        """The context in force."""
        return self._context

    def __deepcopy__(self, memo: dict[int, Any]) -> ContextualEnv:
        """A copy at the same context. A base env that copies itself by rebuilding from its
        constructor's arguments (gymnasium's box2d envs, ``EzPickle``) would come back with
        the default physics under this wrapper's context; such an env is copied as a new env
        at this context (at the start of an episode, as gymnasium copies it). Others are copied
        whole, the episode's state included."""
        from gymnasium.utils import EzPickle

        if isinstance(self.env.unwrapped, EzPickle):
            render_mode = self.env.unwrapped.render_mode
            clone = ContextualEnv(self.family, self._context, self.visible, render_mode)
            memo[id(self)] = clone
            return clone
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone

    def set_context(self, values: Mapping[str, object] | None) -> Context:
        """Validate a (partial) context and apply it; nothing changes if validation fails.

        Classic-control physics constants take effect immediately; what an env builds at reset
        (initial-state ranges, box2d bodies and terrain, a SUMO scenario) from the next reset.
        For those envs a change in the middle of an episode is not a valid episode of either
        context (a box2d lander's scale applies to its observations at once, to its body only at
        reset; a traffic env ends the episode): call ``reset`` after ``set_context``, or pass
        the context to it, ``reset(options={"context": ...})``, as ctxrl's trainers do."""
        context = self.family.validate(values)
        self._apply(context)
        self._context = context
        return context

    def _apply(self, context: Context) -> None:
        self.family.apply(self.env.unwrapped, context)
        base = self.env.observation_space
        if self.visible:
            assert isinstance(base, spaces.Box)
            low = np.concatenate([base.low, np.zeros(len(self.visible))]).astype(np.float32)
            high = np.concatenate([base.high, np.ones(len(self.visible))]).astype(np.float32)
            self.observation_space = spaces.Box(low, high, dtype=np.float32)
        else:
            self.observation_space = base

    def _context_features(self) -> np.ndarray:
        if not self.visible:
            return np.zeros(0, dtype=np.float32)
        unit: np.ndarray = self.family.space.to_unit([self._context], self.visible)[0]
        return unit.astype(np.float32)

    def observation(self, obs: Any) -> Any:
        if not self.visible:
            return obs
        return np.concatenate([np.asarray(obs, dtype=np.float32), self._context_features()])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        options = dict(options or {})
        if "context" in options:
            self.set_context(options.pop("context"))
        merged = {**self.family.reset_options(self._context), **options}
        obs, info = self.env.reset(seed=seed, options=merged or None)
        info = dict(info)
        info["context"] = self._context.as_dict()
        return self.observation(obs), info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["context"] = self._context.as_dict()
        # numpy scalars (float32 from box2d) become Python floats, as SB3 and gymnasium expect
        return self.observation(obs), float(reward), bool(terminated), bool(truncated), info


def make_contextual(
    family: ContextFamily,
    max_episode_steps: int | None,
    context: Mapping[str, object] | None = None,
    *,
    visible: Sequence[str] = (),
    render_mode: str | None = None,
) -> gym.Env:
    """A :class:`ContextualEnv` with gymnasium's time limit, as ``EnvSpec.make`` returns it."""
    env: gym.Env = ContextualEnv(family, context, visible, render_mode)
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    return env


class GymnasiumEntryPoint:
    """What a module names as its env's gymnasium entry point when the env is not a
    :class:`ContextualEnvEntry` (which is one itself): ``make`` called with gymnasium's keywords,
    and the env's ``metadata``, which ``gymnasium.make`` reads before the call (for
    ``render_mode="rgb_array_list"`` and ``"human"``).

    Register it by its import path, ``gym.register(id, entry_point="module:ATTRIBUTE")``, so that
    ``env.spec.to_json()`` works and another process can make the env from the spec.
    """

    def __init__(self, make: Callable[..., gym.Env], metadata: Mapping[str, Any]) -> None:
        self.make = make
        self.metadata = dict(metadata)

    def __call__(self, **kwargs: Any) -> gym.Env:
        return self.make(**kwargs)


@dataclass(frozen=True)
class ContextualEnvEntry:
    """Everything ctxrl and gymnasium need to offer one contextual env.

    Attributes:
        family: how the context acts on the env.
        max_episode_steps: gymnasium's time limit.
        return_bounds: episode returns mapped to 0 and 1 when normalising performance.
        action_space: ``discrete`` or ``continuous``.
        version: the gymnasium id's version (``ctxrl/{name}-{version}``).
        description: one line for ``ctxrl envs``.
        make_batched: the torch twin's factory, if the env has one.
    """

    family: ContextFamily
    max_episode_steps: int
    return_bounds: tuple[float, float]
    action_space: Literal["discrete", "continuous"]
    version: str
    description: str
    make_batched: Callable[..., Any] | None = None

    @property
    def gym_id(self) -> str:
        return f"ctxrl/{self.family.name}-{self.version}"

    def make(
        self,
        context: Mapping[str, object] | None = None,
        *,
        visible: Sequence[str] = (),
        render_mode: str | None = None,
    ) -> gym.Env:
        """The contextual env with gymnasium's time limit."""
        return make_contextual(
            self.family, self.max_episode_steps, context, visible=visible, render_mode=render_mode
        )

    def make_unlimited(
        self,
        context: Mapping[str, object] | None = None,
        *,
        visible: Sequence[str] = (),
        render_mode: str | None = None,
    ) -> gym.Env:
        """Entry point for ``gymnasium.make``, which adds the time limit itself."""
        return ContextualEnv(self.family, context, visible, render_mode)

    def spec(self) -> EnvSpec:
        return EnvSpec(
            name=self.family.name,
            context_space=self.family.space,
            make=self.make,
            return_bounds=self.return_bounds,
            action_space=self.action_space,
            make_batched=self.make_batched,
            max_episode_steps=self.max_episode_steps,
            gym_id=self.gym_id,
            description=self.description,
            check_context=self.family.check,
        )

    def __call__(
        self,
        context: Mapping[str, object] | None = None,
        *,
        visible: Sequence[str] = (),
        render_mode: str | None = None,
    ) -> gym.Env:
        """The entry point ``gymnasium.make`` calls (:meth:`make_unlimited`)."""
        return self.make_unlimited(context, visible=visible, render_mode=render_mode)

    @functools.cached_property
    def metadata(self) -> dict[str, Any]:
        """The base env's ``metadata`` (render modes, frame rate), read by ``gymnasium.make``
        before it calls the entry point: with it ``render_mode="rgb_array_list"`` and
        ``"human"`` get gymnasium's wrappers where the env renders ``rgb_array`` only."""
        base = self.family.build(None)
        try:
            return dict(base.metadata)
        finally:
            base.close()

    def register_with_gymnasium(self, entry_point: str | None = None) -> None:
        """Register ``ctxrl/{name}-{version}`` with gymnasium (idempotent).

        Args:
            entry_point: where this entry can be imported, ``"package.module:ATTRIBUTE"``.
                gymnasium stores the path, not the object, so ``env.spec.to_json()`` works and
                a spec sent to another process makes the same env there. None registers the
                entry object itself (everything works but ``to_json``).
        """
        if self.gym_id not in gym.registry:
            gym.register(
                self.gym_id,
                # gymnasium types entry points as taking any keywords; this one takes the
                # documented ones (context, visible, render_mode) and rejects the rest
                entry_point=entry_point or self,  # type: ignore[arg-type]
                max_episode_steps=self.max_episode_steps,
            )
