"""Contextual box2d envs: LunarLander (discrete and continuous engines, with gymnasium's
wind as context features) and BipedalWalker (its hardcore terrain too; ``pip install
ctxrl[box2d]``).

gymnasium's box2d envs read most physical constants (engine power, motor torque, initial
randomness, frame rate) from module globals. Writing those globals would change every env in the
process, which is the defect ctxrl avoids: instead each env instance runs gymnasium's own methods
against a private copy of the module's globals that holds its context. The physics code is
gymnasium's, unchanged; only the constants it reads differ per instance.

The features are those constants (as CARL exposes them), with gymnasium's meaning. Two of them
change more than their name says, and their descriptions say how: ``fps`` (gymnasium applies
each engine burst as one impulse per physics step and the initial push as one step's force, so
the engines grow stronger per simulated second and the push weaker as it rises) and LunarLander's
``scale`` (the lander's mass falls as 1 / scale^2 and its engines' impulse as 1 / scale, while
gravity, wind and the push keep their units). The time limits count steps, not seconds.
BipedalWalker has no ``terrain_height``: gymnasium draws the terrain relative to it and starts
the walker above it, so it only lifts the whole world (nothing observed changes).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np

from ctxrl import hookimpl
from ctxrl.context import Context, ContextFeature, ContextSpace
from ctxrl.contextual import ContextFamily, ContextualEnvEntry
from ctxrl.errors import PluginUnavailable
from ctxrl.registry import EnvSpec

F = ContextFeature

LUNAR_LANDER = ContextSpace(
    [
        F("gravity_x", 0.0, -20.0, 20.0, unit="m/s^2", description="horizontal gravity"),
        F("gravity_y", -10.0, -20.0, -0.01, unit="m/s^2", description="vertical gravity"),
        F("main_engine_power", 13.0, 0.0, 50.0, description="main engine impulse scale"),
        F("side_engine_power", 0.6, 0.0, 50.0, description="side engine impulse scale"),
        F("initial_random", 1000.0, 0.0, 2000.0, description="random initial force on the lander"),
        F("leg_spring_torque", 40.0, 1.0, 200.0, description="torque of the leg springs"),
        F(
            "fps",
            50.0,
            10.0,
            200.0,
            unit="1/s",
            description="physics steps per second; each engine burst is one impulse per step, "
            "so thrust per second grows with it (below about 29 the main engine cannot lift "
            "the lander against gravity 10) and the initial push shrinks; the 1000-step limit "
            "lasts 1000 / fps s",
        ),
        F(
            "scale",
            30.0,
            15.0,
            60.0,
            unit="px/m",
            description="pixels per metre: larger is a smaller world and lander in metres, "
            "observed positions normalised by the screen; the lander's mass falls as 1 / "
            "scale^2 and its engine impulse as 1 / scale while gravity, wind and the initial "
            "push keep their units, so thrust-to-weight rises with it (below about 17 the "
            "lander cannot hover)",
        ),
        F("leg_away", 20.0, 5.0, 40.0, unit="px", description="horizontal offset of each leg"),
        F("leg_down", 18.0, 5.0, 40.0, unit="px", description="how far the legs hang down"),
        F("leg_w", 2.0, 1.0, 10.0, unit="px", description="half-width of a leg"),
        F("leg_h", 8.0, 2.0, 20.0, unit="px", description="half-height of a leg"),
        F(
            "side_engine_height",
            14.0,
            1.0,
            30.0,
            unit="px",
            description="height of the side engines above the centre",
        ),
        F(
            "side_engine_away",
            12.0,
            1.0,
            30.0,
            unit="px",
            description="lever of the side engines: scales their impulse",
        ),
        F(
            "main_engine_y_location",
            4.0,
            1.0,
            10.0,
            unit="px",
            description="offset of the main engine below the centre: scales its impulse",
        ),
        F(
            "wind_power",
            0.0,
            0.0,
            20.0,
            description="largest sideways wind force (gymnasium's enable_wind; 0: none)",
        ),
        F(
            "turbulence_power",
            0.0,
            0.0,
            2.0,
            description="largest turbulent torque (gymnasium's enable_wind; 0: none)",
        ),
    ],
    owner="LunarLander",
)
LUNAR_LANDER_CONTINUOUS = ContextSpace(LUNAR_LANDER.features, owner="LunarLanderContinuous")

BIPEDAL_WALKER = ContextSpace(
    [
        F("gravity_y", -10.0, -20.0, -0.01, unit="m/s^2", description="vertical gravity"),
        F("friction", 2.5, 0.0, 10.0, description="friction of the terrain"),
        F("motors_torque", 80.0, 0.01, 200.0, unit="N m", description="maximum motor torque"),
        F("speed_hip", 4.0, 0.1, 20.0, unit="rad/s", description="hip motor speed"),
        F("speed_knee", 6.0, 0.1, 20.0, unit="rad/s", description="knee motor speed"),
        F("initial_random", 5.0, 0.0, 20.0, description="random initial push of the hull"),
        F("lidar_range", 160 / 30.0, 0.5, 20.0, unit="m", description="range of the lidar"),
        F("gravity_x", 0.0, -10.0, 10.0, unit="m/s^2", description="horizontal gravity"),
        F(
            "fps",
            50.0,
            20.0,
            200.0,
            unit="1/s",
            description="physics steps per second; the initial push is one step's force, so "
            "it shrinks as 1 / fps; the time limit, in steps (1600, hardcore 2000), lasts "
            "limit / fps s",
        ),
        F(
            "leg_down",
            -8 / 30.0,
            -1.0,
            0.0,
            unit="m",
            description="vertical offset of the hip joints from the hull centre",
        ),
        F("leg_w", 8 / 30.0, 0.05, 0.6, unit="m", description="width of the upper legs"),
        F("leg_h", 34 / 30.0, 0.4, 2.0, unit="m", description="length of each leg segment"),
        F("terrain_step", 14 / 30.0, 0.2, 1.0, unit="m", description="terrain segment width"),
        F(
            "terrain_length",
            200.0,
            100.0,
            400.0,
            unit="segments",
            description="terrain length, rounded to whole segments; the finish is near its end",
            integer=True,
        ),
        F(
            "terrain_grass",
            10.0,
            2.0,
            30.0,
            unit="segments",
            description="rounded; the finish line lies this many segments before the end; on "
            "the hardcore course also the longest grass stretch between obstacles (each drawn "
            "from [grass / 2, grass)), so fewer obstacles as it grows",
            integer=True,
        ),
        F(
            "terrain_startpad",
            20.0,
            2.0,
            50.0,
            unit="segments",
            description="rounded; length of the flat start pad",
            integer=True,
        ),
    ],
    owner="BipedalWalker",
)
BIPEDAL_WALKER_HARDCORE = ContextSpace(BIPEDAL_WALKER.features, owner="BipedalWalkerHardcore")


def _private_globals(env: Any, module: types.ModuleType) -> dict[str, Any]:
    """Rebind the env's own methods to a private copy of ``module``'s globals; return it.

    Each method defined in ``module`` becomes an instance attribute whose function object reads
    the private dict, so changing a constant there affects this instance only."""
    private = dict(vars(module))
    for cls in type(env).__mro__:
        if cls.__module__ != module.__name__:
            continue
        for name, member in vars(cls).items():
            if isinstance(member, types.FunctionType) and not name.startswith("__"):
                rebound = types.FunctionType(
                    member.__code__,
                    private,
                    member.__name__,
                    member.__defaults__,
                    member.__closure__,
                )
                rebound.__kwdefaults__ = member.__kwdefaults__
                setattr(env, name, types.MethodType(rebound, env))
    return private


def _build_lunar_lander(render_mode: str | None, *, continuous: bool = False) -> Any:
    import Box2D
    from gymnasium.envs.box2d import lunar_lander

    # Any: the ctxrl_* attributes below are this module's additions to gymnasium's class
    env: Any = lunar_lander.LunarLander(render_mode=render_mode, continuous=continuous)
    private = _private_globals(env, lunar_lander)
    # The world is created in reset() with gravity (0, self.gravity); this shim adds x.
    box2d = types.ModuleType("Box2D")
    box2d.__dict__.update(vars(Box2D))

    def world(gravity: tuple[float, float] = (0.0, -10.0), **kwargs: Any) -> Any:
        return Box2D.b2World(gravity=(private["GRAVITY_X"], gravity[1]), **kwargs)

    box2d.b2World = world  # type: ignore[attr-defined]
    private["Box2D"] = box2d
    private["GRAVITY_X"] = 0.0
    env._ctxrl_globals = private
    env._ctxrl_obs_bounds = (env.observation_space.low.copy(), env.observation_space.high.copy())
    return env


def _apply_lunar_lander(env: Any, c: Context) -> None:
    private = env._ctxrl_globals
    env.gravity = c["gravity_y"]
    private["GRAVITY_X"] = c["gravity_x"]
    private["MAIN_ENGINE_POWER"] = c["main_engine_power"]
    private["SIDE_ENGINE_POWER"] = c["side_engine_power"]
    private["INITIAL_RANDOM"] = c["initial_random"]
    private["LEG_SPRING_TORQUE"] = c["leg_spring_torque"]
    private["FPS"] = c["fps"]
    # gymnasium's wind: drawn at reset and applied while the legs are off the ground; off
    # (no draw at reset, the episodes of before) where both powers are 0
    env.wind_power, env.turbulence_power = c["wind_power"], c["turbulence_power"]
    env.enable_wind = c["wind_power"] > 0 or c["turbulence_power"] > 0
    if env.enable_wind and not hasattr(env, "wind_idx"):
        # wind switched on in the middle of an episode (set_context without a reset):
        # gymnasium draws the wind's phases at reset only, and its step needs them
        env.wind_idx = env.np_random.integers(-9999, 9999)
        env.torque_idx = env.np_random.integers(-9999, 9999)
    # human rendering plays at the simulated rate (gymnasium's class metadata says 50)
    env.metadata = {**env.metadata, "render_fps": c["fps"]}
    private["SCALE"] = c["scale"]
    for name in (
        "leg_away",
        "leg_down",
        "leg_w",
        "leg_h",
        "side_engine_height",
        "side_engine_away",
        "main_engine_y_location",
    ):
        private[name.upper()] = c[name]
    # gymnasium's bounds assume its default physics; with weak gravity or strong engines the
    # lander legitimately climbs above the screen, flies faster and spins, and velocities are
    # observed per frame in screen units (they grow at a lower frame rate or a smaller scale),
    # so height (1, upwards), the velocities (2, 3), angle (4) and angular velocity (5) are
    # unbounded rather than violated.
    from gymnasium import spaces

    low, high = env._ctxrl_obs_bounds
    low, high = low.copy(), high.copy()
    high[[1, 2, 3, 4, 5]] = np.inf
    low[[2, 3, 4, 5]] = -np.inf
    env.observation_space = spaces.Box(low, high, dtype=low.dtype)
    if getattr(env, "world", None) is not None:  # takes effect before the next reset too
        env.world.gravity = (c["gravity_x"], c["gravity_y"])


def _bipedal_module() -> types.ModuleType:
    from gymnasium.envs.box2d import bipedal_walker

    return bipedal_walker


def _build_bipedal_walker(render_mode: str | None, *, hardcore: bool = False) -> Any:
    bipedal_walker = _bipedal_module()

    env = bipedal_walker.BipedalWalker(render_mode=render_mode, hardcore=hardcore)
    env._ctxrl_globals = _private_globals(env, bipedal_walker)
    # gymnasium builds the walker's world once and reuses it, so an instance's first episode
    # cannot be played again (the same seed gives another trajectory from the second episode
    # on, and an evaluation's returns would depend on what the instance played before). Each
    # episode starts in a fresh world with the context's gravity, as the first one does.
    gymnasium_reset = env.reset

    def reset(*args: Any, **kwargs: Any) -> Any:
        env._destroy()
        env.world = bipedal_walker.Box2D.b2World(gravity=env.world.gravity)
        return gymnasium_reset(*args, **kwargs)

    env.reset = reset
    env._ctxrl_obs_bounds = (env.observation_space.low.copy(), env.observation_space.high.copy())
    return env


def _apply_bipedal_walker(env: Any, c: Context) -> None:
    from Box2D.b2 import fixtureDef, polygonShape

    private = env._ctxrl_globals
    env.world.gravity = (c["gravity_x"], c["gravity_y"])
    env.fd_polygon.friction = c["friction"]  # terrain fixtures are built from these at reset
    env.fd_edge.friction = c["friction"]
    private["FRICTION"] = c["friction"]
    private["MOTORS_TORQUE"] = c["motors_torque"]
    private["SPEED_HIP"] = c["speed_hip"]
    private["SPEED_KNEE"] = c["speed_knee"]
    private["INITIAL_RANDOM"] = c["initial_random"]
    private["LIDAR_RANGE"] = c["lidar_range"]
    private["FPS"] = c["fps"]
    # human rendering plays at the simulated rate (gymnasium's class metadata says 50)
    env.metadata = {**env.metadata, "render_fps": c["fps"]}
    for name in ("leg_down", "leg_w", "leg_h", "terrain_step"):
        private[name.upper()] = c[name]
    for name in ("terrain_length", "terrain_grass", "terrain_startpad"):  # integer features
        private[name.upper()] = int(BIPEDAL_WALKER.feature(name).env_value(c[name]))
    # The leg fixtures are built from LEG_W / LEG_H when the module is imported: rebuild them.
    for fixture_name, width in (("LEG_FD", c["leg_w"]), ("LOWER_FD", 0.8 * c["leg_w"])):
        template = vars(_bipedal_module())[fixture_name]
        private[fixture_name] = fixtureDef(
            shape=polygonShape(box=(width / 2, c["leg_h"] / 2)),
            density=template.density,
            restitution=template.restitution,
            categoryBits=template.filter.categoryBits,
            maskBits=template.filter.maskBits,
        )
    # gymnasium's bounds assume its default physics. The hull angle (0) is not wrapped: with
    # weak gravity or a low frame rate the walker spins past pi before it lands; the hull's
    # velocities (1-3) are observed per frame (larger at a lower frame rate, and with strong
    # sideways gravity), the joint speeds (5, 7, 10, 12) relative to the motor speeds (larger
    # with slower motors, light or long legs). These are unbounded rather than violated, as
    # LunarLander's are; the joint angles are held by the joints' limits and stay bounded.
    from gymnasium import spaces

    low, high = (b.copy() for b in env._ctxrl_obs_bounds)
    unbounded = [0, 1, 2, 3, 5, 7, 10, 12]
    low[unbounded], high[unbounded] = -np.inf, np.inf
    env.observation_space = spaces.Box(low, high, dtype=low.dtype)


LUNAR_LANDER_FAMILY = ContextFamily(
    "LunarLander", LUNAR_LANDER, _build_lunar_lander, _apply_lunar_lander
)
LUNAR_LANDER_CONTINUOUS_FAMILY = ContextFamily(
    "LunarLanderContinuous",
    LUNAR_LANDER_CONTINUOUS,
    lambda render_mode: _build_lunar_lander(render_mode, continuous=True),
    _apply_lunar_lander,
)
BIPEDAL_WALKER_FAMILY = ContextFamily(
    "BipedalWalker", BIPEDAL_WALKER, _build_bipedal_walker, _apply_bipedal_walker
)
BIPEDAL_WALKER_HARDCORE_FAMILY = ContextFamily(
    "BipedalWalkerHardcore",
    BIPEDAL_WALKER_HARDCORE,
    lambda render_mode: _build_bipedal_walker(render_mode, hardcore=True),
    _apply_bipedal_walker,
)

LUNAR_LANDER_ENTRY = ContextualEnvEntry(
    LUNAR_LANDER_FAMILY, 1000, (-400.0, 300.0), "discrete", "v3", "land a lander on a pad (box2d)"
)
LUNAR_LANDER_CONTINUOUS_ENTRY = ContextualEnvEntry(
    LUNAR_LANDER_CONTINUOUS_FAMILY,
    1000,
    (-400.0, 300.0),
    "continuous",
    "v3",
    "land a lander on a pad with throttled engines (box2d)",
)
BIPEDAL_WALKER_ENTRY = ContextualEnvEntry(
    BIPEDAL_WALKER_FAMILY,
    1600,
    (-200.0, 10.0),
    "continuous",
    "v3",
    "walk a two-legged robot over terrain (box2d; MBTL reference bounds)",
)

BIPEDAL_WALKER_HARDCORE_ENTRY = ContextualEnvEntry(
    BIPEDAL_WALKER_HARDCORE_FAMILY,
    2000,
    (-200.0, 10.0),
    "continuous",
    "v3",
    "walk a two-legged robot over stumps, pits and stairs (box2d; gymnasium's hardcore)",
)

# the module attribute of each entry, the path gymnasium's registry stores
_GYMNASIUM_ENTRY_POINTS = {
    "LUNAR_LANDER_ENTRY": LUNAR_LANDER_ENTRY,
    "LUNAR_LANDER_CONTINUOUS_ENTRY": LUNAR_LANDER_CONTINUOUS_ENTRY,
    "BIPEDAL_WALKER_ENTRY": BIPEDAL_WALKER_ENTRY,
    "BIPEDAL_WALKER_HARDCORE_ENTRY": BIPEDAL_WALKER_HARDCORE_ENTRY,
}
ENTRIES = {entry.family.name: entry for entry in _GYMNASIUM_ENTRY_POINTS.values()}


def register_gymnasium_ids() -> None:
    """Register ``ctxrl/LunarLander-v3``, ``ctxrl/LunarLanderContinuous-v3``,
    ``ctxrl/BipedalWalker-v3`` and ``ctxrl/BipedalWalkerHardcore-v3`` with gymnasium."""
    for attribute, entry in _GYMNASIUM_ENTRY_POINTS.items():
        entry.register_with_gymnasium(f"{__name__}:{attribute}")


@hookimpl
def ctxrl_register_envs(register: Callable[[EnvSpec], None]) -> None:
    import importlib.util

    if importlib.util.find_spec("Box2D") is None:
        raise PluginUnavailable("box2d is not installed: pip install 'ctxrl[box2d]'")
    for entry in ENTRIES.values():
        register(entry.spec())
