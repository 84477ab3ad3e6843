"""Torch-batched twins of the classic-control envs (:class:`ctxrl.twins.TorchTwin`, written on
:class:`ctxrl.twins.BatchedEnv`): ``B`` environments in one object, each with its own context,
stepped with tensor operations on any device.

Semantics follow gymnasium: the same dynamics, rewards, termination and time-limit truncation
as the gymnasium env (tested for parity against gymnasium's own code), with one difference of
flags: where an episode terminates on the time limit's last step, gymnasium's ``TimeLimit``
reports both ``terminated`` and ``truncated``, a twin ``terminated`` only (``truncated`` means
"cut by the limit", so that PPO bootstraps from the final observation only then; see
:class:`ctxrl.twins.TorchTwin`). Resetting is automatic and
happens in the same step: where an env is done, ``step`` returns the first observation of its
next episode and keeps the last observation of the finished one in ``info["final_obs"]``.

Shapes: observations ``(B, obs_dim)``; discrete actions ``(B,)`` integers; continuous actions
``(B,)`` or ``(B, 1)``; rewards, ``terminated``, ``truncated`` ``(B,)``; each context feature is a
tensor of shape ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ctxrl.context import ContextSpace
from ctxrl.twins import BatchedEnv, require_batched_order

# relative: the package is installed as ctxrl_envs from the envs/ folder, which mypy (reading
# the source tree) only resolves this way
from . import classic_control as cc

Tensor = torch.Tensor


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
        require_batched_order(context, self.name, "initial_velocity_max", "max_speed")

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
            require_batched_order(context, self.name, low, high)
        require_batched_order(context, self.name, "min_position", "goal_position", strict=True)
        # a start at or past the goal ends every episode at its first step
        require_batched_order(
            context, self.name, "start_position_high", "goal_position", strict=True
        )

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
    """MountainCarContinuous-v0; reward ``100 * reached - 0.1 * action^2``.

    gymnasium keeps this env's state in float32 and computes its force in float32; this twin
    computes in its own dtype and does not round to float32, so a float64 twin follows
    gymnasium to float32 rounding (about 3e-8 a step), not bit for bit as the other float64
    twins do (the episodes' ends agree; tests/test_classic_parity.py's tolerance is 1e-5)."""

    name = "MountainCarContinuous"
    space = cc.MOUNTAIN_CAR_CONTINUOUS
    discrete_actions = None
    action_bounds = (-1.0, 1.0)  # gymnasium's action space; the trainers clip to it
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
