"""The contract every transfer-method plugin must meet (:mod:`ctxrl.transfer`).

Subclass :class:`TransferMethodContract` in your plugin's tests and name the method::

    from ctxrl.testing import TransferMethodContract

    class TestMyMethod(TransferMethodContract):
        transfer_method_name = "my-method"
        options = {"steps": 512}

The sources are two CartPole agents of ``algorithm_name`` trained for a few hundred
environment steps (about a second on one CPU core), the targets three contexts: the checks are
about plumbing and exactness, not how well the method transfers.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest

from ctxrl.errors import CtxrlError, UnknownNameError
from ctxrl.plugins import get_host
from ctxrl.registry import EnvSpec, TransferMethodSpec
from ctxrl.testing.plugin import unclashed
from ctxrl.transfer import TransferMethod, TransferProblem, TransferResult


class TransferMethodContract:
    """Contract for a transfer-method plugin.

    Class attributes:
        transfer_method_name: the registry name.
        options: keyword options of the factory (``transfer.options`` of a sweep).
        algorithm_name: the (batched) algorithm that trains the sources.
        env_name: the environment.
        algorithm_params: the algorithm's hyperparameters (small, for quick checks).
        source_steps: environment steps per source.
        episodes: evaluation episodes per (policy, target).

    For a method a sweep runs it checks that (a) it is registered with a description and its
    factory builds a :class:`~ctxrl.transfer.TransferMethod`; (b) an unknown option is an error
    naming it; (c) its ``check`` (where it has one) accepts the algorithm and env it is tested
    with; (d) ``transfer`` returns ``(P, Q, E)`` finite returns, a whole non-negative
    ``target_env_steps`` and JSON ``details``, and leaves the source policies as they were
    (a sweep stores them after the transfer); (e) the same problem gives the same returns bit
    for bit (a sweep killed during a transfer redoes it on resume), (i) in a fresh process with
    another hash seed too (a resumed or sharded sweep redoes it there); (f) a method that is not
    ``joint`` gives a source the same row alone as beside another source (a sharded sweep
    transfers each shard's sources apart); (h) sources trained with ``layer-norm`` transfer
    with it in ``training_options``; (g) a method that is not ``batched_only`` also
    transfers the list of policies of a per-run algorithm (``per_run_algorithm_name``). For a
    study method (``study_command`` set): ``transfer`` refuses with an error naming the
    command, and the spec has a ``report``.
    """

    transfer_method_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    algorithm_name: ClassVar[str] = "batched-ppo"
    per_run_algorithm_name: ClassVar[str] = "sb3-ppo"
    env_name: ClassVar[str] = "CartPole"
    algorithm_params: ClassVar[dict[str, Any]] = {
        # 8 iterations of 2 envs x 32 steps, 4 gradient steps each
        "num_envs": 2,
        "num_steps": 32,
        "update_epochs": 2,
        "num_minibatches": 2,
        "hidden": 16,
    }
    source_steps: ClassVar[int] = 512
    episodes: ClassVar[int] = 2

    # ------------------------------------------------------------------------ helpers
    @pytest.fixture
    def transfer_method_spec(self) -> TransferMethodSpec:
        return get_host().registry.transfer_method(
            unclashed("transfer_method", self.transfer_method_name)
        )

    @pytest.fixture
    def env_spec(self) -> EnvSpec:
        return get_host().registry.env(unclashed("env", self.env_name))

    def build(self, spec: TransferMethodSpec) -> TransferMethod:
        """A fresh method from the registry's factory with ``options``."""
        method = spec.factory(**self.options)
        assert isinstance(method, TransferMethod), (
            f"{spec.name}: the factory must return an object with transfer(problem)"
        )
        return method

    def algorithm(self, env_spec: EnvSpec, name: str | None = None) -> Any:
        spec = get_host().registry.algorithm(name or self.algorithm_name)
        params = dict(self.algorithm_params) if name is None else {}
        return spec.factory(params, device="cpu", env=env_spec)

    @staticmethod
    def contexts(env_spec: EnvSpec, count: int) -> list[dict[str, float]]:
        """``count`` values of the first feature, evenly from its lower to its upper bound."""
        feature = env_spec.context_space.features[0]
        values = np.linspace(feature.lower, feature.upper, count)
        return [{feature.name: float(v)} for v in values]

    def problem(
        self,
        env_spec: EnvSpec,
        algorithm: Any,
        sources: Any,
        seeds: list[int],
        sources_at: list[dict[str, float]] | None = None,
    ) -> Any:
        """The problem of ``sources`` (trained at ``sources_at``, default the first
        ``len(seeds)`` of :meth:`train_sources`' contexts) on three targets."""
        if sources_at is None:
            sources_at = self.contexts(env_spec, 2)[: len(seeds)]
        return TransferProblem(
            env_spec,
            algorithm,
            sources,
            sources_at,
            seeds,
            self.contexts(env_spec, 3),
            episodes=self.episodes,
            eval_seed=10_000,
        )

    def train_sources(self, env_spec: EnvSpec, algorithm: Any) -> Any:
        """Two batched sources, at each end of the first feature's range (seeds 0 and 1)."""
        return algorithm.train_many(
            env_spec, self.contexts(env_spec, 2), [0, 1], total_steps=self.source_steps
        )

    def _skip_studies(self, spec: TransferMethodSpec) -> None:
        if spec.study_command is not None:
            pytest.skip(f"{spec.name} is a study of its own ({spec.study_command})")

    @staticmethod
    def _check_result(result: TransferResult, shape: tuple[int, int, int]) -> np.ndarray:
        returns = np.asarray(result.returns, dtype=np.float64)
        assert returns.shape == shape, f"returns of shape {returns.shape}, expected {shape}"
        assert np.all(np.isfinite(returns))
        steps = result.target_env_steps
        assert isinstance(steps, int | np.integer) and not isinstance(steps, bool), (
            f"target_env_steps must be a whole number, got {steps!r}"
        )
        assert steps >= 0
        json.dumps(result.details, allow_nan=False)  # stored as JSON beside the matrix
        return returns

    # ------------------------------------------------------------------------- checks
    def test_is_registered_and_builds_a_method(
        self, transfer_method_spec: TransferMethodSpec
    ) -> None:
        assert transfer_method_spec.name == self.transfer_method_name
        assert transfer_method_spec.description, "give the registry a one-line description"
        self.build(transfer_method_spec)

    def test_unknown_option_is_an_error_naming_it(
        self, transfer_method_spec: TransferMethodSpec
    ) -> None:
        with pytest.raises((CtxrlError, TypeError), match="no_such_option"):
            transfer_method_spec.factory(**self.options, no_such_option=1)
            pytest.fail(
                f"{self.transfer_method_name}'s factory took an option it does not have "
                "(no_such_option=1) without an error naming it"
            )

    def test_a_study_refuses_a_sweep_and_names_its_command(
        self, transfer_method_spec: TransferMethodSpec, env_spec: EnvSpec
    ) -> None:
        spec = transfer_method_spec
        if spec.study_command is None:
            pytest.skip(f"{spec.name} runs in sweeps")
        assert spec.report is not None, "a study rewrites its report from its run directory"
        method = self.build(spec)
        with pytest.raises(CtxrlError, match=spec.study_command.split()[1]):
            method.transfer(self.problem(env_spec, None, None, [0]))

    def test_transfers_every_source_to_every_target_and_leaves_the_sources(
        self, transfer_method_spec: TransferMethodSpec, env_spec: EnvSpec
    ) -> None:
        import torch

        self._skip_studies(transfer_method_spec)
        method = self.build(transfer_method_spec)
        algorithm = self.algorithm(env_spec)
        check = getattr(method, "check", None)
        if check is not None:
            check(algorithm, env_spec)
        sources = self.train_sources(env_spec, algorithm)
        before = {k: v.clone() for k, v in sources.params.items()}
        result = method.transfer(self.problem(env_spec, algorithm, sources, [0, 1]))
        self._check_result(result, (2, 3, self.episodes))
        for name, tensor in before.items():
            assert torch.equal(sources.params[name], tensor), f"the transfer changed {name}"

    def test_sources_trained_with_interventions_transfer(
        self, transfer_method_spec: TransferMethodSpec, env_spec: EnvSpec
    ) -> None:
        """Sources trained with an intervention that changes the network (``layer-norm``)
        and the sweep's interventions in ``training_options``: a method that trains the
        sources further must pass them on (``train_many(**problem.training_options)``), or its
        warm start fails on the sources' extra layers after they have trained."""
        from ctxrl.interventions import build_interventions

        self._skip_studies(transfer_method_spec)
        registry = get_host().registry
        norm = [{"name": "layer-norm", "options": {}}]
        algorithm = self.algorithm(env_spec)
        sources = algorithm.train_many(
            env_spec,
            self.contexts(env_spec, 2),
            [0, 1],
            total_steps=self.source_steps,
            interventions=build_interventions(norm, registry),
        )
        problem = self.problem(env_spec, algorithm, sources, [0, 1])
        problem.training_options = {"interventions": build_interventions(norm, registry)}
        result = self.build(transfer_method_spec).transfer(problem)
        self._check_result(result, (2, 3, self.episodes))

    def test_the_same_problem_gives_the_same_returns(
        self, transfer_method_spec: TransferMethodSpec, env_spec: EnvSpec
    ) -> None:
        self._skip_studies(transfer_method_spec)
        algorithm = self.algorithm(env_spec)
        sources = self.train_sources(env_spec, algorithm)
        problem = self.problem(env_spec, algorithm, sources, [0, 1])
        first = self.build(transfer_method_spec).transfer(problem)
        again = self.build(transfer_method_spec).transfer(problem)
        np.testing.assert_array_equal(first.returns, again.returns)
        assert first.target_env_steps == again.target_env_steps

    def test_a_source_alone_gets_the_row_it_gets_beside_another(
        self, transfer_method_spec: TransferMethodSpec, env_spec: EnvSpec
    ) -> None:
        self._skip_studies(transfer_method_spec)
        if transfer_method_spec.joint:
            pytest.skip(f"{transfer_method_spec.name} is joint: every source shapes every row")
        algorithm = self.algorithm(env_spec)
        sources = self.train_sources(env_spec, algorithm)
        both = self.build(transfer_method_spec).transfer(
            self.problem(env_spec, algorithm, sources, [0, 1])
        )
        upper = self.contexts(env_spec, 2)[1:]  # where source 1 trained
        alone = self.build(transfer_method_spec).transfer(
            self.problem(env_spec, algorithm, sources.select([1]), [1], sources_at=upper)
        )
        np.testing.assert_array_equal(np.asarray(alone.returns)[0], np.asarray(both.returns)[1])

    def test_per_run_sources_where_the_method_is_not_batched_only(
        self, transfer_method_spec: TransferMethodSpec, env_spec: EnvSpec
    ) -> None:
        self._skip_studies(transfer_method_spec)
        if transfer_method_spec.batched_only:
            pytest.skip(f"{transfer_method_spec.name} needs a batched algorithm")
        if self.per_run_algorithm_name not in get_host().registry.names("algorithm"):
            pytest.skip(f"{self.per_run_algorithm_name} is not installed")
        algorithm = self.algorithm(env_spec, self.per_run_algorithm_name)
        contexts = self.contexts(env_spec, 2)
        policies = [
            algorithm.train(env_spec, env_spec.task(context), seed=seed, total_steps=256)
            for seed, context in enumerate(contexts)
        ]
        result = self.build(transfer_method_spec).transfer(
            self.problem(env_spec, algorithm, policies, [0, 1])
        )
        self._check_result(result, (2, 3, self.episodes))

    def test_another_process_gives_the_same_returns(
        self,
        transfer_method_spec: TransferMethodSpec,
        env_spec: EnvSpec,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The sources trained and transferred in a fresh interpreter with another hash seed
        give the returns they give here: a sweep resumed after a kill, or sharded to worker
        processes, redoes a transfer in another process (set and dict-of-string orders,
        ``hash()`` and the global random generators differ there). The other process builds
        everything from the class attributes and the registry (methods overridden in a
        subclass are not used there); a plugin it does not load (registered in this process
        only) skips the check."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._skip_studies(transfer_method_spec)
        factory = transfer_method_spec.factory
        registered = (
            get_host()
            .registry.transfer_method(unclashed("transfer_method", self.transfer_method_name))
            .factory
        )
        if factory is not registered and "<locals>" in getattr(factory, "__qualname__", "<locals>"):
            pytest.skip("the factory is not importable by name, so no other process can build it")
        recipe = {
            "method": self.transfer_method_name,
            # a spec other than the registry's (a test's): its factory, found by import there
            "factory": (
                None if factory is registered else f"{factory.__module__}:{factory.__qualname__}"
            ),
            "options": dict(self.options),
            "algorithm": self.algorithm_name,
            "algorithm_params": dict(self.algorithm_params),
            "env": self.env_name,
            "source_steps": self.source_steps,
            "episodes": self.episodes,
        }
        here = _transfer_from_scratch(recipe)
        import os

        # read by the child interpreter at its start: a seed other than this process's
        other = "3141" if os.environ.get("PYTHONHASHSEED") == "2718" else "2718"
        monkeypatch.setenv("PYTHONHASHSEED", other)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                there = pool.submit(_transfer_from_scratch, recipe).result(timeout=600)
            except UnknownNameError as exc:  # registered in this process only (load_host)
                pytest.skip(f"another process does not load the plugin: {exc}")
        np.testing.assert_array_equal(
            here, there, err_msg="another process gave other returns for the same problem"
        )


def _transfer_from_scratch(recipe: dict[str, Any]) -> np.ndarray:
    """Trains :meth:`TransferMethodContract.train_sources`' two sources and transfers them to
    :meth:`~TransferMethodContract.problem`'s three targets, everything built from the
    registry by name: run here and in a fresh process. Returns ``(2, 3, E)``."""
    registry = get_host().registry
    env_spec = registry.env(recipe["env"])
    algorithm: Any = registry.algorithm(recipe["algorithm"]).factory(
        recipe["algorithm_params"], device="cpu", env=env_spec
    )
    contexts = TransferMethodContract.contexts(env_spec, 2)
    sources = algorithm.train_many(env_spec, contexts, [0, 1], total_steps=recipe["source_steps"])
    problem = TransferProblem(
        env_spec,
        algorithm,
        sources,
        contexts,
        [0, 1],
        TransferMethodContract.contexts(env_spec, 3),
        episodes=recipe["episodes"],
        eval_seed=10_000,
    )
    factory = registry.transfer_method(recipe["method"]).factory
    if recipe["factory"] is not None:
        import importlib

        module, _, name = recipe["factory"].partition(":")
        factory = getattr(importlib.import_module(module), name)
    method = factory(**recipe["options"])
    return np.asarray(method.transfer(problem).returns, dtype=np.float64)


__all__ = ["TransferMethodContract"]
