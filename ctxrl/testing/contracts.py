"""Contracts every plugin of a kind must meet, written once (GPyTorch's BaseKernelTestCase idea):
strategies and algorithms here, environments in :mod:`ctxrl.testing.env_contract`,
interventions in :mod:`ctxrl.testing.interventions`.

A subclass sets the name of what it tests (``strategy_name``, ``algorithm_name``) or overrides
the ``*_spec`` fixture to parametrise over several.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

from ctxrl.context import Context, Task
from ctxrl.errors import CtxrlError
from ctxrl.plugins import get_host
from ctxrl.registry import AlgorithmSpec, EnvSpec, StrategySpec
from ctxrl.resolution import resolved_differences, resolved_hyperparameters
from ctxrl.selection import replay
from ctxrl.testing.plugin import unclashed


class StrategyContract:
    """Contract for a source-selection strategy plugin."""

    strategy_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    n_contexts: ClassVar[int] = 12

    @pytest.fixture
    def strategy_spec(self) -> StrategySpec:
        return get_host().registry.strategy(unclashed("strategy", self.strategy_name))

    def _matrix(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        n = self.n_contexts
        coords = np.linspace(0.0, 1.0, n)[:, None]
        centre = rng.uniform(0.6, 1.0, size=n)
        distance = np.abs(coords - coords.T)
        return np.clip(centre[:, None] - 1.5 * distance, 0, 1), coords

    def _grid_2d(self) -> tuple[np.ndarray, np.ndarray]:
        """A 4 x 3 grid of contexts in the unit square and a matrix falling off with the L1
        distance between them."""
        rng = np.random.default_rng(1)
        a, b = np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 3), indexing="ij")
        coords = np.stack([a.ravel(), b.ravel()], axis=1)
        distance = np.abs(coords[:, None, :] - coords[None, :, :]).sum(axis=-1)
        centre = rng.uniform(0.6, 1.0, size=len(coords))
        return np.clip(centre[:, None] - 0.8 * distance, 0, 1), coords

    @pytest.mark.parametrize("batch_size", [1, 3])
    @pytest.mark.parametrize("grid", ["1-d", "2-d"])
    def test_proposes_a_budget_of_distinct_valid_indices(
        self, strategy_spec: StrategySpec, grid: str, batch_size: int
    ) -> None:
        """On a 1-D and a 2-D grid, one source a step and batches of three, to a budget of
        every context (the last steps, with few candidates left, are where a strategy runs
        out): every proposal is a list of whole indices in range, none chosen before
        (``replay`` refuses anything else with an error naming the strategy, as a sweep
        does)."""
        if grid == "2-d" and strategy_spec.one_dimensional:
            pytest.skip("a one-dimensional strategy (sweeps over several features refuse it)")
        matrix, coords = self._matrix() if grid == "1-d" else self._grid_2d()
        budget = len(coords)
        result = replay(
            strategy_spec.factory(**self.options),
            matrix,
            coords,
            budget=budget,
            full_knowledge=strategy_spec.requires_full_matrix,
            name=strategy_spec.name,
            batch_size=batch_size,
        )
        assert len(set(result.order)) == budget

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
                name=strategy_spec.name,
            ).order
            for _ in range(2)
        ]
        assert orders[0] == orders[1]

    def test_unknown_option_is_an_error(self, strategy_spec: StrategySpec) -> None:
        with pytest.raises((CtxrlError, TypeError), match="no_such_option"):
            strategy_spec.factory(**self.options, no_such_option=1)
            pytest.fail(
                f"{self.strategy_name}'s factory took an option it does not have "
                "(no_such_option=1) without an error naming it"
            )


class AlgorithmContract:
    """Contract for an algorithm plugin (tiny budgets: it checks plumbing, not learning)."""

    algorithm_name: ClassVar[str] = ""
    env_name: ClassVar[str] = "CartPole"
    params: ClassVar[dict[str, Any]] = {}
    total_steps: ClassVar[int] = 256

    @pytest.fixture
    def algorithm_spec(self) -> AlgorithmSpec:
        return get_host().registry.algorithm(unclashed("algorithm", self.algorithm_name))

    @pytest.fixture
    def env_spec(self) -> EnvSpec:
        return get_host().registry.env(unclashed("env", self.env_name))

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

    def test_hyperparameters_resolve_to_json_with_the_given_values(
        self, algorithm_spec: AlgorithmSpec, env_spec: EnvSpec
    ) -> None:
        """What a run directory records of the algorithm (:func:`~ctxrl.config.
        resolved_hyperparameters`): the same values for the same params, through plan.yaml's
        YAML as a resume compares them, and where the algorithm has ``hyperparameters()``,
        each given value as given."""
        first = algorithm_spec.factory(dict(self.params), device="cpu", env=env_spec)
        second = algorithm_spec.factory(dict(self.params), device="cpu", env=env_spec)
        resolved = resolved_hyperparameters(first, self.params)
        stored = yaml.safe_load(yaml.safe_dump(resolved))
        assert resolved_differences(stored, resolved_hyperparameters(second, self.params)) == []
        if callable(getattr(first, "hyperparameters", None)):
            for name, value in self.params.items():
                given = {name: json.loads(json.dumps(value, default=str))}
                assert name in resolved, f"hyperparameters() leaves out the given {name!r}"
                assert resolved_differences(given, {name: resolved[name]}) == []


__all__ = ["AlgorithmContract", "StrategyContract"]
