"""The batched path of a sweep: every pending (source, seed) agent of a group trained in one
batched program (in the sweep's process, or split into shards that run as executor jobs),
evaluated on every target in one batched rollout and stored run by run; and the multi-task
baseline. Each program checkpoints itself in the run directory and resumes from it; what every
program does around its training (resuming, the transfer phase, storing its agents) is in
:mod:`ctxrl.batched_programs`."""

from __future__ import annotations

import hashlib
import os
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console
from rich.markup import escape

from ctxrl import batched_programs
from ctxrl.artifacts import artifact_file
from ctxrl.batched_programs import train_resumably, transfer_checkpoint, transfer_with_progress
from ctxrl.config import SweepPlan, resolve_plan, validate_config
from ctxrl.context import Context, Task
from ctxrl.interventions import build_interventions
from ctxrl.plugins import get_host
from ctxrl.registry import CurveOptions, Executor
from ctxrl.resolution import RESOLVED_KEY, check_job_resolution
from ctxrl.runs import (
    EVALUATION_SEED,
    TRANSFER_DIR,
    SweepSession,
    ensure_failed,
    error_summary,
    progress_display,
    run_id,
    run_record,
)
from ctxrl.store import RunRecord, Store, now
from ctxrl.summary import STORE_FILE
from ctxrl.summary_text import counted
from ctxrl.transfer import TransferProblem


def run_batched(session: SweepSession, sources: list[int], executor: Executor) -> None:
    """Train every pending (source, seed) of ``sources`` in batched programs, evaluate each on
    every target in one batched rollout, and store each run.

    With ``executor.shards`` 1 the group is one program in this process; with more, the group
    is split into that many shards, each one program run as a job of the executor (its own
    process, a Ray task). An agent's numbers never depend on the rest of its batch, so the
    matrix is the same either way. Every program checkpoints itself in the run directory, so a
    killed sweep resumes each group or shard where it stopped."""
    plan, outcome, finished = session.plan, session.outcome, session.finished
    config = plan.config
    agents = [(source, seed) for source in sources for seed in config.seeds]
    shards = [
        [a for a in shard if _agent_id(plan, a) not in finished]
        for shard in _split(agents, config.executor.shards)
    ]
    shards = [shard for shard in shards if shard]
    pending = sum(len(shard) for shard in shards)
    joint = get_host().registry.transfer_method(config.transfer.name).joint
    if joint and 0 < pending < len(agents):
        # every source teaches every row: a group of the pending agents alone would transfer
        # from them alone (one damaged policy retrained, its row taught by itself)
        session.console.print(
            f"[yellow]transfer method {config.transfer.name!r} transfers from all sources "
            f"together:[/] {pending} of {len(agents)} agents are pending, so the whole group "
            "trains again (the same numbers for the finished ones)",
            highlight=False,
        )
        shards, pending = [agents], len(agents)
    outcome.skipped += len(agents) - pending
    if not pending:
        return
    shards = _continue_other_partitions(plan, session.console, agents, shards)
    # in this process only where asked (shards: 1): a group's one pending shard (the rest
    # finished, or fewer agents than shards) runs as the executor's job, under its time limit,
    # resources and log, as it would beside other shards
    if len(shards) == 1 and config.executor.shards == 1:
        try:
            group = train_group(plan, session.store, shards[0], session.console, config.device)
        except Exception as exc:
            session.console.print(f"[red]batched group failed:[/] {escape(str(exc))}")
            for agent in shards[0]:
                _settle(session, agent, exc, resumed=False)
            return
        outcome.train_s += group.train_s
        outcome.eval_s += group.eval_s
        outcome.compile_s += group.compile_s
        for agent in shards[0]:
            _settle(session, agent, None, resumed=group.resumed)
        return
    _run_shards(session, shards, executor)


