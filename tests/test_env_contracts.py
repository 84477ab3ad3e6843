"""Every registered environment meets the env contract."""

from __future__ import annotations

import pytest

from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec
from ctxrl.testing import EnvContract


class TestEveryRegisteredEnv(EnvContract):
    @pytest.fixture(params=get_host().registry.names("env"))
    def env_spec(self, request: pytest.FixtureRequest) -> EnvSpec:
        return get_host().registry.env(request.param)
