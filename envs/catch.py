"""Catch (Sabatelli & Geurts 2021, "On The Transferability of Deep-Q Networks", arXiv
2110.02639) and its variants as one contextual env, with a torch twin
(:mod:`ctxrl_envs.catch_twin`).

**Rules.** A 21 x 21 grid (rows 0..20 from the top, columns 0..20 from the left). An episode
starts with a ball in row 0 at a column drawn uniformly from 0..20, with a horizontal speed drawn
uniformly from {-2, -1, 0, 1, 2} cells per step, and a paddle of ``paddle_width`` cells on row 20,
centred (leftmost cell ``(21 - width) // 2``). Actions: 0 moves the paddle one cell left, 1 keeps
it, 2 moves it one cell right; the paddle stops at the walls. Each step, in this order: the paddle
moves; the ball moves one row down and ``speed`` columns sideways; a ball that would leave the grid
bounces off the wall (column ``c < 0`` becomes ``-c``, ``c > 20`` becomes ``40 - c``, and the speed
changes sign). The ball reaches row 20 after exactly 20 steps and is caught if its column lies
under the paddle (``left <= column < left + width``): reward 1 for a catch, 0 for a miss (as in the
paper), and the episode ends. Returns lie in [0, 1] (``return_bounds``); a greedy policy that
knows where the ball will land catches every ball, random play about 24 % (width 5).

**Observation.** Pixel intensities in [0, 1] (a pixel value of 255 is 1.0): ball and paddle
cells 1.0, background 0.0 (a binary grid, as the paper's Catch-v0). A single frame does not show
the ball's speed, so one frame alone is not Markov (a memoryless policy that follows the ball
catches only about 2 balls in 3); the observation is therefore the last two frames, oldest
first, each flattened row-major: ``(2 * 441,)`` float32, index ``f * 441 + row * 21 + column``
(DQN's frame stack, two frames being enough for a constant speed). At an episode's start both
frames are the first frame. The option ``frames=1`` (``make(..., frames=1)``, the twin's
``frames=1``, a sweep's ``env_options``) gives the single ``(441,)`` frame.

**Contexts** (the paper's variants; numbers, as every ctxrl feature is):

- ``paddle_width`` in cells, [1, 7], default 5 (the paper: 5, and 2 in Catch-v1); rounded to
  the nearest integer (halves up, of its float32 value), so any number in range is a valid
  context.
- ``noise``: background noise, an intensity in [0, 255], default 0. Each background pixel (not
  ball, not paddle) of each frame is drawn independently and uniformly from the integer levels
  ``0 .. round(noise)`` and shown as ``level / 255``; ball and paddle stay at 1.0. Catch-v2 is
  ``noise = 255`` (the paper: background cells random in [0, 255]). Fresh noise every step.
- ``mirrored``: 0 or 1. With 1 every frame is flipped upside down: the paddle is on the top row
  and the ball rises from the bottom row (the paper's Catch-v3, "ball moves bottom -> top"). The
  dynamics are those of ``mirrored = 0``; only the picture changes.
- ``sparse``: 0 or 1. With 1 an episode lasts until the first miss or the fifth catch: after a
  catch that is not the fifth, a new ball is launched from row 0 (new column and speed) in the
  same step while the paddle stays where it is. The reward is 1 at the fifth consecutive catch
  and 0 otherwise, so the return is 1 exactly when five balls in a row are caught (the paper's
  Catch-v4, "reward only after 5 consecutive catches"). The number of catches so far is not
  shown; the best policy (catch every ball) does not need it.
- ``swap_actions``: 0 or 1. With 1 actions 0 and 2 are exchanged (0 moves right, 2 left): a
  mirror of the controls rather than of the picture. Not one of the paper's variants.

Flags other than 0 or 1 raise a ContextError.

**Variants** (:data:`VARIANTS`, :func:`variant`):

=========  ============================  ================================
variant    context                       paper
=========  ============================  ================================
``v0``     defaults                      paddle 5 cells, binary grid
``v1``     ``paddle_width: 2``           smaller paddle
``v2``     ``noise: 255``                background cells random in [0, 255]
``v3``     ``mirrored: 1``               ball moves bottom -> top
``v4``     ``sparse: 1``                 reward after 5 consecutive catches
=========  ============================  ================================

**Time limit.** ``max_episode_steps`` = 101: the longest episode (five balls of 20 steps, sparse)
plus one, so the limit never ends an episode. (At 100, gymnasium's time limit would flag the
fifth catch truncated as well as terminated.)

**Random numbers.** An episode draws one number at reset, a key in ``[0, 2**24)`` (from the
env's ``np_random`` here, from the env's stream in the twin); every later random quantity (each
ball's column and speed, each frame's noise) is a hash (splitmix64) of the key, the step or ball
number and the pixel. So an episode is a deterministic function of its key and actions: the
gymnasium env and its twin, given the same key, produce the same episode bit for bit, which the
parity tests check; the keys themselves come from different generators.

**State** (``CatchEnv.state``, the twin's ``state``; float, all values integers):
``ball_row, ball_col, ball_speed, paddle, prev_ball_row, prev_ball_col, prev_paddle, catches,
tick, key`` (``paddle`` is the paddle's leftmost column, ``prev_*`` what the previous frame
showed, ``tick`` the steps since the episode started).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ctxrl import hookimpl
from ctxrl.context import Context, ContextFeature, ContextSpace
from ctxrl.contextual import ContextFamily, GymnasiumEntryPoint, make_contextual
from ctxrl.errors import ContextError
from ctxrl.registry import EnvSpec

NAME = "Catch"
VERSION = "v0"
SIZE = 21
"""rows and columns of the grid"""
PIXELS = SIZE * SIZE
BOTTOM = SIZE - 1
"""the paddle's row (before mirroring); a ball reaching it is caught or missed"""
MAX_SPEED = 2
"""horizontal speeds are drawn from -MAX_SPEED .. MAX_SPEED cells per step"""
STREAK = 5
"""catches in a row that the sparse variant rewards"""
MAX_EPISODE_STEPS = STREAK * BOTTOM + 1
METADATA = {"render_modes": ["rgb_array"], "render_fps": 10}
RETURN_BOUNDS = (0.0, 1.0)
KEY_BITS = 24
"""keys lie in [0, 2**24): exact in float32 states"""
BALL_SALT = 2048
"""hash salts: frames use their tick (< 2048), ball k uses BALL_SALT + k"""
STATE_FIELDS = (
    "ball_row",
    "ball_col",
    "ball_speed",
    "paddle",
    "prev_ball_row",
    "prev_ball_col",
    "prev_paddle",
    "catches",
    "tick",
    "key",
)
FLAGS = ("mirrored", "sparse", "swap_actions")
# intensity of each noise level, rounded to float32 once; both implementations index this
# table, so their observations agree bit for bit
LEVELS = np.arange(256, dtype=np.float32) / np.float32(255)

