"""What every batched program of a sweep (a group, a shard of one, the multi-task baseline)
does: train resumably from its checkpoint in the run directory (one that is damaged or was
written on another kind of device is set aside), transfer behind a progress bar (continuing the
transfer's own checkpoint), and store its trained agents, all runs in one transaction. Used by
:mod:`ctxrl.batched_sweep`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from ctxrl.artifacts import artifact_file, artifact_metadata, remove_artifact, verify_artifact
from ctxrl.config import SweepPlan, algorithm_params
from ctxrl.context import Task
from ctxrl.errors import CheckpointError, CtxrlError
from ctxrl.options import resolved_device
from ctxrl.registry import BatchedAlgorithm
from ctxrl.runs import progress_display, transfer_returns
from ctxrl.store import Evaluation, RunRecord, Store
from ctxrl.transfer import TransferProblem


def train_resumably(
    plan: SweepPlan,
    device: str,
    checkpoint: Path,
    console: Console,
    agents: str,
    train: Callable[[BatchedAlgorithm, Callable[[int, int], None]], Any],
    *,
    bar: str,
) -> tuple[BatchedAlgorithm, Any, bool]:
    """``train(algorithm, progress)`` for a batched program that checkpoints itself at
    ``checkpoint``, behind a progress bar (``training {bar}``; ``agents`` says what resumes).
    A checkpoint that is damaged, was written on another kind of device or cannot be restored
    (another version's) is named and set aside, and the program trains from the start.
    Returns the algorithm, what ``train`` returned and whether it continued from a
    checkpoint."""
    damage = verify_artifact(checkpoint) if artifact_file(checkpoint).exists() else None
    if damage is None and artifact_file(checkpoint).exists():
        written_on = artifact_metadata(checkpoint).get("device")
        trains_on = resolved_device(device).split(":")[0]  # the kind: cpu or cuda
        if written_on not in (None, trains_on):
            # a CPU generator's state does not fit a CUDA one (and the numbers would differ)
            damage = (
                f"checkpoint {checkpoint.name} was written on {written_on}, this sweep trains "
                f"on {trains_on} (device: {device})"
            )
    if damage is not None:
        console.print(f"[yellow]{damage}:[/] training the group from the start", highlight=False)
        remove_checkpoint(checkpoint)
    algorithm = _batched_algorithm(plan, device)
    resumed = artifact_file(checkpoint).exists()
    if resumed:
        position = _checkpoint_position(checkpoint, algorithm, plan.config.train_steps)
        console.print(f"resumed {agents} from {position}")
    with progress_display(console) as progress:
        task = progress.add_task(f"training {bar}", total=1)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            return algorithm, train(algorithm, advance), resumed
        except CheckpointError as exc:  # another version's, say: every rerun would fail
            console.print(f"[yellow]{escape(str(exc))}:[/] training the group from the start")
            remove_checkpoint(checkpoint)
            algorithm = _batched_algorithm(plan, device)
            return algorithm, train(algorithm, advance), False


def transfer_with_progress(
    plan: SweepPlan, problem: TransferProblem, record: Path, console: Console, sources: int
) -> np.ndarray:
    """The group's transfer (:func:`~ctxrl.runs.transfer_returns`), behind a progress bar for
    a method that trains (it reports through ``problem.progress``), continuing a training a
    kill interrupted (said, with its iteration); a damaged checkpoint of it is named and set
    aside, and the transfer starts again."""
    method = plan.config.transfer.name
    if method == "zero-shot":
        return transfer_returns(plan, problem, record)
    saved = problem.checkpoint
    # a damaged checkpoint is the method's to name (a CheckpointError, below); a method that
    # trains several programs names theirs after it (distill's per seed: {saved}-seed0, ...)
    if saved is not None:
        derived = sorted(saved.parent.glob(f"{saved.name}-*{artifact_file(saved).suffix}"))
        for checkpoint in [saved, *(path.with_suffix("") for path in derived)]:
            if artifact_file(checkpoint).exists() and verify_artifact(checkpoint) is None:
                done = artifact_metadata(checkpoint).get("iteration", "?")
                part = checkpoint.name.removeprefix(saved.name).removeprefix("-")
                which = f" ({part})" if part else ""
                console.print(f"resumed {method}{which} from iteration {done} (its checkpoint)")
    with progress_display(console) as progress:
        # no total until the method reports one, and no bar left behind by one that never does
        task = progress.add_task(
            f"{method}: {sources} source(s) x {len(problem.targets)} targets", total=None
        )
        reported = [False]

        def advance(done: int, total: int) -> None:
            reported[0] = True
            progress.update(task, completed=done, total=total)

        problem = replace(problem, progress=advance)
        try:
            return transfer_returns(plan, problem, record)
        except CheckpointError as exc:  # the transfer's own (damaged, another device's)
            console.print(f"[yellow]{escape(str(exc))}:[/] transferring from the start")
            if saved is not None:
                remove_checkpoint(saved)
            return transfer_returns(plan, problem, record)
        finally:
            if not reported[0]:
                progress.remove_task(task)


def transfer_checkpoint(checkpoint: Path) -> Path:
    """Where a group's transfer method checkpoints what it trains (fine-tuning), beside the
    group's own checkpoint."""
    return checkpoint.with_name(f"{checkpoint.name}-transfer")


def remove_checkpoint(checkpoint: Path) -> None:
    """Remove the checkpoint ``checkpoint`` and those named after it (``{name}-...``: a
    group's transfer, a transfer's second training, :class:`~ctxrl.transfer.TransferProblem`)."""
    remove_artifact(checkpoint, derived=True)


def _checkpoint_position(checkpoint: Path, algorithm: BatchedAlgorithm, total_steps: int) -> str:
    """Where a batched program's checkpoint stands: ``iteration 100 of 292`` (the total when
    the algorithm says how many env steps an iteration takes, as the batched trainers do), or
    ``their final state (iteration 292, training done)`` when the program was killed after it."""
    done = artifact_metadata(checkpoint).get("iteration", "?")
    per_iteration = getattr(algorithm, "steps_per_iteration", None)
    if not callable(per_iteration):
        return f"iteration {done}"
    iterations = max(1, total_steps // int(per_iteration()))
    if done == iterations:
        return f"their final state (iteration {done}, training done)"
    return f"iteration {done} of {iterations}"


def _batched_algorithm(plan: SweepPlan, device: str | None = None) -> BatchedAlgorithm:
    params = algorithm_params(plan.config, plan.algorithm)
    algorithm = plan.algorithm.factory(params, device=device or plan.config.device, env=plan.env)
    return cast(BatchedAlgorithm, algorithm)


def store_trained(
    plan: SweepPlan,
    store: Store,
    algorithm: BatchedAlgorithm,
    policies: Any,
    records: Sequence[RunRecord],
    returns: np.ndarray,
    console: Console,
) -> list[bool]:
    """Save the agents of a batched program (``records[i]`` is agent ``i``'s run) and store
    each run with its evaluations (``returns[i]``: ``(targets, episodes)`` over the grid's
    contexts) and training log, all runs in one transaction: a kill while storing leaves none
    of them stored, so the rerun finds the group's checkpoint whole and stores them from it
    (stored one by one, the rest would be trained again from the start, and a run could be
    stored finished without its log). An agent that cannot be stored (non-finite returns
    from a diverged training, a failed save) is stored as failed with the reason, alone,
    unless the store holds it finished already (a retrain of its damaged policy that failed):
    then its stored results are kept and the failure is said. An agent whose transfer alone
    diverged on some targets (its source's weights finite) is stored with the other targets'
    evaluations, the diverged entries left out and said. Returns, per agent, whether the
    store holds it finished."""
    log = getattr(policies, "log", None)
    prepared: list[tuple[RunRecord, list[Evaluation], Any]] = []
    for index, record in enumerate(records):
        try:
            finite = np.isfinite(returns[index]).all(axis=-1)  # (targets,)
            if not finite.all():
                reason, transfer_alone = _divergence(plan, policies, index, returns[index])
                if not (transfer_alone and finite.any()):
                    raise CtxrlError(reason)
                # the source trained: its entries where the transfer held are kept, the
                # others left out of the matrix (missing, as the report says)
                console.print(
                    f"[yellow]run {record.run_id}: {escape(reason)}; its other "
                    f"{int(finite.sum())} entries are kept[/]"
                )
            artifact = Path("artifacts") / record.run_id
            algorithm.save(policies.select([index]), plan.run_dir / artifact)
            evaluations = [
                Evaluation(Task(plan.env.name, c).id, c, returns[index][j].tolist())
                for j, c in enumerate(plan.grid.contexts)
                if finite[j]
            ]
            agent_log = None if log is None else log.select([index])
            prepared.append((replace(record, artifact=str(artifact)), evaluations, agent_log))
        except Exception as exc:
            error = f"storing the trained agent failed: {type(exc).__name__}: {exc}"
            prepared.append(
                (replace(record, status="failed", artifact=None, error=error), [], None)
            )
    kept: set[str] = set()
    with store.atomic():
        for record, evaluations, agent_log in prepared:
            if record.status == "failed":
                error = escape(str(record.error))
                earlier = store.run(record.run_id)
                if earlier is not None and earlier.status == "finished":
                    # never replace stored results with a failure: a rerun tries again
                    kept.add(record.run_id)
                    console.print(
                        f"[yellow]run {record.run_id}: retraining it failed ({error}); its "
                        "stored results from an earlier run are kept[/]"
                    )
                    continue
                console.print(f"[red]run {record.run_id} failed:[/] {error}")
            store.record_run(record, evaluations)
            if agent_log is not None:
                store.record_training_log(
                    record.run_id,
                    curve_steps=agent_log.curve_steps,
                    curve_returns=[r[0] for r in agent_log.curve_returns],
                    diagnostics={  # the records that hold a value of the name only
                        k: [
                            (agent_log.diagnostic_steps[i], float(values[i][0]))
                            for i in agent_log.diagnostic_records(k)
                        ]
                        for k, values in agent_log.diagnostics.items()
                    },
                )
    return [record.status == "finished" or record.run_id in kept for record, _, _ in prepared]


def _divergence(
    plan: SweepPlan, policies: Any, index: int, returns: np.ndarray
) -> tuple[str, bool]:
    """Why agent ``index``'s returns ``(targets, episodes)`` are not finite: its training
    diverged (zero-shot), or, after a transfer method, on which targets, and whether the
    source's own weights are finite (then the transfer diverged there, not the source).
    Returns the reason and whether the transfer alone diverged."""
    method = plan.config.transfer.name
    if method == "zero-shot":
        return (
            "its evaluation returns are not finite (NaN or inf): the training diverged "
            "(check the learning rate and the reward scale)"
        ), False
    bad = [j for j in range(len(returns)) if not np.all(np.isfinite(returns[j]))]
    features = plan.grid.features
    targets = "; ".join(
        ", ".join(f"{f}={plan.grid.contexts[j][f]:.4g}" for f in features) for j in bad[:5]
    ) + ("; ..." if len(bad) > 5 else "")
    params = getattr(policies, "params", None)
    source_finite = params is not None and all(
        bool(torch.isfinite(tensor[index]).all()) for tensor in params.values()
    )
    cause = (
        "the source's weights are finite, so the transfer diverged there (check the method's "
        "options and the learning rate)"
        if source_finite
        else "the source's own training diverged (check the learning rate and the reward scale)"
    )
    return (
        f"its returns after transfer method {method!r} are not finite (NaN or inf) on "
        f"{len(bad)} of {len(returns)} targets ({targets}): {cause}"
    ), source_finite
