"""Traffic signal control on real SUMO through sumo-rl (``pip install ctxrl[sumo]``).

One signalised four-way intersection, as in the MBTL paper's headline domain. The context sets
the traffic inflow per approach (veh/h), the speed limit (m/s), the approach road length (m)
and the share of left-turning vehicles; base scenario 1000 veh/h, 14 m/s, 750 m, 0.25 (two
lanes each way on every road, 10 % right turns). For every context the network is built with
SUMO's own ``netconvert`` and the demand written as SUMO flows, cached per context (a directory
named by the task id under ``$CTXRL_CACHE_DIR/traffic``, default ``~/.cache/ctxrl/traffic``),
and the same context always gives the same files (:mod:`ctxrl_envs.traffic_scenario`).

The agent is the traffic light (sumo-rl, single agent): observation = phase one-hot, min-green
flag, lane densities and queues; action = next green phase; reward ``diff-waiting-time`` by
default (any sumo-rl reward by name). Steps of ``delta_time`` = 10 simulated seconds with a
4 s yellow and 10 s minimum green, as in the reference.

Return bounds for normalisation: [-2000, 0] on the default 1800 s episode. The reward telescopes
to minus the waiting time accumulated in the network, divided by 100 (sumo-rl's units). Measured
on the default 1800 s episode: random phases score about -1400 at 1000 veh/h and -1800 at
2500 veh/h; at 50 veh/h random phases score about 0 and a light that never changes about -380.
A policy that jams a heavy inflow scores far below -2000 (down to about -5000 in the kept
matrices of ``benchmarks/results/traffic-inflow-10``), and normalisation clips every such
return to 0: the bounds separate working policies, not bad ones from very bad ones. Shorter
episodes (``num_seconds``) score far less than in proportion (the return is minus the waiting
of the vehicles still queued at the end, which grows faster than the episode: random phases at
1000 veh/h score about -40 in 300 s, -150 in 600 s), and other rewards (``reward_fn``) have
other scales: give a sweep ``return_bounds`` measured for them (e.g. from a few random-phase
and fixed-phase episodes).

Demand is SUMO flows at a constant rate (``vehsPerHour``); above what the lanes can carry, the
vehicles that cannot enter wait outside the network, unseen by the observation and the reward,
so inflows beyond capacity differ less than their numbers.

``road_length`` is the distance from the junction's centre to the road's far end; netconvert
takes the junction's own size (about 10 m) off the lanes, so a lane is that much shorter.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import subprocess
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from numbers import Integral
from typing import Any

import gymnasium as gym
import numpy as np

from ctxrl import hookimpl
from ctxrl.context import Context
from ctxrl.errors import CtxrlError, PluginUnavailable
from ctxrl.registry import EnvSpec
from ctxrl_envs.traffic_scenario import NAME, TRAFFIC, cache_dir, scenario, sumo_home

__all__ = ["NAME", "TRAFFIC", "TrafficSignalEnv", "cache_dir", "make", "scenario"]

CONNECT_POLL_S = 0.02
"""How often TraCI polls a starting SUMO's port (traci itself: once per second, hard-coded)."""


