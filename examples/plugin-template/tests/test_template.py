"""The template's tests: ctxrl's contract suites, plus the plugin's own behaviour."""

from __future__ import annotations

import numpy as np

from ctxrl.plugins import get_host
from ctxrl.selection import replay
from ctxrl.testing import EnvContract, StrategyContract


class TestSpringEnv(EnvContract):
    env_name = "Spring"


class TestFarthestFirst(StrategyContract):
    strategy_name = "farthest-first"


def test_plugin_is_discovered_through_its_entry_point() -> None:
    info = get_host().plugins["template"]
    assert info.status == "loaded" and info.distribution == "ctxrl-template"
    assert info.provides == {"env": ["Spring"], "strategy": ["farthest-first"]}


def test_stiffer_spring_pulls_back_harder() -> None:
    spec = get_host().registry.env("Spring")
    soft, stiff = spec.make({"stiffness": 0.5}), spec.make({"stiffness": 5.0})
    for env in (soft, stiff):
        env.reset(seed=0)
        env.unwrapped.state = np.array([1.0, 0.0])
    assert stiff.step(1)[0][1] < soft.step(1)[0][1] < 0


def test_farthest_first_spreads_out() -> None:
    strategy = get_host().registry.strategy("farthest-first").factory()
    coords = np.linspace(0, 1, 9)[:, None]
    assert replay(strategy, np.eye(9), coords, 3).order == (4, 0, 8)
