"""Every registered environment meets the env contract."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec
from ctxrl.testing import EnvContract


class TestEveryRegisteredEnv(EnvContract):
    # the track's ends and the goal's speed: random steps stay near the valley's bottom
    features_acting_later = tuple(
        f"{env}.{feature}"
        for env in ("MountainCar", "MountainCarContinuous")
        # the goal: a random walk from the valley never reaches it, and a start at or past
        # it is refused
        for feature in ("min_position", "max_position", "goal_velocity", "goal_position")
    )

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

    def make_dropping_length(context: Any = None, **kwargs: Any) -> Any:
        kept = {k: v for k, v in (context or {}).items() if k != "length"}  # a misspelt key
        return real_make(kept, **kwargs)

    dropped = _broken(spec, make=make_dropping_length)
    contract.test_contexts_change_what_the_env_does(dropped)  # masspole still acts: passes
    with pytest.raises(
        AssertionError, match=r"change nothing .*\['length \(tried 0\.05, 5, 0\.275,"
    ):
        contract.test_every_feature_changes_what_the_env_does(dropped)
    excused = EnvContract()
    excused.features_acting_later = ("CartPole.length",)
    excused.test_every_feature_changes_what_the_env_does(dropped)
    lenient = EnvContract()  # an env whose contexts act later says so, and is not failed
    lenient.context_effect_steps = None
    with pytest.raises(pytest.skip.Exception):
        lenient.test_contexts_change_what_the_env_does(_broken(spec, make=make_ignoring_context))
    for test in (  # the real CartPole passes them all
        contract.test_contexts_change_what_the_env_does,
        contract.test_every_feature_changes_what_the_env_does,
        contract.test_twin_contexts_change_what_it_does,
        contract.test_twin_env_depends_on_its_own_seed_only,
        contract.test_twin_agrees_with_the_gymnasium_env_on_its_spaces,
    ):
        test(spec)


def test_the_env_contract_catches_twins_that_do_not_follow_their_env() -> None:
    """Twins that passed every check of spaces and protocol: one that ignores a feature the
    gymnasium env reads (the pole's length), one whose reward has the wrong sign, and one that
    copies its contexts when it is built and ignores set_context (schedules, switches)."""
    import torch

    spec = get_host().registry.env("CartPole")
    real_twin = spec.make_batched
    assert real_twin is not None
    contract = EnvContract()

    def twin_without_length(num_envs: int, **kwargs: Any) -> Any:
        contexts = dict(kwargs.pop("contexts"))
        contexts["length"] = torch.full((num_envs,), 0.5)  # CartPole's default, always
        return real_twin(num_envs, contexts=contexts, **kwargs)

    class NegatedReward:
        def __init__(self, twin: Any) -> None:
            self.twin = twin

        def __getattr__(self, name: str) -> Any:
            return getattr(self.twin, name)

        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.twin.step(action)
            return obs, -reward, terminated, truncated, info

    class IgnoresSetContext(NegatedReward):
        def step(self, action: Any) -> Any:
            return self.twin.step(action)

        def set_context(self, values: Any, env_ids: Any = None) -> None:
            del values, env_ids  # built once: later changes are dropped

    returns = contract.test_twin_returns_match_the_gymnasium_env_at_default_and_extremes
    with pytest.raises(AssertionError, match=r"\{'length': 5\.0\}: twin .*, gymnasium"):
        returns(_broken(spec, make_batched=twin_without_length))
    with pytest.raises(AssertionError, match="default: twin -"):
        returns(_broken(spec, make_batched=lambda n, **k: NegatedReward(real_twin(n, **k))))
    with pytest.raises(AssertionError, match="does not act as one built at it"):
        contract.test_twin_set_to_a_context_acts_as_one_built_with_it(
            _broken(spec, make_batched=lambda n, **k: IgnoresSetContext(real_twin(n, **k)))
        )
    returns(spec)  # the real twin passes both
    contract.test_twin_set_to_a_context_acts_as_one_built_with_it(spec)


def test_the_env_contract_catches_a_twin_that_steps_in_place() -> None:
    """A twin whose dynamics write the next state into the one it was given passed every
    contract test (it steps correctly), yet a trainer's stored observations (views of that
    state) and a saved ``state_dict`` changed under it: found only as a resume mismatch."""
    spec = get_host().registry.env("CartPole")
    real_twin = spec.make_batched
    assert real_twin is not None

    def twin_stepping_in_place(num_envs: int, **kwargs: Any) -> Any:
        twin = real_twin(num_envs, **kwargs)
        dynamics = twin._dynamics

        def in_place(state: Any, action: Any) -> Any:
            next_state, reward, terminated = dynamics(state, action)
            state.copy_(next_state)
            return state, reward, terminated

        twin._dynamics = in_place
        return twin

    with pytest.raises(AssertionError, match=r"the twin.s step changed .* in place"):
        EnvContract().test_twin_step_changes_no_tensor_it_gave_or_took(
            _broken(spec, make_batched=twin_stepping_in_place)
        )
