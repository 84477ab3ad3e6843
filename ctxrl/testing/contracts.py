"""Contracts every plugin of a kind must meet, written once (GPyTorch's BaseKernelTestCase idea).

A subclass sets the name of what it tests (``env_name``, ``strategy_name``, ``algorithm_name``)
or overrides the ``*_spec`` fixture to parametrise over several.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import pytest

from ctxrl.context import Context, ContextFeature, Task
from ctxrl.errors import ContextError, CtxrlError
from ctxrl.plugins import get_host
from ctxrl.registry import AlgorithmSpec, EnvSpec, StrategySpec
from ctxrl.selection import replay


def _extreme_contexts(spec: EnvSpec) -> list[dict[str, float]]:
    """The default context and every feature at each end of its range (others default).

    Contexts that violate a cross-feature constraint of the env are skipped."""
    contexts: list[dict[str, float]] = [{}]
    for feature in spec.context_space.features:
        contexts += [{feature.name: feature.lower}, {feature.name: feature.upper}]
    valid = []
    for context in contexts:
        try:
            env = spec.make(context)
        except ContextError:
            continue
        env.close()
        valid.append(context)
    return valid


def _changed_feature(spec: EnvSpec) -> tuple[ContextFeature, float]:
    """A feature and a non-default value at one end of its range that the env accepts."""
    for context in _extreme_contexts(spec)[1:]:
        ((name, value),) = context.items()
        if value != spec.context_space.feature(name).default:
            return spec.context_space.feature(name), value
    raise AssertionError(f"{spec.name}: no feature can leave its default")


class EnvContract:
    """Contract for an environment plugin."""

    env_name: ClassVar[str] = ""
    check_steps: ClassVar[int] = 50

    @pytest.fixture
    def env_spec(self) -> EnvSpec:
        return get_host().registry.env(self.env_name)

    def test_spec_is_consistent(self, env_spec: EnvSpec) -> None:
        lower, upper = env_spec.return_bounds
        assert lower < upper
        assert len(env_spec.context_space) > 0
        assert env_spec.action_space in ("discrete", "continuous")

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
        assert env_spec.name in message and feature.name in message
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

    def test_batched_twin_contract(self, env_spec: EnvSpec) -> None:
        if env_spec.make_batched is None:
            pytest.skip(f"{env_spec.name} has no batched twin")
        import torch

        feature, value = _changed_feature(env_spec)
        values = torch.tensor([feature.default, value, feature.default])
        twin = env_spec.make_batched(3, contexts={feature.name: values}, seed=0)
        obs = twin.reset(seed=0)
        assert obs.shape == (3, twin.observation_size)
        for _ in range(self.check_steps):
            if twin.discrete_actions is not None:
                action = torch.randint(0, twin.discrete_actions, (3,))
            else:
                action = torch.rand(3) * 2 - 1
            obs, reward, terminated, truncated, _info = twin.step(action)
            assert obs.shape == (3, twin.observation_size)
            assert reward.shape == terminated.shape == truncated.shape == (3,)
            assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
        with pytest.raises(ContextError, match=feature.name):
            env_spec.make_batched(
                2, contexts={feature.name: feature.upper + abs(feature.upper) + 1}
            )


class StrategyContract:
    """Contract for a source-selection strategy plugin."""

    strategy_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    n_contexts: ClassVar[int] = 12

    @pytest.fixture
    def strategy_spec(self) -> StrategySpec:
        return get_host().registry.strategy(self.strategy_name)

    def _matrix(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        n = self.n_contexts
        coords = np.linspace(0.0, 1.0, n)[:, None]
        centre = rng.uniform(0.6, 1.0, size=n)
        distance = np.abs(coords - coords.T)
        return np.clip(centre[:, None] - 1.5 * distance, 0, 1), coords

    def test_proposes_valid_indices_up_to_budget(self, strategy_spec: StrategySpec) -> None:
        matrix, coords = self._matrix()
        result = replay(
            strategy_spec.factory(**self.options),
            matrix,
            coords,
            budget=5,
            full_knowledge=strategy_spec.requires_full_matrix,
        )
        assert len(result.order) == 5
        assert all(0 <= i < self.n_contexts for i in result.order)
        assert np.all(np.diff(result.curve) >= -1e-12), "G_k never decreases"

    def test_same_seed_same_order(self, strategy_spec: StrategySpec) -> None:
        matrix, coords = self._matrix()
        orders = [
            replay(
                strategy_spec.factory(**self.options),
                matrix,
                coords,
                4,
                seed=3,
                full_knowledge=strategy_spec.requires_full_matrix,
            ).order
            for _ in range(2)
        ]
        assert orders[0] == orders[1]

    def test_unknown_option_is_an_error(self, strategy_spec: StrategySpec) -> None:
        with pytest.raises((CtxrlError, TypeError), match="no_such_option"):
            strategy_spec.factory(**self.options, no_such_option=1)


class AlgorithmContract:
    """Contract for an algorithm plugin (tiny budgets: it checks plumbing, not learning)."""

    algorithm_name: ClassVar[str] = ""
    env_name: ClassVar[str] = "CartPole"
    params: ClassVar[dict[str, Any]] = {}
    total_steps: ClassVar[int] = 256

    @pytest.fixture
    def algorithm_spec(self) -> AlgorithmSpec:
        return get_host().registry.algorithm(self.algorithm_name)

    @pytest.fixture
    def env_spec(self) -> EnvSpec:
        return get_host().registry.env(self.env_name)

    def test_train_evaluate_save_load(
        self, algorithm_spec: AlgorithmSpec, env_spec: EnvSpec, tmp_path: Any
    ) -> None:
        algorithm = algorithm_spec.factory(dict(self.params), device="cpu", env=env_spec)
        feature = env_spec.context_space.features[0]
        task = env_spec.task({feature.name: feature.default})
        other = Task(
            env_spec.name, Context({**task.context.as_dict(), feature.name: feature.upper})
        )
        policy = algorithm.train(env_spec, task, seed=0, total_steps=self.total_steps)
        returns = algorithm.evaluate(policy, env_spec, [task, other], episodes=2, seed=0)
        assert np.asarray(returns).shape == (2, 2)
        assert np.all(np.isfinite(returns))
        algorithm.save(policy, tmp_path / "policy")
        assert (tmp_path / "policy.safetensors").is_file()
        assert (tmp_path / "policy.json").is_file()
        loaded = algorithm.load(tmp_path / "policy", env_spec)
        again = algorithm.evaluate(loaded, env_spec, [task, other], episodes=2, seed=0)
        np.testing.assert_allclose(again, returns)

    def test_unknown_hyperparameter_is_an_error(
        self, algorithm_spec: AlgorithmSpec, env_spec: EnvSpec
    ) -> None:
        with pytest.raises(CtxrlError, match="no_such_hyperparameter"):
            algorithm_spec.factory({"no_such_hyperparameter": 1}, device="cpu", env=env_spec)


__all__ = ["AlgorithmContract", "EnvContract", "StrategyContract"]
