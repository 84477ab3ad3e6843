"""Shared fixtures: plugins installed as real distributions on a private path."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_SB3 = importlib.util.find_spec("stable_baselines3") is not None
HAS_BOX2D = importlib.util.find_spec("Box2D") is not None
requires_box2d = pytest.mark.skipif(not HAS_BOX2D, reason="needs the box2d extra")
HAS_SUMO = importlib.util.find_spec("sumo_rl") is not None
requires_sumo = pytest.mark.skipif(not HAS_SUMO, reason="needs the sumo extra")
HAS_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(not HAS_RAY, reason="needs the ray extra")
requires_sb3 = pytest.mark.skipif(not HAS_SB3, reason="needs the sb3 extra: pip install ctxrl[sb3]")
HAS_PYGAME = importlib.util.find_spec("pygame") is not None
requires_pygame = pytest.mark.skipif(
    not HAS_PYGAME, reason="renders frames: needs pygame (the box2d and all extras bring it)"
)


def write_distribution(
    site: Path, dist: str, version: str, module: str, source: str, entry_points: dict[str, str]
) -> None:
    """Write ``module.py`` and a ``{dist}-{version}.dist-info`` with ``ctxrl`` entry points
    into ``site``: exactly what pip leaves behind, so importlib.metadata discovers it."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ctxrl]\n{lines}\n")


@pytest.fixture
def plugin_site(tmp_path: Path) -> Path:
    return tmp_path / "site"


def _cli_environ(plugin_site: Path, env: dict[str, str] | None) -> dict[str, str]:
    """The environment of a ``ctxrl`` subprocess: ``plugin_site`` on its path, one thread,
    wide output, then ``env``."""
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(plugin_site), environ.get("PYTHONPATH", "")) if p
    )
    environ.setdefault("OMP_NUM_THREADS", "1")
    environ["COLUMNS"] = "200"
    environ.update(env or {})
    return environ


@pytest.fixture
def start_ctxrl(plugin_site: Path) -> Callable[..., subprocess.Popen[str]]:
    """Start the ``ctxrl`` CLI in the background (as ``run_ctxrl``, without waiting)."""

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ctxrl.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_cli_environ(plugin_site, env),
        )

    return start


@pytest.fixture
def run_ctxrl(plugin_site: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the ``ctxrl`` CLI in a subprocess that sees ``plugin_site`` on its path."""

    def run(
        *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        environ = _cli_environ(plugin_site, env)
        result = subprocess.run(
            [sys.executable, "-m", "ctxrl.cli", *args],
            capture_output=True,
            text=True,
            env=environ,
            cwd=cwd,
            timeout=600,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ctxrl {args} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` (a minute or more) run first, so parallel workers (``-n auto``)
    do not end waiting on one long test collected last."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def without_file_privileges(command: list[str]) -> list[str]:
    """``command`` run so that file permissions apply to it: as root, without the capabilities
    that override them (``setpriv``); skips the test where that is impossible."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    drop = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", f"--bounding-set={drop}", *command]
