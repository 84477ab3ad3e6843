"""The scenario of a traffic context: the intersection's network and demand as SUMO files.

A context (inflow per approach in veh/h, speed limit in m/s, approach road length in m, share
of left turns) is written as SUMO's plain XML (nodes, edges, a vehicle type and one flow per
movement), the network built from it with SUMO's own ``netconvert``, and both cached per
context under ``$CTXRL_CACHE_DIR/traffic`` (default ``~/.cache/ctxrl/traffic``): the same
context always gives the same files. The env that runs them is
:mod:`ctxrl_envs.traffic`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

from ctxrl.context import Context, ContextFeature, ContextSpace, Task
from ctxrl.errors import CtxrlError, PluginUnavailable

NAME = "TrafficSignal"
TRAFFIC = ContextSpace(
    [
        ContextFeature(
            "inflow",
            1000.0,
            50.0,
            2500.0,
            unit="veh/h",
            description="vehicles entering per hour on each approach",
        ),
        ContextFeature(
            "speed_limit", 14.0, 0.5, 25.0, unit="m/s", description="speed limit on every road"
        ),
        ContextFeature(
            "road_length", 750.0, 50.0, 2500.0, unit="m", description="length of each approach road"
        ),
        ContextFeature(
            "left_turn_ratio", 0.25, 0.0, 0.6, description="share of vehicles turning left"
        ),
    ],
    owner=NAME,
)
RIGHT_TURN_RATIO = 0.1
LANES = 2  # per direction: four lanes per road
APPROACHES = {  # approach: (straight, left, right) exits
    "N": ("S", "E", "W"),
    "S": ("N", "W", "E"),
    "E": ("W", "S", "N"),
    "W": ("E", "N", "S"),
}
VEHICLE_TYPE = '<vType id="car" accel="2.6" decel="4.5" sigma="0.5" length="5" minGap="2.5"/>'
SCENARIO_VERSION = hashlib.sha256(
    repr((1, RIGHT_TURN_RATIO, LANES, sorted(APPROACHES.items()), VEHICLE_TYPE)).encode()
).hexdigest()[:8]
"""Part of every cache entry's name, with the installed SUMO's version: a change to how
scenarios are written, or another netconvert, builds them anew (the number counts changes to
:func:`scenario` itself)."""


def _sumo_version() -> str:
    """The installed SUMO's version (``eclipse-sumo``'s), or ``unknown``."""
    try:
        return metadata.version("eclipse-sumo")
    except metadata.PackageNotFoundError:
        return "unknown"


def sumo_home() -> Path:
    """SUMO's installation (``eclipse-sumo``), with ``SUMO_HOME`` set for sumo-rl; the
    plugin is unavailable without it."""
    try:
        import sumo
    except ImportError:
        raise PluginUnavailable(
            "SUMO is not installed: pip install 'ctxrl[sumo]' (eclipse-sumo, libsumo, sumo-rl)"
        ) from None
    os.environ.setdefault("SUMO_HOME", sumo.SUMO_HOME)
    return Path(sumo.SUMO_HOME)


def cache_dir() -> Path:
    return Path(os.environ.get("CTXRL_CACHE_DIR", Path.home() / ".cache" / "ctxrl")) / "traffic"


def scenario(context: Context, horizon_s: int, directory: Path | None = None) -> tuple[Path, Path]:
    """The network and route files of ``context`` (built once, then reused).

    Files are written to a temporary directory and moved into place, so concurrent workers
    asking for the same context never read half-written files."""
    task = Task(NAME, context)
    # netconvert's version too: a network built by another SUMO is built again
    version = hashlib.sha256(f"{SCENARIO_VERSION}-{_sumo_version()}".encode()).hexdigest()[:8]
    target = (directory or cache_dir()) / f"{task.id}-{horizon_s}s-{version}"
    net, routes = target / "net.xml", target / "routes.xml"
    if net.is_file() and routes.is_file():
        return net, routes
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        build = Path(tmp)
        length, speed = context["road_length"], context["speed_limit"]
        positions = {"N": (0, length), "S": (0, -length), "E": (length, 0), "W": (-length, 0)}
        nodes = "\n".join(
            f'  <node id="{k}" x="{x:.2f}" y="{y:.2f}" type="priority"/>'
            for k, (x, y) in positions.items()
        )
        (build / "nodes.nod.xml").write_text(
            f'<nodes>\n  <node id="C" x="0" y="0" type="traffic_light"/>\n{nodes}\n</nodes>\n'
        )
        edges = "\n".join(
            f'  <edge id="{a}2{b}" from="{a}" to="{b}" numLanes="{LANES}" speed="{speed:.3f}"/>'
            for k in positions
            for a, b in ((k, "C"), ("C", k))
        )
        (build / "edges.edg.xml").write_text(f"<edges>\n{edges}\n</edges>\n")
        netconvert = sumo_home() / "bin" / "netconvert"
        result = subprocess.run(
            [
                str(netconvert),
                "--node-files",
                "nodes.nod.xml",
                "--edge-files",
                "edges.edg.xml",
                "--output-file",
                "net.xml",
                "--no-turnarounds",
                "true",
                "--tls.default-type",
                "static",
                "--no-warnings",
                "true",
            ],
            cwd=build,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise CtxrlError(f"netconvert failed for {context!r}: {result.stderr.strip()}")
        left = context["left_turn_ratio"]
        shares = {
            "straight": 1.0 - left - RIGHT_TURN_RATIO,
            "left": left,
            "right": RIGHT_TURN_RATIO,
        }
        flows = []
        for origin, exits in APPROACHES.items():
            for turn, exit_ in zip(("straight", "left", "right"), exits, strict=True):
                rate = context["inflow"] * shares[turn]
                if rate > 0:
                    flows.append(
                        f'  <flow id="{origin}_{turn}" type="car" begin="0" end="{horizon_s}" '
                        f'vehsPerHour="{rate:.4f}" from="{origin}2C" to="C2{exit_}" '
                        f'departLane="best" departSpeed="max"/>'
                    )
        (build / "routes.xml").write_text(
            f"<routes>\n  {VEHICLE_TYPE}\n" + "\n".join(flows) + "\n</routes>\n"
        )
        # a directory of its own for every process and thread, moved into place in one step
        staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        staged.chmod(0o755)  # mkdtemp's 0700 would hide the entry from other users' workers
        for name in ("net.xml", "routes.xml"):
            shutil.copy2(build / name, staged / name)
        try:
            staged.rename(target)
        except OSError:  # another worker built the same context first, or the entry is damaged
            if not (net.is_file() and routes.is_file()):  # damaged (a file removed): replaced
                damaged = Path(tempfile.mkdtemp(dir=target.parent, prefix=".damaged-"))
                with contextlib.suppress(OSError):
                    target.rename(damaged / target.name)
                    staged.rename(target)
                shutil.rmtree(damaged, ignore_errors=True)
            shutil.rmtree(staged, ignore_errors=True)
    for _ in range(40):  # another worker may be replacing a damaged entry this moment
        if net.is_file() and routes.is_file():
            break
        time.sleep(0.05)
    if not (net.is_file() and routes.is_file()):
        raise CtxrlError(
            f"{NAME}: the scenario cache entry {target} is incomplete and could not be replaced; "
            "remove it and run again"
        )
    return net, routes
