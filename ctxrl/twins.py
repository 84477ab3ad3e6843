"""Torch twins: ``B`` copies of a contextual environment in one object, stepped with tensor
operations on any device, each copy with its own context.

Batched algorithms (``batched-ppo``, ``batched-dqn``) and batched evaluation train and evaluate
on a twin instead of the gymnasium env. An env plugin offers one by setting
``EnvSpec.make_batched`` to a factory that returns a :class:`TorchTwin`; the easy way to write
one is to subclass :class:`BatchedEnv` and write the physics.

This module imports torch; ``import ctxrl`` does not import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from ctxrl.context import ContextSpace, visible_features
from ctxrl.errors import ContextError, CtxrlError
from ctxrl.rng import StreamRNG, splitmix64

Tensor = torch.Tensor


@runtime_checkable
class TorchTwin(Protocol):
    """What batched trainers and batched evaluation use of a torch twin.

    **Construction.** ``EnvSpec.make_batched(num_envs, *, contexts, device, env_seeds,
    **env_options)`` returns a twin of ``B = num_envs`` environments:

    - ``contexts``: feature name -> tensor ``(B,)`` (one value per env) or a single number;
      features not given take their defaults. Trainers pass every feature, float32. Values
      outside a feature's bounds, unknown features and violated cross-feature constraints raise
      :class:`~ctxrl.errors.ContextError` naming the env, the feature and the value.
    - ``device``: where every tensor of the twin lives (``cpu``, ``cuda``).
    - ``env_seeds``: int64 tensor ``(B,)``. Env ``i`` draws every random number (initial
      states, noise, contexts drawn from a pool) from its own stream seeded by
      ``env_seeds[i]`` (see :class:`ctxrl.rng.StreamRNG`), so its trajectory does not depend
      on ``B`` or on the other envs in the batch; the same seeds give the same trajectories.
      Without ``env_seeds`` a twin may draw from one shared generator (``seed=``).
    - ``env_options``: the sweep's ``env_options`` (e.g. ``visible=["masscart"]``, features
      appended to the observation, normalised to [0, 1] over their bounds). An option the twin
      does not take must raise TypeError or ValueError.

    **Shapes and dtypes.** Observations ``(B, observation_size)`` floating; discrete actions
    ``(B,)`` integers in ``[0, discrete_actions)``; continuous actions ``(B, action_dim)``
    floating (``(B,)`` is accepted when ``action_dim`` is 1); rewards ``(B,)`` floating;
    ``terminated``, ``truncated`` ``(B,)`` bool. Units are those of the gymnasium env the twin
    mirrors: one step is one step of that env and rewards are its per-step rewards.

    **Auto-reset.** ``step`` never needs a ``reset`` in between: where env ``i`` is done
    (terminated, or truncated at ``max_episode_steps`` steps), the same ``step`` starts its next
    episode and returns that episode's first observation in ``obs[i]``; the finished episode's
    last observation is ``info["final_obs"][i]`` (PPO bootstraps truncated episodes from it,
    DQN stores it as the next state). ``info["done"]`` is ``terminated | truncated``. For envs
    that are not done ``info["final_obs"][i] == obs[i]``. ``truncated`` is False where
    ``terminated`` is True.

    **Action bounds.** A continuous twin may declare ``action_bounds = (low, high)``, the
    gymnasium action space's bounds (the same for every context). The batched trainers clip
    their actions to them before ``step`` (:func:`clip_actions`), as gymnasium's ``ClipAction``,
    SB3 and CleanRL do: a reward that charges the action (MountainCarContinuous's ``-0.1 a^2``)
    sees the clipped one. Bounds that follow the context (Pendulum's ``max_torque``) are the
    twin's own to clamp.

    **Contexts.** ``context`` holds the contexts in force, feature -> ``(B,)``. With a context
    pool (:meth:`set_context_pool`) every env draws its context afresh at each episode start
    (multi-task training on a mixture), from its own random stream.

    **State.** :meth:`state_dict` returns tensors (copies) holding everything the twin needs to
    continue bit-exactly: a twin built with the same arguments that loads them steps exactly
    as the original would have. That includes the physical state, the steps elapsed in each
    episode, the current contexts (a pool redraws them), the random streams' seeds and
    counters and whatever else the twin keeps. Training checkpoints store it.
    """

    @property
    def num_envs(self) -> int:
        """``B``, the number of environments."""
        ...

    @property
    def device(self) -> torch.device:
        """The device of every tensor the twin takes and returns."""
        ...

    @property
    def observation_size(self) -> int:
        """Length of one observation (visible context features included)."""
        ...

    @property
    def discrete_actions(self) -> int | None:
        """Number of actions of a discrete env; None for continuous actions."""
        ...

    @property
    def action_dim(self) -> int:
        """1 for discrete actions (one integer per env); the action vector's size otherwise."""
        ...

    @property
    def max_episode_steps(self) -> int:
        """Steps after which an episode is truncated (the gymnasium env's time limit)."""
        ...

    @property
    def context(self) -> dict[str, Tensor]:
        """The contexts in force: feature -> ``(B,)``; treat as read-only."""
        ...

    def reset(self) -> Tensor:
        """Start a new episode in every env; observations ``(B, observation_size)``."""
        ...

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every env one step: ``(obs, reward, terminated, truncated, info)`` with
        ``info["done"]`` ``(B,)`` bool and ``info["final_obs"]`` ``(B, observation_size)``; done
        envs restart in the same step (see the class docstring)."""
        ...

    def set_context(
        self, values: Mapping[str, float | Tensor], env_ids: Tensor | None = None
    ) -> None:
        """Set features of all envs, or of ``env_ids`` (int64 ``(n,)``) only, where each value
        is a number or a tensor ``(n,)``. Validates everything before changing anything; takes
        effect for the dynamics at once."""
        ...

    def set_context_pool(self, contexts: Sequence[Mapping[str, float]] | None) -> None:
        """Draw each env's context uniformly from ``contexts`` at every episode start
        (partial contexts, missing features at their defaults); None keeps contexts fixed."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to continue bit-exactly, as tensors (copies, safetensors-ready:
        contiguous, names of letters, digits, ``.`` and ``_``)."""
        ...

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (from a twin built with the same
        arguments); raises ValueError when keys or shapes do not match."""
        ...


def require_batched_order(
    context: Mapping[str, Tensor], owner: str, low: str, high: str, *, strict: bool = False
) -> None:
    """Raise a :class:`ContextError` naming the first context (an env, or a pool entry) where
    ``context[low] <= context[high]`` (``<`` when strict) fails, with both values: the twin's
    side of :func:`ctxrl.contextual.require_order`. ``context``: feature -> ``(B,)``."""
    broken = context[low] >= context[high] if strict else context[low] > context[high]
    if bool(broken.any()):
        i = int(broken.nonzero()[0, 0])
        relation = "<" if strict else "<="
        raise ContextError(
            f"{owner}: context features need {low} {relation} {high}, got {low} = "
            f"{float(context[low][i]):g}, {high} = {float(context[high][i]):g} (context {i} "
            "of the batch or pool)"
        )


def clip_actions(twin: Any, action: Tensor) -> Tensor:
    """Continuous ``action`` clipped to the twin's ``action_bounds`` where it declares them
    (see :class:`TorchTwin`); otherwise (discrete actions, no bounds) ``action`` itself."""
    bounds = getattr(twin, "action_bounds", None)
    if bounds is None or twin.discrete_actions is not None:
        return action
    low, high = bounds
    return action.clamp(low, high)


def check_discrete_actions(twin: Any, action: Tensor) -> None:
    """A :class:`CtxrlError` naming the twin unless ``action`` holds ``(B,)`` whole numbers in
    ``[0, discrete_actions)``: gymnasium asserts this, and a twin read action 7 of
    MountainCar's 3 as a push 6 times the force. Skipped where ``twin.check_actions`` is
    False (the trainers and the batched evaluation set it: their actions are an argmax over
    the actions, and the check's synchronisation cost 12 % of a CartPole step) and inside a
    compiled graph; on a GPU the range is checked asynchronously."""
    n = twin.discrete_actions
    if n is None or not getattr(twin, "check_actions", True) or torch.compiler.is_compiling():
        return
    if action.is_floating_point() or action.dtype == torch.bool or action.is_complex():
        raise CtxrlError(f"{twin.name}: discrete actions must be integers, got {action.dtype}")
    if action.shape != (twin.num_envs,):
        raise CtxrlError(
            f"{twin.name}: discrete actions must be ({twin.num_envs},), one per env, got "
            f"{tuple(action.shape)}"
        )
    inside = ((action >= 0) & (action < n)).all()
    if action.device.type != "cpu":
        torch._assert_async(inside, f"{twin.name}: discrete actions must be in 0..{n - 1}")
    elif not bool(inside):
        bad = action[(action < 0) | (action >= n)]
        raise CtxrlError(
            f"{twin.name}: discrete actions must be in 0..{n - 1}, got {bad[:3].tolist()}"
        )


class BatchedEnv:
    """The easy way to write a :class:`TorchTwin`: subclass, set the class attributes and
    write the physics; contexts (validation, pools, visible features), random streams,
    auto-reset and ``state_dict`` come from here.

    Class attributes:
        name: the env's registry name (used in error messages).
        space: its :class:`~ctxrl.context.ContextSpace`.
        obs_dim: length of the physical observation (without visible features).
        state_dim: length of the physical state.
        discrete_actions: number of actions, None for continuous.
        action_dim: 1 for discrete actions; the action vector's size otherwise.
        max_episode_steps: time limit of an episode.
        action_bounds: ``(low, high)`` of continuous actions, or None (see :class:`TorchTwin`).

    Subclasses implement, on states stored as ``(state_dim, n)`` (each state variable
    contiguous, so ``x, v = state`` unpacks rows):

    - ``_initial_state(env_ids)``: fresh states ``(state_dim, n)`` for ``env_ids`` (all envs
      when None); draw random numbers with ``self._uniform(low, high, shape, env_ids)`` so
      each env uses its own stream, and read contexts with ``self._ctx(name, env_ids)``.
    - ``_dynamics(state, action)``: ``(next_state (state_dim, B), reward (B,), terminated
      (B,))`` for all envs at once, reading ``self.context`` / ``self.derived``; it must not
      modify ``state`` in place.
    - optionally ``_observe(state)``: observations ``(B, obs_dim)`` (default ``state.T``),
      ``_derive(context)``: quantities recomputed whenever contexts change (kept in
      ``self.derived``), ``_check(context)``: cross-feature constraints (raise ContextError),
      and ``_extra_state`` / ``_load_extra_state`` for tensors a subclass keeps beyond these.

    Args:
        num_envs: ``B``.
        contexts: feature -> a number (same for all envs) or a tensor ``(B,)``; missing
            features take their defaults.
        device: a torch device (``cpu``, ``cuda``).
        seed: seed of the shared generator used when ``env_seeds`` is not given.
        dtype: floating dtype of states, contexts and observations (float32; float64 for
            exactness).
        visible: features appended (normalised to [0, 1]) to the observation.
        env_seeds: int64 ``(B,)``: one random stream per env (see :class:`TorchTwin`).
    """

    name: ClassVar[str]
    space: ClassVar[ContextSpace]
    obs_dim: ClassVar[int]
    state_dim: ClassVar[int]
    discrete_actions: ClassVar[int | None]
    check_actions: bool = True
    """whether :meth:`step` checks discrete actions (:func:`check_discrete_actions`)"""
    action_dim: ClassVar[int] = 1
    max_episode_steps: ClassVar[int]
    action_bounds: ClassVar[tuple[float, float] | None] = None

    def __init__(
        self,
        num_envs: int,
        *,
        contexts: Mapping[str, float | Tensor] | None = None,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        visible: Sequence[str] = (),
        env_seeds: Tensor | Sequence[int] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"{self.name}: num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.visible = visible_features(self.space, visible)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else seed)
        self.streams: StreamRNG | None = None
        if env_seeds is not None:
            seeds = torch.as_tensor(env_seeds, dtype=torch.int64, device=self.device)
            if seeds.shape != (num_envs,):
                raise ValueError(f"{self.name}: env_seeds needs shape ({num_envs},)")
            self.streams = StreamRNG(seeds)
        self._env_seeds = None if env_seeds is None else seeds
        self.context: dict[str, Tensor] = {
            f.name: torch.full((num_envs,), f.default, device=self.device, dtype=dtype)
            for f in self.space.features
        }
        self.derived: dict[str, Tensor] = {}
        self._pool: dict[str, Tensor] | None = None
        self.set_context(contexts or {})
        self._state = torch.zeros(self.state_dim, num_envs, device=self.device, dtype=dtype)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.branch_free = self.device.type != "cpu"
        """``step`` without data-dependent control flow or indexing (no host synchronisation,
        fit for ``torch.compile`` and CUDA graphs): fresh states are drawn for every env and
        kept where one finished. With ``env_seeds`` only the finished envs' streams advance,
        so both ways give the same numbers. Default: on for accelerators, off on the CPU
        (where drawing only for the finished envs is cheaper in eager mode)."""
        self._advance: Tensor | None = None

    @property
    def state(self) -> Tensor:
        """The physical state, shape ``(B, state_dim)`` (a view: writes go to the envs).

        Stored as ``(state_dim, B)`` so that each state variable is contiguous in memory."""
        return self._state.T

    # --------------------------------------------------------------------------- contexts
    @property
    def observation_size(self) -> int:
        return self.obs_dim + len(self.visible)

    def set_context(
        self, values: Mapping[str, float | Tensor], env_ids: Tensor | None = None
    ) -> None:
        """Validate all ``values`` first, then apply them (to ``env_ids`` only, if given: env
        indices, a tensor or a list).

        Raises a ContextError naming the env, the feature, the offending value and the range.
        """
        if env_ids is not None:
            given = torch.as_tensor(env_ids)
            if given.dtype == torch.bool or given.is_floating_point() or given.is_complex():
                raise ContextError(
                    f"{self.name}: env_ids are env indices (whole numbers), got {given.dtype}"
                    + (
                        ": for a mask pass mask.nonzero().squeeze(1)"
                        if given.dtype == torch.bool
                        else ""
                    )
                )
            env_ids = given.to(device=self.device, dtype=torch.int64).reshape(-1)
            if bool(((env_ids < 0) | (env_ids >= self.num_envs)).any()):
                raise ContextError(
                    f"{self.name}: env_ids must lie in 0..{self.num_envs - 1}, got "
                    f"{env_ids.tolist()}"
                )
        count = self.num_envs if env_ids is None else int(env_ids.numel())
        checked: dict[str, Tensor] = {}
        for name, value in values.items():
            feature = self.space.feature(str(name))
            if isinstance(value, bool) or not isinstance(value, Real | Tensor):
                raise ContextError(
                    f"{self.name}: context feature {name!r} must be a number or a tensor, got "
                    f"{type(value).__name__}"
                )
            tensor = torch.as_tensor(value, dtype=self.dtype, device=self.device)
            one_value = tensor.ndim == 0  # for every env: no env of its own to name
            if one_value:
                tensor = tensor.expand(count)
            if tensor.shape != (count,):
                raise ContextError(
                    f"{self.name}: context feature {name!r} needs shape ({count},), "
                    f"got {tuple(tensor.shape)}"
                )
            bad = ~torch.isfinite(tensor) | (tensor < feature.lower) | (tensor > feature.upper)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                env = i if env_ids is None else int(env_ids[i])
                which = "" if one_value else f" (env {env})"
                raise ContextError(
                    f"{self.name}: context feature {name!r} = {float(tensor[i])}{which} is "
                    f"outside the allowed range [{feature.lower}, {feature.upper}]"
                )
            checked[str(name)] = tensor.clone()
        merged = {k: (v if env_ids is None else v[env_ids]) for k, v in self.context.items()}
        merged.update(checked)
        self._check(merged)
        for name, tensor in checked.items():
            if env_ids is None:
                self.context[name] = tensor
            else:
                self.context[name][env_ids] = tensor
        self._contexts_changed()

    def set_context_pool(self, contexts: Sequence[Mapping[str, float]] | None) -> None:
        """Draw each env's context afresh at every episode start, uniformly from ``contexts``
        (multi-task training on a mixture); ``None`` keeps contexts fixed. The pool is
        validated whole before it is used."""
        if contexts is None:
            self._pool = None
            return
        full = []
        for index, context in enumerate(contexts):
            try:
                full.append(self.space.validate(context))
            except ContextError as exc:
                said = str(exc).removeprefix(f"{self.space.owner}: ")
                raise ContextError(f"{self.name}: context {index} of the pool: {said}") from exc
        if not full:
            raise ContextError(f"{self.name}: a context pool needs at least one context")
        pool = {
            n: torch.tensor([c[n] for c in full], dtype=self.dtype, device=self.device)
            for n in self.space.names
        }
        self._check(pool)
        self._pool = pool

    def _draw_contexts(self, env_ids: Tensor | None, where: Tensor | None = None) -> None:
        """New contexts from the pool for ``env_ids`` (all when None; only ``where`` True)."""
        pool = self._pool
        if pool is None:
            return
        size = next(iter(pool.values())).shape[0]
        u = self._uniform(
            0.0, 1.0, (self.num_envs,) if env_ids is None else (int(env_ids.numel()),), env_ids
        )
        index = (u * size).long().clamp(max=size - 1)
        for name, values in pool.items():
            if env_ids is None:
                chosen = values[index]
                self.context[name] = (
                    chosen if where is None else torch.where(where, chosen, self.context[name])
                )
            else:
                self.context[name][env_ids] = values[index]
        self._contexts_changed()

    def _contexts_changed(self) -> None:
        """Recompute what depends on the contexts: derived quantities, visible features."""
        self.derived = self._derive(self.context)
        if self.visible:
            self._visible_cache = self._context_obs()

    def _check(self, context: Mapping[str, Tensor]) -> None:
        """Cross-feature constraints (override where features must be ordered)."""

    def _derive(self, context: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Quantities derived from the context, recomputed whenever it changes."""
        return {}

    def _context_obs(self) -> Tensor:
        """The visible features normalised to [0, 1] ``(B, len(visible))``, on the device
        (:meth:`ContextFeature.to_unit` in float64, without a copy to the host: with a context
        pool it runs at every step)."""
        columns = []
        for name in self.visible:
            feature = self.space.feature(name)
            value = self.context[name].detach().to(torch.float64)
            if feature.scale == "log":
                low, high = math.log(feature.lower), math.log(feature.upper)
                unit = (value.log() - low) / (high - low) if high > low else value * 0.0
            else:
                span = feature.upper - feature.lower
                unit = (value - feature.lower) / span if span > 0 else value * 0.0
            columns.append(unit.to(self.dtype))
        return torch.stack(columns, dim=1)

    def _with_context(self, obs: Tensor) -> Tensor:
        if not self.visible:
            return obs
        return torch.cat([obs, self._visible_cache], dim=1)

    # ------------------------------------------------------------------------- stepping
    def _uniform(
        self,
        low: Tensor | float,
        high: Tensor | float,
        shape: tuple[int, ...],
        env_ids: Tensor | None = None,
    ) -> Tensor:
        """Uniform samples of ``shape`` = ``(rows, n)`` or ``(n,)``, column ``k`` for env
        ``env_ids[k]`` (all envs when None). With ``env_seeds`` each env draws from its own
        stream, so its numbers do not depend on the other envs in the batch."""
        advance = self._advance if env_ids is None else None
        if self.streams is None:
            u = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)
        elif len(shape) == 2:
            u = self.streams.uniform(shape[0], env_ids, self.dtype, advance=advance).T
        else:
            u = self.streams.uniform(1, env_ids, self.dtype, advance=advance)[:, 0]
        return low + (high - low) * u

    def _ctx(self, name: str, env_ids: Tensor | None) -> Tensor:
        value = self.context[name]
        return value if env_ids is None else value[env_ids]

    def reset(self, seed: int | None = None) -> Tensor:
        """Start a new episode in every env; return observations ``(B, obs)``. A ``seed``
        reseeds the shared generator and the per-env streams: env ``i``'s stream from
        ``env_seeds[i]`` and ``seed`` together (each seed its own episodes, as gymnasium's
        ``reset(seed=...)``; it used to rewind the streams whatever the seed, so every seed
        gave the same episodes)."""
        if seed is not None:
            self.generator.manual_seed(seed)
            if self._env_seeds is not None:
                mixed = splitmix64(torch.tensor(int(seed), dtype=torch.int64, device=self.device))
                self.streams = StreamRNG(self._env_seeds ^ mixed)
        self._draw_contexts(None)
        self._state = self._initial_state(None)
        self.elapsed.zero_()
        return self._with_context(self._observe(self._state))

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every env one step; done envs restart at once (see :class:`TorchTwin`)."""
        check_discrete_actions(self, action)
        next_state, reward, terminated = self._dynamics(self._state, action)
        # new tensors rather than in-place updates of the twin's own (here and in the streams):
        # torch.compile's CUDA graphs skip a function that mutates its inputs
        self.elapsed = self.elapsed + 1
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        # the finished episodes' last observations, their visible context columns taken
        # before the next episodes' contexts are drawn
        final_obs = self._with_context(self._observe(next_state))
        if not self.branch_free:
            # Sample fresh states only for the envs that finished.
            ids = done.nonzero().squeeze(1)
            if ids.numel():
                final_obs = final_obs.clone()  # it may view next_state, which changes now
                self._draw_contexts(ids)
                next_state[:, ids] = self._initial_state(ids)
                self.elapsed[ids] = 0
                obs = self._with_context(self._observe(next_state))
            else:
                obs = final_obs
            self._state = next_state
        else:
            # Branch-free: draw for every env, keep where done; only done envs' streams advance.
            self._advance = done
            try:
                self._draw_contexts(None, where=done)
                fresh = self._initial_state(None)
            finally:
                self._advance = None
            self._state = torch.where(done, fresh, next_state)
            self.elapsed = torch.where(done, torch.zeros_like(self.elapsed), self.elapsed)
            obs = self._with_context(self._observe(self._state))
        info = {"final_obs": final_obs, "done": done}
        return obs, reward, terminated, truncated, info

    # ---------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor]:
        """Copies of everything the twin needs to continue bit-exactly.

        Keys:
            ``state``: physical state ``(B, state_dim)``, the twin's dtype.
            ``elapsed``: steps into the current episode ``(B,)`` int64.
            ``context.<feature>``: contexts in force ``(B,)``, one key per feature.
            ``generator``: the shared generator's state (uint8), used without ``env_seeds``.
            ``rng.seeds``, ``rng.counters``: the per-env streams ``(B,)`` int64 (with
            ``env_seeds`` only).
            ``pool.<feature>``: the context pool ``(P,)`` (while one is set only).
            ``state_strides``: the physical state's memory layout, its strides ``(2,)``
                int64 (a compiled rollout is specialised to its inputs' strides: restored in
                another layout it would run another kernel, whose rounding differs).

        A subclass's ``_extra_state`` adds its own keys.
        """
        state = {
            "state": self._state.T.clone(memory_format=torch.contiguous_format),
            "state_strides": torch.tensor(self._state.stride(), dtype=torch.int64),
            "elapsed": self.elapsed.clone(),
            "generator": self.generator.get_state(),
        }
        state.update({f"context.{k}": v.clone() for k, v in self.context.items()})
        if self.streams is not None:
            state["rng.seeds"] = self.streams.seeds.clone()
            state["rng.counters"] = self.streams.counters.clone()
        if self._pool is not None:
            state.update({f"pool.{k}": v.clone() for k, v in self._pool.items()})
        state.update(self._extra_state())
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned, onto this twin's device. Every key must be
        there and every shape match (ValueError otherwise); contexts are taken as saved (they
        were validated when set), derived quantities recomputed. The pool is the saved one, or
        none if none was saved."""
        rest = dict(state)
        b = (self.num_envs,)

        def take(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
            if key not in rest:
                raise ValueError(f"{self.name}: state_dict has no {key!r}")
            value = rest.pop(key)
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise ValueError(
                    f"{self.name}: state_dict[{key!r}] is {value.dtype} {tuple(value.shape)}, "
                    f"expected {dtype} {shape}"
                )
            return value.to(self.device).clone()

        # in the memory layout it was saved in (a compiled rollout is specialised to its
        # inputs' strides; another layout would run another kernel, whose rounding differs,
        # and a resumed run would not be exact); a state dict without it (an earlier ctxrl's)
        # takes the layout of the state it replaces
        saved = take("state", (*b, self.state_dim), self.dtype).T
        strides = rest.pop("state_strides", None)
        dense = {(self.num_envs, 1), (1, self.state_dim)}  # the two layouts of (state_dim, B)
        if strides is not None and tuple(int(x) for x in strides.tolist()) in dense:
            layout = tuple(int(x) for x in strides.tolist())
            physical = torch.empty_strided(
                saved.shape, layout, dtype=self.dtype, device=self.device
            )
        else:
            physical = torch.empty_like(self._state)
        physical.copy_(saved)
        elapsed = take("elapsed", b, torch.long)
        context = {n: take(f"context.{n}", b, self.dtype) for n in self.space.names}
        if "generator" not in rest:
            raise ValueError(f"{self.name}: state_dict has no 'generator'")
        generator = rest.pop("generator").to("cpu", torch.uint8)
        streams = None
        if self.streams is not None or "rng.seeds" in rest:
            streams = StreamRNG(torch.zeros(b, dtype=torch.int64, device=self.device))
            seeds, counters = (
                take("rng.seeds", b, torch.int64),
                take("rng.counters", b, torch.int64),
            )
            streams.load_state_dict({"seeds": seeds, "counters": counters})
        pool = None
        if any(k.startswith("pool.") for k in rest):
            size = rest[f"pool.{self.space.names[0]}"].shape
            pool = {n: take(f"pool.{n}", tuple(size), self.dtype) for n in self.space.names}
        extra = {k: v for k, v in rest.items() if not k.startswith("pool.")}
        self._load_extra_state(extra)
        self.generator.set_state(generator)
        self._state, self.elapsed, self.context = physical, elapsed, context
        self.streams, self._pool = streams, pool
        self._contexts_changed()

    def _extra_state(self) -> dict[str, Tensor]:
        """Tensors a subclass keeps beyond those of :meth:`state_dict` (copies)."""
        return {}

    def _load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`_extra_state`'s tensors; ``state`` holds the keys left over."""
        if state:
            raise ValueError(f"{self.name}: state_dict has unexpected keys {sorted(state)}")

    # Subclasses implement the physics on states of shape (state_dim, n) --------------------
    def _initial_state(self, env_ids: Tensor | None) -> Tensor:
        """Fresh states for ``env_ids`` (all envs when None), shape ``(state_dim, n)``."""
        raise NotImplementedError

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(next_state (state_dim, B), reward (B,), terminated (B,))``."""
        raise NotImplementedError

    def _observe(self, state: Tensor) -> Tensor:
        """Observations ``(B, obs_dim)`` of states ``(state_dim, B)``."""
        return state.T


if TYPE_CHECKING:  # a static check that BatchedEnv meets the protocol

    def _is_torch_twin(env: BatchedEnv) -> TorchTwin:
        return env


__all__ = ["BatchedEnv", "TorchTwin"]