def _continue_other_partitions(
    plan: SweepPlan,
    console: Console,
    agents: list[tuple[int, int]],
    shards: list[list[tuple[int, int]]],
) -> list[list[tuple[int, int]]]:
    """The programs to run for this group's pending ``shards``: a checkpoint written under
    another ``executor.shards`` (changed between a kill and this rerun) whose agents are all
    pending is continued as the program it was, and the other pending agents keep their shards
    of this count, less the agents that checkpoint holds. A checkpoint is found by the agents of
    its program and an agent's numbers never depend on the rest of its batch, so the runs are
    the same as with either count alone; each continued checkpoint is named. The shards of
    this count that remain keep their names across reruns: once a continued program has
    stored its agents, this count's split less those finished agents is the same list."""
    config = plan.config
    folder = plan.run_dir / "checkpoints"
    if not folder.is_dir() or not any(folder.glob("batch-*.safetensors")):
        return shards
    pending = {agent for shard in shards for agent in shard}
    ids = {agent: _agent_id(plan, agent) for agent in agents}

    def checkpointed(shard: list[tuple[int, int]]) -> bool:
        path = _checkpoint_path(plan, [ids[a] for a in shard])
        return artifact_file(path).exists()

    # this count's own checkpoints first; then, per other count, shards not yet covered
    continued = [shard for shard in shards if checkpointed(shard)]
    covered = {agent for shard in continued for agent in shard}
    for count in range(1, min(len(agents), 256) + 1):
        if count == config.executor.shards:
            continue
        for shard in _split(agents, count):
            if set(shard) <= pending - covered and checkpointed(shard):
                file = escape(str(_checkpoint_path(plan, [ids[a] for a in shard])))
                console.print(
                    f"[yellow]{file}.safetensors[/] holds {len(shard)} of these agents as "
                    f"trained with executor.shards: {count} (now {config.executor.shards}): "
                    "continuing them as that program",
                    highlight=False,
                )
                continued.append(shard)
                covered.update(shard)
    if len(continued) == sum(1 for shard in shards if checkpointed(shard)):
        return shards  # nothing of another count
    rest = [[a for a in shard if a not in covered] for shard in shards]
    return continued + [shard for shard in rest if shard]


def _settle(
    session: SweepSession,
    agent: tuple[int, int],
    error: BaseException | str | None,
    *,
    resumed: bool,
    report: bool = False,
) -> None:
    """Count agent ``(source, seed)`` of a finished program by what the store holds for it:
    finished (it was stored, whatever happened after), kept (the program failed to retrain
    its damaged policy: the row stored before this sweep stays), or failed: recorded as failed
    with ``error`` when the program stored nothing for it, or (``report``: an executor's
    report, which ends with the worker's log) in place of the error the program stored; then
    tell the hooks."""
    plan, outcome = session.plan, session.outcome
    task = Task(plan.env.name, plan.grid.contexts[agent[0]])
    rid = run_id(task, agent[1])
    record = session.store.run(rid)
    if record is not None and record.status == "finished":
        session.finished.add(rid)
        if session.kept_after_failed_retrain(record):
            outcome.kept.append(rid)
        else:
            outcome.trained += 1
            outcome.resumed += int(resumed)
    else:
        if record is None or (report and error is not None):
            ensure_failed(session.store, task, agent[1], plan, error or "not stored")
        outcome.failed.append(rid)
    session.run_finished(rid)


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
    started = now()
    resumed = False
    try:
        algorithm, policies, resumed = train_resumably(
            plan,
            device,
            checkpoint,
            console,
            _agents(len(agents)),
            lambda algorithm, progress: algorithm.train_many(
                plan.env,
                [t.context.as_dict() for t in tasks],
                seeds,
                total_steps=config.train_steps,
                checkpoint=checkpoint,
                progress=progress,
                **_training_options(plan),
            ),
            bar=f"{_agents(len(agents), plan.env.name)} in one program",
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
            eval_seed=EVALUATION_SEED,
            training_options=_training_options(plan, curves=False),
            checkpoint=transfer_checkpoint(checkpoint),
            curves=_curve_options(plan),  # the method's own training's, if it records them
        )
        record = plan.run_dir / TRANSFER_DIR / f"{checkpoint.name}.json"
        # with the training time of the processes before a kill (saved with the checkpoint)
        earlier_s = float(getattr(algorithm, "earlier_train_s", 0.0))
        train_s = trained_at - started + earlier_s
        compile_s = float(getattr(algorithm, "compile_s", 0.0))
        compiling = f" (compiling {compile_s:.1f} s of it)" if compile_s > 0 else ""
        trained_steps = getattr(algorithm, "trained_steps", None)
        steps = trained_steps(config.train_steps) if callable(trained_steps) else None
        console.print(  # the steps trained: whole iterations, at least one
            f"trained {_agents(len(agents))} "
            + (f"x {steps:,} steps " if steps is not None else "")
            + f"in {train_s:.1f} s{compiling}"
            + (" (continued from its checkpoint)" if resumed else "")
        )
        returns = transfer_with_progress(plan, problem, record, console, len(agents))
        eval_s = now() - trained_at
        # a method that trains (fine-tune, distill) spends most of the second phase training
        transferred = (
            "" if config.transfer.name == "zero-shot" else f"{config.transfer.name} (training) and "
        )
        console.print(
            f"{transferred}evaluated {len(agents)} x {len(targets)} x {config.eval_episodes} "
            f"episodes in {eval_s:.1f} s"
        )
    except Exception as exc:
        error = "".join(traceback.format_exception(exc))[-4000:]
        for task, seed in zip(tasks, seeds, strict=True):
            stored = store.run(run_id(task, seed))
            if stored is None or stored.status != "finished":  # a retrain keeps what it had
                failed = run_record(task, seed, plan, started, now(), "failed", None, error)
                store.record_run(failed)
        raise
    group_s = now() - started + earlier_s
    records = [
        _group_record(
            run_record(task, seed, plan, started, started, "finished", None, None),
            checkpoint.name,
            group_s,
            len(agents),
        )
        for task, seed in zip(tasks, seeds, strict=True)
    ]
    batched_programs.store_trained(plan, store, algorithm, policies, records, returns, console)
    batched_programs.remove_checkpoint(checkpoint)
    batched_programs.remove_checkpoint(transfer_checkpoint(checkpoint))
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
    check_job_resolution(job, plan)
    agents = [(int(source), int(seed)) for source, seed in job["agents"]]
    store = Store(plan.run_dir / STORE_FILE)
    try:
        train_group(plan, store, agents, Console(stderr=True), str(job["device"]))
    finally:
        store.close()


