"""The ``ray`` executor: the same sweep jobs as Ray tasks (``pip install ctxrl[ray]``).

``executor: {name: ray, workers: 4, options: {address: auto}}`` runs every (source, seed) job as
a Ray task with one CPU (``num_gpus`` in options for GPU jobs). Without an address a new local
Ray cluster with ``workers`` CPUs is started (never one that happens to run on the machine),
when the first jobs are submitted, and stopped when the sweep ends. The tasks get this
process's ``CTXRL_*`` and ``OMP_NUM_THREADS`` variables (plugin controls, the compile mode) on a
remote cluster too. Jobs write to the run directory themselves, exactly as with the local
executor, so a cluster's workers need that directory on a shared file system. A failed task is
reported with its own exception (``RuntimeError: ...``) and the worker's traceback.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from ctxrl import hookimpl
from ctxrl.errors import ConfigError, JobFailed, PluginUnavailable
from ctxrl.options import number_option
from ctxrl.registry import ExecutorSpec

Job = dict[str, Any]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _job_failure(exc: BaseException) -> JobFailed:
    """Ray's wrapper of a task's failure as the sweep reports failures: the task's own
    exception first (Ray's wrapper starts with a coloured ``ray::execute_job() (pid=...)``
    line, which said nothing of what failed)."""
    details = _ANSI.sub("", str(exc)).strip()
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return JobFailed(f"{type(cause).__name__}: {_ANSI.sub('', str(cause))}", details)
    name = type(exc).__name__
    if "WorkerCrashed" in name or "ActorDied" in name or "NodeDied" in name:
        return JobFailed(
            f"the Ray worker running the job died ({name}); its logs are in the Ray session's "
            "logs folder (by default /tmp/ray/session_latest/logs)",
            details,
        )
    lines = [line for line in details.splitlines() if line.strip()]
    return JobFailed(f"{name}: {lines[-1] if lines else exc!r}", details)


CONNECT_TIMEOUT_S = 10.0
"""How long a cluster's ``HOST:PORT`` may take to accept a connection (Ray itself retries for
minutes, silently, before it gives up)."""


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address that accepts no connection within
    :data:`CONNECT_TIMEOUT_S` is refused, naming it, before the sweep starts; ``auto`` (Ray
    looks for a cluster on this machine, and says at once when there is none) is left to Ray."""
    where = address.removeprefix("ray://")
    host, colon, port = where.rpartition(":")
    if address == "auto" or (address.startswith("ray://") and not port.isdigit()):
        return  # Ray's own: a cluster on this machine, a client's default port ([::1] too)
    if not colon or not port.isdigit():  # HOST:PORT, or :PORT on this machine
        raise ConfigError(
            f"executor.options.address: {address!r} is not 'auto', 'local', HOST:PORT or "
            "ray://HOST:PORT"
        )
    try:
        with socket.create_connection(
            (host.strip("[]") or "localhost", int(port)), CONNECT_TIMEOUT_S
        ):
            pass
    except OSError as exc:
        raise ConfigError(
            f"executor.options.address: nothing accepts connections at {address!r} "
            f"({type(exc).__name__}: {exc}); start the Ray cluster first, or check the address"
        ) from None


def _ready() -> None:
    """A task that does nothing: run once per worker, it starts the worker's process."""


FORWARDED_VARIABLES = re.compile(r"^(CTXRL_\w+|OMP_NUM_THREADS)$")
"""Environment variables every task gets from the sweep's process (``runtime_env``)."""


class RayExecutor:
    """Runs jobs as Ray tasks.

    Ray starts (or connects) when the first jobs are submitted, not when the executor is
    built, and a local cluster it started is stopped by :meth:`close` (the sweep calls it when
    it ends), so a sweep whose jobs are all finished starts no Ray, and every step of a
    ``mode: select`` sweep runs on the same cluster.

    Args:
        workers: CPUs of the local cluster started when ``address`` is None, and the tasks
            submitted to it at once.
        timeout_s: wall-clock limit per job (the task is cancelled), counted from its
            submission: on the local cluster a job is submitted when a worker is free, on an
            existing cluster every job at once (its time in the cluster's queue counts).
        address: an existing cluster (``"auto"``, ``HOST:PORT`` or ``ray://HOST:PORT``, the
            latter two checked to accept connections when the executor is built); None or
            ``"local"`` starts a new local one.
        num_gpus: GPUs per task, a number >= 0.
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
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigError(
                f"executor.options.address must be 'auto', 'local', HOST:PORT or "
                f"ray://HOST:PORT, got {address!r}"
            )
        self.local = address in (None, "local")  # a new cluster of `workers` CPUs, here
        if not self.local:
            _check_reachable(cast(str, address))
        # the local cluster runs `workers` tasks at a time: submit no more, so that a task's
        # time limit runs from about when it starts; a cluster schedules every task itself
        self.in_flight: int | None = max(1, int(workers)) if self.local else None
        self.workers = workers
        self.address = address
        self.timeout_s = timeout_s
        self.num_gpus = number_option(num_gpus, "executor.options.num_gpus", positive=False)
        self._started_here = False

    def _start(self) -> None:
        """Connect to ``address``, or start a new local cluster (``address="local"``: Ray
        would otherwise join a cluster it finds on the machine and refuse ``num_cpus``)."""
        ray = self.ray
        if ray.is_initialized():
            return
        variables = {k: v for k, v in os.environ.items() if FORWARDED_VARIABLES.match(k)}
        # Ray installs its own SIGTERM handler (its own exit, without the sweep's message and
        # status): the sweep's is put back, so a terminated sweep says so as without Ray
        main_thread = threading.current_thread() is threading.main_thread()
        terminate = signal.getsignal(signal.SIGTERM) if main_thread else None
        try:
            ray.init(
                address="local" if self.local else self.address,
                num_cpus=self.workers if self.local else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": variables} if variables else None,
            )
        except Exception as exc:
            raise ConfigError(
                f"executor.options.address: Ray could not start or reach "
                f"{self.address or 'a new local cluster'!r}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            if terminate is not None:
                signal.signal(signal.SIGTERM, terminate)
        self._started_here = True
        if self.local:
            # start the local cluster's worker processes now (a second or more each on a
            # busy machine), so that no job's time limit counts a worker's start-up
            ready = ray.remote(num_cpus=1)(_ready)
            ray.get([ready.remote() for _ in range(self.in_flight or 1)])

    def close(self) -> None:
        """Stop the Ray this executor started (nothing when it joined a running one)."""
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()
        self._started_here = False

    def map(
        self, fn: Callable[[Job], None], jobs: Iterable[Job]
    ) -> Iterator[tuple[Job, BaseException | None]]:
        waiting = iter(jobs)
        first = next(waiting, None)
        if first is None:
            return
        waiting = itertools.chain([first], waiting)
        self._start()
        ray = self.ray
        task = ray.remote(num_cpus=1, num_gpus=self.num_gpus, max_retries=0)(fn)
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
                        yield job, _job_failure(exc)
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


@hookimpl
def ctxrl_register_executors(register: Callable[[ExecutorSpec], None]) -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise PluginUnavailable("ray is not installed: pip install 'ctxrl[ray]'")
    register(ExecutorSpec("ray", RayExecutor, "jobs as Ray tasks on a local or remote cluster"))
