"""Contextual classic control: CartPole, Pendulum, MountainCar, MountainCarContinuous, Acrobot.

The physics is gymnasium's own; a context sets the instance attributes gymnasium's step reads
and recomputes what is derived from them (CartPole's ``total_mass`` and ``polemass_length``,
observation and action bounds), so every feature acts on the dynamics as its name says. Each env
has a torch-batched twin (``ctxrl_envs.classic_control_twins``, a :class:`ctxrl.twins.TorchTwin`)
with a different context per env.

Feature names follow gymnasium's attribute names (``masscart``, ``g``), lower-cased for Acrobot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np

from ctxrl import hookimpl
from ctxrl.context import Context, ContextFeature, ContextSpace
from ctxrl.contextual import ContextFamily, ContextualEnvEntry, require_order
from ctxrl.registry import EnvSpec

F = ContextFeature


def _gym_env(class_name: str) -> Callable[[str | None], Any]:
    """A builder of gymnasium's own env class (unwrapped, no registry spec)."""

    def build(render_mode: str | None) -> Any:
        from gymnasium.envs import classic_control

        return getattr(classic_control, class_name)(render_mode=render_mode)

    return build


def _box(low: list[float], high: list[float]) -> Any:
    from gymnasium import spaces

    return spaces.Box(
        np.array(low, dtype=np.float32), np.array(high, dtype=np.float32), dtype=np.float32
    )


# ---------------------------------------------------------------------------------- CartPole
CARTPOLE = ContextSpace(
    [
        F("gravity", 9.8, 0.1, 100.0, unit="m/s^2", description="gravitational acceleration"),
        F("masscart", 1.0, 0.1, 10.0, unit="kg", description="mass of the cart"),
        F("masspole", 0.1, 0.01, 1.0, unit="kg", description="mass of the pole"),
        F("length", 0.5, 0.05, 5.0, unit="m", description="half the pole's length"),
        F("force_mag", 10.0, 1.0, 100.0, unit="N", description="force of one push"),
        F(
            "tau",
            0.02,
            0.002,
            0.2,
            unit="s",
            description="integration time step; the 500-step limit lasts 500 tau s",
        ),
        F(
            "initial_state_bound",
            0.05,
            0.0,
            0.2,
            description="initial state ~ U(-b, b) in every coordinate",
        ),
    ],
    owner="CartPole",
)


def _apply_cartpole(env: Any, c: Context) -> None:
    env.gravity = c["gravity"]
    env.masscart = c["masscart"]
    env.masspole = c["masspole"]
    env.length = c["length"]
    env.force_mag = c["force_mag"]
    env.tau = c["tau"]
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


def _bounds_options(feature: str, c: Context) -> dict[str, Any]:
    return {"low": -c[feature], "high": c[feature]}


CARTPOLE_FAMILY = ContextFamily(
    "CartPole",
    CARTPOLE,
    _gym_env("CartPoleEnv"),
    _apply_cartpole,
    reset_options=partial(_bounds_options, "initial_state_bound"),
)

# ---------------------------------------------------------------------------------- Pendulum
PENDULUM = ContextSpace(
    [
        F("g", 10.0, 0.1, 100.0, unit="m/s^2", description="gravitational acceleration"),
        F("m", 1.0, 0.01, 100.0, unit="kg", description="mass of the pendulum"),
        F("l", 1.0, 0.01, 100.0, unit="m", description="length of the pendulum"),
        F(
            "dt",
            0.05,
            0.001,
            1.0,
            unit="s",
            description="integration time step; the 200-step limit lasts 200 dt s",
        ),
        F("max_speed", 8.0, 0.1, 100.0, unit="rad/s", description="angular speed limit"),
        F("max_torque", 2.0, 0.01, 100.0, unit="N m", description="torque limit (action bound)"),
        F(
            "initial_angle_max",
            math.pi,
            0.0,
            math.pi,
            unit="rad",
            description="initial angle ~ U(-a, a)",
        ),
        F(
            "initial_velocity_max",
            1.0,
            0.0,
            10.0,
            unit="rad/s",
            description="initial angular velocity ~ U(-v, v)",
        ),
    ],
    owner="Pendulum",
)


def _apply_pendulum(env: Any, c: Context) -> None:
    env.g, env.m, env.l, env.dt = c["g"], c["m"], c["l"], c["dt"]
    env.max_speed, env.max_torque = c["max_speed"], c["max_torque"]
    env.action_space = _box([-env.max_torque], [env.max_torque])
    env.observation_space = _box([-1.0, -1.0, -env.max_speed], [1.0, 1.0, env.max_speed])


PENDULUM_FAMILY = ContextFamily(
    "Pendulum",
    PENDULUM,
    _gym_env("PendulumEnv"),
    _apply_pendulum,
    reset_options=lambda c: {"x_init": c["initial_angle_max"], "y_init": c["initial_velocity_max"]},
    # an initial speed above the speed limit would start outside the observation space
    check=lambda c: require_order(c, "Pendulum", "initial_velocity_max", "max_speed"),
)


