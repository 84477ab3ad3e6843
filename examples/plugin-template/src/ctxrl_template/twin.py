"""The Spring env's torch twin: ``B`` springs in one object, each with its own context.

It follows :class:`ctxrl_template.spring.SpringEnv` step for step: state ``(x, v)`` in m and m/s,
actions 0 push left, 1 none, 2 push right (``FORCE`` N), semi-implicit Euler with step ``DT`` s,
velocity then position clipped to [-10, 10], reward ``-x^2`` per step (``x`` after the step),
no termination, 200 steps per episode. Written on :class:`ctxrl.twins.BatchedEnv`, which brings
contexts, context pools, per-env random streams, auto-reset and ``state_dict``.
"""

from __future__ import annotations

import torch

from ctxrl.twins import BatchedEnv

from .plugin import SPRING

Tensor = torch.Tensor

FORCE = 1.0
"""N, the force of one push (SpringEnv's default)"""
DT = 0.05
"""s, the integration step (SpringEnv's default)"""
LIMIT = 10.0
"""m and m/s, the bound of position and velocity"""


class BatchedSpring(BatchedEnv):
    """``B`` damped springs; states stored as ``(2, B)``: rows ``x`` and ``v``."""

    name = "Spring"
    space = SPRING
    obs_dim = state_dim = 2
    discrete_actions = 3
    max_episode_steps = 200

    def _initial_state(self, env_ids: Tensor | None) -> Tensor:
        """``x, v ~ U(-1, 1)`` for ``env_ids`` (all envs when None): ``(2, n)``."""
        n = self.num_envs if env_ids is None else int(env_ids.numel())
        return self._uniform(-1.0, 1.0, (2, n), env_ids)

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of all springs: ``(next_state (2, B), reward (B,), terminated (B,))``."""
        c = self.context
        x, v = state
        push = (action.reshape(-1).to(self.dtype) - 1.0) * FORCE
        acceleration = (push - c["stiffness"] * x - c["damping"] * v) / c["mass"]
        v = torch.clamp(v + DT * acceleration, -LIMIT, LIMIT)
        x = torch.clamp(x + DT * v, -LIMIT, LIMIT)
        return torch.stack([x, v]), -x.square(), torch.zeros_like(x, dtype=torch.bool)
