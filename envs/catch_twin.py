"""The torch twin of Catch (:class:`ctxrl.twins.TorchTwin`, written on
:class:`ctxrl.twins.BatchedEnv`): ``B`` grids in one object, each with its own context.

The rules, contexts, observation and random numbers are those of :mod:`ctxrl_envs.catch` (its
docstring): given the same episode key and actions, an env of the twin and the gymnasium env step
through the same states, observations, rewards and terminations bit for bit. Keys come from the
twin's per-env streams (``env_seeds``) or its shared generator.

Shapes: state ``(10, B)`` stored (``state`` shows ``(B, 10)``, fields
:data:`ctxrl_envs.catch.STATE_FIELDS`), integers held in the twin's float dtype (all below 2**24,
so float32 is exact); observations ``(B, frames * 441)`` plus visible features; actions ``(B,)``
integers in {0, 1, 2}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ctxrl.errors import ContextError
from ctxrl.rng import splitmix64
from ctxrl.twins import BatchedEnv

from . import catch as ct

Tensor = torch.Tensor


def hash_bits(key: Tensor, salt: Tensor, index: Tensor) -> Tensor:
    """:func:`ctxrl_envs.catch.hash_bits` for ``B`` envs at once: int64 keys and salts
    ``(B,)``, indices ``(K,)`` -> 24-bit integers ``(B, K)`` int64. Signed int64 arithmetic
    wraps like uint64, and the mask after the arithmetic shift keeps the same 24 bits."""
    inner = splitmix64(key * 4096 + salt)
    outer = splitmix64(inner[:, None] + index[None, :])
    return (outer >> (64 - ct.KEY_BITS)) & ((1 << ct.KEY_BITS) - 1)


class BatchedCatch(BatchedEnv):
    """Catch for ``B`` envs; see :mod:`ctxrl_envs.catch`.

    Args:
        num_envs: ``B``.
        frames: frames per observation, 2 (previous and current, the default) or 1.
        **kwargs: those of :class:`ctxrl.twins.BatchedEnv` (``contexts``, ``device``, ``seed``,
            ``dtype``, ``visible``, ``env_seeds``).
    """

    name = ct.NAME
    space = ct.CATCH
    obs_dim = 2 * ct.PIXELS
    state_dim = len(ct.STATE_FIELDS)
    discrete_actions = 3
    max_episode_steps = ct.MAX_EPISODE_STEPS

    def __init__(self, num_envs: int, *, frames: int = 2, **kwargs: Any) -> None:
        if frames not in (1, 2):
            raise ValueError(f"{ct.NAME}: frames must be 1 or 2, got {frames!r}")
        self.frames = frames
        device = torch.device(kwargs.get("device", "cpu"))
        dtype = kwargs.get("dtype", torch.float32)
        self._levels = torch.as_tensor(ct.LEVELS, device=device).to(dtype)
        self._pixels = torch.arange(ct.PIXELS, device=device)
        # row and column of every pixel of a flat frame, in the state's dtype
        self._pixel_row = (self._pixels // ct.SIZE).to(dtype)
        self._pixel_col = (self._pixels % ct.SIZE).to(dtype)
        super().__init__(num_envs, **kwargs)

    @property
    def observation_size(self) -> int:
        return self.frames * ct.PIXELS + len(self.visible)

    # ------------------------------------------------------------------------- contexts
    def _check(self, context: Mapping[str, Tensor]) -> None:
        for name in ct.FLAGS:
            value = context[name]
            bad = (value != 0) & (value != 1)
            if bool(bad.any()):
                raise ContextError(
                    f"{self.name}: context feature {name!r} must be 0 or 1, got "
                    f"{float(value[bad][0])}"
                )

    def _derive(self, c: Mapping[str, Tensor]) -> dict[str, Tensor]:
        # rounded in float32 whatever the twin's dtype, as the gymnasium env rounds
        width = torch.floor(c["paddle_width"].float() + 0.5).to(c["paddle_width"].dtype)
        noise = torch.floor(c["noise"].float() + 0.5).long()
        mirrored = c["mirrored"]
        # Skipping the noise (and the next ball's draw) saves most of a step's work, but
        # deciding to is a host synchronisation: on accelerators stay branch-free and do both.
        cpu = self.device.type == "cpu"
        self._noisy = not cpu or bool((noise > 0).any())
        self._relaunching = not cpu or bool((c["sparse"] == 1).any())
        return {
            "width": width,
            "noise_levels": noise + 1,
            "goal": torch.where(c["sparse"] == 1, float(ct.STREAK), 1.0).to(width.dtype),
            "swap": c["swap_actions"] == 1,
            # displayed row = row_base + row_sign * row (rows counted from the top)
            "row_base": ct.BOTTOM * mirrored,
            "row_sign": 1 - 2 * mirrored,
            "paddle_row": ct.BOTTOM * (1 - mirrored),
        }

    # ---------------------------------------------------------------------------- rules
    def _launch(self, key: Tensor, ball: Tensor) -> tuple[Tensor, Tensor]:
        """Column and speed ``(n,)`` (int64) of ball number ``ball`` for keys ``key``."""
        bits = hash_bits(key, ct.BALL_SALT + ball, self._pixels[:2])
        column = (bits[:, 0] * ct.SIZE) >> ct.KEY_BITS
        speed = ((bits[:, 1] * (2 * ct.MAX_SPEED + 1)) >> ct.KEY_BITS) - ct.MAX_SPEED
        return column, speed

    def _initial_state(self, env_ids: Tensor | None) -> Tensor:
        n = self.num_envs if env_ids is None else int(env_ids.numel())
        # u * 2**24 is an integer for float32 draws; floor covers float64 ones
        key = torch.floor(self._uniform(0.0, float(1 << ct.KEY_BITS), (n,), env_ids)).long()
        column, speed = self._launch(key, torch.zeros_like(key))
        width = self.derived["width"]
        width = width if env_ids is None else width[env_ids]
        paddle = torch.floor((ct.SIZE - width) / 2)
        zero = torch.zeros_like(paddle)
        col, spd = column.to(self.dtype), speed.to(self.dtype)
        return torch.stack(
            [zero, col, spd, paddle, zero, col, paddle, zero, zero, key.to(self.dtype)]
        )

    def _dynamics(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = self.derived
        row, col, speed, paddle, _, _, _, catches, tick, key = state
        a = action.reshape(-1).to(self.dtype)
        move = torch.where(d["swap"], 1.0 - a, a - 1.0)
        paddle_next = torch.clamp(paddle + move, torch.zeros_like(paddle), ct.SIZE - d["width"])
        col_next = col + speed
        # bounce: |speed| <= 2 never crosses the grid, so one reflection is enough
        bounced = (col_next < 0) | (col_next > ct.BOTTOM)
        col_next = torch.where(
            bounced, torch.where(col_next < 0, 0.0, 2.0 * ct.BOTTOM) - col_next, col_next
        )
        speed_next = torch.where(bounced, -speed, speed)
        row_next = row + 1
        landed = row_next == ct.BOTTOM
        caught = landed & (col_next >= paddle_next) & (col_next < paddle_next + d["width"])
        catches_next = catches + caught.to(self.dtype)
        done_streak = caught & (catches_next >= d["goal"])
        terminated = done_streak | (landed & ~caught)
        if self._relaunching:  # sparse: a catch short of the streak launches the next ball
            relaunch = landed & ~terminated
            new_col, new_speed = self._launch(key.long(), catches_next.long())
            row_next = torch.where(relaunch, 0.0, row_next)
            col_next = torch.where(relaunch, new_col.to(self.dtype), col_next)
            speed_next = torch.where(relaunch, new_speed.to(self.dtype), speed_next)
        next_state = torch.stack(
            [
                row_next,
                col_next,
                speed_next,
                paddle_next,
                row,
                col,
                paddle,
                catches_next,
                tick + 1,
                key,
            ]
        )
        return next_state, done_streak.to(self.dtype), terminated

    # ---------------------------------------------------------------------- observation
    def _frame(self, row: Tensor, col: Tensor, paddle: Tensor, tick: Tensor, key: Tensor) -> Tensor:
        """Frames ``(B, 441)`` of ball ``(row, col)`` and paddle ``paddle`` at ``tick``."""
        d, pixel_row, pixel_col = self.derived, self._pixel_row, self._pixel_col
        ball_row = d["row_base"] + d["row_sign"] * row
        ball = (pixel_row == ball_row[:, None]) & (pixel_col == col[:, None])
        bar = (
            (pixel_row == d["paddle_row"][:, None])
            & (pixel_col >= paddle[:, None])
            & (pixel_col < (paddle + d["width"])[:, None])
        )
        shown = ball | bar
        if not self._noisy:
            return shown.to(self.dtype)
        bits = hash_bits(key.long(), tick.long(), self._pixels)
        background = self._levels[(bits * d["noise_levels"][:, None]) >> ct.KEY_BITS]
        return torch.where(shown, 1.0, background)

    def _observe(self, state: Tensor) -> Tensor:
        row, col, _, paddle, prev_row, prev_col, prev_paddle, _, tick, key = state
        current = self._frame(row, col, paddle, tick, key)
        if self.frames == 1:
            return current
        previous = self._frame(prev_row, prev_col, prev_paddle, torch.clamp(tick - 1, min=0), key)
        return torch.cat([previous, current], dim=1)


__all__ = ["BatchedCatch", "hash_bits"]