# ------------------------------------------------------------------------------- MountainCar
def _mountain_car_features(goal: float, discrete: bool) -> list[ContextFeature]:
    features = [
        F("min_position", -1.2, -2.4, -0.3, description="left wall position"),
        F("max_position", 0.6, 0.3, 1.8, description="right wall position"),
        F("max_speed", 0.07, 0.005, 0.5, description="speed limit per step"),
        F("goal_position", goal, -0.5, 1.8, description="position to reach"),
        F("goal_velocity", 0.0, -0.1, 0.1, description="minimum speed at the goal"),
        F("start_position_low", -0.6, -2.4, 1.8, description="initial position ~ U(low, high)"),
        F("start_position_high", -0.4, -2.4, 1.8, description="initial position ~ U(low, high)"),
    ]
    if discrete:
        features += [
            F("force", 0.001, 0.0001, 0.01, description="engine force per step"),
            F("gravity", 0.0025, 0.0001, 0.01, description="slope acceleration scale"),
        ]
    else:
        features += [F("power", 0.0015, 0.0001, 0.01, description="engine power per step")]
    return features


MOUNTAIN_CAR = ContextSpace(_mountain_car_features(0.5, True), owner="MountainCar")
MOUNTAIN_CAR_CONTINUOUS = ContextSpace(
    _mountain_car_features(0.45, False), owner="MountainCarContinuous"
)


def _check_mountain_car(owner: str, c: Context) -> None:
    require_order(
        c, owner, "min_position", "start_position_low", "start_position_high", "max_position"
    )
    # a start at or past the goal ends every episode at its first step
    require_order(c, owner, "start_position_high", "goal_position", strict=True)
    require_order(c, owner, "min_position", "goal_position", strict=True)
    require_order(c, owner, "goal_position", "max_position")


def _apply_mountain_car(env: Any, c: Context) -> None:
    for name in (
        "min_position",
        "max_position",
        "max_speed",
        "goal_position",
        "goal_velocity",
        "force",
        "gravity",
        "power",
    ):
        if name in c:
            setattr(env, name, c[name])
    low, high = [env.min_position, -env.max_speed], [env.max_position, env.max_speed]
    env.observation_space = _box(low, high)
    if hasattr(env, "low_state"):  # the continuous variant keeps its bounds here too
        env.low_state = np.array(low, dtype=np.float32)
        env.high_state = np.array(high, dtype=np.float32)
    else:
        env.low, env.high = np.array(low, dtype=np.float32), np.array(high, dtype=np.float32)


def _start_options(c: Context) -> dict[str, Any]:
    return {"low": c["start_position_low"], "high": c["start_position_high"]}


MOUNTAIN_CAR_FAMILY = ContextFamily(
    "MountainCar",
    MOUNTAIN_CAR,
    _gym_env("MountainCarEnv"),
    _apply_mountain_car,
    reset_options=_start_options,
    check=partial(_check_mountain_car, "MountainCar"),
)
MOUNTAIN_CAR_CONTINUOUS_FAMILY = ContextFamily(
    "MountainCarContinuous",
    MOUNTAIN_CAR_CONTINUOUS,
    _gym_env("Continuous_MountainCarEnv"),
    _apply_mountain_car,
    reset_options=_start_options,
    check=partial(_check_mountain_car, "MountainCarContinuous"),
)

# ----------------------------------------------------------------------------------- Acrobot
# The masses, the moment of inertia and the time step are bounded where gymnasium's RK4 step
# stays stable: with a 100:1 mass ratio, a light inertia and dt up to 1 s it diverged (angles
# of 1e14, an endless loop in gymnasium's angle wrapping), even at dt 0.2 at some corners.
# tests/test_classic_physics.py steps every corner of these bounds.
ACROBOT = ContextSpace(
    [
        F(
            "link_length_1",
            1.0,
            0.1,
            10.0,
            unit="m",
            description="length of the first link (the dynamics; gymnasium's goal test "
            "-cos(t1) - cos(t1 + t2) > 1 assumes links of 1 m and stays as it is)",
        ),
        F("link_mass_1", 1.0, 0.5, 5.0, unit="kg", description="mass of the first link"),
        F("link_mass_2", 1.0, 0.5, 5.0, unit="kg", description="mass of the second link"),
        F("link_com_pos_1", 0.5, 0.0, 1.0, unit="m", description="centre of mass of link 1"),
        F("link_com_pos_2", 0.5, 0.0, 1.0, unit="m", description="centre of mass of link 2"),
        F("link_moi", 1.0, 0.5, 5.0, unit="kg m^2", description="moment of inertia of both links"),
        F(
            "max_vel_1",
            4 * math.pi,
            0.4 * math.pi,
            40 * math.pi,
            unit="rad/s",
            description="angular speed limit of joint 1",
        ),
        F(
            "max_vel_2",
            9 * math.pi,
            0.9 * math.pi,
            90 * math.pi,
            unit="rad/s",
            description="angular speed limit of joint 2",
        ),
        F("torque_noise_max", 0.0, 0.0, 1.0, unit="N m", description="uniform torque noise"),
        F(
            "dt",
            0.2,
            0.01,
            0.5,
            unit="s",
            description="integration time step; the 500-step limit lasts 500 dt s",
        ),
        F(
            "initial_state_bound",
            0.1,
            0.0,
            0.5,
            description="initial state ~ U(-b, b) in every coordinate",
        ),
    ],
    owner="Acrobot",
)


