"""Every registered environment meets the env contract."""

from __future__ import annotations

import pytest

from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec
from ctxrl.testing import EnvContract

# SUMO starts a simulation (and TraCI waits a second to connect) for every env the checks
# build: the traffic env's contract takes minutes, so it runs with the slow tests.
SLOW_ENVS = {"TrafficSignal"}


def _env_params() -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW_ENVS else name
        for name in get_host().registry.names("env")
    ]


class TestEveryRegisteredEnv(EnvContract):
    @pytest.fixture(params=_env_params())
    def env_spec(self, request: pytest.FixtureRequest) -> EnvSpec:
        return get_host().registry.env(request.param)
