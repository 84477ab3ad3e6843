"""Running a sweep: plan -> jobs -> executor -> store -> transfer matrix -> selection curves.

Each job trains one policy (a source context and a seed), saves it, evaluates it zero-shot on
every target context and writes the run and its evaluations to the store in one transaction.
Jobs are plain JSON data and run in worker processes; a rerun of the same plan (same hash) skips
every finished run, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ctxrl.artifacts import artifact_metadata, verify_artifact
from ctxrl.config import (
    PLAN_FILE,
    SweepPlan,
    algorithm_params,
    locate_run_dir,
    read_plan_file,
    resolve_plan,
    stored_config,
    stored_plan_hash,
    validate_config,
)
from ctxrl.context import Context, Task
from ctxrl.errors import CtxrlError
from ctxrl.interventions import build_interventions
from ctxrl.matrix import TransferMatrix
from ctxrl.plugins import Host, get_host
from ctxrl.registry import BatchedAlgorithm, CurveOptions, Executor
from ctxrl.selection import SelectionState, trace_of
from ctxrl.store import Evaluation, RunRecord, SelectionStep, Store, now
from ctxrl.summary import STORE_FILE, damaged_artifacts, sweep_matrix, write_exports
from ctxrl.transfer import TransferProblem


def run_id(task: Task, seed: int) -> str:
    return f"{task.id}-s{seed}"


@dataclass
class SweepOutcome:
    """What a finished sweep produced."""

    run_dir: Path
    matrix: TransferMatrix
    trained: int
    skipped: int
    """runs already finished by an earlier sweep, not trained again"""
    failed: list[str] = field(default_factory=list)
    resumed: int = 0
    """trained runs whose batched program continued from a checkpoint of an earlier sweep"""
    order: list[int] = field(default_factory=list)
    train_s: float = 0.0
    """wall-clock seconds spent training in batched programs (0 for per-run executors)"""
    eval_s: float = 0.0
    """wall-clock seconds spent in batched cross-evaluation"""
    compile_s: float = 0.0
    """of ``train_s``, the seconds compiling took (one-program groups of algorithms that
    compile; a sharded group reports it in each shard's log)"""


# ------------------------------------------------------------------------------- the job
def execute_job(job: dict[str, Any]) -> None:
    """Train, save, evaluate and store one (source, seed) run. Runs in a worker process.

    ``job`` holds ``run_dir``, ``config`` (the sweep config as JSON data), ``source`` (grid
    index) and ``seed``. Failures are written to the store as failed runs and re-raised.
    """
    run_dir = Path(job["run_dir"])
    config = validate_config(job["config"])
    plan = resolve_plan(config, get_host().registry)
    seed = int(job["seed"])
    source = plan.grid.contexts[int(job["source"])]
    task = Task(plan.env.name, source)
    rid = run_id(task, seed)
    started = now()
    store = Store(run_dir / STORE_FILE)
    try:
        algorithm = plan.algorithm.factory(
            algorithm_params(config, plan.algorithm), device=config.device, env=plan.env
        )
        policy = algorithm.train(plan.env, task, seed=seed, total_steps=config.train_steps)
        artifact = Path("artifacts") / rid
        algorithm.save(policy, run_dir / artifact)
        targets = [Task(plan.env.name, c) for c in plan.grid.contexts]
        problem = TransferProblem(
            plan.env,
            algorithm,
            [policy],
            [source.as_dict()],
            [seed],
            [t.context.as_dict() for t in targets],
            episodes=config.eval_episodes,
            eval_seed=10_000,
        )
        returns = _transfer(plan, problem)[0]
        if returns.shape != (len(targets), config.eval_episodes):
            raise CtxrlError(
                f"algorithm {plan.algorithm.name!r} returned evaluation shape {returns.shape}, "
                f"expected {(len(targets), config.eval_episodes)}"
            )
        evaluations = [
            Evaluation(t.id, t.context, returns[j].tolist()) for j, t in enumerate(targets)
        ]
        finished = now()
        store.record_run(
            _record(task, seed, plan, started, finished, "finished", str(artifact), None),
            evaluations,
        )
    except BaseException as exc:
        error = "".join(traceback.format_exception(exc))[-4000:]
        store.record_run(_record(task, seed, plan, started, now(), "failed", None, error))
        raise
    finally:
        store.close()


def _record(
    task: Task,
    seed: int,
    plan: SweepPlan,
    started: float,
    finished: float,
    status: str,
    artifact: str | None,
    error: str | None,
) -> RunRecord:
    return RunRecord(
        run_id=run_id(task, seed),
        kind="source",
        env=task.env,
        source_task=task.id,
        source_context=task.context.canonical(),
        seed=seed,
        algorithm=plan.algorithm.name,
        status=status,  # type: ignore[arg-type]
        started_at=started,
        finished_at=finished,
        duration_s=finished - started,
        artifact=artifact,
        error=error,
    )


# ------------------------------------------------------------------------- run directory
def environment_record(host: Host, device: str) -> dict[str, Any]:
    """Versions and machine facts that a result depends on."""
    versions: dict[str, str | None] = {}
    for dist in ("ctxrl", "torch", "numpy", "gymnasium", "stable-baselines3", "gpytorch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "versions": versions,
        "plugins": {
            name: {"version": p.version, "status": p.status, "distribution": p.distribution}
            for name, p in host.plugins.items()
        },
    }


def prepare_run_dir(
    plan: SweepPlan, host: Host, argv: Iterable[str], console: Console | None = None
) -> Path:
    """Create (or reopen) the run directory and record plan, command and environment.

    A run directory holds one plan: a stored plan with another hash is refused, naming the
    fields that differ. Fields the hash leaves out (the strategy of a full sweep, ``compare``,
    the executor) may change between reruns: plan.yaml then records the new values, and the
    change is printed."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file = run_dir / PLAN_FILE
    config = plan.config.model_dump(mode="json")
    if plan_file.exists():
        stored = read_plan_file(run_dir)
        stored_config(stored, plan_file)  # a damaged plan.yaml is named, not overwritten
        if stored_plan_hash(stored) != plan.plan_hash:
            raise CtxrlError(
                f"{plan_file} holds a different plan ({_differences(stored, config)} differ); "
                "refusing to mix results: change output_dir or move the directory away"
            )
        changed = _differences(stored, config)
        if changed and console is not None:
            one = "," not in changed
            console.print(
                f"{plan_file}: {changed} changed since the last run; the plan hash does not "
                f"cover {'it' if one else 'them'}, so the trained runs are kept and plan.yaml "
                f"records the new {'value' if one else 'values'}",
                highlight=False,
            )
    plan_file.write_text(
        yaml.safe_dump(
            {"plan_hash": plan.plan_hash, "plan": plan.config.plan_data(), "config": config},
            sort_keys=False,
        )
    )
    with (run_dir / "command.txt").open("a") as handle:
        handle.write(" ".join(shlex.quote(a) for a in argv) + "\n")
    (run_dir / "environment.json").write_text(
        json.dumps(environment_record(host, plan.config.device), indent=2)
    )
    return run_dir


def _differences(stored: dict[str, Any], config: dict[str, Any]) -> str:
    """The config fields (dotted paths) whose values differ between a stored plan.yaml and
    ``config``, as a comma-separated list."""

    def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, dict) and data:
            out: dict[str, Any] = {}
            for key, value in data.items():
                out.update(flatten(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: data}

    old, new = flatten(stored.get("config", {})), flatten(config)
    return ", ".join(sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)))


LOCK_FILE = "sweep.lock"


@contextmanager
def run_dir_lock(
    run_dir: Path, *, wait: bool = False, console: Console | None = None
) -> Iterator[None]:
    """Hold ``run_dir``'s lock: one sweep at a time trains into a run directory.

    An OS file lock (``flock`` on ``sweep.lock``), so the kernel releases it when the holding
    process ends, however it ends. Taken by another process: raise a :class:`CtxrlError`
    naming it, or with ``wait`` block until it is released."""
    handle = (run_dir / LOCK_FILE).open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not said which"
            if not wait:
                raise CtxrlError(
                    f"{run_dir} is in use by another ctxrl sweep ({holder}); wait for it to "
                    "finish, or pass --wait to start when it does"
                ) from None
            if console is not None:
                console.print(f"waiting for {holder} to release {run_dir}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {platform.node()}, since {started}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


# -------------------------------------------------------------------------------- sweep
def run_sweep(
    plan: SweepPlan,
    *,
    host: Host | None = None,
    argv: Iterable[str] = (),
    console: Console | None = None,
    wait: bool = False,
) -> SweepOutcome:
    """Run (or resume) ``plan`` and return its transfer matrix and what was done.

    The run directory is locked for the whole sweep; ``wait``: wait for a sweep holding it to
    finish instead of stopping with an error."""
    console = console or Console(stderr=True)
    plan = locate_run_dir(plan)
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CtxrlError(
            f"output_dir: cannot create the run directory {plan.run_dir} ({exc.strerror}); "
            "choose another output_dir (--set output_dir=PATH)"
        ) from None
    with run_dir_lock(plan.run_dir, wait=wait, console=console):
        return _run_sweep(plan, host or get_host(), argv, console)


def _run_sweep(plan: SweepPlan, host: Host, argv: Iterable[str], console: Console) -> SweepOutcome:
    config = plan.config
    run_dir = prepare_run_dir(plan, host, argv, console)
    plan_json = config.model_dump(mode="json")
    store = Store(run_dir / STORE_FILE)
    store.set_meta("plan_hash", plan.plan_hash)
    host.notify("ctxrl_sweep_start", plan=plan_json, run_dir=run_dir)

    executor: Executor = host.registry.executor(config.executor.name).factory(
        workers=config.executor.workers,
        timeout_s=config.executor.timeout_s,
        log_dir=run_dir / "logs",
        **config.executor.options,
    )
    finished = store.finished_run_ids()
    for rid, problem in damaged_artifacts(store).items():
        console.print(f"[yellow]{problem}:[/] run {rid} will be trained again", highlight=False)
        finished.discard(rid)
    outcome = SweepOutcome(run_dir, TransferMatrix.empty([], []), trained=0, skipped=0)

    def job_for(source: int, seed: int) -> dict[str, Any]:
        return {"run_dir": str(run_dir), "config": plan_json, "source": source, "seed": seed}

    def run_jobs(sources: list[int]) -> None:
        if plan.algorithm.batched and plan.env.make_batched is not None:
            _run_batched(
                plan, store, sources, finished, outcome, host, console, plan_json, executor
            )
            return
        jobs = []
        for source in sources:
            task = Task(plan.env.name, plan.grid.contexts[source])
            for seed in config.seeds:
                if run_id(task, seed) in finished:
                    outcome.skipped += 1
                else:
                    jobs.append(job_for(source, seed))
        if not jobs:
            return
        with _progress(console) as progress:
            bar = progress.add_task(f"training {plan.env.name}", total=len(jobs))
            for job, error in executor.map(execute_job, jobs):
                task = Task(plan.env.name, plan.grid.contexts[job["source"]])
                rid = run_id(task, job["seed"])
                if error is not None:
                    _ensure_failed(store, task, job["seed"], plan, error)
                    outcome.failed.append(rid)
                    console.print(
                        f"[red]run {rid} ({task.label(plan.grid.features)}) failed:[/] "
                        f"{_error_summary(error)}"
                    )
                else:
                    outcome.trained += 1
                    finished.add(rid)
                _notify_run_finished(host, plan_json, store, rid)
                progress.advance(bar)

    n = len(plan.grid)
    if config.multitask or config.mode == "multitask":
        _run_multitask(plan, store, finished, outcome, host, console, plan_json)
    if config.mode == "full":
        outcome.order = list(range(n))
        run_jobs(outcome.order)
    elif config.mode == "select":
        outcome.order = _select_and_train(plan, store, run_jobs)

    matrix = sweep_matrix(plan, store)
    outcome.matrix = matrix
    write_exports(plan, store, matrix, run_dir, order=outcome.order)
    store.close()
    host.notify("ctxrl_sweep_finished", plan=plan_json, run_dir=run_dir, matrix=matrix)
    return outcome


def _run_batched(
    plan: SweepPlan,
    store: Store,
    sources: list[int],
    finished: set[str],
    outcome: SweepOutcome,
    host: Host,
    console: Console,
    plan_json: dict[str, Any],
    executor: Executor,
) -> None:
    """Train every pending (source, seed) of ``sources`` in batched programs, evaluate each on
    every target in one batched rollout, and store each run.

    With ``executor.shards`` 1 the group is one program in this process; with more, the group
    is split into that many shards, each one program run as a job of the executor (its own
    process, a Ray task). An agent's numbers never depend on the rest of its batch, so the
    matrix is the same either way. Every program checkpoints itself in the run directory, so a
    killed sweep resumes each group or shard where it stopped."""
    config = plan.config
    agents = [(source, seed) for source in sources for seed in config.seeds]
    shards = [
        [a for a in shard if _agent_id(plan, a) not in finished]
        for shard in _split(agents, config.executor.shards)
    ]
    shards = [shard for shard in shards if shard]
    pending = sum(len(shard) for shard in shards)
    outcome.skipped += len(agents) - pending
    if not pending:
        return
    if len(shards) == 1:
        try:
            group = train_group(plan, store, shards[0], console, config.device)
        except Exception as exc:
            for agent in shards[0]:
                outcome.failed.append(_agent_id(plan, agent))
                _notify_run_finished(host, plan_json, store, _agent_id(plan, agent))
            console.print(f"[red]batched training failed:[/] {exc}")
            return
        outcome.train_s += group.train_s
        outcome.eval_s += group.eval_s
        outcome.compile_s += group.compile_s
        for rid in group.run_ids:
            finished.add(rid)
            outcome.trained += 1
            outcome.resumed += int(group.resumed)
            _notify_run_finished(host, plan_json, store, rid)
        return
    _run_shards(plan, store, shards, finished, outcome, host, console, plan_json, executor)


def _agent_id(plan: SweepPlan, agent: tuple[int, int]) -> str:
    """The run id of agent ``(source grid index, seed)``."""
    return run_id(Task(plan.env.name, plan.grid.contexts[agent[0]]), agent[1])


def _split(agents: list[tuple[int, int]], shards: int) -> list[list[tuple[int, int]]]:
    """``agents`` in at most ``shards`` contiguous parts whose sizes differ by at most one.

    The parts depend on the whole group only (finished agents included), so a resumed sweep
    finds each unfinished shard's checkpoint under the same name."""
    count = min(shards, len(agents))
    size, extra = divmod(len(agents), count)
    parts, start = [], 0
    for i in range(count):
        stop = start + size + int(i < extra)
        parts.append(agents[start:stop])
        start = stop
    return parts


def _checkpoint_path(plan: SweepPlan, ids: list[str]) -> Path:
    """Where the batched program of the runs ``ids`` checkpoints itself."""
    key = hashlib.sha256("|".join(ids).encode()).hexdigest()[:12]
    return plan.run_dir / "checkpoints" / f"batch-{key}"


@dataclass
class GroupResult:
    """What one batched program (a group or a shard of one) did."""

    run_ids: list[str]
    resumed: bool
    """it continued from a checkpoint of an earlier sweep"""
    train_s: float
    eval_s: float
    compile_s: float = 0.0
    """of ``train_s``, the seconds spent compiling (algorithms that report ``compile_s``)"""


def train_group(
    plan: SweepPlan,
    store: Store,
    agents: list[tuple[int, int]],
    console: Console,
    device: str,
) -> GroupResult:
    """Train ``agents`` (source grid index, seed) in one batched program on ``device``,
    evaluate them on every target in one batched rollout, and store each run with its
    evaluations and training log. On an error every run of the group is stored as failed and
    the error is raised."""
    config = plan.config
    tasks = [Task(plan.env.name, plan.grid.contexts[source]) for source, _ in agents]
    seeds = [seed for _, seed in agents]
    ids = [run_id(task, seed) for task, seed in zip(tasks, seeds, strict=True)]
    checkpoint = _checkpoint_path(plan, ids)
    damage = (
        verify_artifact(checkpoint) if checkpoint.with_suffix(".safetensors").exists() else None
    )
    if damage is not None:
        console.print(f"[yellow]{damage}:[/] training the group from the start", highlight=False)
        for file in checkpoint.parent.glob(f"{checkpoint.name}.*"):
            file.unlink()
    started = now()
    resumed = False
    try:
        algorithm = _batched_algorithm(plan, device)
        if checkpoint.with_suffix(".safetensors").exists():
            resumed = True
            position = _checkpoint_position(checkpoint, algorithm, config.train_steps)
            console.print(f"resumed {len(agents)} agents from {position}")
        with _progress(console) as progress:
            bar = progress.add_task(
                f"training {len(agents)} {plan.env.name} agents in one program", total=1
            )

            def advance(done: int, total: int) -> None:
                progress.update(bar, completed=done, total=total)

            policies = algorithm.train_many(
                plan.env,
                [t.context.as_dict() for t in tasks],
                seeds,
                total_steps=config.train_steps,
                checkpoint=checkpoint,
                progress=advance,
                **_training_options(plan),
            )
        trained_at = now()
        targets = [Task(plan.env.name, c) for c in plan.grid.contexts]
        problem = TransferProblem(
            plan.env,
            algorithm,
            policies,
            [t.context.as_dict() for t in tasks],
            seeds,
            [t.context.as_dict() for t in targets],
            episodes=config.eval_episodes,
            eval_seed=10_000,
        )
        returns = _transfer(plan, problem)
        train_s, eval_s = trained_at - started, now() - trained_at
        compile_s = float(getattr(algorithm, "compile_s", 0.0))
        compiling = f" (compiling {compile_s:.1f} s of it)" if compile_s > 0 else ""
        console.print(
            f"trained {len(agents)} agent{'s' if len(agents) > 1 else ''} x "
            f"{config.train_steps:,} steps in {train_s:.1f} s{compiling}; "
            f"evaluated {len(agents)} x {len(targets)} x {config.eval_episodes} episodes in "
            f"{eval_s:.1f} s"
        )
    except Exception as exc:
        error = "".join(traceback.format_exception(exc))[-4000:]
        for task, seed in zip(tasks, seeds, strict=True):
            store.record_run(_record(task, seed, plan, started, now(), "failed", None, error))
        raise
    group_s = now() - started
    for i, (task, seed) in enumerate(zip(tasks, seeds, strict=True)):
        record = _group_record(
            _record(task, seed, plan, started, started, "finished", None, None),
            checkpoint.name,
            group_s,
            len(agents),
        )
        _store_trained(plan, store, algorithm, policies, i, record, returns[i])
    for file in checkpoint.parent.glob(f"{checkpoint.name}.*"):
        file.unlink()
    return GroupResult(ids, resumed, train_s, eval_s, compile_s)


def execute_shard(job: dict[str, Any]) -> None:
    """Train, evaluate and store one shard of a batched group. Runs as an executor job.

    ``job`` holds ``run_dir``, ``config`` (the sweep config as JSON data), ``agents`` (a list
    of ``[source grid index, seed]``), ``device`` and ``threads`` (torch's intra-op threads
    unless ``OMP_NUM_THREADS`` is set). Failures are stored as failed runs and re-raised."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(int(job["threads"]))
    config = validate_config(job["config"])
    plan = replace(resolve_plan(config, get_host().registry), location=Path(job["run_dir"]))
    agents = [(int(source), int(seed)) for source, seed in job["agents"]]
    store = Store(plan.run_dir / STORE_FILE)
    try:
        train_group(plan, store, agents, Console(stderr=True), str(job["device"]))
    finally:
        store.close()


def _run_shards(
    plan: SweepPlan,
    store: Store,
    shards: list[list[tuple[int, int]]],
    finished: set[str],
    outcome: SweepOutcome,
    host: Host,
    console: Console,
    plan_json: dict[str, Any],
    executor: Executor,
) -> None:
    """Run each shard of a batched group as a job of ``executor``; a failed shard's runs are
    stored as failed and the other shards go on."""
    config = plan.config
    parallel = min(config.executor.workers, len(shards))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    jobs = [
        {
            "run_dir": str(plan.run_dir),
            "config": plan_json,
            "agents": [list(agent) for agent in shard],
            "shard": f"{index}of{len(shards)}",
            "device": config.device,
            "threads": threads,
        }
        for index, shard in enumerate(shards)
    ]
    resumed = [
        _checkpoint_path(plan, [_agent_id(plan, a) for a in shard])
        .with_suffix(".safetensors")
        .exists()
        for shard in shards
    ]
    agents = sum(len(shard) for shard in shards)
    started = time.monotonic()
    with _progress(console) as progress:
        bar = progress.add_task(
            f"training {agents} {plan.env.name} agents in {len(shards)} shards", total=len(jobs)
        )
        for job, error in executor.map(execute_shard, jobs):
            index = jobs.index(job)
            for source, seed in job["agents"]:
                task = Task(plan.env.name, plan.grid.contexts[source])
                rid = run_id(task, seed)
                if error is not None:
                    _ensure_failed(store, task, seed, plan, error)
                    outcome.failed.append(rid)
                else:
                    finished.add(rid)
                    outcome.trained += 1
                    outcome.resumed += int(resumed[index])
                _notify_run_finished(host, plan_json, store, rid)
            if error is not None:
                console.print(f"[red]shard {job['shard']} failed:[/] {_error_summary(error)}")
            progress.advance(bar)
    wall_s = time.monotonic() - started
    outcome.train_s += wall_s
    console.print(
        f"trained and evaluated {agents} agents in {len(shards)} shards "
        f"({parallel} at a time) in {wall_s:.1f} s"
    )


def _group_record(record: RunRecord, group: str, group_s: float, size: int) -> RunRecord:
    """The row of one of ``size`` runs trained and evaluated together in one batched program
    named ``group`` that took ``group_s`` seconds: they share its start, and each is given an
    even share of its time (the program does not time agents apart)."""
    share = group_s / size
    return replace(
        record,
        finished_at=record.started_at + share,
        duration_s=share,
        batch_group=group,
        group_duration_s=group_s,
    )


def _checkpoint_position(checkpoint: Path, algorithm: BatchedAlgorithm, total_steps: int) -> str:
    """Where a batched program's checkpoint stands: ``iteration 100 of 292`` (the total when
    the algorithm says how many env steps an iteration takes, as the batched trainers do)."""
    done = artifact_metadata(checkpoint).get("iteration", "?")
    per_iteration = getattr(algorithm, "steps_per_iteration", None)
    if not callable(per_iteration):
        return f"iteration {done}"
    return f"iteration {done} of {max(1, total_steps // int(per_iteration()))}"


def _transfer(plan: SweepPlan, problem: TransferProblem) -> np.ndarray:
    """The sweep's transfer method on ``problem``: returns ``(P, Q, E)``."""
    spec = get_host().registry.transfer_method(plan.config.transfer.name)
    method = spec.factory(**plan.config.transfer.options)
    result = method.transfer(problem)
    returns = np.asarray(result.returns, dtype=np.float64)
    expected = (len(problem.source_contexts), len(problem.targets), problem.episodes)
    if returns.shape != expected:
        raise CtxrlError(
            f"transfer method {spec.name!r} returned shape {returns.shape}, expected {expected}"
        )
    return returns