F = ContextFeature
CATCH = ContextSpace(
    [
        F(
            "paddle_width",
            5.0,
            1.0,
            7.0,
            unit="cells",
            description="paddle width (rounded to an integer; Catch-v1: 2)",
            integer=True,
        ),
        F(
            "noise",
            0.0,
            0.0,
            255.0,
            unit="intensity of 255",
            description="background pixels uniform over levels 0..noise (Catch-v2: 255)",
            integer=True,
        ),
        F("mirrored", 0.0, 0.0, 1.0, description="1: picture upside down (Catch-v3)"),
        F("sparse", 0.0, 0.0, 1.0, description="1: reward after 5 catches in a row (Catch-v4)"),
        F("swap_actions", 0.0, 0.0, 1.0, description="1: left and right actions exchanged"),
    ],
    owner=NAME,
)

VARIANTS: dict[str, dict[str, float]] = {
    "v0": {},
    "v1": {"paddle_width": 2.0},
    "v2": {"noise": 255.0},
    "v3": {"mirrored": 1.0},
    "v4": {"sparse": 1.0},
}
"""The paper's Catch-v0 .. v4 as (partial) contexts of ``Catch``."""


def variant(name: str) -> dict[str, float]:
    """The full context of the paper's variant ``name`` (``v0`` .. ``v4``, ``Catch-`` optional),
    every feature present, ready for a sweep's context list."""
    key = name.removeprefix("Catch-")
    if key not in VARIANTS:
        raise ContextError(f"{NAME}: no variant {name!r}; known: {', '.join(VARIANTS)}")
    return CATCH.validate(VARIANTS[key]).as_dict()


def round_half_up(value: float) -> int:
    """The integer an ``integer`` feature's value gives (:meth:`ContextFeature.env_value`)."""
    return int(CATCH.feature("paddle_width").env_value(value))


