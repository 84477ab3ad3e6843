"""Running a sweep: plan -> jobs -> executor -> store -> transfer matrix -> selection curves.

Each job trains one policy (a source context and a seed), saves it, evaluates it zero-shot on
every target context and writes the run and its evaluations to the store in one transaction.
Jobs are plain JSON data and run in worker processes; a rerun of the same plan (same hash) skips
every finished run, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml
from rich.console import Console
from rich.markup import escape

from ctxrl.artifacts import write_text_atomic
from ctxrl.batched_sweep import run_batched, run_multitask
from ctxrl.config import SweepPlan, algorithm_params, resolve_plan, validate_config
from ctxrl.context import Task
from ctxrl.errors import ConfigError, CtxrlError, JobFailed, PluginError
from ctxrl.matrix import TransferMatrix
from ctxrl.plugins import Host, get_host, using_host
from ctxrl.registry import Executor
from ctxrl.resolution import (
    RESOLVED_KEY,
    check_job_resolution,
    check_resolved_alike,
    dotted_leaves,
    merge_resolved,
)
from ctxrl.run_dirs import LOCK_FILE as LOCK_FILE  # re-exported: the locks were here
from ctxrl.run_dirs import (
    PLAN_FILE,
    exports_lock,
    locate_run_dir,
    read_plan_file,
    run_dir_lock,
    stored_config,
    stored_plan_hash,
)
from ctxrl.run_dirs import sweep_holding as sweep_holding
from ctxrl.runs import (
    EVALUATION_SEED,
    TRANSFER_DIR,
    SweepOutcome,
    SweepSession,
    ensure_failed,
    error_summary,
    progress_display,
    run_id,
    run_record,
    transfer_returns,
)
from ctxrl.selection import SelectionState, checked_proposal, trace_of
from ctxrl.store import Evaluation, RunRecord, SelectionStep, Store, now
from ctxrl.summary import STORE_FILE, damaged_artifacts, sweep_matrix, write_exports
from ctxrl.transfer import TransferProblem


# ------------------------------------------------------------------------------- the job
def execute_job(job: dict[str, Any]) -> None:
    """Train, save, evaluate and store one (source, seed) run. Runs in a worker process.

    ``job`` holds ``run_dir``, ``config`` (the sweep config as JSON data), ``source`` (grid
    index), ``seed`` and ``threads`` (torch's intra-op threads unless ``OMP_NUM_THREADS`` is
    set: each of ``workers`` jobs took every core). Failures are written to the store as
    failed runs and re-raised.
    """
    if "OMP_NUM_THREADS" not in os.environ and "threads" in job:
        import torch

        torch.set_num_threads(int(job["threads"]))
    run_dir = Path(job["run_dir"])
    config = validate_config(job["config"])
    plan = resolve_plan(config, get_host().registry)
    check_job_resolution(job, plan)
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
            eval_seed=EVALUATION_SEED,
        )
        returns = transfer_returns(plan, problem, run_dir / TRANSFER_DIR / f"{rid}.json")[0]
        if returns.shape != (len(targets), config.eval_episodes):
            raise CtxrlError(
                f"algorithm {plan.algorithm.name!r} returned evaluation shape {returns.shape}, "
                f"expected {(len(targets), config.eval_episodes)}"
            )
        if not np.all(np.isfinite(returns)):  # the store keeps finite returns only
            bad = [t for j, t in enumerate(targets) if not np.isfinite(returns[j]).all()]
            first = ", ".join(f"{f}={bad[0].context[f]:.4g}" for f in plan.grid.features)
            raise CtxrlError(
                f"its returns are not finite (NaN or inf) on {len(bad)} of {len(targets)} "
                f"targets (first: {first}): "
                + (
                    "the training diverged (check the learning rate and the reward scale)"
                    if config.transfer.name == "zero-shot"
                    else f"the source's training or transfer method {config.transfer.name!r} "
                    "diverged"
                )
            )
        evaluations = [
            Evaluation(t.id, t.context, returns[j].tolist()) for j, t in enumerate(targets)
        ]
        finished = now()
        store.record_run(
            run_record(task, seed, plan, started, finished, "finished", str(artifact), None),
            evaluations,
        )
    except BaseException as exc:
        error = "".join(traceback.format_exception(exc))[-4000:]
        written = store.run(rid)
        # a finished run (a retrain of its damaged policy failed) keeps its row and
        # evaluations, as on the batched path (ensure_failed)
        if written is None or written.status != "finished":
            store.record_run(run_record(task, seed, plan, started, now(), "failed", None, error))
        raise
    finally:
        store.close()


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
    fields that differ, and so is one whose record of what the config resolved to
    (:mod:`ctxrl.resolution`) differs from this installation's, naming the values. Fields the
    hash leaves out (the strategy of a full sweep, ``compare``, the executor) may change
    between reruns: plan.yaml then records the new values, and the change is printed."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file = run_dir / PLAN_FILE
    config = plan.config.model_dump(mode="json")
    recorded = None  # what the config resolved to when the runs here trained
    if plan_file.exists():
        stored = read_plan_file(run_dir)
        stored_config(stored, plan_file)  # a damaged plan.yaml is named, not overwritten
        recorded = stored.get(RESOLVED_KEY)
        if stored_plan_hash(stored) != plan.plan_hash:
            raise CtxrlError(
                f"{plan_file} holds a different plan ({_differences(stored, config)} differ); "
                "refusing to mix results: change output_dir or move the directory away"
            )
        # runs trained with values this installation resolves the same config otherwise to
        # (a default, a preset, how a grid is built: changed since) are not mixed with new ones
        check_resolved_alike(
            recorded,
            plan.resolved,
            f"{plan_file}: the runs there trained with other values than this installation "
            "resolves the same config to",
            "a default or preset changed since. Refusing to mix results: resume with the "
            "versions that trained them (environment.json lists them), or change output_dir "
            "to train the plan anew",
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
    record: dict[str, Any] = {
        "plan_hash": plan.plan_hash,
        "plan": plan.config.plan_data(),
        "config": config,
    }
    if plan.resolved is not None:  # with the values of the old record this one has not
        record[RESOLVED_KEY] = (
            merge_resolved(recorded, plan.resolved) if isinstance(recorded, dict) else plan.resolved
        )
    write_text_atomic(  # rewritten at every resume: never left cut short by a kill
        plan_file, yaml.safe_dump(record, sort_keys=False)
    )
    command = " ".join(shlex.quote(a) for a in argv)
    with (run_dir / "command.txt").open("a") as handle:  # from Python: the script that ran it
        handle.write((command or f"run_sweep() from Python: {_python_command()}") + "\n")
    _record_environment(run_dir / "environment.json", environment_record(host, plan.config.device))
    return run_dir


def _python_command() -> str:
    """The command line of this Python process (``python script.py ...``; ``python -`` for an
    interactive session or a script read from standard input), for a sweep run through the
    Python API."""
    args = [a for a in sys.argv if a] or ["-"]
    return " ".join(shlex.quote(a) for a in ["python", *args])


def _record_environment(path: Path, record: dict[str, Any]) -> None:
    """Write this invocation's environment to ``path``, keeping the earlier invocations' records
    (a resumed sweep may run with other versions or on another machine) under ``earlier``,
    oldest first, as ``command.txt`` keeps their commands."""
    earlier: list[Any] = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            previous = {"unreadable": path.read_bytes().decode("utf-8", "replace")}
        if isinstance(previous, dict):
            earlier = list(previous.pop("earlier", []))
        earlier.append(previous)
    # whole or not at all: a kill while writing left a cut file, kept as "unreadable" thereafter
    write_text_atomic(
        path, json.dumps({**record, "earlier": earlier} if earlier else record, indent=2)
    )


def _differences(stored: dict[str, Any], config: dict[str, Any]) -> str:
    """The config fields (dotted paths) whose values differ between a stored plan.yaml and
    ``config``, as a comma-separated list."""
    old, new = dotted_leaves(stored.get("config", {})), dotted_leaves(config)
    return ", ".join(sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)))


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
    # jobs in this process look plugins up by name: they find the host given here
    with run_dir_lock(plan.run_dir, wait=wait, console=console), using_host(host or get_host()):
        return _run_sweep(plan, host or get_host(), argv, console)


def _run_sweep(plan: SweepPlan, host: Host, argv: Iterable[str], console: Console) -> SweepOutcome:
    config = plan.config
    try:  # before anything is written: an option's value the executor refuses is named
        executor: Executor = host.registry.executor(config.executor.name).factory(
            workers=config.executor.workers,
            timeout_s=config.executor.timeout_s,
            log_dir=plan.run_dir / "logs",
            **config.executor.options,
        )
    except ConfigError:  # the executor named the option itself
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"executor.options: {config.executor.name!r}: {exc}") from None
    except Exception as exc:  # the executor plugin's own failure, before anything is written
        raise ConfigError(
            f"executor.name: {config.executor.name!r}: its factory failed with "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    try:
        run_dir = prepare_run_dir(plan, host, argv, console)
    except BaseException:
        close = getattr(executor, "close", None)
        if close is not None:
            close()  # what it holds, as a sweep that ends closes it
        raise
    in_process = plan.algorithm.batched and plan.env.make_batched is not None
    if in_process and config.executor.shards == 1 and config.executor.timeout_s is not None:
        console.print(
            f"[yellow]warning:[/] executor.timeout_s: {config.executor.timeout_s:g} s bounds the "
            "executor's jobs, and a batched sweep with executor.shards: 1 trains its groups in "
            "this process, where it does not apply (shards >= 2 run as jobs under it)",
            highlight=False,
        )
    plan_json = config.model_dump(mode="json")
    store = Store(run_dir / STORE_FILE)
    store.set_meta("plan_hash", plan.plan_hash)
    host.notify("ctxrl_sweep_start", plan=plan_json, run_dir=run_dir)

    finished = store.finished_run_ids()
    saved = list((run_dir / "artifacts").glob("*.safetensors"))
    # a sweep killed while storing its first group saved the policies and committed no run:
    # its checkpoint is whole and the group resumes from it
    resumable = any((run_dir / "checkpoints").glob("*.safetensors"))
    if saved and not store.runs():
        policies = f"{len(saved)} saved polic{'y' if len(saved) == 1 else 'ies'}"
        if not resumable and any((run_dir / "exports").glob("matrix*.csv")):
            # a sweep that finished once (its exports are there): the store, not the runs,
            # is what went missing; training them all again would replace the saved policies
            raise CtxrlError(
                f"{run_dir / STORE_FILE} holds no run, but artifacts/ holds {policies} and "
                "exports/ a finished sweep's matrices: the store was lost, emptied or replaced "
                f"(copied without its {STORE_FILE}-wal?). Restore it from a copy; to train "
                "every run again instead, remove artifacts/ and exports/ (or give another "
                "output_dir). Nothing was trained or changed"
            )
        console.print(
            f"[yellow]warning:[/] {run_dir / STORE_FILE} holds no run, but artifacts/ holds "
            + (
                f"{policies}: groups killed while storing resume from checkpoints/; runs no "
                "checkpoint holds train again (if the store was emptied or replaced, restore "
                "it from a copy to keep them)"
                if resumable
                else f"{policies} (a store emptied or replaced?): every run trains again; "
                "restore the store from a copy to keep them"
            ),
            highlight=False,
        )
    retraining: dict[str, float] = {}
    for rid, problem in damaged_artifacts(store).items():
        console.print(f"[yellow]{problem}:[/] run {rid} will be trained again", highlight=False)
        finished.discard(rid)
        retraining[rid] = cast(RunRecord, store.run(rid)).finished_at
    outcome = SweepOutcome(run_dir, TransferMatrix.empty([], []), trained=0, skipped=0)
    session = SweepSession(plan, store, host, console, plan_json, finished, outcome, retraining)

    # torch's intra-op threads per job of the local executor: this machine's cores shared by
    # its parallel jobs (other executors run jobs elsewhere, or in this process)
    threads = max(1, (os.cpu_count() or 1) // max(1, config.executor.workers))

    def job_for(source: int, seed: int) -> dict[str, Any]:
        job = {"run_dir": str(run_dir), "config": plan_json, "source": source, "seed": seed}
        job[RESOLVED_KEY] = plan.resolved  # each worker checks it resolves the config alike
        if config.executor.name == "local":
            job["threads"] = threads
        return job

    def run_jobs(sources: list[int]) -> None:
        if plan.algorithm.batched and plan.env.make_batched is not None:
            run_batched(session, sources, executor)
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
        reported: set[tuple[int, int]] = set()
        with progress_display(console) as progress:
            bar = progress.add_task(f"training {plan.env.name}", total=len(jobs))
            for job, error in executor.map(execute_job, jobs):
                task = Task(plan.env.name, plan.grid.contexts[job["source"]])
                rid = run_id(task, job["seed"])
                if (job["source"], job["seed"]) in reported:  # an executor's second report
                    console.print(
                        f"[yellow]executor {config.executor.name!r} reported run {rid} twice;"
                        " the second report is ignored[/]"
                    )
                    continue
                reported.add((job["source"], job["seed"]))
                stored = store.run(rid)
                if error is None and stored is not None and stored.status == "failed":
                    # an executor that swallowed the job's error: the job stored it
                    cause = (stored.error or "").strip().splitlines() or ["(no message)"]
                    error = JobFailed(
                        f"{cause[-1]} (executor {config.executor.name!r} reported it done)",
                        stored.error or "",
                    )
                elif error is None and (stored is None or stored.status != "finished"):
                    error = JobFailed(  # or never ran it
                        f"executor {config.executor.name!r} reported the job done, but its "
                        "run is not stored"
                    )
                if error is not None and ensure_failed(store, task, job["seed"], plan, error):
                    outcome.failed.append(rid)
                    console.print(
                        f"[red]run {rid} ({task.label(plan.grid.features)}) failed:[/] "
                        f"{escape(error_summary(error))}"
                    )
                elif error is not None:  # the run's stored results stay
                    finished.add(rid)
                    if session.kept_after_failed_retrain(cast(RunRecord, store.run(rid))):
                        outcome.kept.append(rid)  # the earlier results: this retrain failed
                        said = "its retrain failed; its earlier evaluations are kept"
                    else:  # the job stored them, then failed (e.g. killed at its time limit)
                        outcome.trained += 1
                        said = "its stored evaluations are kept"
                    console.print(
                        f"[yellow]run {rid} ({task.label(plan.grid.features)}):[/] "
                        f"{escape(error_summary(error))}; {said}"
                    )
                else:
                    outcome.trained += 1
                    finished.add(rid)
                session.run_finished(rid)
                progress.advance(bar)
        for job in jobs:  # an executor that dropped a job: it is failed, not silently missing
            if (job["source"], job["seed"]) not in reported:
                task = Task(plan.env.name, plan.grid.contexts[job["source"]])
                rid = run_id(task, job["seed"])
                dropped = f"executor {config.executor.name!r} never reported this job"
                if ensure_failed(store, task, job["seed"], plan, dropped):
                    outcome.failed.append(rid)
                    console.print(f"[red]run {rid} failed:[/] {dropped}")
                session.run_finished(rid)

    n = len(plan.grid)
    failed_strategy: _StrategyFailed | None = None
    try:
        if config.multitask or config.mode == "multitask":
            run_multitask(session)
        if config.mode == "full":
            outcome.order = list(range(n))
            run_jobs(outcome.order)
        elif config.mode == "select":
            outcome.order = _select_and_train(plan, store, run_jobs)
    except _StrategyFailed as exc:  # the summary of what was trained, then the error
        outcome.order, failed_strategy = exc.order, exc
    finally:  # an executor that holds resources across its jobs (a Ray cluster) lets them go
        close = getattr(executor, "close", None)
        if callable(close):
            close()
    if not outcome.failed:
        # every run stored: what a kill left between storing a group and removing its
        # checkpoint (or a save it cut short) is of no use to any rerun
        remove_checkpoints(run_dir / "checkpoints")

    with exports_lock(run_dir, console):
        matrix = sweep_matrix(plan, store)
        outcome.matrix = matrix
        write_exports(plan, store, matrix, run_dir, order=outcome.order)
    store.close()
    if failed_strategy is not None:
        raise failed_strategy
    host.notify("ctxrl_sweep_finished", plan=plan_json, run_dir=run_dir, matrix=matrix)
    return outcome


class _StrategyFailed(PluginError):
    """A selection strategy that raised (or proposed what cannot be trained) in ``mode:
    select``; ``order``: the sources it had chosen before, all trained."""

    def __init__(self, message: str, order: list[int]) -> None:
        super().__init__(message)
        self.order = order


def remove_checkpoints(folder: Path) -> None:
    """Delete every checkpoint file in ``folder``, hidden partial saves included (the folder
    stays)."""
    if folder.is_dir():
        for file in folder.iterdir():
            if file.is_file():
                file.unlink()


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
        try:
            proposal = checked_proposal(strategy.propose(state), state, plan.strategy.name)
        except Exception as exc:  # the plugin's failure: what it chose before is reported
            if isinstance(exc, CtxrlError):  # a proposal refused, said in full
                why = str(exc)
            else:  # the plugin's own code: where it raised, for its author
                trace = "".join(traceback.format_exception(exc)[-3:]).strip()
                why = f"{type(exc).__name__}: {exc}\n{trace}"
            raise _StrategyFailed(
                f"strategy {plan.strategy.name!r} failed at selection step {step + 1} (k = "
                f"{state.k} of {state.budget} sources trained): {why}\nThe sources trained so "
                "far are stored and reported; once the strategy is fixed, a rerun continues "
                "from them",
                list(state.selected),
            ) from exc
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