def _run_shards(
    session: SweepSession, shards: list[list[tuple[int, int]]], executor: Executor
) -> None:
    """Run each shard of a batched group as a job of ``executor``; a failed shard's runs are
    stored as failed and the other shards go on."""
    plan, outcome, console = session.plan, session.outcome, session.console
    config = plan.config
    parallel = min(config.executor.workers, len(shards))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    jobs = [
        {
            "run_dir": str(plan.run_dir),
            "config": session.plan_json,
            "agents": [list(agent) for agent in shard],
            "shard": f"{index}of{len(shards)}",
            "device": config.device,
            "threads": threads,
            RESOLVED_KEY: plan.resolved,  # each worker checks it resolves the config alike
        }
        for index, shard in enumerate(shards)
    ]
    resumed = [
        artifact_file(_checkpoint_path(plan, [_agent_id(plan, a) for a in shard])).exists()
        for shard in shards
    ]
    agents = sum(len(shard) for shard in shards)
    started = time.monotonic()
    with progress_display(console) as progress:
        bar = progress.add_task(
            f"training {counted(agents, f'{plan.env.name} agent')} in "
            f"{counted(len(shards), 'shard')}",
            total=len(jobs),
        )
        reported: set[str] = set()
        trained_before, failed_before = outcome.trained, len(outcome.failed)
        for job, error in executor.map(execute_shard, jobs):
            if job["shard"] in reported:  # an executor's second report of a job
                console.print(
                    f"[yellow]executor {config.executor.name!r} reported shard {job['shard']} "
                    "twice; the second report is ignored[/]"
                )
                continue
            reported.add(job["shard"])
            index = jobs.index(job)
            for source, seed in job["agents"]:
                agent = (int(source), int(seed))
                _settle(session, agent, error, resumed=resumed[index], report=True)
            if error is not None:
                console.print(
                    f"[red]shard {job['shard']} failed:[/] {escape(error_summary(error))}"
                )
            progress.advance(bar)
    for index, job in enumerate(jobs):  # a job the executor dropped: failed, not missing
        if job["shard"] not in reported:
            dropped = f"executor {config.executor.name!r} never reported this job"
            console.print(f"[red]shard {job['shard']} failed:[/] {dropped}")
            for source, seed in cast(list[list[int]], job["agents"]):
                _settle(
                    session, (int(source), int(seed)), dropped, resumed=resumed[index], report=True
                )
    wall_s = time.monotonic() - started
    outcome.train_s += wall_s
    # as stored: a failed shard's agents are failed runs (unless an earlier result is kept)
    done, failed = outcome.trained - trained_before, len(outcome.failed) - failed_before
    console.print(
        f"trained and evaluated {counted(done, 'agent')}"
        + (f" ({failed} failed)" if failed else "")
        + f" in {counted(len(shards), 'shard')} ({parallel} at a time) in {wall_s:.1f} s"
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


def _agents(n: int, kind: str = "") -> str:
    """``3 agents``, ``1 CartPole agent``: ``n`` agents of ``kind``."""
    return f"{n} {kind + ' ' if kind else ''}agent{'s' if n != 1 else ''}"


def _curve_options(plan: SweepPlan) -> CurveOptions | None:
    """The sweep's ``curves`` as ``train_many`` takes them (None: it records none, or its
    algorithm hosts no learning curves)."""
    curves = plan.config.curves
    if curves is None or not plan.algorithm.interventions:
        return None
    return CurveOptions(curves.every, curves.episodes)


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
        options["curves"] = _curve_options(plan)
    return options


MULTITASK = "multitask"


def run_multitask(session: SweepSession) -> None:
    """The multi-task baseline: one policy per seed trained on the uniform mixture of all grid
    contexts (a real training run, in one batched program), evaluated on every context."""
    plan, store, outcome, finished = session.plan, session.store, session.outcome, session.finished
    console = session.console
    config = plan.config
    seeds = [s for s in config.seeds if f"{MULTITASK}-s{s}" not in finished]
    outcome.skipped += len(config.seeds) - len(seeds)
    if not seeds:
        return
    mixture = [c.as_dict() for c in plan.grid.contexts]
    started = now()
    task = Task(plan.env.name, Context())
    # named by its seeds, as a group by its runs: a rerun for other seeds starts afresh
    key = hashlib.sha256(f"{MULTITASK}|{seeds}".encode()).hexdigest()[:12]
    checkpoint = plan.run_dir / "checkpoints" / f"{MULTITASK}-{key}"
    try:
        algorithm, policies, _ = train_resumably(
            plan,
            config.device,
            checkpoint,
            console,
            _agents(len(seeds), "multi-task"),
            lambda algorithm, progress: algorithm.train_many(
                plan.env,
                [mixture[0]] * len(seeds),
                seeds,
                total_steps=config.train_steps,
                checkpoint=checkpoint,
                progress=progress,
                mixture=mixture,
                **_training_options(plan, curves=False),
            ),
            bar=_agents(len(seeds), "multi-task"),
        )
        returns = algorithm.evaluate_many(
            policies, plan.env, mixture, episodes=config.eval_episodes, seed=EVALUATION_SEED
        )
    except Exception as exc:
        error = "".join(traceback.format_exception(exc))[-4000:]
        for seed in seeds:
            record = _as_multitask(
                run_record(task, seed, plan, started, now(), "failed", None, error)
            )
            earlier = store.run(record.run_id)
            if earlier is not None and earlier.status == "finished":
                # a retrain of its damaged policy failed: its stored results are kept
                console.print(f"[yellow]{record.run_id}: its stored results are kept[/]")
                finished.add(record.run_id)
                outcome.kept.append(record.run_id)
            else:
                store.record_run(record)
                outcome.failed.append(record.run_id)
            session.run_finished(record.run_id)
        console.print(f"[red]multi-task training failed:[/] {escape(str(exc))}")
        return
    # with the training time of the processes before a kill (saved with the checkpoint)
    group_s = now() - started + float(getattr(algorithm, "earlier_train_s", 0.0))
    records = [
        _group_record(
            _as_multitask(run_record(task, seed, plan, started, started, "finished", None, None)),
            MULTITASK,
            group_s,
            len(seeds),
        )
        for seed in seeds
    ]
    stored = batched_programs.store_trained(
        plan, store, algorithm, policies, records, returns, console
    )
    batched_programs.remove_checkpoint(checkpoint)
    for record, ok in zip(records, stored, strict=True):
        row = store.run(record.run_id)
        if ok and row is not None and session.kept_after_failed_retrain(row):
            finished.add(record.run_id)
            outcome.kept.append(record.run_id)
        elif ok:
            finished.add(record.run_id)
            outcome.trained += 1
        else:
            outcome.failed.append(record.run_id)
        session.run_finished(record.run_id)


def _as_multitask(record: RunRecord) -> RunRecord:
    """A multi-task run's row: its id, kind and source task say ``multitask``."""
    return replace(
        record, run_id=f"{MULTITASK}-s{record.seed}", kind=MULTITASK, source_task=MULTITASK
    )