def _apply_acrobot(env: Any, c: Context) -> None:
    env.LINK_LENGTH_1 = c["link_length_1"]
    env.LINK_MASS_1, env.LINK_MASS_2 = c["link_mass_1"], c["link_mass_2"]
    env.LINK_COM_POS_1, env.LINK_COM_POS_2 = c["link_com_pos_1"], c["link_com_pos_2"]
    env.LINK_MOI = c["link_moi"]
    env.MAX_VEL_1, env.MAX_VEL_2 = c["max_vel_1"], c["max_vel_2"]
    env.torque_noise_max = c["torque_noise_max"]
    env.dt = c["dt"]
    high = [1.0, 1.0, 1.0, 1.0, env.MAX_VEL_1, env.MAX_VEL_2]
    env.observation_space = _box([-h for h in high], high)


ACROBOT_FAMILY = ContextFamily(
    "Acrobot",
    ACROBOT,
    _gym_env("AcrobotEnv"),
    _apply_acrobot,
    reset_options=partial(_bounds_options, "initial_state_bound"),
)


# ----------------------------------------------------------------------------- registration
def make_batched(name: str, num_envs: int, **kwargs: Any) -> Any:
    """The torch twin of a classic-control env (imports torch on first use)."""
    from . import classic_control_twins as batched

    return batched.TWINS[name](num_envs, **kwargs)


def _entry(
    family: ContextFamily,
    steps: int,
    bounds: tuple[float, float],
    action: Literal["discrete", "continuous"],
    version: str,
    description: str,
) -> ContextualEnvEntry:
    return ContextualEnvEntry(
        family, steps, bounds, action, version, description, partial(make_batched, family.name)
    )


CARTPOLE_ENTRY = _entry(
    CARTPOLE_FAMILY,
    500,
    (0.0, 500.0),
    "discrete",
    "v1",
    "balance a pole on a cart (return bounds as in the MBTL reference)",
)
PENDULUM_ENTRY = _entry(
    PENDULUM_FAMILY,
    200,
    (-2200.0, -500.0),
    "continuous",
    "v1",
    "swing up a pendulum (return bounds as in the MBTL reference)",
)
MOUNTAIN_CAR_ENTRY = _entry(
    MOUNTAIN_CAR_FAMILY,
    200,
    (-200.0, -90.0),
    "discrete",
    "v0",
    "drive an underpowered car up a hill",
)
MOUNTAIN_CAR_CONTINUOUS_ENTRY = _entry(
    MOUNTAIN_CAR_CONTINUOUS_FAMILY,
    999,
    (-50.0, 100.0),
    "continuous",
    "v0",
    "drive an underpowered car up a hill, continuous force",
)
ACROBOT_ENTRY = _entry(
    ACROBOT_FAMILY, 500, (-500.0, -60.0), "discrete", "v1", "swing a two-link arm above a line"
)

# the module attribute of each entry, the path gymnasium's registry stores
_GYMNASIUM_ENTRY_POINTS = {
    "CARTPOLE_ENTRY": CARTPOLE_ENTRY,
    "PENDULUM_ENTRY": PENDULUM_ENTRY,
    "MOUNTAIN_CAR_ENTRY": MOUNTAIN_CAR_ENTRY,
    "MOUNTAIN_CAR_CONTINUOUS_ENTRY": MOUNTAIN_CAR_CONTINUOUS_ENTRY,
    "ACROBOT_ENTRY": ACROBOT_ENTRY,
}
ENTRIES = {entry.family.name: entry for entry in _GYMNASIUM_ENTRY_POINTS.values()}


def register_gymnasium_ids() -> None:
    """Register ``ctxrl/{Name}-vN`` for every classic-control env with gymnasium."""
    for attribute, entry in _GYMNASIUM_ENTRY_POINTS.items():
        entry.register_with_gymnasium(f"{__name__}:{attribute}")


@hookimpl
def ctxrl_register_envs(register: Callable[[EnvSpec], None]) -> None:
    for entry in ENTRIES.values():
        register(entry.spec())
