"""Executors that run sweep jobs on this machine.

``local``: every job in a fresh worker process (spawned, so torch, libsumo and CUDA state never
leak between jobs) in its own process group, at most ``workers`` at a time, each with an optional
wall-clock limit. A job that raises, crashes the interpreter or runs past its limit is reported
with the tail of its log; a job past its limit is killed with everything it started (a stuck
SUMO included); the other jobs go on.

``inline``: jobs one after another in this process (debugging, inline test plugins), without
time limits.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ctxrl import hookimpl
from ctxrl.errors import JobFailed
from ctxrl.registry import ExecutorSpec

if TYPE_CHECKING:
    from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext

Job = dict[str, Any]
JobFn = Callable[[Job], None]


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def _crash_summary(exitcode: int, tail: str) -> str:
    """One line for a worker that exited with ``exitcode``: the last exception its log shows
    (the job's own; the worker prints it last), else the signal or the exit code."""
    if exitcode < 0:
        try:
            return f"worker killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker killed by signal {-exitcode}"
    for line in reversed(tail.splitlines()):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return f"worker exited with code {exitcode}"


def _log_name(job: Job, index: int) -> str:
    if "shard" in job:
        return f"job-{index:05d}-shard{job['shard']}.log"
    return f"job-{index:05d}-src{job.get('source', 'x')}-seed{job.get('seed', 'x')}.log"


def _end_group(signum: int, frame: Any) -> None:
    """SIGTERM in a worker: SIGKILL its whole process group, itself and its simulators."""
    os.killpg(0, signal.SIGKILL)


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel signal this worker when the sweep process dies (even by
    SIGKILL), so a killed sweep leaves nothing behind: the worker's SIGTERM handler kills its
    process group, the simulators it started included (a SUMO that has not been connected to
    yet would otherwise wait for its TraCI client forever)."""
    signal.signal(signal.SIGTERM, _end_group)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def visible_gpu(index: int) -> str:
    """What a job's ``CUDA_VISIBLE_DEVICES`` names for GPU ``index`` of ``gpus``: an index
    into the sweep's own visible GPUs where ``CUDA_VISIBLE_DEVICES`` restricts them (a
    scheduler's allocation: ``4,5`` and ``gpus: [0, 1]`` are GPUs 4 and 5), else the GPU of
    that index."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [d for d in visible if d]
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        return str(index)
    if index >= len(visible):
        raise ValueError(
            f"executor.options.gpus: GPU {index}, but CUDA_VISIBLE_DEVICES="
            f"{os.environ['CUDA_VISIBLE_DEVICES']!r} gives this sweep {len(visible)}"
        )
    return visible[index]


def _child(fn: JobFn, job: Job, log_path: str | None, parent: int, gpu: int | None) -> None:
    os.setsid()  # its own process group: a timeout kills the job's simulators with it
    _die_with_parent(parent)
    if gpu is not None:  # before the job's first CUDA call (torch initialises CUDA lazily)
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpu(gpu)
    if log_path is not None:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    try:
        fn(job)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()


ATTEMPT_MARK = "=== ctxrl job started"
"""The line a job's log gets at each start: a rerun appends to the same log."""


def _mark_attempt(log: Path) -> None:
    """Start a job's attempt in its log on a line of its own (an earlier attempt killed in
    the middle of a line left it unterminated)."""
    with log.open("ab+") as handle:
        handle.seek(0, os.SEEK_END)
        ended = handle.tell() == 0
        if not ended:
            handle.seek(-1, os.SEEK_END)
            ended = handle.read(1) == b"\n"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"{'' if ended else chr(10)}{ATTEMPT_MARK} {stamp}\n".encode())


def _tail(path: Path | None, lines: int = 15) -> str:
    """The last ``lines`` lines the job's latest attempt wrote (an earlier attempt's output,
    above its start line, is not this failure's)."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    starts = [i for i, line in enumerate(text) if line.startswith(ATTEMPT_MARK)]
    latest = text[starts[-1] + 1 :] if starts else text
    return "\n".join(latest[-lines:])


def _kill_group(process: Any) -> None:
    """SIGKILL a worker and every process it started (SUMO, for instance), also after the
    worker itself has ended (what it started may outlive it)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if process.exitcode is None:
            process.kill()


