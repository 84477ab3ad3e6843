"""Every registered transfer method and executor meets its contract (``ctxrl.testing``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import requires_ray, requires_sb3

from ctxrl.errors import CtxrlError
from ctxrl.plugins import get_host
from ctxrl.testing import ExecutorContract, TransferMethodContract
from ctxrl.transfer import (
    TransferProblem,
    TransferResult,
    evaluate_on_own_contexts,
    evaluate_sources,
)
from ctxrl_plugins.executors.local import InlineExecutor


class TestZeroShot(TransferMethodContract):
    transfer_method_name = "zero-shot"


class TestFineTune(TransferMethodContract):
    transfer_method_name = "fine-tune"
    options: ClassVar = {"steps": 256}


class TestDistill(TransferMethodContract):
    transfer_method_name = "distill"
    options: ClassVar = {"steps": 256}


class TestDQNTransferabilityStudy(TransferMethodContract):
    transfer_method_name = "dqn-transferability"


class TestPlasticityStudy(TransferMethodContract):
    transfer_method_name = "plasticity"


class TestLocalExecutor(ExecutorContract):
    executor_name = "local"


class TestInlineExecutor(ExecutorContract):
    executor_name = "inline"
    enforces_timeout = False  # jobs run in the sweep's own process (documented)


@requires_ray
class TestRayExecutor(ExecutorContract):
    executor_name = "ray"


@pytest.mark.parametrize(
    ("kind", "classes", "attribute"),
    [
        (
            "transfer_method",
            [
                TestZeroShot,
                TestFineTune,
                TestDistill,
                TestDQNTransferabilityStudy,
                TestPlasticityStudy,
            ],
            "transfer_method_name",
        ),
        (
            "executor",
            [TestLocalExecutor, TestInlineExecutor, TestRayExecutor],
            "executor_name",
        ),
    ],
)
def test_every_registered_plugin_of_the_kind_is_under_contract(
    kind: str, classes: list[type], attribute: str
) -> None:
    tested = {getattr(cls, attribute) for cls in classes}
    assert set(get_host().registry.names(kind)) <= tested  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "algorithm_name", ["batched-ppo", pytest.param("sb3-ppo", marks=requires_sb3)]
)
def test_each_policy_is_evaluated_on_its_own_context(
    algorithm_name: str,
) -> None:
    """``evaluate_on_own_contexts``: policy ``i`` on context ``i`` alone, in one batched rollout
    (batched algorithms: the same returns as every policy on every context gives at ``(i,
    i)``) or one evaluation per policy (per-run ones)."""
    host = get_host()
    env = host.registry.env("CartPole")
    params: dict[str, Any] = (
        {"hidden": 16, "num_envs": 2, "num_steps": 32} if algorithm_name == "batched-ppo" else {}
    )
    algorithm: Any = host.registry.algorithm(algorithm_name).factory(params, device="cpu", env=env)
    contexts = [{"length": 0.3}, {"length": 1.0}, {"length": 3.0}]
    if algorithm_name == "batched-ppo":
        policies: Any = algorithm.train_many(env, contexts, [0, 1, 2], total_steps=256)
    else:
        policies = [
            algorithm.train(env, env.task(c), seed=i, total_steps=256)
            for i, c in enumerate(contexts)
        ]
    problem = TransferProblem(
        env=env,
        algorithm=algorithm,
        sources=policies,
        source_contexts=contexts,
        source_seeds=[0, 0, 0],  # per-run evaluation seeds add the source's seed
        targets=contexts,
        episodes=3,
        eval_seed=5,
    )
    own = evaluate_on_own_contexts(problem, policies, contexts)
    assert own.shape == (3, 3)
    if algorithm_name == "batched-ppo":  # a batched episode's start depends on its context alone
        every = evaluate_sources(problem)
        np.testing.assert_array_equal(own, every[np.arange(3), np.arange(3)])

        class WithoutPerPolicy:
            """A batched algorithm written before ``evaluate_many`` took ``per_policy``."""

            def evaluate_many(
                self, policies: Any, env: Any, contexts: Any, *, episodes: int, seed: int
            ) -> Any:
                return algorithm.evaluate_many(
                    policies, env, contexts, episodes=episodes, seed=seed
                )

        legacy = dataclasses.replace(problem, algorithm=WithoutPerPolicy())
        np.testing.assert_array_equal(evaluate_on_own_contexts(legacy, policies, contexts), own)
    else:  # a per-run episode's start depends on the context's place in the list too
        for i, (policy, context) in enumerate(zip(policies, contexts, strict=True)):
            alone = algorithm.evaluate(policy, env, [env.task(context)], episodes=3, seed=5)
            np.testing.assert_array_equal(own[i], alone[0])
    with pytest.raises(ValueError, match="3 policies for 2 contexts"):
        evaluate_on_own_contexts(problem, policies, contexts[:2])


# ------------------------------------------------------- the contracts catch broken plugins
class _EditsTheSources:
    """Zero-shot that leaves the sources' first layer changed (a sweep then stores it)."""

    def transfer(self, problem: TransferProblem) -> TransferResult:
        for tensor in problem.sources.params.values():
            tensor.mul_(0.5)
        return TransferResult(evaluate_sources(problem))


