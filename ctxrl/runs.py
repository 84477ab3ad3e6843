"""The runs of a sweep: their ids and stored rows, failures reported by an executor, the
transfer method's returns, the ``ctxrl_run_finished`` hook and the progress display. Shared
by the per-run jobs (:mod:`ctxrl.sweep`) and the batched programs
(:mod:`ctxrl.batched_sweep`, :mod:`ctxrl.batched_programs`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ctxrl.config import SweepPlan
from ctxrl.context import Task
from ctxrl.errors import CheckpointError, CtxrlError
from ctxrl.matrix import TransferMatrix
from ctxrl.plugins import Host, get_host
from ctxrl.selection import json_safe
from ctxrl.store import RunRecord, Store, now
from ctxrl.transfer import TransferProblem


def run_id(task: Task, seed: int) -> str:
    """A run's id in the store and the artifacts: ``{task id}-s{seed}``."""
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
    kept: list[str] = field(default_factory=list)
    """runs whose saved policy was damaged and whose retrain failed: their earlier stored
    results are kept, and they count neither as trained nor as failed"""


def run_record(
    task: Task,
    seed: int,
    plan: SweepPlan,
    started: float,
    finished: float,
    status: str,
    artifact: str | None,
    error: str | None,
) -> RunRecord:
    """The stored row of a source run (times in seconds since the epoch)."""
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


EVALUATION_SEED = 10_000
"""The seed of every sweep's evaluation episodes (sources on targets, the multi-task agents):
``algorithm.evaluate_many(policies, env, targets, episodes=..., seed=EVALUATION_SEED)`` on a
sweep's stored policies gives its stored returns."""

TRANSFER_DIR = "transfer"
"""the run directory's folder of transfer-method records (one JSON file per group or run)"""


def transfer_returns(
    plan: SweepPlan, problem: TransferProblem, record: Path | None = None
) -> np.ndarray:
    """The sweep's transfer method on ``problem``: returns ``(P, Q, E)``.

    With ``record`` (a JSON path), a method that used target-env steps or returned details has
    them written there, with its name, options and sources (what ``summary.md`` lists under
    "Transfer method")."""
    spec = get_host().registry.transfer_method(plan.config.transfer.name)
    method = spec.factory(**plan.config.transfer.options)
    try:
        result = method.transfer(problem)
    except CheckpointError:
        raise  # its training's checkpoint: the caller sets it aside and transfers again
    except Exception as exc:  # the sources trained: say that the transfer failed, and which
        raise CtxrlError(
            f"transfer method {spec.name!r} failed after the sources trained: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(result, "returns"):
        raise CtxrlError(
            f"transfer method {spec.name!r} returned {type(result).__name__}, not a "
            "ctxrl.transfer.TransferResult"
        )
    try:
        returns = np.asarray(result.returns, dtype=np.float64)
        steps = int(result.target_env_steps)
        json.dumps(result.details, default=float)  # stored as JSON beside the matrix
    except (TypeError, ValueError) as exc:
        raise CtxrlError(
            f"transfer method {spec.name!r} returned a result that cannot be stored "
            f"(returns, target_env_steps or JSON details): {type(exc).__name__}: {exc}"
        ) from None
    expected = (len(problem.source_contexts), len(problem.targets), problem.episodes)
    if returns.shape != expected:
        raise CtxrlError(
            f"transfer method {spec.name!r} returned shape {returns.shape}, expected {expected}"
        )
    if record is not None and (result.details or result.target_env_steps):
        data = {
            "method": spec.name,
            "options": plan.config.transfer.options,
            "sources": [dict(c) for c in problem.source_contexts],
            "source_seeds": [int(s) for s in problem.source_seeds],
            "target_env_steps": steps,
            "details": result.details,
        }
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(".json.partial")
        # numbers as JSON has them: what float() takes (numpy and torch scalars) as numbers,
        # NaN and inf as null (a bare NaN token is not JSON: other readers refuse the file)
        loose = json.loads(json.dumps(data, default=float))
        partial.write_text(json.dumps(json_safe(loose), indent=1, allow_nan=False))
        os.replace(partial, record)
    return returns


def notify_run_finished(host: Host, plan_json: dict[str, Any], store: Store, rid: str) -> None:
    """Call ``ctxrl_run_finished`` with the run's stored row and its returns."""
    record = store.run(rid)
    assert record is not None
    run = {
        name: getattr(record, name)
        for name in ("run_id", "kind", "source_task", "seed", "status", "duration_s", "error")
    }
    run["returns"] = store.returns(rid)
    host.notify("ctxrl_run_finished", plan=plan_json, run=run)


@dataclass
class SweepSession:
    """What every part of one sweep invocation works with: the plan and its store, the host
    whose hooks hear of every finished run, the console, the plan as JSON (what hooks and
    worker jobs get), the set of finished run ids, the outcome being filled in and the runs
    trained again because their saved policy is damaged (run id -> the stored row's
    ``finished_at``)."""

    plan: SweepPlan
    store: Store
    host: Host
    console: Console
    plan_json: dict[str, Any]
    finished: set[str]
    outcome: SweepOutcome
    retraining: dict[str, float] = field(default_factory=dict)

    def kept_after_failed_retrain(self, record: RunRecord) -> bool:
        """Whether finished ``record`` is the row stored before this sweep for a run it
        tried to retrain: the retrain failed and left the earlier results in place."""
        return self.retraining.get(record.run_id) == record.finished_at

    def run_finished(self, rid: str) -> None:
        """Tell the hooks that run ``rid`` finished (or failed): :func:`notify_run_finished`."""
        notify_run_finished(self.host, self.plan_json, self.store, rid)


def ensure_failed(
    store: Store, task: Task, seed: int, plan: SweepPlan, error: BaseException | str
) -> bool:
    """Record a failed run with the executor's report, which ends with the worker's log (the
    traceback and what a simulator printed, e.g. SUMO's own error message). A row the worker
    wrote itself keeps its times; a crash or a timeout leaves none, so one is made. A
    finished row is kept with its evaluations (the worker stored them before it failed, or
    an attempt to retrain a damaged policy failed): returns False then, True when the run is
    now recorded as failed."""
    rid = run_id(task, seed)
    message = str(error)[-4000:]
    written = store.run(rid)
    if written is not None and written.status == "finished":
        return False
    if written is not None and written.status == "failed":
        store.record_run(replace(written, error=message))
    else:
        t = now()
        store.record_run(run_record(task, seed, plan, t, t, "failed", None, message))
    return True


def error_summary(error: BaseException) -> str:
    """One line saying why a run failed: an executor's ``summary`` if it gives one, else the
    last line of the error (a traceback's exception)."""
    summary = getattr(error, "summary", None)
    if isinstance(summary, str) and summary:
        return summary
    text = str(error).strip()
    return text.splitlines()[-1] if text else repr(error)


def progress_display(console: Console) -> Progress:
    """A progress bar with the task's name, count and elapsed time, on ``console``."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
