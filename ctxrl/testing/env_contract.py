"""The contract every environment plugin must meet: the gymnasium env at the default and extreme
contexts (spaces, checkers, contexts at reset, visible features, errors that name the feature),
that a context changes what the env does, and, where the env has a torch twin, the twin's checks
of :mod:`ctxrl.testing.twin_contract` (the base class): its protocol, its agreement with the
gymnasium env, per-env random streams, auto-reset, the ``state_dict`` round trip and a
batched-PPO run resumed from a checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pytest

from ctxrl.context import ContextFeature
from ctxrl.errors import ContextError
from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec
from ctxrl.testing.plugin import unclashed
from ctxrl.testing.twin_contract import TwinChecks, _changed_feature, _extreme_contexts


def _gym_rollout(
    spec: EnvSpec, context: Mapping[str, float], steps: int, env: Any = None
) -> list[Any]:
    """A seeded episode's observations, rewards and endings at ``context`` (actions drawn from
    the env's action space seeded alike), resetting at an episode's end; in ``env`` (made at
    ``context``) when given, else in one made here. The env is closed."""
    env = spec.make(context) if env is None else env
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    trace: list[Any] = [np.asarray(obs).tolist()]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        trace.append((np.asarray(obs).tolist(), float(reward), bool(terminated), bool(truncated)))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return trace


def _values_away_from_default(feature: ContextFeature) -> list[float]:
    """The ends of ``feature``'s range, then the points 1/2, 1/4 and 1/10 of the way to them
    from its default (for ends that break a constraint with other features' defaults)."""
    values: list[float] = [feature.lower, feature.upper]
    for fraction in (0.5, 0.25, 0.1):
        for end in (feature.lower, feature.upper):
            values.append(feature.default + fraction * (end - feature.default))
    return [v for i, v in enumerate(values) if v != feature.default and v not in values[:i]]


class EnvContract(TwinChecks):
    """Contract for an environment plugin: the gymnasium env's checks here, the torch twin's
    in :class:`~ctxrl.testing.twin_contract.TwinChecks` (its settings, such as
    ``context_effect_steps`` and ``twin_return_steps``, are class attributes of both)."""

    env_name: ClassVar[str] = ""

    @pytest.fixture
    def env_spec(self) -> EnvSpec:
        return get_host().registry.env(unclashed("env", self.env_name))

    def test_spec_is_consistent(self, env_spec: EnvSpec) -> None:
        import gymnasium as gym

        lower, upper = env_spec.return_bounds
        assert lower < upper
        assert len(env_spec.context_space) > 0
        assert env_spec.action_space in ("discrete", "continuous")
        if env_spec.check_context is not None:  # the default context is a valid one
            env_spec.check_context(env_spec.context_space.validate({}))
        env = env_spec.make()
        discrete = isinstance(env.action_space, gym.spaces.Discrete)
        assert discrete == (env_spec.action_space == "discrete"), (
            f"{env_spec.name}: the spec says {env_spec.action_space!r} actions, the env has "
            f"{env.action_space}"
        )
        limits = []
        wrapper = env
        while isinstance(wrapper, gym.Wrapper):
            if isinstance(wrapper, gym.wrappers.TimeLimit):
                limits.append(wrapper._max_episode_steps)
            wrapper = wrapper.env
        env.close()
        if env_spec.max_episode_steps is not None:
            assert limits == [env_spec.max_episode_steps], (
                f"{env_spec.name}: max_episode_steps is {env_spec.max_episode_steps} but make() "
                f"applies the time limits {limits}"
            )

    def test_observations_stay_in_the_observation_space(self, env_spec: EnvSpec) -> None:
        """On every extreme context, hidden and visible: the observations of ``reset`` and of
        ``check_steps`` random steps lie in the declared space (gymnasium's ``check_env`` only
        warns, and looks at one step)."""
        for context in _extreme_contexts(env_spec):
            for visible in ((), env_spec.context_space.names):
                env = env_spec.make(context, visible=visible)
                env.action_space.seed(0)
                obs, _ = env.reset(seed=0)
                for step in range(self.check_steps + 1):
                    assert env.observation_space.contains(obs), (
                        f"{env_spec.name} at {context} (visible {list(visible)}), step {step}: "
                        f"observation {obs} is not in {env.observation_space}"
                    )
                    obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
                    if terminated or truncated:
                        obs, _ = env.reset()
                env.close()

    def test_gymnasium_check_env_at_default_and_extremes(self, env_spec: EnvSpec) -> None:
        from gymnasium.utils.env_checker import check_env

        contexts = _extreme_contexts(env_spec)
        assert len(contexts) > len(env_spec.context_space), "most extremes must be constructible"
        for context in contexts:
            for visible in ((), env_spec.context_space.names):
                env = env_spec.make(context, visible=visible)
                with warnings.catch_warnings():
                    # The contextual wrapper is what users get, so it is what gets checked.
                    warnings.filterwarnings("ignore", message=".*different from the unwrapped")
                    check_env(env, skip_render_check=True)
                env.close()

    def test_sb3_check_env_at_default_and_extremes(self, env_spec: EnvSpec) -> None:
        pytest.importorskip("stable_baselines3")
        from stable_baselines3.common.env_checker import check_env

        for context in _extreme_contexts(env_spec):
            for visible in ((), env_spec.context_space.names):
                env = env_spec.make(context, visible=visible)
                check_env(env, warn=False)
                env.close()

    def test_context_reported_and_changeable_at_reset(self, env_spec: EnvSpec) -> None:
        feature, value = _changed_feature(env_spec)
        env = env_spec.make()
        _, info = env.reset(seed=0)
        assert info["context"][feature.name] == feature.default
        _, info = env.reset(seed=0, options={"context": {feature.name: value}})
        assert info["context"][feature.name] == value
        _, _, _, _, info = env.step(env.action_space.sample())
        assert info["context"][feature.name] == value
        env.close()

    def test_visible_context_is_appended_normalised(self, env_spec: EnvSpec) -> None:
        feature, value = _changed_feature(env_spec)
        hidden = env_spec.make({feature.name: value})
        visible = env_spec.make({feature.name: value}, visible=[feature.name])
        obs_hidden, _ = hidden.reset(seed=1)
        obs_visible, _ = visible.reset(seed=1)
        assert obs_visible.shape[0] == obs_hidden.shape[0] + 1
        np.testing.assert_allclose(obs_visible[:-1], obs_hidden)
        assert obs_visible[-1] == pytest.approx(float(feature.to_unit(value)))
        assert visible.observation_space.contains(obs_visible)

    def test_rejects_unknown_feature(self, env_spec: EnvSpec) -> None:
        with pytest.raises(ContextError, match="no_such_feature"):
            env_spec.make({"no_such_feature": 1.0})

    def test_rejects_out_of_bounds_and_wrong_type(self, env_spec: EnvSpec) -> None:
        feature = env_spec.context_space.features[0]
        too_big = feature.upper + abs(feature.upper) + 1.0
        with pytest.raises(ContextError) as excinfo:
            env_spec.make({feature.name: too_big})
        message = str(excinfo.value)
        assert feature.name in message, message
        assert env_spec.name in message, (
            f"the error should name the env: give its space ContextSpace(..., owner="
            f"{env_spec.name!r}) (got {message!r})"
        )
        assert repr(float(feature.upper)) in message or f"{feature.upper}" in message
        with pytest.raises(ContextError, match=feature.name):
            env_spec.make({feature.name: "heavy"})

    def test_bad_context_at_reset_changes_nothing(self, env_spec: EnvSpec) -> None:
        feature, value = _changed_feature(env_spec)
        env = env_spec.make()
        _, info = env.reset(seed=0)
        bad = {feature.name: value, "no_such_feature": 1.0}
        with pytest.raises(ContextError):
            env.reset(seed=0, options={"context": bad})
        _, after = env.reset(seed=0)
        assert after["context"] == info["context"]

    def test_contexts_change_what_the_env_does(self, env_spec: EnvSpec) -> None:
        """Some feature at an end of its range changes the observations, rewards or endings
        of the same seeded episode within :attr:`context_effect_steps` random steps (a family
        whose ``apply`` ignores the context passes every other test and sweeps into a matrix
        of identical rows)."""
        steps = self.context_effect_steps
        if steps is None:
            pytest.skip(f"{env_spec.name}: context_effect_steps is None (contexts act later)")
        reference = _gym_rollout(env_spec, {}, steps)
        for context in _extreme_contexts(env_spec)[1:]:
            if _gym_rollout(env_spec, context, steps) != reference:
                return
        raise AssertionError(
            f"{env_spec.name}: no context at the ends of its features' ranges changes a seeded "
            f"episode's first {steps} random steps: does the family's apply set them? (If "
            "they act only later, e.g. a goal random actions never reach, set "
            "context_effect_steps on the contract: more steps, or None)"
        )

    def test_every_feature_changes_what_the_env_does(self, env_spec: EnvSpec) -> None:
        """Each feature on its own, at a value the env accepts away from its default (an end
        of its range, else a point between: 1/2, 1/4 or 1/10 of the way there, where the ends
        break a constraint with the other features' defaults), changes the same seeded
        episode within :attr:`context_effect_steps` random steps. A family whose ``apply``
        drops one feature (a misspelt attribute) passes the test above and sweeps that
        feature into a matrix of identical rows. Features that act only later (a position
        bound random steps never reach) are named in :attr:`features_acting_later`."""
        steps = self.context_effect_steps
        if steps is None:
            pytest.skip(f"{env_spec.name}: context_effect_steps is None (contexts act later)")
        reference = _gym_rollout(env_spec, {}, steps)
        inert: list[str] = []
        refused: list[str] = []
        for feature in env_spec.context_space.features:
            if {feature.name, f"{env_spec.name}.{feature.name}"} & set(self.features_acting_later):
                continue
            if feature.lower == feature.upper:  # one value: nothing to vary
                continue
            tried: list[float] = []
            for value in _values_away_from_default(feature):
                try:
                    env = env_spec.make({feature.name: value})
                except ContextError:
                    continue
                tried.append(value)
                if _gym_rollout(env_spec, {feature.name: value}, steps, env) != reference:
                    break
            else:  # no value tried changed the episode
                if tried:
                    inert.append(f"{feature.name} (tried {', '.join(f'{v:.4g}' for v in tried)})")
                else:
                    refused.append(feature.name)
        assert not refused, (
            f"{env_spec.name}: no value of {refused} other than the default is accepted with "
            "the other features at their defaults"
        )
        assert not inert, (
            f"{env_spec.name}: these features change nothing in a seeded episode's first "
            f"{steps} random steps: {inert}. Does the family's apply set them? (If they act "
            "only later, name them in features_acting_later on the contract)"
        )

    # ---------------------------------------------------------------------- torch twin
    # Envs with ``make_batched`` must return a ctxrl.twins.TorchTwin; these tests skip without.


__all__ = ["EnvContract"]
