"""The ``ray`` executor: the same sweep jobs as Ray tasks (``pip install ctxrl[ray]``).

``executor: {name: ray, workers: 4, options: {address: auto}}`` runs every (source, seed) job as
a Ray task with one CPU (``num_gpus`` in options for GPU jobs). Without an address a local Ray
cluster with ``workers`` CPUs is started, which inherits this process's environment (plugin
controls included). Jobs write to the run directory themselves, exactly as with the local
executor, so a cluster's workers need that directory on a shared file system.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ctxrl import hookimpl
from ctxrl.errors import PluginUnavailable
from ctxrl.registry import ExecutorSpec

Job = dict[str, Any]


class RayExecutor:
    """Runs jobs as Ray tasks.

    Args:
        workers: CPUs of the local cluster started when ``address`` is None, and the tasks
            submitted to it at once.
        timeout_s: wall-clock limit per job (the task is cancelled), counted from its
            submission: on the local cluster a job is submitted when a worker is free, on an
            existing cluster every job at once (its time in the cluster's queue counts).
        address: an existing cluster (``"auto"`` or ``ray://...``); None starts a local one.
        num_gpus: GPUs per task.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float | None = None,
        log_dir: Path | None = None,
        address: str | None = None,
        num_gpus: float = 0.0,
    ) -> None:
        import ray

        del log_dir  # Ray keeps each task's output in its own logs
        self.ray = ray
        # the local cluster runs `workers` tasks at a time: submit no more, so that a task's
        # time limit runs from about when it starts; a cluster schedules every task itself
        self.in_flight: int | None = max(1, int(workers)) if address is None else None
        self.timeout_s = timeout_s
        self.num_gpus = num_gpus
        self._started_here = not ray.is_initialized()
        if self._started_here:
            ray.init(
                address=address,
                num_cpus=None if address else workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )

    def map(
        self, fn: Callable[[Job], None], jobs: Iterable[Job]
    ) -> Iterator[tuple[Job, BaseException | None]]:
        ray = self.ray
        task = ray.remote(num_cpus=1, num_gpus=self.num_gpus, max_retries=0)(fn)
        waiting = iter(jobs)
        pending: dict[Any, tuple[Job, float]] = {}

        def submit() -> None:
            free = None if self.in_flight is None else self.in_flight - len(pending)
            for job in itertools.islice(waiting, free):
                pending[task.remote(job)] = (job, time.monotonic())

        submit()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    job, _ = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as exc:  # the task's exception, wrapped by Ray
                        yield job, exc
                    else:
                        yield job, None
                if self.timeout_s is not None:
                    now = time.monotonic()
                    for ref, (job, started) in list(pending.items()):
                        if now - started > self.timeout_s:
                            ray.cancel(ref, force=True)
                            del pending[ref]
                            yield (
                                job,
                                TimeoutError(
                                    f"job exceeded its {self.timeout_s:g} s limit and was cancelled"
                                ),
                            )
                submit()
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if self._started_here:
                ray.shutdown()


@hookimpl
def ctxrl_register_executors(register: Callable[[ExecutorSpec], None]) -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise PluginUnavailable("ray is not installed: pip install 'ctxrl[ray]'")
    register(ExecutorSpec("ray", RayExecutor, "jobs as Ray tasks on a local or remote cluster"))