class LocalProcessExecutor:
    """Runs each job in its own spawned process.

    Args:
        workers: jobs running at once.
        timeout_s: wall-clock limit per job in seconds (None: no limit).
        log_dir: where each job's stdout/stderr go (None: inherit the parent's).
        start_method: multiprocessing start method; ``spawn`` is the safe default.
        gpus: GPU indices to spread jobs over (``options: {gpus: [0, 1]}``): each job sees
            one of them alone (``CUDA_VISIBLE_DEVICES``), a free one when it starts; indices
            count the sweep's own visible GPUs where ``CUDA_VISIBLE_DEVICES`` restricts them
            (:func:`visible_gpu`); None leaves the environment as it is.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float | None = None,
        log_dir: Path | None = None,
        start_method: str = "spawn",
        poll_s: float = 0.05,
        gpus: list[int] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"executor.workers must be >= 1, got {workers}")
        if gpus is not None and (
            not isinstance(gpus, list | tuple)
            or not gpus
            or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus)
        ):
            raise ValueError(
                f"executor.options.gpus must be a non-empty list of GPU indices, got {gpus!r}"
            )
        for gpu in gpus or ():
            visible_gpu(gpu)  # an index past the sweep's own CUDA_VISIBLE_DEVICES: named now
        self.gpus = list(gpus) if gpus is not None else None
        self.workers = workers
        self.timeout_s = timeout_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        # typeshed types get_context(str) as BaseContext, which has no Process
        self.context = cast(
            "SpawnContext | ForkContext | ForkServerContext", mp.get_context(start_method)
        )
        self.poll_s = poll_s

    def map(self, fn: JobFn, jobs: Iterable[Job]) -> Iterator[tuple[Job, BaseException | None]]:
        """Run ``fn(job)`` for every job; yield ``(job, None)`` or ``(job, error)`` as each ends."""
        pending = list(enumerate(jobs))
        running: dict[Any, tuple[Job, float, Path | None, int | None]] = {}
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    index, job = pending.pop(0)
                    log = self.log_dir / _log_name(job, index) if self.log_dir else None
                    if log is not None:
                        _mark_attempt(log)
                    gpu = self._free_gpu([entry[3] for entry in running.values()], index)
                    process = self.context.Process(
                        target=_child,
                        args=(fn, job, str(log) if log else None, os.getpid(), gpu),
                        # not a daemon, so a job may start processes of its own; a worker
                        # dies with the sweep all the same (_die_with_parent)
                        daemon=False,
                    )
                    process.start()
                    running[process] = (job, time.monotonic(), log, gpu)
                for process in list(running):
                    job, started, log, _ = running[process]
                    if process.exitcode is not None:
                        process.join()
                        _kill_group(process)  # what the job started and left running
                        del running[process]
                        if process.exitcode == 0:
                            yield job, None
                        else:
                            tail = _tail(log)
                            summary = _crash_summary(process.exitcode, tail)
                            yield job, JobFailed(summary, tail)
                    elif self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                        _kill_group(process)
                        process.join()
                        del running[process]
                        summary = f"job exceeded its {self.timeout_s:g} s limit and was killed"
                        yield job, JobFailed(summary, _tail(log))
                time.sleep(self.poll_s)
        finally:
            for process in running:
                _kill_group(process)
                process.join()

    def _free_gpu(self, in_use: list[int | None], index: int) -> int | None:
        """The GPU for job ``index``: the first one no running job holds, else round robin."""
        if self.gpus is None:
            return None
        free = [g for g in self.gpus if g not in in_use]
        return free[0] if free else self.gpus[index % len(self.gpus)]


class InlineExecutor:
    """Runs jobs one after another in this process; exceptions are reported per job. No time
    limit applies (``timeout_s`` is accepted and not enforced: a job cannot be stopped inside
    the process that runs it), and ``workers`` is 1."""

    def __init__(
        self, workers: int = 1, timeout_s: float | None = None, log_dir: Path | None = None
    ) -> None:
        del workers, timeout_s, log_dir  # accepted for a uniform factory signature

    def map(self, fn: JobFn, jobs: Iterable[Job]) -> Iterator[tuple[Job, BaseException | None]]:
        for job in jobs:
            try:
                fn(job)
            except Exception as exc:
                yield job, exc
            else:
                yield job, None


@hookimpl
def ctxrl_register_executors(register: Callable[[ExecutorSpec], None]) -> None:
    register(
        ExecutorSpec("local", LocalProcessExecutor, "one spawned process per job, in parallel")
    )
    register(ExecutorSpec("inline", InlineExecutor, "jobs in sequence in this process"))