def _training_options(plan: SweepPlan, *, curves: bool = True) -> dict[str, Any]:
    """``train_many``'s keyword arguments for the config's interventions and learning curves
    (only for algorithms that host them)."""
    config = plan.config
    if not plan.algorithm.interventions:
        return {}
    entries = [{"name": e.name, "options": e.options} for e in config.algorithm.interventions]
    options: dict[str, Any] = {}
    if entries:
        options["interventions"] = build_interventions(entries, get_host().registry)
    if curves and config.curves is not None:
        options["curves"] = CurveOptions(config.curves.every, config.curves.episodes)
    return options


def _batched_algorithm(plan: SweepPlan, device: str | None = None) -> BatchedAlgorithm:
    params = algorithm_params(plan.config, plan.algorithm)
    algorithm = plan.algorithm.factory(params, device=device or plan.config.device, env=plan.env)
    return cast(BatchedAlgorithm, algorithm)


def _store_trained(
    plan: SweepPlan,
    store: Store,
    algorithm: BatchedAlgorithm,
    policies: Any,
    index: int,
    record: RunRecord,
    returns: np.ndarray,
) -> None:
    """Save agent ``index`` of a batched program and store its run with its evaluations
    (``returns``: ``(targets, episodes)`` over the grid's contexts)."""
    artifact = Path("artifacts") / record.run_id
    algorithm.save(policies.select([index]), plan.run_dir / artifact)
    evaluations = [
        Evaluation(Task(plan.env.name, c).id, c, returns[j].tolist())
        for j, c in enumerate(plan.grid.contexts)
    ]
    store.record_run(replace(record, artifact=str(artifact)), evaluations)
    log = getattr(policies, "log", None)
    if log is not None:
        agent = log.select([index])
        store.record_training_log(
            record.run_id,
            curve_steps=agent.curve_steps,
            curve_returns=[r[0] for r in agent.curve_returns],
            diagnostic_steps=agent.diagnostic_steps,
            diagnostics={
                k: [float(v[0]) for v in values] for k, values in agent.diagnostics.items()
            },
        )