def check_flags(context: Context) -> None:
    for name in FLAGS:
        if context[name] not in (0.0, 1.0):
            raise ContextError(
                f"{NAME}: context feature {name!r} must be 0 or 1, got {context[name]}"
            )


# ------------------------------------------------------------------------ random numbers
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping), bit for bit
    :func:`ctxrl.rng.splitmix64`."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash_bits(key: int, salt: int, index: np.ndarray) -> np.ndarray:
    """24 random bits per ``index`` (an integer array), a function of ``(key, salt, index)``.

    ``splitmix64(splitmix64(key * 4096 + salt) + index) >> 40``; keys < 2**24 and salts < 4096
    make ``key * 4096 + salt`` distinct for distinct pairs."""
    inner = splitmix64(np.array([key * 4096 + salt], dtype=np.uint64))
    with np.errstate(over="ignore"):
        outer = splitmix64(inner + np.asarray(index, dtype=np.uint64))
    return (outer >> np.uint64(64 - KEY_BITS)).astype(np.int64)


def launch(key: int, ball: int) -> tuple[int, int]:
    """Column (0..20) and speed (-2..2) of ball number ``ball`` (0 first) of the episode."""
    col_bits, speed_bits = hash_bits(key, BALL_SALT + ball, np.arange(2))
    # multiply-shift: an unbiased-enough integer in [0, n) from 24 bits, exact in int64
    column = int(col_bits) * SIZE >> KEY_BITS
    speed = (int(speed_bits) * (2 * MAX_SPEED + 1) >> KEY_BITS) - MAX_SPEED
    return column, speed


