"""Torch-batched twins of the classic-control envs: ``B`` environments in one object, each with
its own context, stepped with tensor operations on any device.

Semantics follow gymnasium: the same dynamics, rewards, termination and time-limit truncation
as the gymnasium env (tested for parity against gymnasium's own code). Resetting is automatic and
happens in the same step: where an env is done, ``step`` returns the first observation of its
next episode and keeps the last observation of the finished one in ``info["final_obs"]``.

Shapes: observations ``(B, obs_dim)``; discrete actions ``(B,)`` integers; continuous actions
``(B,)`` or ``(B, 1)``; rewards, ``terminated``, ``truncated`` ``(B,)``; each context feature is a
tensor of shape ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ctxrl.context import ContextSpace
from ctxrl.errors import ContextError
from ctxrl.rng import StreamRNG
from ctxrl_envs import classic_control as cc

Tensor = torch.Tensor


class BatchedEnv:
    """Base class of the batched twins.

    Args:
        num_envs: ``B``.
        contexts: feature -> a number (same for all envs) or a tensor of shape ``(B,)``;
            missing features take their defaults.
        device: a torch device (``cpu``, ``cuda``).
        seed: seed of the twin's own random generator (initial states, noise).
        dtype: floating dtype of states and observations (float32; float64 for exactness).
        visible: features appended (normalised to [0, 1]) to the observation.
    """

    name: ClassVar[str]
    space: ClassVar[ContextSpace]
    obs_dim: ClassVar[int]
    state_dim: ClassVar[int]
    discrete_actions: ClassVar[int | None]  # number of actions, None for continuous
    max_episode_steps: ClassVar[int]

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
        for name in visible:
            self.space.feature(name)
        self.visible = tuple(visible)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0 if seed is None else seed)
        self.streams: StreamRNG | None = None
        if env_seeds is not None:
            seeds = torch.as_tensor(env_seeds, dtype=torch.int64, device=self.device)
            if seeds.shape != (num_envs,):
                raise ValueError(f"{self.name}: env_seeds needs shape ({num_envs},)")
            self.streams = StreamRNG(seeds)
        self.context: dict[str, Tensor] = {
            f.name: torch.full((num_envs,), f.default, device=self.device, dtype=dtype)
            for f in self.space.features
        }
        self.derived: dict[str, Tensor] = {}
        self._pool: dict[str, Tensor] | None = None
        self.set_context(contexts or {})
        self._state = torch.zeros(self.state_dim, num_envs, device=self.device, dtype=dtype)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=self.device)

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
        """Validate all ``values`` first, then apply them (to ``env_ids`` only, if given).

        Raises a ContextError naming the env, the feature, the offending value and the range.
        """
        count = self.num_envs if env_ids is None else int(env_ids.numel())
        checked: dict[str, Tensor] = {}
        for name, value in values.items():
            feature = self.space.feature(str(name))
            if isinstance(value, bool) or not isinstance(value, int | float | Tensor):
                raise ContextError(
                    f"{self.name}: context feature {name!r} must be a number or a tensor, got "
                    f"{type(value).__name__}"
                )
            tensor = torch.as_tensor(value, dtype=self.dtype, device=self.device)
            if tensor.ndim == 0:
                tensor = tensor.expand(count)
            if tensor.shape != (count,):
                raise ContextError(
                    f"{self.name}: context feature {name!r} needs shape ({count},), "
                    f"got {tuple(tensor.shape)}"
                )
            bad = ~torch.isfinite(tensor) | (tensor < feature.lower) | (tensor > feature.upper)
            if bool(bad.any()):
                first = float(tensor[bad][0])
                raise ContextError(
                    f"{self.name}: context feature {name!r} = {first} is outside the allowed "
                    f"range [{feature.lower}, {feature.upper}]"
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
        self.derived = self._derive(self.context)
        if self.visible:
            self._visible_cache = self._context_obs()

    def set_context_pool(self, contexts: Sequence[Mapping[str, float]] | None) -> None:
        """Draw each env's context afresh at every episode start, uniformly from ``contexts``
        (multi-task training on a mixture); ``None`` keeps contexts fixed. The pool is
        validated whole before it is used."""
        if contexts is None:
            self._pool = None
            return
        full = [self.space.validate(c) for c in contexts]
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
        self.derived = self._derive(self.context)
        if self.visible:
            self._visible_cache = self._context_obs()

    def _check(self, context: Mapping[str, Tensor]) -> None:
        """Cross-feature constraints (override where features must be ordered)."""

    def _derive(self, context: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Quantities derived from the context, recomputed whenever it changes."""
        return {}

    def _context_obs(self) -> Tensor:
        columns = [
            torch.as_tensor(
                self.space.feature(n).to_unit(self.context[n].detach().cpu().double().numpy()),
                dtype=self.dtype,
            ).to(self.device)
            for n in self.visible
        ]
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
        if self.streams is None:
            u = torch.rand(shape, generator=self.generator, device=self.device, dtype=self.dtype)
        elif len(shape) == 2:
            u = self.streams.uniform(shape[0], env_ids, self.dtype).T
        else:
            u = self.streams.uniform(1, env_ids, self.dtype)[:, 0]
        return low + (high - low) * u  # type: ignore[operator, return-value]

    def _ctx(self, name: str, env_ids: Tensor | None) -> Tensor:
        value = self.context[name]
        return value if env_ids is None else value[env_ids]

    def reset(self, seed: int | None = None) -> Tensor:
        """Start a new episode in every env; return observations ``(B, obs)``."""
        if seed is not None:
            self.generator.manual_seed(seed)
            if self.streams is not None:
                self.streams.counters.zero_()
        self._draw_contexts(None)
        self._state = self._initial_state(None)
        self.elapsed.zero_()
        return self._with_context(self._observe(self._state))

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every env one step; done envs restart at once (see the module docstring)."""
        next_state, reward, terminated = self._dynamics(self._state, action)
        self.elapsed += 1
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        final_obs = self._observe(next_state)
        if self.device.type == "cpu":
            # On the CPU, sample fresh states only for the envs that finished.
            ids = done.nonzero().squeeze(1)
            if ids.numel():
                final_obs = final_obs.clone()  # it may view next_state, which changes now
                self._draw_contexts(ids)
                next_state[:, ids] = self._initial_state(ids)
                self.elapsed[ids] = 0
                obs = self._observe(next_state)
            else:
                obs = final_obs
            self._state = next_state
        else:
            # On accelerators, stay branch-free: no host synchronisation per step.
            self._draw_contexts(None, where=done)
            self._state = torch.where(done, self._initial_state(None), next_state)
            self.elapsed = torch.where(done, torch.zeros_like(self.elapsed), self.elapsed)
            obs = self._observe(self._state)
        info = {"final_obs": self._with_context(final_obs), "done": done}
        return self._with_context(obs), reward, terminated, truncated, info

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


class BatchedCartPole(BatchedEnv):
    """CartPole-v1 (euler integrator), state ``(x, x_dot, theta, theta_dot)``."""

    name = "CartPole"
    space = cc.CARTPOLE
    obs_dim = state_dim = 4
    discrete_actions = 2
    max_episode_steps = 500
    x_threshold = 2.4
    theta_threshold = 12 * 2 * math.pi / 360

    def _derive(self, c: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # the same derived quantities gymnasium keeps in sync with its attributes
        return {
            "total_mass": c["masspole"] + c["masscart"],
            "polemass_length": c["masspole"] * c["length"],
        }

    def _initial_state(self, env_ids: Tensor | None) -> Tensor:
        b = self._ctx("initial_state_bound", env_ids)
        return self._uniform(-b, b, (4, b.shape[0]), env_ids)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c, d = self.context, self.derived
        x, x_dot, theta, theta_dot = state
        total_mass, polemass_length = d["total_mass"], d["polemass_length"]
        force = torch.where(action.reshape(-1) == 1, c["force_mag"], -c["force_mag"])
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + polemass_length * theta_dot.square() * sin) / total_mass
        theta_acc = (c["gravity"] * sin - cos * temp) / (
            c["length"] * (4.0 / 3.0 - c["masspole"] * cos.square() / total_mass)
        )
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        # euler step of all four coordinates at once: state + tau * derivative
        next_state = state + c["tau"] * torch.stack([x_dot, x_acc, theta_dot, theta_acc])
        x, theta = next_state[0], next_state[2]
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold)
        return next_state, torch.ones_like(x), terminated


def _angle_normalize(x: Tensor) -> Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class BatchedPendulum(BatchedEnv):
    """Pendulum-v1, state ``(theta, theta_dot)``, observation ``(cos, sin, theta_dot)``."""

    name = "Pendulum"
    space = cc.PENDULUM
    obs_dim = 3
    state_dim = 2
    discrete_actions = None
    max_episode_steps = 200

    def _check(self, context: Mapping[str, Tensor]) -> None:
        if bool((context["initial_velocity_max"] > context["max_speed"]).any()):
            raise ContextError(
                f"{self.name}: context features need initial_velocity_max <= max_speed"
            )

    def _derive(self, c: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {
            "gravity_term": 3 * c["g"] / (2 * c["l"]),
            # float32, as numpy computes the action terms (see _dynamics)
            "torque_gain": (3.0 / (c["m"] * c["l"] ** 2)).float(),
            "max_torque": c["max_torque"].float(),
        }

    def _initial_state(self, env_ids: Tensor | None) -> Tensor:
        high = torch.stack(
            [self._ctx("initial_angle_max", env_ids), self._ctx("initial_velocity_max", env_ids)]
        )
        return self._uniform(-high, high, tuple(high.shape), env_ids)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c, d = self.context, self.derived
        th, thdot = state
        # Actions are float32 (as in gymnasium's Box), and so are the terms numpy computes
        # from them; rounding them the same way keeps float64 twins on gymnasium's trajectory.
        u = torch.clamp(action.reshape(-1).float(), -d["max_torque"], d["max_torque"])
        costs = (
            _angle_normalize(th).square()
            + 0.1 * thdot.square()
            + (0.001 * u.square()).to(self.dtype)
        )
        torque = (d["torque_gain"] * u).to(self.dtype)
        new_thdot = thdot + (d["gravity_term"] * torch.sin(th) + torque) * c["dt"]
        new_thdot = torch.clamp(new_thdot, -c["max_speed"], c["max_speed"])
        new_th = th + new_thdot * c["dt"]
        terminated = torch.zeros_like(th, dtype=torch.bool)
        return torch.stack([new_th, new_thdot]), -costs, terminated

    def _observe(self, state: Tensor) -> Tensor:
        th, thdot = state
        return torch.stack([torch.cos(th), torch.sin(th), thdot], 1)


class _MountainCarBase(BatchedEnv):
    obs_dim = state_dim = 2
    space: ClassVar[ContextSpace]

    def _check(self, context: Mapping[str, Tensor]) -> None:
        pairs = [
            ("min_position", "start_position_low"),
            ("start_position_low", "start_position_high"),
            ("start_position_high", "max_position"),
            ("goal_position", "max_position"),
        ]
        for low, high in pairs:
            if bool((context[low] > context[high]).any()):
                raise ContextError(f"{self.name}: context features need {low} <= {high}")
        if bool((context["min_position"] >= context["goal_position"]).any()):
            raise ContextError(f"{self.name}: context features need min_position < goal_position")

    def _initial_state(self, env_ids: Tensor | None) -> Tensor:
        low = self._ctx("start_position_low", env_ids)
        high = self._ctx("start_position_high", env_ids)
        position = self._uniform(low, high, tuple(low.shape), env_ids)
        return torch.stack([position, torch.zeros_like(position)])

    def _move(self, state: Tensor, acceleration: Tensor) -> tuple[Tensor, Tensor]:
        c = self.context
        position, velocity = state
        velocity = torch.clamp(velocity + acceleration, -c["max_speed"], c["max_speed"])
        position = torch.clamp(position + velocity, c["min_position"], c["max_position"])
        velocity = torch.where(
            (position == c["min_position"]) & (velocity < 0), torch.zeros_like(velocity), velocity
        )
        terminated = (position >= c["goal_position"]) & (velocity >= c["goal_velocity"])
        return torch.stack([position, velocity]), terminated


class BatchedMountainCar(_MountainCarBase):
    """MountainCar-v0, state ``(position, velocity)``, actions 0 (left), 1 (none), 2 (right)."""

    name = "MountainCar"
    space = cc.MOUNTAIN_CAR
    discrete_actions = 3
    max_episode_steps = 200

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.context
        push = (action.reshape(-1).to(self.dtype) - 1) * c["force"]
        acceleration = push + torch.cos(3 * state[0]) * (-c["gravity"])
        next_state, terminated = self._move(state, acceleration)
        return next_state, -torch.ones_like(push), terminated


class BatchedMountainCarContinuous(_MountainCarBase):
    """MountainCarContinuous-v0; reward ``100 * reached - 0.1 * action^2``."""

    name = "MountainCarContinuous"
    space = cc.MOUNTAIN_CAR_CONTINUOUS
    discrete_actions = None
    max_episode_steps = 999
    slope = 0.0025

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = action.reshape(-1).to(self.dtype)
        force = torch.clamp(a, -1.0, 1.0)
        acceleration = force * self.context["power"] - self.slope * torch.cos(3 * state[0])
        next_state, terminated = self._move(state, acceleration)
        reward = 100.0 * terminated.to(self.dtype) - 0.1 * a.square()
        return next_state, reward, terminated


class BatchedAcrobot(BatchedEnv):
    """Acrobot-v1 ("book" dynamics, RK4), state ``(theta1, theta2, dtheta1, dtheta2)``."""

    name = "Acrobot"
    space = cc.ACROBOT
    obs_dim = 6
    state_dim = 4
    discrete_actions = 3
    max_episode_steps = 500
    gravity = 9.8

    def _initial_state(self, env_ids: Tensor | None) -> Tensor:
        b = self._ctx("initial_state_bound", env_ids)
        return self._uniform(-b, b, (4, b.shape[0]), env_ids)

    def _derivatives(self, s: Tensor, torque: Tensor) -> Tensor:
        c = self.context
        m1, m2, l1 = c["link_mass_1"], c["link_mass_2"], c["link_length_1"]
        lc1, lc2, inertia = c["link_com_pos_1"], c["link_com_pos_2"], c["link_moi"]
        g = self.gravity
        theta1, theta2, dtheta1, dtheta2 = s
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * torch.cos(theta2)) + 2 * inertia
        d2 = m2 * (lc2**2 + l1 * lc2 * torch.cos(theta2)) + inertia
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * torch.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * torch.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (
            torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * torch.sin(theta2) - phi2
        ) / (m2 * lc2**2 + inertia - d2**2 / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack([dtheta1, dtheta2, ddtheta1, ddtheta2])

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.context
        torque = action.reshape(-1).to(self.dtype) - 1.0
        noise = c["torque_noise_max"]
        torque = torque + torch.where(
            noise > 0, self._uniform(-noise, noise, (self.num_envs,)), 0.0
        )
        dt = c["dt"]
        k1 = self._derivatives(state, torque)
        k2 = self._derivatives(state + dt / 2 * k1, torque)
        k3 = self._derivatives(state + dt / 2 * k2, torque)
        k4 = self._derivatives(state + dt * k3, torque)
        ns = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        theta1 = torch.remainder(ns[0] + math.pi, 2 * math.pi) - math.pi
        theta2 = torch.remainder(ns[1] + math.pi, 2 * math.pi) - math.pi
        dtheta1 = torch.clamp(ns[2], -c["max_vel_1"], c["max_vel_1"])
        dtheta2 = torch.clamp(ns[3], -c["max_vel_2"], c["max_vel_2"])
        next_state = torch.stack([theta1, theta2, dtheta1, dtheta2])
        terminated = -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0
        return next_state, torch.where(terminated, 0.0, -1.0).to(self.dtype), terminated

    def _observe(self, state: Tensor) -> Tensor:
        t1, t2, d1, d2 = state
        return torch.stack([torch.cos(t1), torch.sin(t1), torch.cos(t2), torch.sin(t2), d1, d2], 1)


TWINS: dict[str, type[BatchedEnv]] = {
    cls.name: cls
    for cls in (
        BatchedCartPole,
        BatchedPendulum,
        BatchedMountainCar,
        BatchedMountainCarContinuous,
        BatchedAcrobot,
    )
}


def make_twin(name: str, num_envs: int, **kwargs: Any) -> BatchedEnv:
    return TWINS[name](num_envs, **kwargs)