def _notify_run_finished(host: Host, plan_json: dict[str, Any], store: Store, rid: str) -> None:
    """Call ``ctxrl_run_finished`` with the run's stored row and its returns."""
    record = store.run(rid)
    assert record is not None
    run = {
        name: getattr(record, name)
        for name in ("run_id", "kind", "source_task", "seed", "status", "duration_s", "error")
    }
    run["returns"] = store.returns(rid)
    host.notify("ctxrl_run_finished", plan=plan_json, run=run)


MULTITASK = "multitask"


def _run_multitask(
    plan: SweepPlan,
    store: Store,
    finished: set[str],
    outcome: SweepOutcome,
    host: Host,
    console: Console,
    plan_json: dict[str, Any],
) -> None:
    """The multi-task baseline: one policy per seed trained on the uniform mixture of all grid
    contexts (a real training run, in one batched program), evaluated on every context."""
    config = plan.config
    seeds = [s for s in config.seeds if f"{MULTITASK}-s{s}" not in finished]
    outcome.skipped += len(config.seeds) - len(seeds)
    if not seeds:
        return
    mixture = [c.as_dict() for c in plan.grid.contexts]
    started = now()
    task = Task(plan.env.name, Context())
    try:
        algorithm = _batched_algorithm(plan)
        with _progress(console) as progress:
            bar = progress.add_task(f"training {len(seeds)} multi-task agents", total=1)
            policies = algorithm.train_many(
                plan.env,
                [mixture[0]] * len(seeds),
                seeds,
                total_steps=config.train_steps,
                progress=lambda done, total: progress.update(bar, completed=done, total=total),
                mixture=mixture,
                **_training_options(plan, curves=False),
            )
        returns = algorithm.evaluate_many(
            policies, plan.env, mixture, episodes=config.eval_episodes, seed=10_000
        )
    except Exception as exc:
        error = "".join(traceback.format_exception(exc))[-4000:]
        for seed in seeds:
            record = _record(task, seed, plan, started, now(), "failed", None, error)
            store.record_run(_as_multitask(record))
            outcome.failed.append(f"{MULTITASK}-s{seed}")
            _notify_run_finished(host, plan_json, store, f"{MULTITASK}-s{seed}")
        console.print(f"[red]multi-task training failed:[/] {exc}")
        return
    group_s = now() - started
    for i, seed in enumerate(seeds):
        record = _record(task, seed, plan, started, started, "finished", None, None)
        record = _group_record(_as_multitask(record), MULTITASK, group_s, len(seeds))
        _store_trained(plan, store, algorithm, policies, i, record, returns[i])
        finished.add(record.run_id)
        outcome.trained += 1
        _notify_run_finished(host, plan_json, store, record.run_id)


