"""A damped spring: push a mass towards x = 0 and hold it there.

State ``(x, v)``: position in m and velocity in m/s. Actions: 0 push left, 1 none, 2 push right
(force of ``force`` N). Semi-implicit Euler with step ``dt`` s; reward ``-x^2`` per step; 200
steps per episode. The context sets ``stiffness`` (N/m), ``mass`` (kg) and ``damping`` (N s/m).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

Observation = np.ndarray[Any, np.dtype[np.float32]]


class SpringEnv(gym.Env[Observation, np.int64]):
    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's own type for it)

    def __init__(
        self,
        stiffness: float = 1.0,
        mass: float = 1.0,
        damping: float = 0.1,
        force: float = 1.0,
        dt: float = 0.05,
    ) -> None:
        self.stiffness, self.mass, self.damping, self.force, self.dt = (
            stiffness,
            mass,
            damping,
            force,
            dt,
        )
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self.state = np.zeros(2)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1.0, 1.0, size=2)
        return self.state.astype(np.float32), {}

    def step(self, action: int | np.int64) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        x, v = (float(value) for value in self.state)
        push = (int(action) - 1) * self.force
        acceleration = (push - self.stiffness * x - self.damping * v) / self.mass
        v = float(np.clip(v + self.dt * acceleration, -10, 10))
        x = float(np.clip(x + self.dt * v, -10, 10))
        self.state = np.array([x, v])
        return self.state.astype(np.float32), -x * x, False, False, {}
