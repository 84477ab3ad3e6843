"""Every registered environment meets the env contract."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec
from ctxrl.testing import EnvContract


class TestEveryRegisteredEnv(EnvContract):
    @pytest.fixture(params=get_host().registry.names("env"))
    def env_spec(self, request: pytest.FixtureRequest) -> EnvSpec:
        return get_host().registry.env(request.param)


def _broken(spec: EnvSpec, **changes: Any) -> EnvSpec:
    return dataclasses.replace(spec, **changes)


def test_the_env_contract_catches_envs_and_twins_that_ignore_what_they_are_given() -> None:
    """Mistakes that passed every contract test: a family whose apply ignores the context, a
    twin that ignores it, a twin that ignores env_seeds (its envs draw from one stream), a
    twin observing more than the gymnasium env."""
    spec = get_host().registry.env("CartPole")
    real_make, real_twin = spec.make, spec.make_batched
    assert real_twin is not None
    contract = EnvContract()

    def make_ignoring_context(context: Any = None, **kwargs: Any) -> Any:
        return real_make(None, **kwargs)

    def twin_ignoring(*dropped: str) -> Any:
        def make(num_envs: int, **kwargs: Any) -> Any:
            return real_twin(num_envs, **{k: v for k, v in kwargs.items() if k not in dropped})

        return make

    def twin_observing_its_context(num_envs: int, **kwargs: Any) -> Any:
        return real_twin(num_envs, **{**kwargs, "visible": ["length"]})

    with pytest.raises(AssertionError, match=r"no context at the ends .* changes a seeded"):
        contract.test_contexts_change_what_the_env_does(_broken(spec, make=make_ignoring_context))
    with pytest.raises(AssertionError, match=r"does its step read self\.context"):
        contract.test_twin_contexts_change_what_it_does(
            _broken(spec, make_batched=twin_ignoring("contexts"))
        )
    with pytest.raises(AssertionError, match="own stream"):
        contract.test_twin_env_depends_on_its_own_seed_only(
            _broken(spec, make_batched=twin_ignoring("env_seeds"))
        )
    with pytest.raises(AssertionError, match=r"the gymnasium env observes \(4,\), the twin 5"):
        contract.test_twin_agrees_with_the_gymnasium_env_on_its_spaces(
            _broken(spec, make_batched=twin_observing_its_context)
        )
    lenient = EnvContract()  # an env whose contexts act later says so, and is not failed
    lenient.context_effect_steps = None
    with pytest.raises(pytest.skip.Exception):
        lenient.test_contexts_change_what_the_env_does(_broken(spec, make=make_ignoring_context))
    for test in (  # the real CartPole passes them all
        contract.test_contexts_change_what_the_env_does,
        contract.test_twin_contexts_change_what_it_does,
        contract.test_twin_env_depends_on_its_own_seed_only,
        contract.test_twin_agrees_with_the_gymnasium_env_on_its_spaces,
    ):
        test(spec)