def _as_multitask(record: RunRecord) -> RunRecord:
    """A multi-task run's row: its id, kind and source task say ``multitask``."""
    return replace(
        record, run_id=f"{MULTITASK}-s{record.seed}", kind=MULTITASK, source_task=MULTITASK
    )


def _select_and_train(
    plan: SweepPlan, store: Store, run_jobs: Callable[[list[int]], None]
) -> list[int]:
    """Strategy-driven mode: train only the sources the strategy proposes, step by step.

    Each step (its proposal and the strategy's trace) is stored before its sources train; a
    resumed sweep proposes the same steps again, which leaves the stored ones unchanged."""
    config = plan.config
    budget = config.strategy.budget
    assert plan.strategy is not None and budget is not None  # checked by resolve_plan
    strategy = plan.strategy.factory(**config.strategy.options)
    state = SelectionState(
        coords=plan.grid.grid_coords(),
        budget=budget,
        rng=np.random.default_rng(config.seeds[0]),
        batch_size=config.strategy.batch_size,
    )
    step = 0
    while state.k < state.budget:
        proposal = [int(i) for i in strategy.propose(state)][: state.budget - state.k]
        if not proposal:
            raise CtxrlError(
                f"strategy {plan.strategy.name!r} proposed nothing at step {state.k + 1}"
            )
        step += 1
        store.record_selection_step(
            SelectionStep(
                step, state.k, plan.strategy.name, tuple(proposal), trace_of(strategy), now()
            )
        )
        run_jobs(sorted(set(proposal)))
        store.selection_trained(step, now())
        normalised = plan.env.normalise(sweep_matrix(plan, store).mean())
        for index in proposal:
            state.selected.append(index)
            state.rows[index] = normalised[index]
    return list(state.selected)


def _ensure_failed(
    store: Store, task: Task, seed: int, plan: SweepPlan, error: BaseException | str
) -> None:
    """Record a failed run with the executor's report, which ends with the worker's log (the
    traceback and what a simulator printed, e.g. SUMO's own error message). A row the worker
    wrote itself keeps its times; a crash or a timeout leaves none, so one is made."""
    rid = run_id(task, seed)
    message = str(error)[-4000:]
    written = store.run(rid)
    if written is not None and written.status == "failed":
        store.record_run(replace(written, error=message))
    else:
        t = now()
        store.record_run(_record(task, seed, plan, t, t, "failed", None, message))


def _error_summary(error: BaseException) -> str:
    """One line saying why a run failed: an executor's ``summary`` if it gives one, else the
    last line of the error (a traceback's exception)."""
    summary = getattr(error, "summary", None)
    if isinstance(summary, str) and summary:
        return summary
    text = str(error).strip()
    return text.splitlines()[-1] if text else repr(error)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
