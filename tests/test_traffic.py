"""Traffic signal control on real SUMO: scenarios, context effects, bad input, process hygiene.

Every test runs SUMO itself (short episodes of a few hundred simulated seconds) and measures
the context's effect from SUMO's own outputs (sumo-rl's system metrics, SUMO's tripinfo file).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_sb3, requires_sumo

from ctxrl import ContextError, CtxrlError
from ctxrl.plugins import get_host

pytestmark = requires_sumo
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CTXRL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _sumo_pids(parent: int | None = None) -> set[int]:
    """Running SUMO processes; with ``parent``, only those it started (test workers running
    in parallel start and end their own)."""
    own = ["-P", str(parent)] if parent is not None else []
    out = subprocess.run(["pgrep", "-x", *own, "sumo"], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


def _episode(tmp_path: Path, seconds: int = 300, **context: float) -> tuple[dict, float, list]:
    """A fixed-cycle episode; returns SUMO's final system metrics, the return and the trips."""
    index = len(list(tmp_path.glob("trips-*")))
    trips, summary = tmp_path / f"trips-{index}.xml", tmp_path / f"summary-{index}.xml"
    spec = get_host().registry.env("TrafficSignal")
    outputs = ["--tripinfo-output", str(trips), "--summary-output", str(summary)]
    env = spec.make(context, num_seconds=seconds, sumo_args=outputs, metrics=True)
    env.reset(seed=0)
    total, step, done = 0.0, 0, False
    info: dict = {}
    while not done:
        _, reward, terminated, truncated, info = env.step((step // 3) % env.action_space.n)
        total += reward
        step += 1
        done = terminated or truncated
    env.close()
    durations = [float(t.get("duration")) for t in ET.parse(trips).getroot().iter("tripinfo")]
    last = list(ET.parse(summary).getroot().iter("step"))[-1]  # SUMO's own counts
    info["inserted"], info["arrived"] = int(last.get("inserted")), int(last.get("ended"))
    return info, total, durations


def test_generated_network_is_valid_and_vehicles_flow(tmp_path: Path, private_cache: Path) -> None:
    info, _, durations = _episode(tmp_path, seconds=400)
    assert info["inserted"] > 100 and info["arrived"] > 50
    assert len(durations) == info["arrived"]
    nets = list(private_cache.glob("traffic/*/net.xml"))
    assert len(nets) == 1 and "tlLogic" in nets[0].read_text()


def test_scenarios_are_cached_and_deterministic(private_cache: Path) -> None:
    from ctxrl_envs.traffic import TRAFFIC, scenario

    def content(path: Path) -> str:  # netconvert stamps the time in a leading comment
        return re.sub(r"<!--.*?-->", "", path.read_text(), flags=re.S)

    context = TRAFFIC.validate({"inflow": 700.0})
    net, routes = scenario(context, 300)
    first = (content(net), content(routes))
    for path in (net, routes):
        path.unlink()
    net, routes = scenario(context, 300)
    assert (content(net), content(routes)) == first
    assert 'vehsPerHour="455.0000"' in routes.read_text()  # 700 x (1 - 0.25 - 0.1)


def test_higher_inflow_inserts_more_vehicles_and_more_waiting(tmp_path: Path) -> None:
    light, light_return, _ = _episode(tmp_path, inflow=300.0)
    heavy, heavy_return, _ = _episode(tmp_path, inflow=1500.0)
    assert heavy["inserted"] > 3 * light["inserted"]
    assert heavy_return < light_return  # more waiting time accumulated


def test_lower_speed_limit_lowers_mean_speed(tmp_path: Path) -> None:
    short_roads = {"seconds": 400, "inflow": 300.0, "road_length": 200.0}
    slow, _, slow_trips = _episode(tmp_path, speed_limit=4.0, **short_roads)
    fast, _, fast_trips = _episode(tmp_path, speed_limit=20.0, **short_roads)
    assert slow["system_mean_speed"] < fast["system_mean_speed"]
    assert np.mean(slow_trips) > np.mean(fast_trips)


def test_longer_road_means_longer_travel_times(tmp_path: Path) -> None:
    _, _, short = _episode(tmp_path, seconds=600, inflow=300.0, road_length=200.0)
    _, _, long = _episode(tmp_path, seconds=600, inflow=300.0, road_length=1200.0)
    assert short and long and np.mean(long) > 2 * np.mean(short)


def _teleports(tmp_path: Path, time_to_teleport: int) -> int:
    """SUMO's own teleport count after 600 s of 2000 veh/h with the first phase always green
    (the cross street jams)."""
    summary = tmp_path / f"summary-teleport-{time_to_teleport}.xml"
    spec = get_host().registry.env("TrafficSignal")
    env = spec.make(
        {"inflow": 2000.0},
        num_seconds=600,
        time_to_teleport=time_to_teleport,
        sumo_args=["--summary-output", str(summary)],
    )
    env.reset(seed=0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(0)
        done = terminated or truncated
    env.close()
    return int(list(ET.parse(summary).getroot().iter("step"))[-1].get("teleports"))


def test_time_to_teleport_reaches_sumo_and_bad_values_are_named(tmp_path: Path) -> None:
    assert _teleports(tmp_path, -1) == 0  # sumo-rl's default: a jam stays
    assert _teleports(tmp_path, 60) > 10
    spec = get_host().registry.env("TrafficSignal")
    with pytest.raises(CtxrlError, match=r"time_to_teleport must be .* \(got -5\)"):
        spec.make(time_to_teleport=-5)
    with pytest.raises(CtxrlError, match=r"max_depart_delay must be .* \(got 2.5\)"):
        spec.make(max_depart_delay=2.5)


def test_bad_input_is_named_and_leaves_no_sumo_behind(tmp_path: Path) -> None:
    before = _sumo_pids(parent=os.getpid())
    spec = get_host().registry.env("TrafficSignal")
    with pytest.raises(ContextError, match=r"'inflow' = 0.0 is outside the allowed range"):
        spec.make({"inflow": 0.0})
    with pytest.raises(ContextError, match=r"'inflow' = -5.0 is outside"):
        spec.make({"inflow": -5.0})
    with pytest.raises(ContextError, match=r"'speed_limit' = 40.0 is outside .*\[0.5, 25.0\]"):
        spec.make({"speed_limit": 40.0})
    env = spec.make(num_seconds=60)
    env.reset(seed=1)
    env.step(0)
    env.close()
    assert _sumo_pids(parent=os.getpid()) == before
    leftovers = [p for p in Path(os.environ["CTXRL_CACHE_DIR"]).rglob(".*") if p.name != ".."]
    assert leftovers == []  # no half-built scenario directories


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reward_fn": "nope"}, r"reward_fn 'nope' is not one of sumo-rl's rewards \["),
        ({"delta_time": 3}, r"delta_time \(3 s\) must be above yellow_time \(4 s\)"),
        ({"num_seconds": -10}, r"num_seconds must be a whole number .* >= 10 \(got -10\)"),
        ({"num_seconds": 60.5}, r"num_seconds must be a whole number .*\(got 60.5\)"),
        ({"max_green": 30}, r"max_green=30 would do nothing: sumo-rl ignores max_green"),
        ({"sumo_args": ["--tripinfo-output", "a b/trips.xml"]}, r"contain whitespace"),
        # sumo-rl held a yellow of 0 s a whole step; SUMO takes a teleport time of 0 as never
        ({"yellow_time": 0}, r"yellow_time must be a whole number of simulated seconds >= 1"),
        ({"time_to_teleport": 0}, r"time_to_teleport must be .* >= 1, or -1 for never"),
        ({"sumo_args": "--no-warnings"}, r"sumo_args must be a list .*\['--no-warnings'\]"),
        ({"metrics": "no"}, r"metrics must be true or false \(got 'no'\)"),
    ],
)
def test_bad_env_options_are_named_before_sumo_starts(options: dict, message: str) -> None:
    """sumo-rl checks these after starting SUMO (an assertion, a NotImplementedError, a SUMO
    that dies at its first step, or arguments split at a space): each is refused first."""
    before = _sumo_pids(parent=os.getpid())
    spec = get_host().registry.env("TrafficSignal")
    with pytest.raises(CtxrlError, match=message):
        spec.make(**{"num_seconds": 60, **options})
    assert _sumo_pids(parent=os.getpid()) == before


_FAILED_PROBE = """
import json, os
import sumo  # noqa: F401  (sets SUMO_HOME before sumo_rl is imported)
import sumo_rl.environment.env as sumo_env
from ctxrl.plugins import get_host

spec = get_host().registry.env("TrafficSignal")
original = sumo_env.TrafficSignal

def broken(*args, **kwargs):
    raise RuntimeError("the light could not be read")

sumo_env.TrafficSignal = broken  # sumo-rl fails after starting its reading run of SUMO
try:
    spec.make(num_seconds=60)
except RuntimeError as exc:
    failed = str(exc)
sumo_env.TrafficSignal = original
env = spec.make(num_seconds=60)  # the next env runs
env.reset(seed=0)
env.step(0)
env.close()
print(json.dumps({"failed": failed, "sumo": os.popen(f"pgrep -x -P {os.getpid()} sumo").read()}))
"""


def test_a_failed_reading_run_leaves_no_sumo_and_the_next_env_runs(tmp_path: Path) -> None:
    """sumo-rl starts SUMO to read the light, then builds its signal: a failure there left the
    reading run's SUMO process behind (TraCI), or under libsumo this process's one simulation
    slot taken, so that every later env was refused."""
    for extra in ({}, {"LIBSUMO_AS_TRACI": "1"}):
        env = {k: v for k, v in os.environ.items() if k != "LIBSUMO_AS_TRACI"}
        env.update(extra, OMP_NUM_THREADS="1", CTXRL_CACHE_DIR=str(tmp_path / "cache"))
        done = subprocess.run(
            [sys.executable, "-c", _FAILED_PROBE], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, (extra, done.stderr)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {"failed": "the light could not be read", "sumo": ""}, extra


_DROPPED_ENV = """
import gc, json
import sumo  # noqa: F401  (sets SUMO_HOME before sumo_rl is imported)
from ctxrl.plugins import get_host

spec = get_host().registry.env("TrafficSignal")
env = spec.make(num_seconds=60)
env.reset(seed=0)
env.step(0)
del env  # dropped without close(): nothing can close it now
again = spec.make(num_seconds=60)
again.reset(seed=0)
steps = 0
done = False
while not done:
    _, _, terminated, truncated, _ = again.step(steps % 2)
    done, steps = terminated or truncated, steps + 1
again.close()
print(json.dumps({"steps": steps}))
"""


def test_under_libsumo_an_env_nobody_can_reach_gives_its_slot_up(tmp_path: Path) -> None:
    """libsumo runs one simulation per process: an env dropped without ``close()`` held the
    process's slot for good (every later env was refused until a restart)."""
    env = {k: v for k, v in os.environ.items() if k != "LIBSUMO_AS_TRACI"}
    env.update(LIBSUMO_AS_TRACI="1", OMP_NUM_THREADS="1", CTXRL_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, "-c", _DROPPED_ENV], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"steps": 6}


def test_actions_are_green_phases_and_numpy_whole_numbers_are_options() -> None:
    """A bad action was ignored while the minimum green held, then failed inside sumo-rl with
    ``KeyError: (0, 5)``; 1.7 was taken as 1; numpy's whole numbers were refused as options."""
    spec = get_host().registry.env("TrafficSignal")
    env = spec.make(num_seconds=np.int64(60), delta_time=np.int32(10))
    env.reset(seed=0)
    for bad in (5, -1, 1.7, float("nan"), "1", [0, 1]):
        with pytest.raises(
            CtxrlError, match=r"is not a green phase: give a whole number in 0\.\.1"
        ):
            env.step(bad)
    for good in (np.int64(1), np.array(0), 1.0, np.array([1])):
        env.step(good)
    env.close()


def test_a_step_needs_a_running_episode() -> None:
    """A new context or close() ends the episode (its SUMO is closed); a step then says so
    instead of failing inside sumo-rl with an AttributeError."""
    spec = get_host().registry.env("TrafficSignal")
    env = spec.make(num_seconds=60)
    with pytest.raises(CtxrlError, match=r"step\(\) without a running episode: call reset"):
        env.step(0)
    env.reset(seed=0)
    env.step(0)
    env.reset(seed=0, options={"context": {"inflow": 500.0}})
    env.step(0)
    env.unwrapped.set_context(spec.context_space.validate({"inflow": 700.0}))
    with pytest.raises(CtxrlError, match="a new context or close"):
        env.step(0)
    env.reset(seed=0)
    env.step(0)
    env.close()
    with pytest.raises(CtxrlError, match="call reset"):
        env.step(0)


def test_a_damaged_cache_entry_is_rebuilt_and_threads_build_side_by_side(
    private_cache: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ctxrl_envs.traffic import TRAFFIC, scenario

    context = TRAFFIC.validate({"inflow": 800.0})
    net, routes = scenario(context, 120)
    routes.unlink()  # removed by hand, or a disk cleaner
    net, routes = scenario(context, 120)
    assert net.is_file() and 'vehsPerHour="520.0000"' in routes.read_text()

    contexts = [TRAFFIC.validate({"inflow": 100.0 + 50 * i}) for i in range(6)] * 3
    with ThreadPoolExecutor(6) as pool:  # one process: every thread needs its own staging
        built = list(pool.map(lambda c: scenario(c, 60), contexts))
    assert all(n.is_file() and r.is_file() for n, r in built)
    assert [p.name for p in (private_cache / "traffic").iterdir() if p.name.startswith(".")] == []


def test_a_scenario_built_by_another_sumo_is_built_again(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache entry's name held ctxrl's scenario version only: after a SUMO upgrade the
    networks an older netconvert built were reused."""
    import ctxrl_envs.traffic_scenario as traffic_scenario

    context = traffic_scenario.TRAFFIC.validate({"inflow": 600.0})
    net, _ = traffic_scenario.scenario(context, 60)
    assert traffic_scenario.scenario(context, 60)[0] == net  # reused
    monkeypatch.setattr(traffic_scenario, "_sumo_version", lambda: "0.0.1")
    rebuilt, _ = traffic_scenario.scenario(context, 60)
    assert rebuilt != net and rebuilt.is_file() and net.is_file()


def test_missing_sumo_is_reported_with_what_to_install(run_ctxrl: Run, plugin_site: Path) -> None:
    blocked = plugin_site / "sumo"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no SUMO here')\n")
    plugins = {p["name"]: p for p in json.loads(run_ctxrl("plugins", "--json", check=True).stdout)}
    assert plugins["traffic"]["status"] == "unavailable"
    assert "pip install 'ctxrl[sumo]'" in plugins["traffic"]["error"]


@pytest.mark.long
@requires_sb3
def test_sb3_dqn_transfer_matrix_through_ctxrl_sweep(run_ctxrl: Run, tmp_path: Path) -> None:
    """3 inflow contexts, SB3 DQN with a tiny budget, two parallel SUMO workers."""
    config = tmp_path / "traffic.yaml"
    config.write_text(
        json.dumps(
            {
                "env": "TrafficSignal",
                "env_options": {"num_seconds": 300},
                "features": {"inflow": {"values": [300.0, 900.0, 1500.0]}},
                "algorithm": {
                    "name": "sb3-dqn",
                    "params": {
                        "learning_starts": 30,
                        "buffer_size": 1000,
                        "train_freq": 4,
                        "batch_size": 16,
                    },
                },
                "train_steps": 120,
                "eval_episodes": 1,
                "executor": {"name": "local", "workers": 2, "timeout_s": 300},
                "compare": ["random", "greedy"],
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    result = run_ctxrl("sweep", str(config), env={"CTXRL_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "trained 3, already finished 0, failed 0" in result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    matrix = np.loadtxt(run_dir / "exports" / "matrix_seed0.csv", delimiter=",")
    assert matrix.shape == (3, 3) and np.all(matrix <= 0)
    assert matrix[:, 2].mean() < matrix[:, 0].mean()  # heavier traffic, more waiting
    again = run_ctxrl("sweep", str(config), env={"CTXRL_CACHE_DIR": str(tmp_path / "cache")})
    assert "trained 0, already finished 3, failed 0" in again.stderr


_EVALUATE_BOTH_WAYS = """
import dataclasses, functools, json
import sumo  # noqa: F401  (sets SUMO_HOME before sumo_rl is imported)
from ctxrl import CtxrlError
from ctxrl.plugins import get_host

registry = get_host().registry
full = registry.env("TrafficSignal")  # 300 s episodes: 30 agent steps
spec = dataclasses.replace(full, make=functools.partial(full.make, num_seconds=300))
algorithm = registry.algorithm("sb3-dqn").factory(
    {"learning_starts": 30, "buffer_size": 500, "batch_size": 16}, device="cpu", env=spec
)
policy = algorithm.train(spec, spec.task({"inflow": 600.0}), seed=3, total_steps=90)
tasks = [spec.task({"inflow": 300.0}), spec.task({"inflow": 900.0})]
returns = algorithm.evaluate(policy, spec, tasks, episodes=2, seed=5)
refused = ""
running = spec.make(num_seconds=60)
running.reset(seed=0)
try:
    spec.make(num_seconds=60)
except CtxrlError as exc:
    refused = str(exc)
running.close()
spec.make(num_seconds=60).close()  # once the first is closed, a new one may run
print(json.dumps({"returns": returns.tolist(), "refused": refused,
                  "concurrent": spec.concurrent_instances}))
"""


@pytest.mark.long
@requires_sb3
def test_libsumo_plays_evaluation_episodes_one_by_one_with_traci_s_returns(
    tmp_path: Path,
) -> None:
    """libsumo runs one simulation per process: under it the env says so, sb3's evaluation
    plays its episodes one after another (TraCI: in lockstep) with the same returns, and a
    second running env is refused with the reason instead of replacing the first one's
    simulation."""
    outputs = {}
    for backend, extra in (("traci", {}), ("libsumo", {"LIBSUMO_AS_TRACI": "1"})):
        env = {k: v for k, v in os.environ.items() if k != "LIBSUMO_AS_TRACI"}
        env.update(extra, OMP_NUM_THREADS="1", CTXRL_CACHE_DIR=str(tmp_path / "cache"))
        done = subprocess.run(
            [sys.executable, "-c", _EVALUATE_BOTH_WAYS],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        outputs[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    traci, libsumo = outputs["traci"], outputs["libsumo"]
    assert traci["concurrent"] and not libsumo["concurrent"]
    np.testing.assert_allclose(libsumo["returns"], traci["returns"], rtol=1e-9)
    assert traci["refused"] == ""
    assert "runs one SUMO simulation per process" in libsumo["refused"]
    assert "unset LIBSUMO_AS_TRACI" in libsumo["refused"]


def test_sumo_rejecting_its_arguments_is_reported_at_once(run_ctxrl: Run, tmp_path: Path) -> None:
    spec = get_host().registry.env("TrafficSignal")
    with pytest.raises(CtxrlError, match="No option with the name 'no-such-sumo-option'"):
        spec.make(num_seconds=60, sumo_args=["--no-such-sumo-option"])
    config = tmp_path / "broken.yaml"
    config.write_text(
        json.dumps(
            {
                "env": "TrafficSignal",
                "env_options": {"num_seconds": 60, "sumo_args": ["--no-such-sumo-option"]},
                "features": {"inflow": {"values": [300.0, 600.0]}},
                "algorithm": {"name": "batched-ppo"},
                "train_steps": 10,
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    result = run_ctxrl("sweep", str(config), env={"CTXRL_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 2
    assert "env_options" in result.stderr and "no-such-sumo-option" in result.stderr
    assert _gone(tmp_path / "cache")


def _connected(pid: int) -> bool:
    """Whether SUMO process ``pid`` holds an established TCP connection (its TraCI client has
    connected: a SUMO stopped before this point fails its client's connect instead of its run)."""
    try:
        fds = Path(f"/proc/{pid}/fd").iterdir()
        links = [os.readlink(fd) for fd in fds]
        sockets = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
        tables = [Path(f"/proc/{pid}/net/{name}").read_text() for name in ("tcp", "tcp6")]
    except OSError:  # the process ended meanwhile
        return False
    rows = (line.split() for table in tables for line in table.splitlines()[1:])
    return any(row[3] == "01" and row[9] in sockets for row in rows)  # 01: ESTABLISHED


def _sweep_sumo_pids(cache: Path) -> set[int]:
    """Running SUMO processes started by a sweep run with ``CTXRL_CACHE_DIR=cache`` (read from
    their environment: each test gives its sweeps their own cache, so the SUMO processes of
    tests running in parallel are never mistaken for its own)."""
    marker = f"CTXRL_CACHE_DIR={cache}".encode()
    own = set()
    for pid in _sumo_pids():
        try:
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if marker in environment:
            own.add(pid)
    return own


def _running_simulations(cache: Path, count: int, sweep: subprocess.Popen[str]) -> set[int]:
    """Wait for ``count`` SUMO processes of the sweep with cache ``cache`` whose TraCI client
    has connected."""
    deadline = time.monotonic() + 180
    while True:
        connected = {pid for pid in _sweep_sumo_pids(cache) if _connected(pid)}
        if len(connected) >= count:
            return connected
        assert sweep.poll() is None and time.monotonic() < deadline, "no SUMO workers"
        time.sleep(0.3)


def _signal_a_simulation(
    cache: Path, sweep: subprocess.Popen[str], sig: int, spare: int | None = None
) -> int:
    """Send ``sig`` to a connected SUMO process of the sweep other than ``spare``; return its pid.
    sumo-rl starts a SUMO process an episode, so one seen running may have ended by the time it
    is signalled: then another is taken."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for pid in sorted(_running_simulations(cache, 1, sweep) - {spare}):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # its episode ended meanwhile
                continue
            return pid
        time.sleep(0.3)
    raise AssertionError(f"no SUMO process of the sweep took signal {sig}")


def _gone(cache: Path, within_s: float = 30.0) -> bool:
    """Whether every SUMO process of the sweeps with cache ``cache`` has ended (processes take
    a moment to exit after their TraCI connection closes or their parent dies)."""
    deadline = time.monotonic() + within_s
    while _sweep_sumo_pids(cache):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.long
@requires_sb3
def test_a_crashed_or_stuck_sumo_fails_its_run_and_the_sweep_goes_on(
    start_ctxrl: Callable[..., subprocess.Popen[str]], run_ctxrl: Run, tmp_path: Path
) -> None:
    """While two workers train, one real SUMO process is killed (a crash) and the other is
    stopped (a hung simulation). Both runs are marked failed with what happened, the third
    context still trains and no SUMO is left behind. Then the sweep process itself is killed
    while it retrains the two: its workers and their simulations end with it, and the next
    run resumes, training only those two."""
    config = tmp_path / "traffic.yaml"
    config.write_text(
        json.dumps(
            {
                "env": "TrafficSignal",
                "env_options": {"num_seconds": 1500},  # 150 agent steps: seconds per episode
                "features": {"inflow": {"values": [100.0, 200.0, 300.0]}},  # light: quick
                "algorithm": {
                    "name": "sb3-dqn",
                    "params": {"learning_starts": 30, "buffer_size": 1000, "batch_size": 16},
                },
                "train_steps": 300,  # the healthy run takes ~10 s here alone, well inside the limit
                "eval_episodes": 1,
                "executor": {"name": "local", "workers": 2, "timeout_s": 40},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    cache = tmp_path / "cache"
    sweep = start_ctxrl("sweep", str(config), env={"CTXRL_CACHE_DIR": str(cache)})
    try:
        _running_simulations(cache, 2, sweep)
        crashed = _signal_a_simulation(cache, sweep, signal.SIGKILL)
        _signal_a_simulation(cache, sweep, signal.SIGSTOP, spare=crashed)
        _, stderr = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 1, stderr
    assert "trained 1, already finished 0, failed 2" in stderr, stderr
    assert "Connection closed by SUMO" in stderr and "exceeded its 40 s limit" in stderr, stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    with sqlite3.connect(run_dir / "store.sqlite") as db:
        errors = [e for (e,) in db.execute("SELECT error FROM runs WHERE status = 'failed'")]
    assert any("exceeded its 40 s limit" in e for e in errors), errors
    assert any("Connection closed by SUMO" in e for e in errors), errors
    assert _gone(cache), "SUMO processes left behind"

    killed = start_ctxrl("sweep", str(config), env={"CTXRL_CACHE_DIR": str(cache)})
    try:
        _running_simulations(cache, 1, killed)
        killed.kill()  # SIGKILL: no clean-up code of the sweep runs
        killed.communicate(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert _gone(cache), "a killed sweep left SUMO behind"
    again = run_ctxrl("sweep", str(config), env={"CTXRL_CACHE_DIR": str(cache)})
    assert "trained 2, already finished 1, failed 0" in again.stderr, again.stderr