# ------------------------------------------------------------------------- gymnasium env
class CatchEnv(gym.Env[np.ndarray, np.int64]):
    """Catch on one grid (see the module docstring for the rules).

    The context sets the instance attributes ``paddle_width`` (int, cells), ``noise`` (int,
    highest background level of 255), ``mirrored``, ``sparse``, ``swap_actions`` (bool).

    Args:
        render_mode: None or ``rgb_array`` (the current frame, ``(21, 21, 3)`` uint8).
        frames: frames in the observation, 2 (default: the previous and the current one) or 1.
    """

    def __init__(self, render_mode: str | None = None, frames: int = 2) -> None:
        # per instance, as gymnasium declares it (a class-level dict would be shared)
        self.metadata = copy.deepcopy(METADATA)
        if frames not in (1, 2):
            raise ValueError(f"{NAME}: frames must be 1 or 2, got {frames!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"{NAME}: render_mode must be None or 'rgb_array'")
        self.render_mode = render_mode
        self.frames = frames
        self.paddle_width, self.noise = 5, 0
        self.mirrored = self.sparse = self.swap_actions = False
        self.observation_space = spaces.Box(0.0, 1.0, (frames * PIXELS,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)
        self.state = np.zeros(len(STATE_FIELDS), dtype=np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.state = self.initial_state(int(self.np_random.integers(0, 1 << KEY_BITS)))
        return self._observe(), {}

    def initial_state(self, key: int) -> np.ndarray:
        """The first state of the episode with ``key`` (a pure function of it and the width)."""
        column, speed = launch(key, 0)
        paddle = (SIZE - self.paddle_width) // 2
        values = (0, column, speed, paddle, 0, column, paddle, 0, 0, key)
        return np.array(values, dtype=np.float64)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < 3:
            raise ValueError(f"{NAME}: action must be 0, 1 or 2, got {action!r}")
        if self.swap_actions:
            a = 2 - a
        row, col, speed, paddle, _, _, _, catches, tick, key = (int(v) for v in self.state)
        previous = (row, col, paddle)
        width = self.paddle_width
        paddle = min(max(paddle + a - 1, 0), SIZE - width)
        row, col = row + 1, col + speed
        if col < 0 or col > BOTTOM:  # bounce: |speed| <= 2 never crosses the grid
            col, speed = (-col if col < 0 else 2 * BOTTOM - col), -speed
        tick += 1
        reward, terminated = 0.0, False
        if row == BOTTOM:
            caught = paddle <= col < paddle + width
            catches += int(caught)
            if caught and catches >= (STREAK if self.sparse else 1):
                reward, terminated = 1.0, True
            elif not caught:
                terminated = True
            else:  # sparse, caught, streak not done: the next ball, paddle where it is
                row = 0
                col, speed = launch(key, catches)
        values = (row, col, speed, paddle, *previous, catches, tick, key)
        self.state = np.array(values, dtype=np.float64)
        return self._observe(), reward, terminated, False, {}

    def frame(self, row: int, col: int, paddle: int, tick: int) -> np.ndarray:
        """One frame, ``(441,)`` float32 in [0, 1], row-major, mirrored if the context says.

        Noise is indexed by displayed pixel and drawn from ``(key, tick)``."""
        key = int(self.state[STATE_FIELDS.index("key")])
        image: np.ndarray
        if self.noise > 0:
            bits = hash_bits(key, tick, np.arange(PIXELS))
            image = LEVELS[(bits * (self.noise + 1)) >> KEY_BITS].reshape(SIZE, SIZE)
        else:
            image = np.zeros((SIZE, SIZE), dtype=np.float32)
        paddle_row = 0 if self.mirrored else BOTTOM
        ball_row = BOTTOM - row if self.mirrored else row
        image[paddle_row, max(paddle, 0) : paddle + self.paddle_width] = 1.0
        image[ball_row, col] = 1.0
        return image.reshape(PIXELS)

    def _observe(self) -> np.ndarray:
        row, col, _, paddle, prev_row, prev_col, prev_paddle, _, tick, _ = (
            int(v) for v in self.state
        )
        current = self.frame(row, col, paddle, tick)
        if self.frames == 1:
            return current
        return np.concatenate(
            [self.frame(prev_row, prev_col, prev_paddle, max(tick - 1, 0)), current]
        )

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        current = self._observe()[-PIXELS:].reshape(SIZE, SIZE)
        grey = np.round(current * 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)


def _apply(env: Any, c: Context) -> None:
    env.paddle_width = round_half_up(c["paddle_width"])
    env.noise = round_half_up(c["noise"])
    env.mirrored, env.sparse = c["mirrored"] == 1.0, c["sparse"] == 1.0
    env.swap_actions = c["swap_actions"] == 1.0


CATCH_FAMILY = ContextFamily(
    NAME, CATCH, lambda render_mode: CatchEnv(render_mode), _apply, check=check_flags
)


def _family(frames: int) -> ContextFamily:
    if frames not in (1, 2):
        raise ValueError(f"{NAME}: frames must be 1 or 2, got {frames!r}")
    return dataclasses.replace(CATCH_FAMILY, build=partial(CatchEnv, frames=frames))


def make(
    context: Mapping[str, object] | None = None,
    *,
    visible: Sequence[str] = (),
    render_mode: str | None = None,
    frames: int = 2,
) -> gym.Env:
    """The contextual Catch env with gymnasium's time limit (``EnvSpec.make``)."""
    return make_contextual(
        _family(frames), MAX_EPISODE_STEPS, context, visible=visible, render_mode=render_mode
    )


def make_unlimited(
    context: Mapping[str, object] | None = None,
    *,
    visible: Sequence[str] = (),
    render_mode: str | None = None,
    frames: int = 2,
) -> gym.Env:
    """Entry point for ``gymnasium.make`` (which adds the time limit itself)."""
    return make_contextual(_family(frames), None, context, visible=visible, render_mode=render_mode)


# the keywords gymnasium passes: context, visible, render_mode, frames (others are refused)
GYMNASIUM_ENTRY_POINT = GymnasiumEntryPoint(make_unlimited, METADATA)


def make_batched(num_envs: int, **kwargs: Any) -> Any:
    """The torch twin (imports torch on first use)."""
    from .catch_twin import BatchedCatch

    return BatchedCatch(num_envs, **kwargs)


SPEC = EnvSpec(
    name=NAME,
    context_space=CATCH,
    make=make,
    return_bounds=RETURN_BOUNDS,
    action_space="discrete",
    make_batched=make_batched,
    max_episode_steps=MAX_EPISODE_STEPS,
    gym_id=f"ctxrl/{NAME}-{VERSION}",
    description="catch a falling ball with a paddle (Sabatelli & Geurts 2021, variants v0-v4)",
    check_context=check_flags,
)


def register_gymnasium_ids() -> None:
    """Register ``ctxrl/Catch-v0`` with gymnasium (idempotent)."""
    assert SPEC.gym_id is not None
    if SPEC.gym_id not in gym.registry:
        gym.register(
            SPEC.gym_id,
            entry_point=f"{__name__}:GYMNASIUM_ENTRY_POINT",
            max_episode_steps=MAX_EPISODE_STEPS,
        )


@hookimpl
def ctxrl_register_envs(register: Callable[[EnvSpec], None]) -> None:
    register(SPEC)
