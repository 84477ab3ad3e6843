"""What a wheel of ctxrl ships: the package list is written by hand (the three packages live in
folders named otherwise: ``envs/`` is ``ctxrl_envs``), so a new folder must be added to it."""

from __future__ import annotations

import pytest
from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _setuptools() -> dict:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]


def test_every_package_folder_is_in_the_wheel() -> None:
    """A subpackage missing from ``packages`` installs from an editable checkout (which maps
    whole folders) and is silently left out of a wheel."""
    config = _setuptools()
    folders = set()
    for package, folder in config["package-dir"].items():
        for sub in [REPO / folder, *(REPO / folder).rglob("*")]:
            shipped = [f for f in sub.glob("*") if f.suffix in (".py", ".yaml", ".typed")]
            if sub.is_dir() and sub.name != "__pycache__" and shipped:
                folders.add(".".join([package, *sub.relative_to(REPO / folder).parts]))
    assert folders == set(config["packages"])


def test_every_package_ships_its_type_marker_and_data() -> None:
    """``py.typed`` for each of the three (mypy skipped ``ctxrl_envs`` and ``ctxrl_plugins``
    of an installed wheel), and the quickstart's embedded config."""
    config = _setuptools()
    for package, folder in config["package-dir"].items():
        assert "py.typed" in config["package-data"][package]
        assert (REPO / folder / "py.typed").is_file()
    assert (REPO / "ctxrl" / "defaults" / "quickstart.yaml").is_file()
    assert config["package-data"]["ctxrl.defaults"] == ["*.yaml"]


def test_the_version_is_written_once() -> None:
    """The distribution's version is read from ``ctxrl.__version__`` (what ``ctxrl
    --version`` prints), so the two cannot disagree."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ctxrl.__version__"}