class _ReadsItsPosition:
    """Zero-shot whose row depends on the source's place in the problem."""

    def transfer(self, problem: TransferProblem) -> TransferResult:
        returns = evaluate_sources(problem)
        return TransferResult(returns + np.arange(len(returns))[:, None, None])


class _Unseeded:
    """Zero-shot plus noise from an unseeded generator."""

    def transfer(self, problem: TransferProblem) -> TransferResult:
        returns = evaluate_sources(problem)
        return TransferResult(returns + np.random.default_rng().random(returns.shape))


class _HashSeeded:
    """Zero-shot plus an offset from ``hash()`` of a string, which differs between processes."""

    def transfer(self, problem: TransferProblem) -> TransferResult:
        returns = evaluate_sources(problem)
        return TransferResult(returns + hash("ctxrl") % 1000)


class _DropsTrainingOptions:
    """Fine-tuning without the sweep's interventions."""

    def transfer(self, problem: TransferProblem) -> TransferResult:
        from ctxrl_plugins.transfer.fine_tune import FineTune

        return FineTune(256).transfer(dataclasses.replace(problem, training_options={}))


def test_the_transfer_contract_catches_methods_that_break_what_sweeps_rely_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = get_host().registry.transfer_method("zero-shot")
    env = get_host().registry.env("CartPole")
    contract = TestZeroShot()
    with pytest.raises(AssertionError, match="the transfer changed"):
        contract.test_transfers_every_source_to_every_target_and_leaves_the_sources(
            dataclasses.replace(spec, factory=_EditsTheSources), env
        )
    with pytest.raises(AssertionError, match="Arrays are not equal"):
        contract.test_a_source_alone_gets_the_row_it_gets_beside_another(
            dataclasses.replace(spec, factory=_ReadsItsPosition), env
        )
    with pytest.raises(AssertionError, match="Arrays are not equal"):
        contract.test_the_same_problem_gives_the_same_returns(
            dataclasses.replace(spec, factory=_Unseeded), env
        )
    with pytest.raises(AssertionError, match="another process gave other returns"):
        contract.test_another_process_gives_the_same_returns(
            dataclasses.replace(spec, factory=_HashSeeded), env, monkeypatch
        )
    with pytest.raises(CtxrlError, match="parameters this network lacks"):
        contract.test_sources_trained_with_interventions_transfer(
            dataclasses.replace(spec, factory=_DropsTrainingOptions), env
        )


class _SwallowsErrors(InlineExecutor):
    """Reports every job as done."""

    def map(self, fn: Any, jobs: Iterable[dict[str, Any]]) -> Iterator[tuple[Any, Any]]:
        for job, _ in super().map(fn, jobs):
            yield job, None


class _RunsOnce(InlineExecutor):
    """Forgets the jobs of its second ``map``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def map(self, fn: Any, jobs: Iterable[dict[str, Any]]) -> Iterator[tuple[Any, Any]]:
        self.calls += 1
        return super().map(fn, jobs) if self.calls == 1 else iter(())


def test_the_executor_contract_catches_executors_that_lose_jobs_or_errors(
    tmp_path: Path,
) -> None:
    spec = get_host().registry.executor("inline")
    contract = TestInlineExecutor()
    for broken, message in [(_SwallowsErrors, "raised; no error yielded"), (_RunsOnce, "once")]:
        folder = tmp_path / broken.__name__
        folder.mkdir()
        with pytest.raises(AssertionError, match=message):
            contract.test_every_job_once_with_its_own_error(
                dataclasses.replace(spec, factory=broken), folder
            )
