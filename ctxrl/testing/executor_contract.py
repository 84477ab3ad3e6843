"""The contract every executor plugin must meet (:class:`~ctxrl.registry.ExecutorSpec`).

Subclass :class:`ExecutorContract` in your plugin's tests and name the executor::

    from ctxrl.testing import ExecutorContract

    class TestMyExecutor(ExecutorContract):
        executor_name = "my-executor"
        options = {"queue": "short"}

The jobs are :func:`contract_job`, a module-level function (a process or cluster worker imports
it by name), each writing one small JSON file: the checks take seconds, plus the executor's own
start-up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ctxrl.plugins import get_host
from ctxrl.registry import ExecutorSpec
from ctxrl.testing.plugin import unclashed

FAILURE_TEXT = "failed on purpose"
"""What a failing contract job's error says (an executor must pass it on to the sweep)."""


def contract_job(job: dict[str, Any]) -> None:
    """The contract's job: write ``job`` as JSON to ``{out}/{index}.json``; then raise a
    ``RuntimeError`` if ``job["fail"]``, or sleep ``job["sleep_s"]`` seconds first if given."""
    time.sleep(float(job.get("sleep_s", 0.0)))
    (Path(job["out"]) / f"{job['index']}.json").write_text(json.dumps(job))
    if job.get("fail"):
        raise RuntimeError(f"contract job {job['index']} {FAILURE_TEXT}")


class ExecutorContract:
    """Contract for an executor plugin.

    Class attributes:
        executor_name: the registry name.
        options: the executor's own options (``executor.options`` of a sweep).
        workers: jobs at a time the checks ask for.
        enforces_timeout: False for an executor that documents it cannot stop a job (one
            that runs jobs in the sweep's own process); the time-limit check is then skipped.

    It checks that (a) it is registered with a description; (b) an unknown option is an error
    naming it; (c) ``map`` runs every job once with the job as given and yields each exactly
    once, ``None`` for a job that succeeded and an error whose text carries the job's own
    exception for one that raised, the others going on; (d) a second ``map`` on the same
    executor works (a sweep in ``mode: select`` calls ``map`` once per step) and ``close()``,
    where it has one, can be called after it; (e) no jobs yield nothing; (f) a job past
    ``timeout_s`` is yielded with an error and the jobs beside it finish.
    """

    executor_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    workers: ClassVar[int] = 2
    enforces_timeout: ClassVar[bool] = True

    @pytest.fixture
    def executor_spec(self) -> ExecutorSpec:
        return get_host().registry.executor(unclashed("executor", self.executor_name))

    def build(self, spec: ExecutorSpec, tmp_path: Path, timeout_s: float | None = None) -> Any:
        """The executor as a sweep builds it: ``workers``, ``timeout_s``, ``log_dir``, then
        ``options``."""
        return spec.factory(
            workers=self.workers, timeout_s=timeout_s, log_dir=tmp_path / "logs", **self.options
        )

    @staticmethod
    def _run(executor: Any, jobs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Any]]:
        return list(executor.map(contract_job, jobs))

    @staticmethod
    def _close(executor: Any) -> None:
        close = getattr(executor, "close", None)
        if close is not None:
            close()

    # ------------------------------------------------------------------------- checks
    def test_is_registered_with_a_description(self, executor_spec: ExecutorSpec) -> None:
        assert executor_spec.name == self.executor_name
        assert executor_spec.description, "give the registry a one-line description"

    def test_unknown_option_is_an_error_naming_it(
        self, executor_spec: ExecutorSpec, tmp_path: Path
    ) -> None:
        with pytest.raises((TypeError, ValueError), match="no_such_option"):
            executor_spec.factory(
                workers=1, timeout_s=None, log_dir=tmp_path, **self.options, no_such_option=1
            )
            pytest.fail(
                f"{self.executor_name}'s factory took an option it does not have "
                "(no_such_option=1) without an error naming it"
            )

    def test_every_job_once_with_its_own_error(
        self, executor_spec: ExecutorSpec, tmp_path: Path
    ) -> None:
        out = tmp_path / "out"
        out.mkdir()
        executor = self.build(executor_spec, tmp_path)
        try:
            for round_ in range(2):  # the same executor maps twice, as a selecting sweep does
                jobs: list[dict[str, Any]] = [
                    {"index": f"{round_}-{i}", "out": str(out), "fail": i == 1, "payload": [i]}
                    for i in range(4)
                ]
                results = self._run(executor, jobs)
                yielded = sorted(job["index"] for job, _ in results)
                assert yielded == sorted(job["index"] for job in jobs), (
                    "every job is yielded exactly once"
                )
                for job, error in results:
                    written = json.loads((out / f"{job['index']}.json").read_text())
                    assert written == job, "the job ran with the job as given"
                    if job["fail"]:
                        assert error is not None, f"job {job['index']} raised; no error yielded"
                        assert FAILURE_TEXT in str(error), (
                            f"the error does not carry the job's own exception: {error!r}"
                        )
                    else:
                        assert error is None, f"job {job['index']} succeeded; yielded {error!r}"
        finally:
            self._close(executor)

    def test_no_jobs_yield_nothing(self, executor_spec: ExecutorSpec, tmp_path: Path) -> None:
        executor = self.build(executor_spec, tmp_path)
        try:
            assert self._run(executor, []) == []
        finally:
            self._close(executor)

    def test_a_job_past_its_limit_is_reported_and_the_rest_finish(
        self, executor_spec: ExecutorSpec, tmp_path: Path
    ) -> None:
        if not self.enforces_timeout:
            pytest.skip(f"{self.executor_name} does not enforce time limits (documented)")
        out = tmp_path / "out"
        out.mkdir()
        jobs: list[dict[str, Any]] = [
            {"index": "slow", "out": str(out), "sleep_s": 120.0},
            {"index": "quick", "out": str(out)},
        ]
        executor = self.build(executor_spec, tmp_path, timeout_s=3.0)
        started = time.monotonic()
        try:
            results = dict((job["index"], error) for job, error in self._run(executor, jobs))
        finally:
            self._close(executor)
        assert time.monotonic() - started < 100, "the slow job was not stopped at its limit"
        assert sorted(results) == ["quick", "slow"]
        assert results["quick"] is None and (out / "quick.json").is_file()
        assert results["slow"] is not None, "a job past its limit must be yielded with an error"
        assert not (out / "slow.json").exists(), "the slow job ran to its end"


__all__ = ["ExecutorContract", "contract_job"]