@contextlib.contextmanager
def _fast_sumo_start() -> Iterator[None]:
    """Within this block, TraCI polls a starting SUMO every :data:`CONNECT_POLL_S` seconds.

    sumo-rl starts SUMO with ``traci.start``, whose ``init`` passes a fixed one-second wait to
    ``traci.main.connect``; the first poll always comes too early, so every episode (each reset
    starts a new SUMO) paid a second, most of a short episode's cost. Here ``connect`` is
    swapped for a wrapper with a short wait and the same total patience, and TraCI's retry
    chatter is kept off stdout; both are restored when the block ends. With libsumo
    (``LIBSUMO_AS_TRACI``) there is no connection and this does nothing."""
    import traci.main

    original = traci.main.connect

    def connect(
        port: int = 8813,
        numRetries: int = 60,
        host: str = "localhost",
        proc: Any = None,
        waitBetweenRetries: float = 1.0,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        retries = int(numRetries * waitBetweenRetries / CONNECT_POLL_S)
        with contextlib.redirect_stdout(io.StringIO()):
            return original(port, retries, host, proc, CONNECT_POLL_S, *args, **kwargs)

    traci.main.connect = connect
    try:
        yield
    finally:
        traci.main.connect = original


def _whole_seconds(name: str, value: object, least: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise CtxrlError(
            f"{NAME}: {name} must be a whole number of simulated seconds >= {least}{why} "
            f"(got {value!r})"
        )
    return int(value)


def _check_timing(
    num_seconds: object,
    delta_time: object,
    yellow_time: object,
    min_green: object,
    max_green: object,
) -> None:
    """sumo-rl's timing options, checked before SUMO starts (sumo-rl asserts some of them
    after starting it, and ignores ``max_green``)."""
    delta = _whole_seconds("delta_time", delta_time, 1)
    # sumo-rl counts a yellow's seconds before comparing: 0 would hold it a whole step
    yellow = _whole_seconds("yellow_time", yellow_time, 1, " (sumo-rl has no switch without one)")
    _whole_seconds("min_green", min_green, 0)
    _whole_seconds("num_seconds", num_seconds, delta)
    if delta <= yellow:
        raise CtxrlError(
            f"{NAME}: delta_time ({delta} s) must be above yellow_time ({yellow} s): a step "
            "holds the yellow phase and some green"
        )
    if max_green != 60:
        raise CtxrlError(
            f"{NAME}: max_green={max_green!r} would do nothing: sumo-rl ignores max_green "
            "(leave it at its default, 60)"
        )


def _check_reward(reward_fn: object) -> None:
    """``reward_fn`` names one of sumo-rl's rewards (or is a callable, as sumo-rl takes)."""
    if callable(reward_fn):
        return
    from sumo_rl.environment.traffic_signal import TrafficSignal

    if not isinstance(reward_fn, str) or reward_fn not in TrafficSignal.reward_fns:
        raise CtxrlError(
            f"{NAME}: reward_fn {reward_fn!r} is not one of sumo-rl's rewards "
            f"{sorted(TrafficSignal.reward_fns)}"
        )


class _LibsumoSlot:
    """Under libsumo (one SUMO simulation per process), the env whose simulation this process
    runs, held weakly: an env nobody can reach any more (dropped without ``close()``, a
    notebook cell run again) gives the slot up, and the simulation it left running is closed
    when the next env claims the slot."""

    def __init__(self) -> None:
        self._holder: weakref.ref[TrafficSignalEnv] | None = None
        self._loaded = False  # a simulation was started and not closed

    def holder(self) -> TrafficSignalEnv | None:
        return None if self._holder is None else self._holder()

    def claim(self, env: TrafficSignalEnv) -> None:
        holder = self.holder()
        if holder is not None and holder is not env:
            gc.collect()  # an unreachable env in a reference cycle (wrappers) goes now
            holder = self.holder()
        if holder is not None and holder is not env:
            raise CtxrlError(
                f"{NAME}: libsumo (LIBSUMO_AS_TRACI is set) runs one SUMO simulation per process "
                "and another TrafficSignal env of this process is running; close it first, "
                "or unset LIBSUMO_AS_TRACI to use TraCI (one SUMO process per env)"
            )
        if holder is None and self._loaded:  # left running by an env that is gone
            import traci

            with contextlib.suppress(Exception):
                traci.close()
        self._holder, self._loaded = weakref.ref(env), True

    def release(self, env: TrafficSignalEnv) -> None:
        """``env``'s simulation is closed: the slot is free."""
        if self.holder() is env:
            self._holder, self._loaded = None, False


_LIBSUMO = _LibsumoSlot()


def _libsumo() -> bool:
    """Whether sumo-rl drives SUMO through libsumo (in-process, one simulation per process)
    instead of TraCI: sumo-rl's own test, the ``LIBSUMO_AS_TRACI`` environment variable."""
    return "LIBSUMO_AS_TRACI" in os.environ


class TrafficSignalEnv(gym.Env):
    """A gymnasium env (single traffic light) whose scenario follows a context.

    Args:
        num_seconds: simulated seconds per episode.
            An episode is a whole number of agent steps: it ends at the first multiple of
            ``delta_time`` at or after ``num_seconds``.
        delta_time, yellow_time, min_green: sumo-rl's timing, in whole simulated seconds
            (``delta_time`` above ``yellow_time``, as sumo-rl requires).
        max_green: accepted for sumo-rl's signature only: sumo-rl ignores it, so any value but
            its default (60) is refused rather than silently doing nothing.
        reward_fn: a sumo-rl reward name (``diff-waiting-time``, ``average-speed``, ``queue``,
            ``pressure``, or one registered with ``TrafficSignal.register_reward_fn``).
        sumo_args: extra SUMO command-line arguments (e.g. ``["--tripinfo-output", path]``),
            none containing whitespace (sumo-rl splits its SUMO command at whitespace).
        metrics: put sumo-rl's system and per-signal metrics (mean speed, waiting times,
            queues) in each step's ``info``. Off by default: they cost two TraCI calls per
            vehicle per step, most of a step's time (the reward needs none of them).
        time_to_teleport: simulated seconds a stuck vehicle waits before SUMO moves it to the
            end of its road (-1, sumo-rl's default: never; SUMO's own default is 300). A policy
            that jams a heavy inflow fills the network and slows SUMO down with every queued
            vehicle; teleporting bounds the queue, and also the waiting time the reward counts.
        max_depart_delay: simulated seconds a vehicle may wait to enter the network before it
            is dropped (-1, sumo-rl's default: never).
    """

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        num_seconds: int = 1800,
        delta_time: int = 10,
        yellow_time: int = 4,
        min_green: int = 10,
        max_green: int = 60,
        reward_fn: str = "diff-waiting-time",
        sumo_args: Sequence[str] = (),
        metrics: bool = False,
        time_to_teleport: int = -1,
        max_depart_delay: int = -1,
    ) -> None:
        if render_mode is not None:
            raise CtxrlError(f"{NAME}: rendering is not supported (render_mode={render_mode!r})")
        # SUMO takes a time to teleport of 0 as never, a delay of 0 as at once
        for name, seconds, least in (
            ("time_to_teleport", time_to_teleport, 1),
            ("max_depart_delay", max_depart_delay, 0),
        ):
            bad = isinstance(seconds, bool) or not isinstance(seconds, Integral)
            if bad or (seconds != -1 and seconds < least):
                raise CtxrlError(
                    f"{NAME}: {name} must be a whole number of seconds >= {least}, or -1 for "
                    f"never (got {seconds!r})"
                )
        if not isinstance(metrics, bool):
            raise CtxrlError(f"{NAME}: metrics must be true or false (got {metrics!r})")
        if isinstance(sumo_args, str):
            raise CtxrlError(
                f"{NAME}: sumo_args must be a list of arguments, got the string {sumo_args!r} "
                f"(write [{', '.join(repr(a) for a in sumo_args.split())}])"
            )
        sumo_home()
        _check_timing(num_seconds, delta_time, yellow_time, min_green, max_green)
        _check_reward(reward_fn)
        self.options: dict[str, Any] = {
            "num_seconds": int(num_seconds),
            "delta_time": int(delta_time),
            "yellow_time": int(yellow_time),
            "min_green": int(min_green),
            "max_green": max_green,
            "reward_fn": reward_fn,
            "add_system_info": bool(metrics),
            "add_per_agent_info": bool(metrics),
            "time_to_teleport": int(time_to_teleport),
            "max_depart_delay": int(max_depart_delay),
        }
        self.sumo_args = list(sumo_args)
        spaced = [arg for arg in self.sumo_args if not arg or any(c.isspace() for c in arg)]
        if spaced:
            raise CtxrlError(
                f"{NAME}: sumo_args {spaced} are empty or contain whitespace; sumo-rl splits its "
                "SUMO command at whitespace, so SUMO would get them in pieces (use paths without "
                "spaces)"
            )
        self.context = TRAFFIC.default()
        self._sim: Any = None
        self._running = False  # an episode was started by reset() and not ended by close()
        if self.sumo_args:
            self._check_sumo_args()
        probe = self._simulation()  # sumo-rl reads the light's phases and lanes here
        self.observation_space = probe.observation_space
        self.action_space = probe.action_space
        _LIBSUMO.release(self)  # sumo-rl has closed its reading run: nothing runs

    def _claim_libsumo(self) -> None:
        """Under libsumo, make this env the process's one running simulation; another env's
        running simulation is an error (starting SUMO would silently replace it)."""
        if _libsumo():
            _LIBSUMO.claim(self)

    def _simulation(self) -> Any:
        if self._sim is None:
            from sumo_rl import SumoEnvironment

            self._claim_libsumo()  # sumo-rl starts SUMO here to read the light's phases

            net, routes = scenario(self.context, int(self.options["num_seconds"]))
            try:
                with _fast_sumo_start():  # sumo-rl runs SUMO once here to read the light
                    self._sim = SumoEnvironment(
                        net_file=str(net),
                        route_file=str(routes),
                        single_agent=True,
                        sumo_warnings=False,
                        additional_sumo_cmd=" ".join(["--no-step-log", *self.sumo_args]),
                        sumo_seed=0,
                        **self.options,
                    )
            except BaseException:
                self._end_failed_probe(SumoEnvironment.CONNECTION_LABEL - 1)
                raise
        return self._sim

    def _end_failed_probe(self, label: int) -> None:
        """sumo-rl failed after starting its reading run of SUMO (before closing it): close
        that run (libsumo's one simulation, or TraCI's ``init_connection`` of ``label``) and
        release this process's libsumo slot, so that the next env can run."""
        import traci

        with contextlib.suppress(Exception):
            if _libsumo():
                traci.close()
            else:
                traci.getConnection(f"init_connection{label}").close()
        _LIBSUMO.release(self)

    def _check_sumo_args(self) -> None:
        """Run SUMO once on the default scenario with the extra arguments: a bad argument is
        reported at once with SUMO's own message (TraCI would retry for a minute)."""
        net, routes = scenario(self.context, int(self.options["num_seconds"]))
        sumo_binary = sumo_home() / "bin" / "sumo"
        with tempfile.TemporaryDirectory() as scratch:  # output files of the trial run
            result = subprocess.run(
                [
                    str(sumo_binary),
                    "-n",
                    str(net),
                    "-r",
                    str(routes),
                    "--end",
                    "1",
                    "--no-step-log",
                    *self.sumo_args,
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=scratch,
            )
        if result.returncode != 0:
            raise CtxrlError(
                f"{NAME}: SUMO rejected sumo_args {self.sumo_args}: "
                f"{(result.stderr or result.stdout).strip()}"
            )

    def set_context(self, context: Context) -> None:
        """Use ``context`` from the next reset (its scenario is built or taken from the cache).

        A new context ends a running episode (its SUMO is closed): call ``reset`` before the
        next ``step``."""
        if context != self.context:
            self.close()
            self.context = context

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        sumo_seed = int(self.np_random.integers(2**31 - 1))  # SUMO's own seed, from ours
        simulation = self._simulation()
        self._claim_libsumo()
        with _fast_sumo_start():  # each reset starts a new SUMO
            obs, info = simulation.reset(seed=sumo_seed)
        self._running = True
        return np.asarray(obs, dtype=np.float32), dict(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._running:
            raise CtxrlError(
                f"{NAME}: step() without a running episode: call reset() first (a new context "
                "or close() ends the episode)"
            )
        obs, reward, terminated, truncated, info = self._simulation().step(self._phase(action))
        return (
            np.asarray(obs, dtype=np.float32),
            float(reward),
            bool(terminated),
            bool(truncated),
            dict(info),
        )

    def _phase(self, action: Any) -> int:
        """``action`` as the index of a green phase; anything else is refused by name (sumo-rl
        ignored a bad index while the minimum green held, then failed with a ``KeyError``)."""
        value = np.asarray(action)
        count = int(getattr(self.action_space, "n", 0))
        number = value.item() if value.size == 1 and value.dtype.kind in "iuf" else None
        if number is None or not np.isfinite(number) or number != int(number):
            number = None
        if number is None or not 0 <= number < count:
            raise CtxrlError(
                f"{NAME}: action {action!r} is not a green phase: give a whole number in "
                f"0..{count - 1}"
            )
        return int(number)

    def close(self) -> None:
        self._running = False
        try:
            if self._sim is not None:
                self._sim.close()
        finally:
            self._sim = None
            _LIBSUMO.release(self)


def make(
    context: Mapping[str, object] | None = None,
    *,
    visible: Sequence[str] = (),
    render_mode: str | None = None,
    **options: Any,
) -> Any:
    """The contextual traffic env (``options``: see :class:`TrafficSignalEnv`)."""
    from ctxrl.contextual import ContextFamily, ContextualEnv

    family = ContextFamily(
        NAME,
        TRAFFIC,
        lambda mode: TrafficSignalEnv(mode, **options),
        apply=lambda env, context: env.set_context(context),
    )
    return ContextualEnv(family, context, visible, render_mode)


@hookimpl
def ctxrl_register_envs(register: Callable[[EnvSpec], None]) -> None:
    import importlib.util

    sumo_home()
    if importlib.util.find_spec("sumo_rl") is None:
        raise PluginUnavailable("sumo-rl is not installed: pip install 'ctxrl[sumo]'")
    register(
        EnvSpec(
            name=NAME,
            context_space=TRAFFIC,
            make=make,
            return_bounds=(-2000.0, 0.0),
            action_space="discrete",
            max_episode_steps=None,
            gym_id=None,
            description="signalised intersection on SUMO (sumo-rl); episodes end after num_seconds",
            concurrent_instances=not _libsumo(),
        )
    )
